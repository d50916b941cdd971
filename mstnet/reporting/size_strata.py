"""Segmentation by nodule size: mean Dice and volume agreement per size bin, from ``segmentation.csv``.

Each scan is binned by the equivalent-sphere diameter of its reference mask,
d = (6 V / pi)^(1/3) from ``reference_volume_mm3``; per (row, bin) the table gives the scans,
the mean Dice and the median ratio of predicted to reference volume (1 = the right volume;
below 1 under-segmentation, 0 a missed nodule). Rows whose results lack the volume columns
(written before they existed) are left out. Figure ``dice_by_size`` draws both against the
bins, one line per row; ``dice_by_size.csv`` beside it holds the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mstnet.reporting.plotting import display_order, figure_style, new_figure, palette, save_figure
from mstnet.results_files import VOLUME_COLUMNS
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import method_name

SIZE_EDGES_MM: tuple[float, ...] = (0.0, 6.0, 10.0, 15.0, 20.0, 25.0, math.inf)
"""Bin edges of the equivalent-sphere diameter, mm (left-open, right-closed)."""
TABLE_COLUMNS: tuple[str, ...] = ("experiment", "method", "size_bin", "scans", "dice", "volume_ratio_median")


def equivalent_diameter_mm(volume_mm3: np.ndarray | pd.Series) -> np.ndarray:
    """The diameter (mm) of the sphere of each volume (mm^3)."""
    return np.cbrt(6.0 * np.asarray(volume_mm3, dtype=float) / math.pi)


def size_labels() -> list[str]:
    """The bins' names: ``"<=6 mm"``, ``"6-10 mm"``, ..., ``">25 mm"``."""
    inner = [f"{lower:g}-{upper:g} mm" for lower, upper in zip(SIZE_EDGES_MM[1:-2], SIZE_EDGES_MM[2:-1])]
    return [f"<={SIZE_EDGES_MM[1]:g} mm", *inner, f">{SIZE_EDGES_MM[-2]:g} mm"]


def dice_by_size(results: Results) -> pd.DataFrame:
    """One row per (experiment, size bin) with scans: :data:`TABLE_COLUMNS`, experiments in report order."""
    scans = results.segmentation
    if scans.empty or any(column not in scans.columns for column in VOLUME_COLUMNS):
        return pd.DataFrame(columns=TABLE_COLUMNS)
    scans = scans.dropna(subset=list(VOLUME_COLUMNS))
    scans = scans[scans["reference_volume_mm3"] > 0]
    labels = size_labels()
    binned = scans.assign(
        size_bin=pd.cut(equivalent_diameter_mm(scans["reference_volume_mm3"]), SIZE_EDGES_MM, labels=labels),
        volume_ratio=scans["predicted_volume_mm3"] / scans["reference_volume_mm3"])
    rows = []
    for name in [n for n in display_order(results) if n in set(binned["experiment"])]:
        for label, group in binned[binned["experiment"] == name].groupby("size_bin", observed=True, sort=True):
            rows.append({"experiment": name, "method": method_name(results, name), "size_bin": label,
                         "scans": len(group), "dice": float(group["dice"].mean()),
                         "volume_ratio_median": float(group["volume_ratio"].median())})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def dice_by_size_figure(results: Results, out_dir: Path) -> list[Path]:
    """``dice_by_size.{png,pdf}`` and ``dice_by_size.csv`` in ``out_dir``; [] without volumes."""
    table = dice_by_size(results)
    if table.empty:
        return []
    labels = [label for label in size_labels() if label in set(table["size_bin"])]
    counts = table.groupby("size_bin", observed=True)["scans"].max()
    colours = palette(list(dict.fromkeys(table["experiment"])))
    with figure_style():
        figure = new_figure(11.0, 4.4)
        dice_axes, ratio_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        for name, rows in table.groupby("experiment", sort=False):
            positions = [labels.index(label) for label in rows["size_bin"]]
            style = {"color": colours[name], "marker": "o", "label": rows["method"].iloc[0]}
            dice_axes.plot(positions, 100.0 * rows["dice"], **style)
            ratio_axes.plot(positions, rows["volume_ratio_median"].clip(lower=1e-3), **style)
        ticks = [f"{label}\n({counts[label]} scans)" for label in labels]
        for axes in (dice_axes, ratio_axes):
            axes.set_xticks(range(len(labels)), ticks, fontsize=8)
            axes.set_xlabel("reference nodule size (equivalent-sphere diameter)")
        dice_axes.set(ylabel="mean Dice (%)", ylim=(0, 100), title="Dice by nodule size")
        ratio_axes.set_yscale("log")
        ratio_axes.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
        ratio_axes.set(ylabel="median predicted / reference volume", title="Volume agreement by nodule size")
        dice_axes.legend(loc="best", frameon=True)
        written = save_figure(figure, out_dir, "dice_by_size")
    csv_path = Path(out_dir) / "dice_by_size.csv"
    table.to_csv(csv_path, index=False)
    return [*written, csv_path]
