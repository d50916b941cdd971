"""Build a whole report folder from one or several RUNS_DIRs: tables, figures and ``index.html``.

Files written into ``out_dir`` (only those the results allow):

- ``paper_table.{md,csv,tex,html}``: Table 1 rows (experiments with a ``table_row``);
- ``reference_table.{md,csv,tex,html}``: the other non-ablation experiments, with the reference;
- ``ablation_table.{md,csv,tex,html}``: ``group == "ablation"`` against the reference;
- ``claims_table.{md,csv,tex,html}``, ``claims_ranking.csv`` and ``figures/claims_auc_vs_ceiling``: the
  paper's claims (:mod:`mstnet.reporting.claims_table`), where the results hold a claim's two experiments;
- ``performance.{md,csv,html}``: pytest-benchmark results found in the RUNS_DIRs or given;
- ``experiments.csv``: one row per experiment (group, tasks, folds, summed wall time);
- ``figures/*.png`` and ``figures/*.pdf`` (see :mod:`mstnet.reporting.figures`), among them
  ``training_curves`` and ``learning_curves`` (:mod:`mstnet.reporting.curves`);
- ``index.html`` linking all of them.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mstnet.atomic import write_text_atomic
from mstnet.reporting import figures as report_figures
from mstnet.reporting.ablation_table import (AblationTable, ablation_csv, ablation_html, ablation_latex,
                                             ablation_markdown, ablation_table)
from mstnet.reporting.claims_formats import (claims_csv, claims_figure, claims_html, claims_latex, claims_markdown,
                                             ranking_csv)
from mstnet.reporting.claims_table import claims_table
from mstnet.reporting.paper_formats import (results_table_csv, results_table_html, results_table_latex,
                                           results_table_markdown)
from mstnet.reporting.paper_table import ResultsTable, paper_table, reference_table
from mstnet.reporting.performance import performance_texts
from mstnet.reporting.html import STYLE, Section, frame_table, key_value_table, render_index
from mstnet.reporting.results import Results, is_benchmark_json
from mstnet.reporting.results_merge import load_many

log = logging.getLogger(__name__)

FIGURE_FOLDER = "figures"
WIDE_SECTIONS = {"Segmentation gallery", "Training curves", "Learning curves", "Ablations", "Per-fold Dice and HD95"}


def _write_table_files(out_dir: Path, stem: str, title: str, markdown: str, csv: str, latex: str,
                       body: str) -> list[Path]:
    """``<stem>.md``, ``.csv``, ``.tex`` and a standalone ``.html`` page of one table (``body``, titled ``title``)."""
    return [write_text_atomic(out_dir / f"{stem}.md", markdown),
            write_text_atomic(out_dir / f"{stem}.csv", csv),
            write_text_atomic(out_dir / f"{stem}.tex", latex),
            write_text_atomic(out_dir / f"{stem}.html", _standalone(title, body))]


def _write_results_table(table: ResultsTable, out_dir: Path, stem: str) -> tuple[str, list[Path]]:
    body = results_table_html(table)
    return body, _write_table_files(out_dir, stem, table.title, results_table_markdown(table), results_table_csv(table),
                                    results_table_latex(table), body)


def _standalone(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def experiments_frame(results: Results) -> pd.DataFrame:
    """One row per experiment: name, group, table_row, tasks, information, folds, wall_s, description."""
    rows = []
    for name, meta in results.experiments.iterrows():
        runs = results.runs[results.runs["experiment"] == name] if "experiment" in results.runs else pd.DataFrame()
        wall = float(runs["wall_s"].sum()) if "wall_s" in runs and len(runs) else np.nan
        rows.append({"experiment": name, "group": meta["group"], "table_row": meta["table_row"],
                     "tasks": "+".join(meta["tasks"]), "information": meta["information"],
                     "folds": int((results.fold_metrics["experiment"] == name).sum()), "wall_s": wall,
                     "description": meta["description"], "runs_dir": str(meta["runs_dir"])})
    return pd.DataFrame(rows)


def _meta_lines(results: Results) -> list[str]:
    lines = [f"Results: {', '.join(str(d) for d in results.runs_dirs)}"]
    for cohort in results.cohorts:
        if cohort.get("name"):
            detail = ", ".join(f"{k} {cohort[k]}" for k in ("patients", "malignant", "preset") if k in cohort)
            lines.append(f"Cohort {cohort['name']}: {cohort.get('note', '')} ({detail}); splits "
                         f"{str(cohort.get('splits_hash', '?'))[:12]}")
    lines.append(f"{len(results.experiments)} experiments, "
                 f"{len(results.fold_metrics)} folds. Tables: fractions as percent, distances in mm.")
    return lines


def write_performance(benchmark_files: Sequence[str | Path], out_dir: str | Path) -> tuple[list[Path], str]:
    """The performance table of pytest-benchmark JSON files: ``performance.{md,csv,html}`` and
    ``performance_ratios.csv`` in ``out_dir``; returns the written paths (Markdown first) and the HTML body."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, body = performance_texts([Path(p) for p in benchmark_files])
    files = [write_text_atomic(out_dir / name, text) for name, text in texts.items()]
    files.append(write_text_atomic(out_dir / "performance.html", _standalone("Performance", body)))
    return files, body


def claims_sections(results: Results, out_dir: Path, figure_dir: Path, n_resamples: int = 1000,
                    seed: int = 0) -> list[Section]:
    """Write ``claims_table.{md,csv,tex,html}``, ``claims_ranking.csv`` and the claims figure; their report sections
    (none when the results hold no claim's two experiments)."""
    claims = claims_table(results, n_resamples, seed)
    if claims is None:
        return []
    body = claims_html(claims)
    files = _write_table_files(out_dir, "claims_table", "Claims", claims_markdown(claims), claims_csv(claims),
                               claims_latex(claims), body)
    files.append(write_text_atomic(out_dir / "claims_ranking.csv", ranking_csv(claims)))
    sections = [Section("Claims table", body, files)]
    figure = claims_figure(claims, figure_dir)
    if figure:
        sections.append(Section("Claims: measured AUC against ceiling", figures=report_figures.png_paths(figure)))
    return sections


def _table_sections(results: Results, out_dir: Path, figure_dir: Path, reference: str, n_resamples: int, seed: int,
                    with_published: bool) -> tuple[list[Section], AblationTable | None]:
    """The sections of the tables (Table 1, references, ablations, claims with their figure) and of the oracle
    ceilings, each table written in its formats; and the ablation table, which a figure draws too."""
    sections: list[Section] = []
    paper = paper_table(results, reference, n_resamples, seed, with_published)
    if paper is not None:
        body, files = _write_results_table(paper, out_dir, "paper_table")
        sections.append(Section("Table 1", body, files))
    references = reference_table(results, reference, n_resamples, seed)
    if references is not None:
        body, files = _write_results_table(references, out_dir, "reference_table")
        sections.append(Section("Reference methods", body, files))
    ablations = ablation_table(results, reference, n_resamples, seed)
    if ablations is not None:
        body = ablation_html(ablations)
        files = _write_table_files(out_dir, "ablation_table", "Ablations", ablation_markdown(ablations),
                                   ablation_csv(ablations), ablation_latex(ablations), body)
        sections.append(Section("Ablation table", body, files))
    sections += claims_sections(results, out_dir, figure_dir, n_resamples, seed)
    if results.oracle:
        sections.append(Section("Oracle ceilings", key_value_table(
            "AUC of the known generating risk per information subset (oracle.json)",
            [(k, f"{100 * v:.2f}") for k, v in results.oracle.items()], ("information", "AUC (%)"))))
    return sections, ablations


def _performance_sections(results: Results, benchmark_files: Sequence[str | Path], out_dir: Path) -> list[Section]:
    """The performance section, when pytest-benchmark files are found (RUNS_DIRs, ``out_dir``) or given."""
    benchmarks = sorted({*results.benchmark_files, *map(Path, benchmark_files),
                         *(p for p in out_dir.glob("benchmark*.json") if is_benchmark_json(p))})
    if not benchmarks:
        return []
    files, body = write_performance(benchmarks, out_dir)
    return [Section("Performance", body, files)]


def _experiments_section(results: Results, out_dir: Path) -> Section:
    """``experiments.csv`` (:func:`experiments_frame`) and its table."""
    experiments = experiments_frame(results)
    experiments_csv = write_text_atomic(out_dir / "experiments.csv", experiments.to_csv(index=False))
    return Section("Experiments", frame_table(
        "Experiments in this report", ["experiment", "group", "tasks", "information", "folds", "wall time (min)",
                                       "description"],
        [[r["experiment"], r["group"], r["tasks"], r["information"], str(r["folds"]),
          "-" if not np.isfinite(r["wall_s"]) else f"{r['wall_s'] / 60:.1f}", r["description"]]
         for _, r in experiments.iterrows()]), [experiments_csv])


def build_report(
    runs_dirs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    with_published: bool = False,
    reference: str = "mstnet",
    n_resamples: int = 1000,
    seed: int = 0,
    benchmark_files: Sequence[str | Path] = (),
    title: str = "MST-Net benchmark report",
    threshold_rule: str = "fixed",
) -> Path:
    """Read ``runs_dirs`` and write the report into ``out_dir``; returns the path of ``index.html``.

    Args:
        runs_dirs: one RUNS_DIR or several (merged; experiment names must be distinct).
        out_dir: report folder (created).
        with_published: show Table 1's published NLST numbers beside the measured rows.
        reference: experiment every other one is compared with (paired tests, ablations).
            Defaults to ``"mstnet"``.
        n_resamples: bootstrap resamples for every interval and ROC band. Defaults to 1000.
        seed: seed of every bootstrap. Defaults to 0.
        benchmark_files: pytest-benchmark JSON files to add to those found in the RUNS_DIRs
            (``benchmark*.json``, ``benchmarks/**/*.json``, ``.benchmarks/**/*.json``) and in
            ``out_dir``.
        title: page title.
        threshold_rule: ``"fixed"`` (default): accuracy, precision, recall, specificity and F1
            at the recorded threshold (0.5); ``"validation"``: at each fold's threshold chosen
            on its inner validation split.
    """
    if isinstance(runs_dirs, (str, Path)):
        runs_dirs = [runs_dirs]
    results = load_many(runs_dirs, threshold_rule=threshold_rule)  # bad results: refused before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_dir = out_dir / FIGURE_FOLDER
    log.info("report: %d experiments from %s", len(results.experiments), ", ".join(map(str, results.runs_dirs)))
    sections, ablations = _table_sections(results, out_dir, figure_dir, reference, n_resamples, seed, with_published)
    figure_sections = report_figures.all_figures(results, figure_dir, ablations, n_resamples, seed)
    for name, paths in figure_sections.items():
        sections.append(Section(name, figures=report_figures.png_paths(paths), wide_figures=name in WIDE_SECTIONS))
    sections += _performance_sections(results, benchmark_files, out_dir)
    sections.append(_experiments_section(results, out_dir))
    index = write_text_atomic(out_dir / "index.html", render_index(title, _meta_lines(results), sections, out_dir))
    log.info("report written: %s", index)
    return index
