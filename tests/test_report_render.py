"""Report output where it is read: index.html in a browser, the LaTeX tables in an article, the gallery.

- index.html is laid out by headless Chromium (Debian's ``chromium``; skipped with the reason
  when it is absent) at a desktop and a narrow window: a script injected into a copy of the
  page measures every element and writes what it found into the DOM, which ``--dump-dom``
  prints. No element may reach past the page body (tables scroll inside their own box).
- paper_table.tex, reference_table.tex and ablation_table.tex are compiled by ``pdflatex``
  inside a default ``\\documentclass{article}`` (skipped when pdflatex is absent): no error and
  no "Overfull \\hbox" (nothing wider than the text width).
- The .tex carries the intervals its notes describe, LaTeX quotes and math, no ``>=`` or ``"``.
- gallery.npz names each scan's real time point and Dice, and the gallery figure shows them.

``scripts/ci-system-packages`` installs chromium and TeX where CI runs.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import DEFAULT_EXPERIMENTS, FakeExperiment, write_fake_runs  # noqa: E402

from mstnet.reporting import build_report  # noqa: E402
from mstnet.reporting.formats import latex_escape  # noqa: E402

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (found := shutil.which(name))), None)
PDFLATEX = shutil.which("pdflatex")
LONG_NAMED = FakeExperiment("smp2d-deeplabv3plus", ("segmentation", "classification"), group="reference",
                            footnote="segmentation-models-pytorch DeepLabV3+ with a ResNet-34 encoder, slice by "
                                     "slice; \"2.5D\" context >= 3 slices.")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of the fake results with the published rows (the widest Table 1) and a long-named reference."""
    root = tmp_path_factory.mktemp("render")
    runs = write_fake_runs(root / "runs", experiments=(*DEFAULT_EXPERIMENTS, LONG_NAMED))
    out = root / "report"
    build_report([runs], out, with_published=True, n_resamples=40, seed=0)
    return out


# ------------------------------------------------------------------------------------------------ HTML

MEASURE = """
<script>
(function () {
  var body = document.body, style = getComputedStyle(body), box = body.getBoundingClientRect();
  var left = box.left + parseFloat(style.paddingLeft), right = box.right - parseFloat(style.paddingRight);
  function scrolledAway(element) {  /* inside a box that scrolls or clips horizontally */
    for (var p = element.parentElement; p && p !== body; p = p.parentElement) {
      var overflow = getComputedStyle(p).overflowX;
      if (overflow === "auto" || overflow === "scroll" || overflow === "hidden") return true;
    }
    return false;
  }
  var wide = [], all = body.querySelectorAll("*");
  for (var i = 0; i < all.length; i++) {
    var element = all[i];
    if (element.tagName === "SCRIPT" || scrolledAway(element)) continue;
    var r = element.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > right + 1 || r.left < left - 1) {
      wide.push({tag: element.tagName.toLowerCase(), cls: String(element.className || ""), left: Math.round(r.left),
                 right: Math.round(r.right), text: (element.textContent || "").slice(0, 80)});
    }
  }
  var boxes = document.querySelectorAll(".table-scroll"), scrolling = 0;
  for (var j = 0; j < boxes.length; j++) if (boxes[j].scrollWidth > boxes[j].clientWidth) scrolling++;
  var out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({body: [Math.round(left), Math.round(right)],
                                    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
                                    tables: document.querySelectorAll("table").length, boxes: boxes.length,
                                    scrolling: scrolling, wide: wide});
  body.appendChild(out);
})();
</script>
"""


def _layout(page: Path, width: int) -> dict:
    """Lay ``page`` out in headless Chromium at ``width`` pixels and return what the injected script measured."""
    probe = page.with_name(f".layout-{page.stem}.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                               f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                               probe.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, f"chromium printed no measurement (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _outermost(wide: list[dict]) -> list[dict]:
    """The offending elements without their (equally offending) descendants, for a readable message."""
    seen, shown = set(), []
    for entry in wide:
        key = (entry["text"][:40], entry["right"])
        if key not in seen:
            seen.add(key)
            shown.append(entry)
    return shown[:8]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/ci-system-packages installs it)")
@pytest.mark.parametrize("width", [1280, 800])
def test_no_element_of_index_html_is_wider_than_the_page_body(report, width):
    layout = _layout(report / "index.html", width)
    assert layout["tables"] >= 4 and layout["boxes"] == layout["tables"], layout
    assert not layout["wide"], f"at {width} px, past the body {layout['body']}: {_outermost(layout['wide'])}"
    scroll_width, client_width = layout["page"]
    assert scroll_width <= client_width, f"the page scrolls sideways at {width} px: {layout['page']}"
    if width == 800:
        assert layout["scrolling"] >= 1  # Table 1 is wider than that: it scrolls in its box, not the page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/ci-system-packages installs it)")
def test_a_standalone_table_page_fits_its_window(report):
    layout = _layout(report / "paper_table.html", 800)
    assert not layout["wide"], _outermost(layout["wide"])
    assert layout["page"][0] <= layout["page"][1]


def test_every_table_of_index_html_sits_in_its_own_scroll_box(report):
    page = (report / "index.html").read_text()
    tables = re.findall(r"<table\b", page)
    boxed = re.findall(r'<div class="table-scroll"[^>]*><table\b', page)
    assert len(tables) >= 4 and len(boxed) == len(tables)
    assert "overflow-x: auto" in page


# ------------------------------------------------------------------------------------------------ LaTeX


def test_latex_escape_writes_latex_quotes_and_math():
    assert latex_escape('a "quoted" word') == "a ``quoted'' word"
    assert latex_escape("rows 'published (NLST)': the fold's") == "rows `published (NLST)': the fold's"
    assert latex_escape(">= 2 scans, p < 0.05, 5 ± 1, 50%") == r"$\geq$ 2 scans, p $<$ 0.05, 5 $\pm$ 1, 50\%"
    assert latex_escape("≥ ≤ Δ –") == r"$\geq$ $\leq$ $\Delta$ --"


def test_paper_table_tex_carries_its_intervals_quotes_and_math(report):
    tex = (report / "paper_table.tex").read_text()
    notes = tex[tex.rindex(r"\parbox{\linewidth}"):]
    assert "95\\% percentile bootstrap CI" in notes and "mean $\\pm$ std over folds" in notes
    frame = pd.read_csv(report / "paper_table.csv")
    measured = frame[frame["source"] == "measured"]
    assert len(measured) == 3
    n_intervals = 0
    for _, row in measured.iterrows():
        for key, scale in (("dice", 100.0), ("auc", 100.0), ("hd95", 1.0)):
            low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
            if isinstance(low, float) and np.isfinite(low) and np.isfinite(high):
                assert f"[{scale * low:.1f}, {scale * high:.1f}]" in tex, (row["experiment"], key)
                n_intervals += 1
    assert n_intervals >= 5
    assert '"' not in tex and ">=" not in tex and "<=" not in tex
    assert r"$\geq$" in tex and r"$\pm$" in tex and "`published (NLST)'" in tex
    assert re.search(r"(?<![$\\])[<>]", tex.replace(r"\ifdim\width>\linewidth", "")) is None  # < and > only as math
    assert tex.count(r"\begin{table}") == 2  # segmentation, then malignancy prediction
    reference = (report / "reference_table.tex").read_text()
    assert "``2.5D''" in reference and r"$\geq$ 3 slices" in reference and '"' not in reference
    assert tex.count(r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%") == 2


def _compile(tex_file: Path, folder: Path) -> tuple[int, str]:
    document = folder / "document.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n"
                        "\\begin{document}\n\\input{" + tex_file.name + "}\n\\end{document}\n")
    shutil.copy(tex_file, folder / tex_file.name)
    done = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", document.name],
                          cwd=folder, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    log = (folder / "document.log").read_text(errors="replace") if (folder / "document.log").exists() else done.stdout
    return done.returncode, log


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed (scripts/ci-system-packages installs TeX)")
@pytest.mark.parametrize("stem", ["paper_table", "reference_table", "ablation_table"])
def test_the_latex_table_compiles_within_an_articles_text_width(report, tmp_path, stem):
    code, log = _compile(report / f"{stem}.tex", tmp_path)
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert code == 0 and not errors, errors or log[-3000:]
    overfull = [line for line in log.splitlines() if "Overfull \\hbox" in line]
    assert not overfull, overfull
    assert (tmp_path / "document.pdf").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ gallery


def _case(patient_id: str, n_timepoints: int = 2, size: int = 12):
    image = np.random.default_rng(0).normal(size=(n_timepoints, 4, size, size)).astype(np.float32)
    mask = np.zeros((n_timepoints, 4, size, size), bool)
    mask[:, 2, 4:8, 4:8] = True
    pred = np.roll(mask, 1, axis=-1)
    return patient_id, image, mask, pred


def test_the_gallery_names_the_real_time_points_and_each_scans_dice(tmp_path, monkeypatch):
    from mstnet.experiments.evaluation_fold import write_gallery
    from mstnet.reporting import figures

    # the model saw the latest two of three scans: T1 and T2 (and, for P2, T2 and T3)
    scans = [{"patient_id": "P1", "timepoint": "T1", "fold": 0, "dice": 0.50},
             {"patient_id": "P1", "timepoint": "T2", "fold": 0, "dice": 0.70},
             {"patient_id": "P2", "timepoint": "T2", "fold": 0, "dice": 0.80},
             {"patient_id": "P2", "timepoint": "T3", "fold": 0, "dice": 0.90}]
    path = tmp_path / "gallery.npz"
    write_gallery(path, [_case("P1"), _case("P2")], scans)
    gallery = figures.read_gallery(path)
    assert gallery["timepoints"].tolist() == [["T1", "T2"], ["T2", "T3"]]
    assert gallery["scan_dice"].tolist() == [[0.5, 0.7], [0.8, 0.9]]
    assert gallery["dice"].tolist() == pytest.approx([0.6, 0.85])

    titles: list[str] = []

    def capture(figure, out_dir, stem):
        titles.extend(axes.get_title() for axes in figure.axes)
        return [Path(out_dir) / f"{stem}.png"]

    monkeypatch.setattr(figures, "save_figure", capture)

    class Results:  # the two attributes gallery_figure reads
        galleries = {("unetr", 0): path}
        experiments = pd.DataFrame({"table_row": ["UNETR"]}, index=["unetr"])

    monkeypatch.setattr(figures, "method_name", lambda results, name: "UNETR")
    figures.gallery_figure(Results(), "unetr", tmp_path)
    assert "T1, Dice 0.50" in titles and "T2, Dice 0.70" in titles and "T3, Dice 0.90" in titles
    assert not any(title.startswith("T0") for title in titles)


def test_an_old_gallery_without_names_is_not_given_made_up_ones(tmp_path):
    from mstnet.reporting.figures import read_gallery

    path = tmp_path / "gallery.npz"
    np.savez(path, image=np.zeros((1, 2, 4, 4), np.float32), mask=np.zeros((1, 2, 4, 4), bool),
             pred=np.zeros((1, 2, 4, 4), bool), patient_id=np.array(["P1"]), dice=np.array([0.5]),
             timepoints=np.array(2))
    gallery = read_gallery(path)
    assert gallery["timepoints"].tolist() == [["scan 1", "scan 2"]]
    assert np.isnan(gallery["scan_dice"]).all()
