"""``mstnet ablate NAME [NAME ...] | --all | --list``: MST-Net and named variants on the same folds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mstnet.commands import LaunchRequest, with_launch_options
from mstnet.commands.experiments import (
    BINARIZE_HELP,
    JSON_HELP,
    LOG_HELP,
    MLFLOW_URI_HELP,
    OVERWRITE_HELP,
    PLAIN_HELP,
    SEEDS_OPTION,
)

log = logging.getLogger(__name__)

FULL_MODEL = "mstnet"


ABLATION_COLUMNS = ["name", "changes", "information", "description"]


def ablation_rows() -> list[dict[str, str]]:
    """Every registered ablation: name, what changes, the oracle subset and the description."""
    from mstnet.experiments.registry import list_experiments

    return [{"name": spec.name, "changes": spec.footnote.removeprefix("MST-Net with ").rstrip("."),
             "information": spec.information, "description": spec.description}
            for spec in list_experiments(group="ablation")]


def ablation_table() -> Table:
    """:func:`ablation_rows` as a terminal table (names never cut)."""
    table = Table(title="MST-Net ablations")
    table.add_column(ABLATION_COLUMNS[0], no_wrap=True)
    for column in ABLATION_COLUMNS[1:]:
        table.add_column(column, overflow="fold")
    for row in ablation_rows():
        table.add_row(*(row[column] for column in ABLATION_COLUMNS))
    return table


def select_ablations(names: list[str], run_all: bool) -> list:
    """The ablation specs asked for, in the order given (``--all``: every one); unknown names fail at once."""
    from mstnet.experiments.registry import list_experiments

    registered = {spec.name: spec for spec in list_experiments(group="ablation")}
    if run_all:
        return list(registered.values())
    if not names:
        raise typer.BadParameter("name one or more ablations, or pass --all (--list shows them)")
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise typer.BadParameter(f"no ablation named {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(sorted(registered))}")
    return [registered[name] for name in dict.fromkeys(names)]


def _print_ablations(plain: bool, as_json: bool) -> None:
    """``mstnet ablate --list``: every registered ablation (:func:`ablation_rows`) as a table, lines or JSON."""
    from mstnet.commands.experiments import print_listing

    rows = ablation_rows()
    print_listing(ABLATION_COLUMNS, [[row[c] for c in ABLATION_COLUMNS] for row in rows], rows,
                  plain=plain, as_json=as_json, title="MST-Net ablations")


@with_launch_options
def ablate_command(
    names: list[str] | None = typer.Argument(None, help="ablation names (see --list)"),
    run_all: bool = typer.Option(False, "--all", help="run every registered ablation"),
    list_only: bool = typer.Option(False, "--list", help="list the ablations with descriptions and exit"),
    preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
    data: Path | None = typer.Option(None, help="cohort folder; default: the embedded synthetic cohort"),
    out: Path | None = typer.Option(None, help="results folder (default runs/ablations-<preset>)"),
    report_out: Path | None = typer.Option(None, "--report", help="report folder (default reports/<results folder name>)"),
    folds: str | None = typer.Option(None, help="comma-separated folds, e.g. 0,1 (default: all)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
    set_: list[str] = typer.Option(None, "--set", help="hyperparameter override key=value for every model (repeatable)"),
    seed: int = typer.Option(0, help="seed of the folds"),
    seeds: int = SEEDS_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    plain: bool = typer.Option(False, "--plain", help=f"with --list: {PLAIN_HELP}: {', '.join(ABLATION_COLUMNS)}"),
    as_json: bool = typer.Option(False, "--json", help=f"with --list: {JSON_HELP}"),
    log_to: list[str] = typer.Option(None, "--log", help=LOG_HELP),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help=MLFLOW_URI_HELP),
    launch: LaunchRequest = LaunchRequest(),
) -> None:
    """Train MST-Net and the named ablations on the same folds, then write the report."""
    console = Console()
    if list_only:
        _print_ablations(plain, as_json)
        return
    if plain or as_json:
        raise typer.BadParameter("--plain and --json go with --list")
    from mstnet.commands.experiments import build_options, init_distributed, parse_assignments, parse_folds, with_tracking
    from mstnet.experiments.registry import get_experiment
    from mstnet.experiments.reproduce import prepare_runs, run_group

    from mstnet.experiments.launcher import TasksFailed

    specs = [get_experiment(FULL_MODEL), *select_ablations(names or [], run_all)]
    out = out or Path("runs") / f"ablations-{preset}"
    launcher = launch.make_launcher(out, device)
    init_distributed()
    clock = time.perf_counter()
    # Under --launcher slurm each task resolves --device where it runs.
    options = with_tracking(build_options(preset, device if launcher is None else "cpu", epochs,
                                          parse_assignments(set_), out), log_to, mlflow_uri)
    prepared = prepare_runs(out, options.preset, data=data, seed=seed, write=False, binarize_masks=binarize_masks)
    fold_list = parse_folds(folds)
    console.print(f"{len(specs)} experiments ({', '.join(s.name for s in specs)}) x "
                  f"{len(fold_list or range(prepared.splits.n_folds))} folds"
                  f"{f' x {seeds} seeds' if seeds > 1 else ''} on {len(prepared.cohort)} patients -> {out}")
    try:
        run_group(prepared, specs, options, folds=fold_list, overwrite=overwrite, launcher=launcher, seeds=seeds)
    except TasksFailed as failed:
        from mstnet.commands.experiments import report_failed_tasks

        report_failed_tasks(failed, out, report_out)
    _report(out, report_out)
    console.print(f"wall time {time.perf_counter() - clock:.0f} s")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("ablate")(ablate_command)


def _report(runs_dir: Path, report_out: Path | None) -> None:
    """Write the report when the reporting module is installed; otherwise say how to make it later."""
    from mstnet.commands.experiments import write_report

    try:
        write_report(runs_dir, report_out, with_published=False)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("mstnet.reporting"):
            raise
        log.warning("report skipped: %s is not available; the results in %s are complete", error.name, runs_dir)
