"""What every rendered table shares: missing cells, significance stars, Markdown and LaTeX escaping.

The tables themselves render in :mod:`mstnet.reporting.paper_formats` (results tables) and
:mod:`mstnet.reporting.ablation_table` (the ablation table).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


MISSING = "-"


def stars(p_value: float) -> str:
    """``"***"`` for p < 0.001, ``"**"`` for p < 0.01, ``"*"`` for p < 0.05, else ``""`` (also for NaN)."""
    if p_value is None or not np.isfinite(p_value):
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def markdown_stars(star: str) -> str:
    """Significance stars escaped, so they never merge with the ``**`` of bold text."""
    return star.replace("*", "\\*")


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "—": "---", "−": "$-$", "×": r"$\times$",
                  "Δ": r"$\Delta$", "≈": r"$\approx$", "µ": r"$\mu$", "μ": r"$\mu$", "→": r"$\rightarrow$",
                  "<": "$<$", ">": "$>$", "|": "$|$", "’": "'", "‘": "`", "“": "``", "”": "''"}
LATEX_PAIRS = {">=": r"$\geq$", "<=": r"$\leq$", "+/-": r"$\pm$"}
LATEX_WIDTH_GUARD = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
"""Opens a box that keeps a tabular at its natural size, shrunk only if it is wider than the text
(graphicx's ``\width`` is the box's natural width); close it with ``}``."""
LATEX_PREAMBLE = r"% requires \usepackage{booktabs,graphicx}"


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped: ±, ≥ (or ``>=``), ≤, <, > as math, straight
    quotes as LaTeX quotes (``"a"`` -> ````a''``, ``'a'`` -> ```a'``; an apostrophe stays ``'``)."""
    text = str(text)
    out = []
    i = 0
    while i < len(text):
        pair = text[i:i + 3] if text[i:i + 3] in LATEX_PAIRS else text[i:i + 2]
        if pair in LATEX_PAIRS:
            out.append(LATEX_PAIRS[pair])
            i += len(pair)
            continue
        ch = text[i]
        opening = i == 0 or text[i - 1].isspace() or text[i - 1] in "([{/"
        if ch == '"':
            out.append("``" if opening else "''")
        elif ch == "'":
            out.append("`" if opening else "'")
        else:
            out.append(LATEX_SPECIALS.get(ch, ch))
        i += 1
    return "".join(out)


def latex_float(caption: str, column_spec: str, header: str, body: Sequence[str], footer: str) -> list[str]:
    """The lines of one booktabs ``table`` float: ``caption`` (LaTeX already), a tabular of ``column_spec`` shrunk
    only when wider than the text (:data:`LATEX_WIDTH_GUARD`) holding ``header`` and the ``body`` rows, and
    ``footer`` under it."""
    return [r"\begin{table}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{3pt}", rf"\caption{{{caption}}}",
            LATEX_WIDTH_GUARD, rf"\begin{{tabular}}{{{column_spec}}}", r"\toprule", header, r"\midrule", *body,
            r"\bottomrule", r"\end{tabular}}", footer, r"\end{table}"]


def latex_notes(notes: Sequence[str]) -> str:
    """The notes of a table as one tiny paragraph, for :func:`latex_float`'s ``footer``."""
    return r"\par\smallskip\parbox{\linewidth}{\tiny " + " ".join(latex_escape(note) for note in notes) + "}"


def latex_stack(first: str, *lines: str) -> str:
    """A cell of several centred lines (a nested tabular, top-aligned with the row's first line); the lines
    after the first in tiny type."""
    rest = [line for line in lines if line]
    if not rest:
        return first
    return (r"\begin{tabular}[t]{@{}c@{}}" + first + "".join(r"\\{\tiny " + line + "}" for line in rest)
            + r"\end{tabular}")
