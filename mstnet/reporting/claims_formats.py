"""The claims table rendered (Markdown, LaTeX, HTML, CSV) and its figure (each experiment's AUC against its ceiling)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mstnet.reporting.claims_table import ClaimsTable
from mstnet.reporting.formats import LATEX_PREAMBLE, MISSING, latex_escape, latex_float, latex_notes
from mstnet.reporting.plotting import figure_style, new_figure, palette, save_figure

CLAIM_HEADER: tuple[str, ...] = ("Claim", "Comparison", "Metric", "n", "Ceiling gap (pp)", "Measured gap (pp)",
                                 "p", "Verdict", "Ceiling verdict", "Agrees", "Note")
METRIC_LABELS = {"auc": "AUC", "dice": "Dice"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""One marker per experiment, so points that nearly coincide stay apart."""


def _gap_text(row: pd.Series, prefix: str) -> str:
    gap = row[f"{prefix}_gap"]
    if not np.isfinite(gap):
        return MISSING
    low, high = row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"]
    interval = f" [{100 * low:+.1f}, {100 * high:+.1f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{100 * gap:+.1f}{interval}"


def _p_text(p_value: float) -> str:
    if not np.isfinite(p_value):
        return MISSING
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def claim_cells(row: pd.Series) -> list[str]:
    """One row of :data:`CLAIM_HEADER` as text."""
    ceiling = _gap_text(row, "ceiling")
    if row["metric"] == "auc" and np.isfinite(row["ceiling_gap"]):
        ceiling += f" ({row['better_information']} vs {row['worse_information']})"
    return [row["claim"], row["comparison"], METRIC_LABELS.get(row["metric"], row["metric"]),
            str(int(row["n"])), ceiling, _gap_text(row, "measured"), _p_text(row["measured_p"]), row["verdict"],
            row["ceiling_verdict"], row["agreement"], row["note"] or ""]


CLAIMS_TITLE = "Claims of the paper: does each hold where its signal is known to be present?"


def claims_markdown(table: ClaimsTable) -> str:
    """The claims table as GitHub Markdown, notes below."""
    lines = [f"**{CLAIMS_TITLE}**", "", "| " + " | ".join(CLAIM_HEADER) + " |",
             "| " + " | ".join("---" for _ in CLAIM_HEADER) + " |"]
    for _, row in table.frame.iterrows():
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in claim_cells(row)) + " |")
    lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


def claims_latex(table: ClaimsTable) -> str:
    """The claims table as a booktabs LaTeX ``table`` (notes under it)."""
    header = " & ".join(latex_escape(name) for name in CLAIM_HEADER) + r" \\"
    body = [" & ".join(latex_escape(cell) for cell in claim_cells(row)) + r" \\" for _, row in table.frame.iterrows()]
    return "\n".join([LATEX_PREAMBLE, *latex_float(latex_escape(CLAIMS_TITLE), "lllrllllllp{5cm}", header, body,
                                                   latex_notes(table.notes)), ""])


def claims_html(table: ClaimsTable) -> str:
    """The claims table as HTML (class ``results``); disagreeing rows are marked."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in CLAIM_HEADER)
    body = []
    for _, row in table.frame.iterrows():
        marker = " class=\"disagree\"" if row["agreement"] == "no" else ""
        body.append(f"<tr{marker}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in claim_cells(row)) + "</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (f"<table class=\"results\"><caption>{html.escape(CLAIMS_TITLE)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><ul class=\"notes\">{notes}</ul>")


def claims_csv(table: ClaimsTable) -> str:
    """The claims frame with raw numbers (fractions) and p-values."""
    return table.frame.to_csv(index=False)


def ranking_csv(table: ClaimsTable) -> str:
    """The ranking check: each experiment's measured AUC and ceiling, Kendall's tau on the last line's columns."""
    frame = table.ranking.assign(kendall_tau=table.kendall_tau, kendall_p=table.kendall_p)
    return frame.to_csv(index=False)


def claims_figure(table: ClaimsTable, out_dir: str | Path) -> list[Path]:
    """Each claim experiment's measured AUC against the ceiling of its information set (PNG and PDF)."""
    ranks = table.ranking.dropna()
    if ranks.empty:
        return []
    with figure_style():
        figure = new_figure(5.6, 5.0)
        axis = figure.add_subplot()
        low = min(0.5, float(ranks[["auc", "ceiling"]].min().min()) - 0.02)
        axis.plot([low, 1.0], [low, 1.0], color="0.6", linestyle="--", linewidth=1, label="measured = ceiling")
        colours = palette(list(ranks["experiment"]))
        for index, row in enumerate(ranks.itertuples()):
            axis.scatter(row.ceiling, row.auc, color=colours[row.experiment], marker=MARKERS[index % len(MARKERS)],
                         s=60, zorder=3, label=f"{row.experiment} ({row.information})")
        tau = "n/a" if math.isnan(table.kendall_tau) else f"{table.kendall_tau:.2f}"
        axis.set(xlim=(low, 1.0), ylim=(low, 1.0), xlabel="ceiling: oracle AUC of the inputs it sees",
                 ylabel="measured AUC (pooled out-of-fold)", title=f"Measured AUC vs ceiling (Kendall's tau {tau})")
        axis.legend(loc="upper left", fontsize=8)
        return save_figure(figure, Path(out_dir), "claims_auc_vs_ceiling")
