"""``mstnet report RUNS_DIR [RUNS_DIR ...]``: tables, figures and index.html from result files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("report")
    def report_command(
        runs_dirs: list[Path] = typer.Argument(..., help="Results folders (RUNS_DIR) to report; several are merged.",
                                               exists=True, file_okay=False, dir_okay=True),
        out: Path | None = typer.Option(None, "--out", help="Report folder; defaults to reports/<name of the first RUNS_DIR>."),
        with_published: bool = typer.Option(False, "--with-published",
                                            help="Show Table 1's published NLST numbers beside the measured ones."),
        reference: str = typer.Option("mstnet", "--reference", help="Experiment the others are compared with."),
        n_resamples: int = typer.Option(1000, "--resamples", min=1, help="Bootstrap resamples for intervals and bands."),
        seed: int = typer.Option(0, "--seed", help="Seed of every bootstrap."),
    ) -> None:
        """Paper-style tables (Markdown, CSV, LaTeX, HTML), ablation table, figures and index.html."""
        from mstnet.reporting.build import build_report
        from mstnet.reporting.results import ResultsError

        target = out or Path("reports") / runs_dirs[0].resolve().name
        try:
            index = build_report(runs_dirs, target, with_published=with_published, reference=reference,
                                 n_resamples=n_resamples, seed=seed)
        except ResultsError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(code=1) from None
        console.print(f"report: {index}")
        table = target / "paper_table.md"
        if table.exists():
            console.print(table.read_text(), markup=False)
