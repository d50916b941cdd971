"""``mstnet tune NAME --trials N``: Optuna search on inner validation; several workers may share one study."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mstnet.commands.experiments import BINARIZE_HELP

console = Console()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("tune")
    def tune_command(
        name: str = typer.Argument(..., help="experiment name (see `mstnet list`)"),
        trials: int = typer.Option(..., "--trials", help="trials run by this process (K workers run K x N)"),
        storage: str | None = typer.Option(None, help="Optuna storage: sqlite:///f.db, postgresql://..., or journal:PATH "
                                                      "(default: sqlite under OUT/<name>/tuning/study.db)"),
        study: str | None = typer.Option(None, help="study name (default <name>-<preset>-<objective>)"),
        timeout: float | None = typer.Option(None, help="stop starting trials after this many seconds"),
        pruner: str = typer.Option("median", help="median or hyperband"),
        objective: str = typer.Option("fold0", help="fold0 (fold 0's inner validation) or mean (every fold's)"),
        preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
        data: Path | None = typer.Option(None, help="cohort folder; default: the embedded synthetic cohort"),
        out: Path = typer.Option(Path("runs"), help="results folder (its splits.json fixes the folds)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
        set_: list[str] = typer.Option(None, "--set", help="fixed override key=value under every trial (repeatable)"),
        seed: int | None = typer.Option(None, help="sampler seed (default: random, so workers explore apart)"),
        split_seed: int = typer.Option(0, help="seed of the folds"),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    ) -> None:
        """Tune an experiment's hyperparameters with Optuna; the test folds are never evaluated."""
        from mstnet.commands.experiments import parse_assignments
        from mstnet.experiments.tuning import BEST_PARAMS_FILE, OBJECTIVES, PRUNERS, best_overrides, study_dir, tune

        if pruner not in PRUNERS:
            raise typer.BadParameter(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
        if objective not in OBJECTIVES:
            raise typer.BadParameter(f"--objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
        if trials < 1:
            raise typer.BadParameter(f"--trials must be at least 1; got {trials}")
        result = tune(name, trials, storage=storage, study_name=study, timeout=timeout, pruner=pruner,
                      objective=objective, preset=preset, runs_dir=out, data=data, device=device, epochs=epochs,
                      params=parse_assignments(set_), seed=seed, split_seed=split_seed, binarize_masks=binarize_masks)
        states = [trial.state.name.lower() for trial in result.trials]
        console.print(f"study {result.study_name!r}: {len(states)} trials "
                      f"({', '.join(f'{states.count(s)} {s}' for s in sorted(set(states)))})")
        try:
            overrides = best_overrides(result)
        except ValueError as error:
            console.print(str(error))
            return
        table = Table("parameter", "value", title=f"best trial {result.best_trial.number}: "
                                                  f"inner-validation score {result.best_value:.4f}")
        for key, value in overrides.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
        console.print(f"written to {study_dir(out, name, result.study_name) / BEST_PARAMS_FILE}")
