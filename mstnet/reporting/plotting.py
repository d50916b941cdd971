"""What every report figure shares: the Agg canvas, style, file writing, row names and order.

Figures are drawn on a :class:`matplotlib.figure.Figure` with an Agg canvas (no pyplot
state) and written as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``, each to a temporary name,
then renamed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mstnet.atomic import atomic_path
from mstnet.reporting.published import ROW_ORDER
from mstnet.reporting.results import Results

FONT_SIZES = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
              "ytick.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13}
PNG_DPI = 150


def file_stem(name: str) -> str:
    """A file-name-safe form of an experiment name (``"ablation/no-stdm"`` -> ``"ablation__no-stdm"``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``figure`` as ``stem.png`` (150 dpi) and ``stem.pdf`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figure.canvas is None or not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    written = []
    for extension in ("png", "pdf"):
        target = out_dir / f"{stem}.{extension}"
        with atomic_path(target, f".tmp.{extension}") as temporary:
            figure.savefig(temporary, format=extension, dpi=PNG_DPI)
        written.append(target)
    return written


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas, constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_style():
    """Context: seaborn's white grid with readable font sizes (restored afterwards)."""
    return matplotlib.rc_context({**sns.axes_style("whitegrid"), **FONT_SIZES})


def display_order(results: Results) -> list[str]:
    """Experiments in report order: Table-1 rows in the paper's order, then references, then ablations."""
    names = list(results.experiments.index)

    def key(name: str) -> tuple[int, int, int]:
        row, group = results.experiments.at[name, "table_row"], results.experiments.at[name, "group"]
        paper_rank = ROW_ORDER.index(row) if row in ROW_ORDER else len(ROW_ORDER)
        return (0 if row else 2 if group == "ablation" else 1, paper_rank, names.index(name))

    return sorted(names, key=key)


def palette(names: Sequence[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per name."""
    return dict(zip(names, sns.color_palette("colorblind", n_colors=max(len(names), 1))))
