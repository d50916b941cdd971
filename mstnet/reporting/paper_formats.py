"""The results tables (:class:`~mstnet.reporting.paper_table.ResultsTable`) rendered: Markdown, LaTeX
(booktabs), HTML and CSV. CSV keeps raw numbers (fractions in [0, 1], distances in mm); the others
show fractions as percentages."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mstnet.reporting.formats import (LATEX_PREAMBLE, MISSING, latex_escape, latex_float, latex_stack,
                                      markdown_stars, stars)
from mstnet.reporting.paper_table import PAIRED_TESTS, ResultsTable
from mstnet.reporting.published import PUBLISHED_LABEL
from mstnet.reporting.table_data import COLUMNS, MetricColumn


def _cell_parts(row: pd.Series, column: MetricColumn) -> tuple[str, str, str] | None:
    """(pooled value, "[low, high]" of its bootstrap CI, "mean ± std" over folds [+ "(k of n folds)"] [+ "; ± sd
    over n seeds"]); None when the experiment has no value at all for the column (it does not do that task)."""
    key, scale = column.key, column.scale()
    pooled, mean, n_defined = row[f"{key}_pooled"], row[f"{key}_mean"], int(row[f"{key}_folds"])
    if not np.isfinite(pooled) and not np.isfinite(mean):
        if n_defined == 0 and int(row["n_folds"]) > 0 and _does_task(row, column):
            return MISSING, "", f"undefined in all {int(row['n_folds'])} folds"
        return None
    main = f"{scale * pooled:.2f}" if np.isfinite(pooled) else MISSING
    low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    ci = f"[{scale * low:.1f}, {scale * high:.1f}]" if np.isfinite(low) and np.isfinite(high) else ""
    std = row[f"{key}_std"]
    folds = f"{scale * mean:.2f} ± {scale * std:.2f}" if np.isfinite(std) else f"{scale * mean:.2f}"
    if n_defined < int(row["n_folds"]):
        folds += f" ({n_defined} of {int(row['n_folds'])} folds)"
    spread = row.get(f"{key}_seed_sd", math.nan)
    if np.isfinite(spread):
        folds += f"; ± {scale * spread:.2f} sd over {int(row['n_seeds'])} seeds"
    return main, ci, folds


def _does_task(row: pd.Series, column: MetricColumn) -> bool:
    """Whether the row has values for some metric of ``column``'s task (its metric is then undefined, not absent)."""
    return any(np.isfinite(row[f"{c.key}_pooled"]) or np.isfinite(row[f"{c.key}_mean"]) for c in COLUMNS
               if c.task == column.task)


def _row_stars(row: pd.Series, column: MetricColumn) -> str:
    test = PAIRED_TESTS.get(column.key)
    return stars(row[test]) if test and test in row.index else ""


def _published_value(value: float | None) -> str:
    return MISSING if value is None or not np.isfinite(value) else f"{value:.2f}"


@dataclass(frozen=True)
class _DisplayRow:
    """A rendered row: method name, footnote mark, kind and per column (main, ci, folds, stars, bold).

    ``main`` is the pooled value (the one ``bold`` marks), ``ci`` its bootstrap interval and
    ``folds`` the mean ± std over folds; published and oracle rows have only ``main``.
    """

    method: str
    mark: str
    kind: str  # "measured", "published", "oracle"
    cells: tuple[tuple[str, str, str, str, bool], ...] = field(default_factory=tuple)


def _display_rows(table: ResultsTable) -> list[_DisplayRow]:
    measured: dict[str, _DisplayRow] = {}
    order: list[str] = []
    for _, row in table.frame.iterrows():
        cells = []
        for column in COLUMNS:
            parts = _cell_parts(row, column)
            if parts is None:
                cells.append((MISSING, "", "", "", False))
            else:
                if column.key == "auc" and np.isfinite(row.get("ceiling_auc", math.nan)):
                    parts = (*parts[:2], f"{parts[2]}; ceiling {100 * row['ceiling_auc']:.1f}")
                cells.append((*parts, _row_stars(row, column), bool(row[f"{column.key}_best"])))
        measured[row["method"]] = _DisplayRow(row["method"], row["mark"], "measured", tuple(cells))
        order.append(row["method"])
    rows: list[_DisplayRow] = []
    if table.published is not None:
        published_names = list(table.published)
        for name in [*published_names, *[m for m in order if m not in published_names]]:
            if name in measured:
                rows.append(measured[name])
            if name in table.published:
                values = table.published[name]
                rows.append(_DisplayRow(f"{name}, {PUBLISHED_LABEL}", "", "published", tuple(
                    (_published_value(values.get(c.key)), "", "", "", False) for c in COLUMNS)))
    else:
        rows = [measured[name] for name in order]
    if table.oracle_auc is not None:
        rows.append(_DisplayRow("Oracle ceiling (known risk)", "", "oracle", tuple(
            (f"{100 * table.oracle_auc:.2f}", "", "", "", False) if c.key == "auc" else (MISSING, "", "", "", False)
            for c in COLUMNS)))
    return rows


def _header_label(column: MetricColumn) -> str:
    return f"{column.label} ({column.unit})"


def results_table_markdown(table: ResultsTable) -> str:
    """GitHub Markdown: pooled value (bold when best), escaped stars (``\\*``), its CI in brackets, then
    "; mean ± std" over folds; notes below."""
    lines = [f"**{table.title}**", "", "| Method | " + " | ".join(_header_label(c) for c in COLUMNS) + " |",
             "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in _display_rows(table):
        name = f"{row.method} [{row.mark}]" if row.mark else row.method
        if row.kind != "measured":
            name = f"*{name}*"
        cells = []
        for main, ci, folds, star, bold in row.cells:
            text = (f"**{main}**" if bold else main) + markdown_stars(star)
            text = f"{text} {ci}" if ci else text
            cells.append(f"{text}; {folds}" if folds else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


LATEX_TASK_TITLES = {"segmentation": "segmentation", "classification": "malignancy prediction"}
LATEX_NAME_CHARACTERS = 16
"""Method names longer than this are set on two lines, at ", " or before a bracket ("MST-Net," / "published (NLST)")."""


def _latex_method(name: str, mark: str, italic: bool) -> str:
    """The method cell: the escaped name with its footnote mark, on two left-aligned lines when long."""
    lines = [name]
    if len(name) > LATEX_NAME_CHARACTERS:
        if ", " in name:
            head, tail = name.split(", ", 1)
            lines = [head + ",", tail]
        elif " (" in name:
            head, tail = name.rsplit(" (", 1)
            lines = [head, "(" + tail]
    lines = [latex_escape(line) for line in lines]
    lines[0] += f"$^{{{mark}}}$" if mark else ""
    text = lines[0] if len(lines) == 1 else r"\begin{tabular}[t]{@{}l@{}}" + r"\\".join(lines) + r"\end{tabular}"
    return rf"{{\itshape {text}}}" if italic else text


def results_table_latex(table: ResultsTable) -> str:
    """Booktabs tables that fit an article's text width: one ``table`` per task (segmentation columns, then
    classification columns), each row only where it has values. A cell is the pooled value (best bold, stars
    as superscripts), under it in tiny type its 95% CI followed by a semicolon, then the mean ± std over folds,
    as the notes (under the last table) describe; a table still wider than the text is shrunk to fit."""
    rows = _display_rows(table)
    tasks = [task for task in ("segmentation", "classification")
             if any(row.kind != "oracle" and any(cell[0] != MISSING or cell[2]
                                                 for cell, column in zip(row.cells, COLUMNS) if column.task == task)
                    for row in rows)]
    if not tasks:
        tasks = ["segmentation", "classification"]
    notes = " ".join(latex_escape(note) for note in table.notes)
    blocks = [LATEX_PREAMBLE]
    for index, task in enumerate(tasks):
        indices = [i for i, column in enumerate(COLUMNS) if column.task == task]
        header = "Method & " + " & ".join(latex_escape(_header_label(COLUMNS[i])) for i in indices) + r" \\"
        body = []
        previous_kind = "measured"
        for row in rows:
            cells = [row.cells[i] for i in indices]
            if all(main == MISSING and not folds for main, _, folds, _, _ in cells):
                continue
            if row.kind == "oracle" and previous_kind != "oracle":
                body.append(r"\midrule")
            previous_kind = row.kind
            name = _latex_method(row.method, row.mark, italic=row.kind != "measured")
            texts = []
            for main, ci, folds, star, bold in cells:
                text = r"\textbf{" + latex_escape(main) + "}" if bold else latex_escape(main)
                text += f"$^{{{star}}}$" if star else ""
                ci_line = latex_escape(ci) + (";" if ci and folds else "")
                texts.append(latex_stack(text, ci_line, *(latex_escape(part) for part in folds.split("; "))))
            body.append(name + " & " + " & ".join(texts) + r" \\")
        last = index == len(tasks) - 1
        caption = latex_escape(table.title) + (f": {LATEX_TASK_TITLES[task]}" if len(tasks) > 1 else "")
        footer = (r"\par\smallskip\parbox{\linewidth}{\tiny " + notes + "}" if last else
                  r"\par\smallskip\parbox{\linewidth}{\tiny Cells, statistics and footnotes: see the notes under the "
                  + LATEX_TASK_TITLES[tasks[-1]] + " table.}")
        blocks += latex_float(caption, f"l{'c' * len(indices)}", header, body, footer)
    return "\n".join(blocks) + "\n"


def results_table_html(table: ResultsTable) -> str:
    """An HTML ``<table>`` (class ``results``): pooled value, its CI on a second line, the mean ± std over folds
    on a third; the notes below."""
    head = "".join(f"<th>{html.escape(_header_label(c))}</th>" for c in COLUMNS)
    body = []
    for row in _display_rows(table):
        name = html.escape(row.method) + (f"<sup>{row.mark}</sup>" if row.mark else "")
        cells = []
        for main, ci, folds, star, bold in row.cells:
            text = html.escape(main)
            text = f"<strong>{text}</strong>" if bold else text
            text += f"<sup class=\"stars\">{star}</sup>" if star else ""
            text += f"<br><span class=\"ci\">{html.escape(ci)}</span>" if ci else ""
            text += f"<br><span class=\"ci folds\">{html.escape(folds)}</span>" if folds else ""
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr class=\"{row.kind}\"><th scope=\"row\">{name}</th>{''.join(cells)}</tr>")
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in table.notes)
    return (f"<table class=\"results\"><caption>{html.escape(table.title)}</caption>"
            f"<thead><tr><th>Method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ul class=\"notes\">{notes}</ul>")


def results_table_csv(table: ResultsTable) -> str:
    """The measured rows with raw numbers (fractions, mm): pooled values, CIs, fold means, p-values, best flags;
    plus published/oracle rows (their values in ``<key>_mean``, as published). When some row has several
    training seeds, also ``n_seeds`` and ``<key>_seed_sd`` (``<key>_pooled`` is then the mean over seeds)."""
    frame = table.frame.copy()
    if "n_seeds" in frame and (frame["n_seeds"] == 1).all():  # one seed everywhere: the columns of a run without --seeds
        frame = frame.drop(columns=["n_seeds", *[f"{c.key}_seed_sd" for c in COLUMNS]])
    frame.insert(0, "source", "measured")
    extra = []
    if table.published is not None:
        for name, values in table.published.items():
            record = {"source": PUBLISHED_LABEL, "method": name}
            for column in COLUMNS:
                value = values.get(column.key)
                record[f"{column.key}_mean"] = math.nan if value is None else value / column.scale()
            extra.append(record)
    if table.oracle_auc is not None:
        extra.append({"source": "oracle", "method": "Oracle ceiling (known risk)", "auc_pooled": table.oracle_auc,
                      "auc_mean": table.oracle_auc})
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    for count in ("n_folds", "n_patients", "n_scans", "n_seeds"):
        if count in frame:
            frame[count] = frame[count].astype("Int64")
    return frame.to_csv(index=False)
