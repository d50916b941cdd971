"""``mstnet report RUNS_DIR [RUNS_DIR ...]``: tables, figures and index.html from result files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("report")
    def report_command(
        runs_dirs: list[Path] = typer.Argument(None, help="Results folders (RUNS_DIR) to report; several are merged.",
                                               exists=True, file_okay=False, dir_okay=True, show_default=False),
        out: Path | None = typer.Option(None, "--out", help="Report folder; defaults to reports/<name of the first "
                                        "RUNS_DIR>, or reports/performance with --benchmarks alone."),
        benchmarks: Path | None = typer.Option(None, "--benchmarks", help="pytest-benchmark JSON (from `make bench`) "
                                               "to render as the performance table.", dir_okay=False),
        with_published: bool = typer.Option(False, "--with-published",
                                            help="Show Table 1's published NLST numbers beside the measured ones."),
        reference: str = typer.Option("mstnet", "--reference", help="Experiment the others are compared with."),
        n_resamples: int = typer.Option(1000, "--resamples", min=1, help="Bootstrap resamples for intervals and bands."),
        seed: int = typer.Option(0, "--seed", help="Seed of every bootstrap."),
        threshold: str = typer.Option("fixed", "--threshold", help="Threshold of accuracy, precision, recall, "
                                      "specificity and F1: 'fixed' (0.5, as recorded) or 'validation' (each fold's "
                                      "threshold chosen on its inner validation split)."),
    ) -> None:
        """Paper-style tables (Markdown, CSV, LaTeX, HTML), ablation table, figures and index.html;
        with --benchmarks, the performance table of `make bench`."""
        from mstnet.reporting.build import build_report, write_performance
        from mstnet.reporting.results import THRESHOLD_RULES

        if threshold not in THRESHOLD_RULES:
            raise typer.BadParameter(f"--threshold takes one of {', '.join(THRESHOLD_RULES)}; got {threshold!r}")
        runs_dirs = runs_dirs or []
        if not runs_dirs and benchmarks is None:
            raise typer.BadParameter("give at least one RUNS_DIR or --benchmarks FILE")
        target = out or (Path("reports") / runs_dirs[0].resolve().name if runs_dirs else Path("reports") / "performance")
        extra_benchmarks = [benchmarks] if benchmarks is not None else []
        if runs_dirs:
            index = build_report(runs_dirs, target, with_published=with_published, reference=reference,
                                 n_resamples=n_resamples, seed=seed, benchmark_files=extra_benchmarks,
                                 threshold_rule=threshold)
            console.print(f"report: {index}")
        else:
            write_performance(extra_benchmarks, target)
        for name in ("paper_table.md", "performance.md"):
            if (target / name).exists() and (name != "performance.md" or benchmarks is not None):
                console.print((target / name).read_text(), markup=False, highlight=False, soft_wrap=True)
