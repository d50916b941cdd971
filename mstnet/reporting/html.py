"""``index.html`` of a report: inline tables, figures as ``<img>``, relative links, no external resources.

Every link and image source is a path relative to the report folder, and only files that
exist are linked (:func:`relative_link` refuses the others), so the folder can be moved,
zipped or opened from disk.

Nothing is wider than the page: every table sits in its own ``overflow-x: auto`` box
(:func:`scroll_tables`; a standalone table page gets the same from the stylesheet), so a
table wider than the window scrolls inside that box; long cell texts wrap; long words in
notes, captions and paths break. ``tests/test_report_render.py`` checks this in headless Chromium.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d2530;
       margin: 0 auto; max-width: 1320px; padding: 1.2rem 2rem 3rem; line-height: 1.45; background: #fff;
       overflow-wrap: anywhere; }
.table-scroll { overflow-x: auto; max-width: 100%; margin: 0.6rem 0; }
.table-scroll > table.results { margin: 0; }
body > table.results { display: block; overflow-x: auto; max-width: 100%; }
table.results { overflow-wrap: normal; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #dde3ea; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #566270; font-size: 0.92rem; margin: 0.2rem 0; }
nav { margin: 1rem 0; font-size: 0.95rem; }
nav a { margin-right: 1rem; }
a { color: #1f5f99; text-decoration: none; }
a:hover { text-decoration: underline; }
table.results { border-collapse: collapse; font-size: 0.86rem; margin: 0.6rem 0; }
table.results caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
table.results th, table.results td { padding: 0.3rem 0.55rem; text-align: center; border-bottom: 1px solid #e4e8ee; }
table.results thead th { border-top: 2px solid #1d2530; border-bottom: 1.5px solid #1d2530; }
table.results tbody tr:last-child th, table.results tbody tr:last-child td { border-bottom: 2px solid #1d2530; }
table.results th[scope=row] { text-align: left; font-weight: 500; white-space: nowrap; }
tr.published, tr.oracle { color: #566270; font-style: italic; background: #f7f9fb; }
table.results td { white-space: nowrap; }
table.results td.text { white-space: normal; min-width: 14rem; max-width: 36rem; text-align: left; }
.ci { color: #6b7785; font-size: 0.78rem; }
.stars { color: #b03a2e; font-weight: 700; }
ul.notes { font-size: 0.8rem; color: #44505e; max-width: 1200px; padding-left: 1.2rem; }
.downloads { font-size: 0.85rem; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 640px; width: 100%; height: auto; border: 1px solid #e4e8ee; box-sizing: border-box; }
figure.wide img { max-width: 1200px; }
figcaption { font-size: 0.82rem; color: #44505e; }
"""


TABLE = re.compile(r"<table\b.*?</table>", re.DOTALL)
LONG_CELL = 40
"""Cells with more characters than this (descriptions) wrap instead of widening their table."""


def scroll_tables(body: str) -> str:
    """Every ``<table>`` of ``body`` inside its own horizontally scrolling box (keyboard-focusable)."""
    return TABLE.sub(lambda match: f"<div class=\"table-scroll\" role=\"region\" tabindex=\"0\">{match.group(0)}</div>",
                     body)


def _cell(text: str) -> str:
    return f"<td class=\"text\">{html.escape(text)}</td>" if len(text) > LONG_CELL else f"<td>{html.escape(text)}</td>"


def relative_link(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in URL form; raises ``FileNotFoundError`` when ``path`` does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a report link must point to an existing file")
    return html.escape(path.resolve().relative_to(Path(root).resolve()).as_posix(), quote=True)


@dataclass
class Section:
    """One section of the page.

    Attributes:
        title: heading; its anchor is derived from it.
        body: HTML shown under the heading (tables, notes).
        downloads: files linked under the body (e.g. the table as CSV, Markdown, LaTeX).
        figures: PNG files shown as images, each linked to its PDF twin when that exists.
        wide_figures: show the figures at full width (galleries, multi-panel figures).
    """

    title: str
    body: str = ""
    downloads: Sequence[Path] = field(default_factory=tuple)
    figures: Sequence[Path] = field(default_factory=tuple)
    wide_figures: bool = False

    @property
    def anchor(self) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in self.title.lower()).strip("-")


def _figure_html(png: Path, root: Path, wide: bool) -> str:
    pdf = png.with_suffix(".pdf")
    source = relative_link(png, root)
    image = f"<img src=\"{source}\" alt=\"{html.escape(png.stem)}\">"
    links = [f"<a href=\"{source}\">PNG</a>"]
    if pdf.is_file():
        links.append(f"<a href=\"{relative_link(pdf, root)}\">PDF</a>")
    opening = "<figure class=\"wide\">" if wide else "<figure>"
    return (f"{opening}<a href=\"{source}\">{image}</a>"
            f"<figcaption>{html.escape(png.stem)} &middot; {' &middot; '.join(links)}</figcaption></figure>")


def render_index(title: str, meta_lines: Sequence[str], sections: Sequence[Section], root: Path) -> str:
    """The whole page. ``root`` is the report folder every link is made relative to."""
    navigation = "".join(f"<a href=\"#{s.anchor}\">{html.escape(s.title)}</a>" for s in sections)
    parts = []
    for section in sections:
        block = [f"<section id=\"{section.anchor}\"><h2>{html.escape(section.title)}</h2>", scroll_tables(section.body)]
        if section.downloads:
            links = " &middot; ".join(f"<a href=\"{relative_link(p, root)}\">{html.escape(Path(p).name)}</a>"
                                      for p in section.downloads)
            block.append(f"<p class=\"downloads\">Files: {links}</p>")
        if section.figures:
            block.append("<div class=\"figures\">" + "".join(_figure_html(Path(p), root, section.wide_figures)
                                                             for p in section.figures) + "</div>")
        block.append("</section>")
        parts.append("".join(block))
    meta = "".join(f"<p class=\"meta\">{html.escape(line)}</p>" for line in meta_lines)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1>{meta}<nav>{navigation}</nav></header>"
            f"<main>{''.join(parts)}</main></body></html>\n")


def key_value_table(caption: str, rows: Sequence[tuple[str, str]], headers: tuple[str, str]) -> str:
    """A small two-column HTML table (class ``results``)."""
    body = "".join(f"<tr><th scope=\"row\">{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in rows)
    return (f"<table class=\"results\"><caption>{html.escape(caption)}</caption><thead><tr>"
            f"<th>{html.escape(headers[0])}</th><th>{html.escape(headers[1])}</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def frame_table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table (class ``results``) from already formatted cell texts; the first column is the row header."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr><th scope=\"row\">" + html.escape(row[0]) + "</th>"
                   + "".join(_cell(cell) for cell in row[1:]) + "</tr>" for row in rows)
    return (f"<table class=\"results\"><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")
