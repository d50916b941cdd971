"""``mstnet tune NAME --trials N``: Optuna search on inner validation; several workers may share one study."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mstnet.commands import LaunchRequest, with_launch_options
from mstnet.commands.experiments import BINARIZE_HELP

console = Console()


def _print_study(result, fold: int, out: Path, name: str) -> None:
    """One fold's study: its trials by state, then the best trial's overrides and where they were written."""
    from mstnet.experiments.tuning import BEST_PARAMS_FILE, best_overrides, study_dir

    states = [trial.state.name.lower() for trial in result.trials]
    console.print(f"fold {fold}: study {result.study_name!r}: {len(states)} trials "
                  f"({', '.join(f'{states.count(s)} {s}' for s in sorted(set(states)))})")
    try:
        overrides = best_overrides(result)
    except ValueError as error:
        console.print(str(error))
        return
    table = Table("parameter", "value", title=f"fold {fold}, best trial {result.best_trial.number}: "
                                              f"inner-validation score {result.best_value:.4f}")
    for key, value in overrides.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"written to {study_dir(out, name, result.study_name) / BEST_PARAMS_FILE}")


@with_launch_options
def tune_command(
    name: str = typer.Argument(..., help="experiment name (see `mstnet list`)"),
    trials: int = typer.Option(..., "--trials", help="trials run by this process (K workers run K x N)"),
    storage: str | None = typer.Option(None, help="Optuna storage: sqlite:///f.db, postgresql://..., or journal:PATH "
                                                  "(default: sqlite under OUT/<name>/tuning/study.db)"),
    study: str | None = typer.Option(None, help="study name prefix: studies are <prefix>-fold<k> "
                                                "(default <name>-<preset>)"),
    timeout: float | None = typer.Option(None, help="stop starting trials after this many seconds (per fold)"),
    pruner: str = typer.Option("median", help="median or hyperband"),
    folds: str | None = typer.Option(None, help="outer folds to tune, each on its own training portion "
                                                "(nested; default: all)"),
    preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
    data: Path | None = typer.Option(None, help="cohort folder; default: the embedded synthetic cohort"),
    out: Path = typer.Option(Path("runs"), help="results folder (its splits.json fixes the folds)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
    set_: list[str] = typer.Option(None, "--set", help="fixed override key=value under every trial (repeatable)"),
    seed: int | None = typer.Option(None, help="sampler seed (default: random, so workers explore apart)"),
    split_seed: int = typer.Option(0, help="seed of the folds"),
    binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    launch: LaunchRequest = LaunchRequest(),
    slurm_workers: int = typer.Option(1, "--slurm-workers", min=1, help="with --launcher slurm: SLURM tasks per "
                                      "fold, each running --trials trials of that fold's study in one storage"),
) -> None:
    """Tune an experiment's hyperparameters with Optuna, nested: one study per outer fold, whose
    trials see only that fold's training and inner-validation patients."""
    from mstnet.commands.experiments import parse_assignments, parse_folds
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.tuning import PRUNERS, tune

    if pruner not in PRUNERS:
        raise typer.BadParameter(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
    if trials < 1:
        raise typer.BadParameter(f"--trials must be at least 1; got {trials}")
    launcher = launch.make_launcher(out, device)
    if launcher is None and slurm_workers != 1:
        raise typer.BadParameter("--slurm-workers goes with --launcher slurm (locally, start more `mstnet tune` "
                                 "processes on the same --storage)")
    n_folds = run_preset(preset).n_folds
    fold_list = list(parse_folds(folds) or range(n_folds))
    arguments = dict(name=name, n_trials=trials, storage=storage, timeout=timeout, pruner=pruner, preset=preset,
                     runs_dir=out, data=data, device=device, epochs=epochs, params=parse_assignments(set_),
                     seed=seed, split_seed=split_seed, binarize_masks=binarize_masks)
    studies = {}
    if launcher is not None:
        studies = _tune_on_slurm(launcher, arguments, fold_list, slurm_workers, study)
    for fold in fold_list:
        result = studies[fold] if launcher is not None else tune(
            study_name=f"{study}-fold{fold}" if study else None, fold=fold, **arguments)
        _print_study(result, fold, out, name)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("tune")(tune_command)


def _tune_on_slurm(launch, arguments: dict, folds: list[int], workers: int, study_prefix: str | None) -> dict:
    """``workers`` SLURM tasks per fold on one storage, after the checks in this process; the studies after."""
    import optuna

    from mstnet.commands.experiments import report_failed_tasks
    from mstnet.experiments.launcher import TasksFailed, check_tuning
    from mstnet.experiments.tuning import default_storage, default_study_name, make_storage

    name, out = arguments["name"], Path(arguments["runs_dir"])
    names = {fold: f"{study_prefix}-fold{fold}" if study_prefix else default_study_name(name, arguments["preset"], fold)
             for fold in folds}
    arguments = {**arguments, "storage": arguments["storage"] or default_storage(out, name)}
    check_tuning(name, arguments["preset"], out, folds, names, arguments["storage"], data=arguments["data"],
                 epochs=arguments["epochs"], params=arguments["params"], split_seed=arguments["split_seed"],
                 binarize_masks=arguments["binarize_masks"])
    try:
        launch.run_tuning(arguments, folds, workers, names)
    except TasksFailed as failed:
        report_failed_tasks(failed)
    return {fold: optuna.load_study(study_name=names[fold], storage=make_storage(arguments["storage"])) for fold in folds}
