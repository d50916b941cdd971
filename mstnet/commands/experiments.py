"""``mstnet list``, ``mstnet run NAME`` and ``mstnet reproduce paper-table|references|ablations|claims``."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mstnet.commands import LaunchRequest, key_value_pairs, with_launch_options

log = logging.getLogger(__name__)
console = Console()

REPRODUCIBLE_GROUPS = {"paper-table": "paper-table", "references": "reference", "ablations": "ablation"}
CLAIMS_TARGET = "claims"
"""``mstnet reproduce claims``: MST-Net and the variants of :data:`mstnet.claims.CLAIMS` on the signal-controlled cohort."""
CLAIMS_COHORT = "claims"
"""The synthetic cohort ``reproduce claims`` uses by default."""


def parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--folds takes comma-separated integers such as 0,1,4; got {text!r}") from None


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """``["learning_rate=3e-4", "stages=joint"]`` -> typed dict (JSON values where they parse)."""
    params: dict[str, Any] = {}
    for key, raw in key_value_pairs(items).items():
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    if isinstance(params.get("stages"), str):
        params["stages"] = tuple(params["stages"].split(","))
    return params


def recipe_assignments(items: list[str] | None) -> dict[str, Any]:
    """``mstnet reproduce --set`` items as typed training-recipe fields; a model setting is refused
    (the experiments of a table are different models, so only the training recipe applies to all)."""
    from mstnet.experiments.registry import RECIPE_FIELDS, split_overrides

    recipe_fields, model_settings = split_overrides(parse_assignments(items))
    if model_settings:
        raise typer.BadParameter(f"reproduce --set takes training-recipe fields only ({', '.join(RECIPE_FIELDS)}); "
                                 f"{', '.join(sorted(model_settings))} is a model setting: use `mstnet run EXPERIMENT --set`")
    return recipe_fields


def assignments_tag(params: dict[str, Any]) -> str:
    """A folder-name tag for recipe assignments: ``{"segmentation_epochs": 24}`` -> ``-segmentation_epochs24``."""
    return "".join(f"-{key}{re.sub(r'[^A-Za-z0-9.]+', '_', json.dumps(value)).strip('_')}"
                   for key, value in sorted(params.items()))


def init_distributed() -> None:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


OVERWRITE_HELP = "replace results in --out made with another configuration (default: refuse them)"
LOG_HELP = ("track every fold: 'tensorboard' (RUNS_DIR/<experiment>/fold<k>/tensorboard/) or 'mlflow' (a local "
            "MLflow store); repeatable; needs the optional extra: pip install -e \".[tracking]\"")
MLFLOW_URI_HELP = "MLflow tracking URI or folder for --log mlflow (default: MLflow's local default, sqlite:///mlflow.db)"
PLAIN_HELP = "one row per line, tab-separated, full names, no header (the default when stdout is not a terminal)"
JSON_HELP = "print the listing as JSON"
SEEDS_OPTION = typer.Option(1, "--seeds", min=1, help="train each (experiment, fold) N times with training seeds "
                           "recipe seed + 0 .. N-1 on the same folds (seed s >= 1 in <experiment>/seed<s>/fold<k>/); "
                           "the report shows the mean and spread over seeds")
BINARIZE_HELP = "accept non-binary masks: 'nonzero' (value != 0) or 'half' (value >= 0.5) is foreground (default: refuse them)"

# --launcher and the SLURM settings (mstnet/experiments/launcher.py), shared by run, reproduce, ablate and tune.
LAUNCHER_OPTION = typer.Option("local", "--launcher", help="local: this machine (--jobs processes); slurm: one SLURM "
                               "job-array task per (experiment, fold) through submitit, waited for (docs/slurm.md)")
LAUNCHER_CONFIG_OPTION = typer.Option(None, "--launcher-config", help="TOML or JSON file of SLURM settings: partition, "
                                      "gpus_per_task, cpus_per_task, mem_gb, time, sbatch, setup, max_parallel, ...")
PARTITION_OPTION = typer.Option(None, "--partition", help="SLURM partition of every task (--launcher slurm)")
GPUS_OPTION = typer.Option(None, "--gpus-per-task", min=0, help="GPUs per SLURM task (--launcher slurm)")
CPUS_OPTION = typer.Option(None, "--cpus-per-task", min=1, help="CPUs per SLURM task, also its torch threads (--launcher slurm)")
MEM_OPTION = typer.Option(None, "--mem-gb", min=0.001, help="memory per SLURM task in GB (--launcher slurm)")
TIME_OPTION = typer.Option(None, "--time", help="time limit per SLURM task: minutes or [D-]HH:MM:SS (default 24:00:00); "
                           "a task that reaches it is requeued and resumes (--launcher slurm)")
SBATCH_OPTION = typer.Option(None, "--sbatch", help="extra sbatch flag KEY=VALUE, e.g. --sbatch account=rad "
                             "--sbatch qos=long (repeatable; --launcher slurm)")


def report_failed_tasks(failed, runs_dir: Path | None = None, report_out: Path | None = None,
                        with_published: bool = False) -> None:
    """Print a failed array's tasks (id, log, last lines), write the report of what finished, say which
    folds it lacks, and exit 1."""
    from mstnet.reporting.results import ResultsError

    errors = Console(stderr=True)
    errors.print(failed.report(), markup=False, highlight=False, soft_wrap=True)
    if runs_dir is not None:
        try:
            write_report(runs_dir, report_out, with_published=with_published)
        except ResultsError as error:
            errors.print(f"no report: {error}", markup=False, highlight=False)
        if failed.missing:
            errors.print(f"the report lacks {len(failed.missing)} fold(s): {', '.join(failed.missing)}",
                         markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def build_options(preset: str, device: str, epochs: int | None, params: dict[str, Any], runs_dir: Path,
                  callbacks: tuple = (), evaluate_test: bool = True, workers: int = 0,
                  table_recipe: dict[str, Any] | None = None):
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.runner import RunOptions
    from mstnet.experiments.training import resolve_device

    return RunOptions(preset=run_preset(preset, epochs=epochs), device=resolve_device(device), params=params,
                      cache_dir=runs_dir / ".cache", callbacks=callbacks, evaluate_test=evaluate_test,
                      workers=workers, table_recipe=dict(table_recipe or {}))


def with_tracking(options, kinds: list[str] | None, mlflow_uri: str | None):
    """``options`` with the trackers of ``--log`` / ``--mlflow-uri`` (checked now: unknown kinds and
    missing packages fail before anything is written); unchanged without ``--log``."""
    if not kinds and not mlflow_uri:
        return options
    from dataclasses import replace

    from mstnet.experiments.tracking import tracker_specs

    return replace(options, trackers=tracker_specs(kinds, mlflow_uri))


def print_listing(columns: list[str], rows: list[list[str]], records: list[dict], plain: bool = False,
                  as_json: bool = False, title: str | None = None, terminal_rows: list[list[str]] | None = None) -> None:
    """A listing for its reader: JSON (``records``) with ``as_json``; one tab-separated line per row
    with full names when ``plain`` or stdout is not a terminal; otherwise a table on the terminal
    (``terminal_rows``, default ``rows``), whose long words wrap instead of being cut."""
    import sys

    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    if plain or not sys.stdout.isatty():
        for row in rows:
            sys.stdout.write("\t".join(" ".join(str(cell).split()) for cell in row) + "\n")
        return
    table = Table(title=title)
    table.add_column(columns[0], no_wrap=True)  # names are typed: never cut them
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    for row in terminal_rows or rows:
        table.add_row(*row)
    console.print(table)


def write_report(runs_dir: Path, out: Path | None, with_published: bool) -> Path | None:
    """Tables and figures for ``runs_dir`` (reads its result files only)."""
    from mstnet.reporting.build import build_report

    out = out or Path("reports") / runs_dir.name
    index = build_report([runs_dir], out, with_published=with_published)
    console.print(f"report: {index}")
    for table in (out / "paper_table.md", out / "claims_table.md"):
        if table.exists():
            console.print(table.read_text(), markup=False, highlight=False, soft_wrap=True)
    return index


def list_command(
    pattern: str = typer.Argument("*", help="fnmatch pattern on experiment names"),
    group: str | None = typer.Option(None, help="paper-table, reference, ablation or extra"),
    plain: bool = typer.Option(False, "--plain", help=PLAIN_HELP + ": name, group, tasks, Table-1 row, description"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " (the registry entries)"),
) -> None:
    """List registered experiments, baselines and ablations with a one-line description each."""
    from mstnet.errors import UsageError
    from mstnet.experiments.registry import list_experiments

    specs = list_experiments(pattern, group=group)
    if not specs and pattern != "*":
        raise UsageError(f"no experiment matches {pattern!r}{f' in group {group!r}' if group else ''}; "
                         "`mstnet list` shows all")
    print_listing(["name", "group", "tasks", "Table-1 row", "description"],
                  [[spec.name, spec.group, "+".join(spec.tasks), spec.table_row or "", spec.description]
                   for spec in specs],
                  [spec.metadata() for spec in specs], plain=plain, as_json=as_json,
                  terminal_rows=[[spec.name, spec.group, "+".join(t[:3] for t in spec.tasks), spec.table_row or "",
                                  spec.description] for spec in specs])


def _with_best_params(options, name: str, preset: str, fold_list: list[int] | None, out: Path, study: str | None,
                      storage: str | None):
    """``options`` with each fold's best trial of its own Optuna study (``--params best``: nested tuning)."""
    from dataclasses import replace

    from mstnet.experiments.tuning import best_params_per_fold, default_storage

    return replace(options, fold_params=best_params_per_fold(
        name, preset, fold_list if fold_list is not None else range(options.preset.n_folds),
        storage or default_storage(out, name), study_prefix=study))


@with_launch_options
def run_command(
    name: str = typer.Argument(..., help="experiment name (see `mstnet list`)"),
    data: Path | None = typer.Option(None, help="cohort folder (manifest, NLST layout, ...); default: the embedded synthetic cohort"),
    synthetic: str | None = typer.Option(None, help="without --data: the embedded synthetic cohort of this preset "
                                         "(tiny, cpu, paper, claims; default: --preset's)"),
    preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
    folds: str | None = typer.Option(None, help="comma-separated folds, e.g. 0,1 (default: all)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
    out: Path = typer.Option(Path("runs"), help="results folder"),
    set_: list[str] = typer.Option(None, "--set", help="hyperparameter override key=value (repeatable)"),
    seed: int = typer.Option(0, help="seed of the folds"),
    jobs: int = typer.Option(1, min=1, help="folds trained in parallel processes"),
    seeds: int = SEEDS_OPTION,
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes per training process (results do not depend on it)"),
    params_from: str | None = typer.Option(None, "--params", help="'best': each fold gets the best trial of its own "
                                           "Optuna study (nested tuning, `mstnet tune`; --study, --storage); --set still wins"),
    study: str | None = typer.Option(None, help="study prefix for --params best: studies <prefix>-fold<k> "
                                                "(default <name>-<preset>)"),
    storage: str | None = typer.Option(None, help="storage for --params best (default OUT/<name>/tuning/study.db)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    export_masks: bool = typer.Option(False, "--export-masks", help="also write each evaluated fold's test "
                                      "predictions to OUT/<name>/fold<k>/masks/: NIfTI masks in each scan's geometry "
                                      "and probabilities.csv (the layout of `mstnet predict`, read by `mstnet evaluate`)"),
    log_to: list[str] = typer.Option(None, "--log", help=LOG_HELP),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help=MLFLOW_URI_HELP),
    launch: LaunchRequest = LaunchRequest(),
) -> None:
    """Train and evaluate one experiment on the cross-validation folds; finished folds are skipped."""
    from dataclasses import replace

    from mstnet.experiments.launcher import TasksFailed
    from mstnet.experiments.registry import get_experiment
    from mstnet.experiments.reproduce import prepare_runs, run_group
    from mstnet.experiments.runner import experiment_dir

    check_cohort_choice(data, synthetic)
    launcher = launch.make_launcher(out, device)
    init_distributed()
    spec = get_experiment(name)
    # Under --launcher slurm each task resolves --device where it runs (a login node may have no GPU).
    options = with_tracking(build_options(preset, device if launcher is None else "cpu", epochs,
                                          parse_assignments(set_), out, workers=workers), log_to, mlflow_uri)
    options = replace(options, export_masks=export_masks) if export_masks else options
    fold_list = parse_folds(folds)
    if params_from is not None:
        if params_from != "best":
            raise typer.BadParameter(f"--params takes 'best'; got {params_from!r}")
        options = _with_best_params(options, name, preset, fold_list, out, study, storage)
    prepared = prepare_runs(out, options.preset, data=data, seed=seed, write=False, binarize_masks=binarize_masks,
                            synthetic=synthetic)
    try:
        run_group(prepared, [spec], options, folds=fold_list, jobs=jobs, overwrite=overwrite, launcher=launcher,
                  seeds=seeds)
    except TasksFailed as failed:
        report_failed_tasks(failed)
    console.print(f"results in {experiment_dir(out, spec.name)}")


def check_cohort_choice(data: Path | None, synthetic: str | None) -> None:
    """Refuse ``--data`` beside ``--synthetic``, and a synthetic-cohort preset that does not exist."""
    from mstnet.synth.presets import SYNTH_PRESETS

    if data is not None and synthetic is not None:
        raise typer.BadParameter("--data and --synthetic name two cohorts; give one")
    if synthetic is not None and synthetic not in SYNTH_PRESETS:
        raise typer.BadParameter(f"unknown synthetic-cohort preset {synthetic!r} for --synthetic; "
                                 f"choose one of {', '.join(sorted(SYNTH_PRESETS))}")


def reproduce_plan(target: str, preset: str, data: Path | None, synthetic: str | None,
                   out: Path | None, table_recipe: dict[str, Any] | None = None) -> tuple[str | None, Path]:
    """The synthetic cohort a reproduction uses without ``--data`` (None: the size preset's) and its results folder.

    ``claims`` runs on the signal-controlled ``claims`` cohort unless ``--synthetic`` or ``--data``
    says otherwise. The default folder is ``runs/<target>-<preset>[-<cohort>]``, the cohort named
    when it is not the size preset's: ``runs/claims-cpu-claims``, and ``runs/claims-cpu`` with
    ``--synthetic cpu``; recipe assignments (``--set``) are named after it:
    ``runs/claims-cpu-claims-segmentation_epochs24``.
    """
    targets = sorted([*REPRODUCIBLE_GROUPS, CLAIMS_TARGET])
    if target not in targets:
        raise typer.BadParameter(f"target must be one of {', '.join(targets)}; got {target!r}")
    check_cohort_choice(data, synthetic)
    cohort_preset = synthetic or (CLAIMS_COHORT if target == CLAIMS_TARGET and data is None else None)
    cohort_tag = f"-{cohort_preset}" if cohort_preset not in (None, preset) else ""
    return cohort_preset, out or Path("runs") / f"{target}-{preset}{cohort_tag}{assignments_tag(table_recipe or {})}"


def reproduce_specs(target: str) -> list:
    """The experiments a reproduction target runs (``ablations``: MST-Net first, then every ablation)."""
    from mstnet.experiments.registry import list_experiments
    from mstnet.experiments.reproduce import claims_experiments

    if target == CLAIMS_TARGET:
        return claims_experiments()
    specs = list_experiments(group=REPRODUCIBLE_GROUPS[target])
    return list_experiments("mstnet") + specs if target == "ablations" else specs


@with_launch_options
def reproduce_command(
    target: str = typer.Argument("paper-table", help="paper-table, references, ablations or claims"),
    preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
    data: Path | None = typer.Option(None, help="cohort folder; default: the embedded synthetic cohort"),
    synthetic: str | None = typer.Option(None, help="embedded synthetic cohort to use without --data: a synthetic "
                                         "preset (default: the size preset's; for claims, the signal-controlled "
                                         "'claims' cohort; --synthetic cpu runs the claims on the default cohort)"),
    out: Path | None = typer.Option(None, help="results folder (default runs/<target>-<preset>[-<cohort>])"),
    report_out: Path | None = typer.Option(None, "--report", help="report folder (default reports/<results folder name>)"),
    folds: str | None = typer.Option(None, help="comma-separated folds (default: all five)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
    set_: list[str] = typer.Option(None, "--set", help="training-recipe field key=value for every trained experiment "
                                   "(repeatable), e.g. segmentation_epochs=24; named in the default results folder"),
    with_published: bool = typer.Option(True, help="show Table 1 as published on NLST beside the measured rows"),
    seed: int = typer.Option(0, help="seed of the folds"),
    jobs: int | None = typer.Option(None, min=1, help="(experiment, fold) pairs trained in parallel processes (default: the preset's)"),
    seeds: int = SEEDS_OPTION,
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes per training process (results do not depend on it)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    log_to: list[str] = typer.Option(None, "--log", help=LOG_HELP),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help=MLFLOW_URI_HELP),
    launch: LaunchRequest = LaunchRequest(),
) -> None:
    """Run every experiment of a table on the same folds, then write the tables and figures."""
    from mstnet.experiments.launcher import TasksFailed
    from mstnet.experiments.reproduce import prepare_runs, run_group

    table_recipe = recipe_assignments(set_)
    cohort_preset, out = reproduce_plan(target, preset, data, synthetic, out, table_recipe)
    launcher = launch.make_launcher(out, device)
    init_distributed()
    clock = time.perf_counter()
    options = with_tracking(build_options(preset, device if launcher is None else "cpu", epochs, {}, out,
                                          workers=workers, table_recipe=table_recipe), log_to, mlflow_uri)
    prepared = prepare_runs(out, options.preset, data=data, seed=seed, write=False, binarize_masks=binarize_masks,
                            synthetic=cohort_preset)
    specs = reproduce_specs(target)
    console.print(f"{len(specs)} experiments x {len(parse_folds(folds) or range(prepared.splits.n_folds))} folds "
                  f"{f'x {seeds} seeds ' if seeds > 1 else ''}"
                  f"on {len(prepared.cohort)} patients -> {out}")
    published = with_published and target == "paper-table"
    try:
        run_group(prepared, specs, options, folds=parse_folds(folds), jobs=jobs or options.preset.jobs,
                  overwrite=overwrite, launcher=launcher, seeds=seeds)
    except TasksFailed as failed:
        report_failed_tasks(failed, out, report_out, with_published=published)
    write_report(out, report_out, with_published=published)
    console.print(f"wall time {time.perf_counter() - clock:.0f} s")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("list")(list_command)
    app.command("run")(run_command)
    app.command("reproduce")(reproduce_command)
