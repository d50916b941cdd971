"""``mstnet list``, ``mstnet run NAME`` and ``mstnet reproduce paper-table|references``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)
console = Console()

REPRODUCIBLE_GROUPS = {"paper-table": "paper-table", "references": "reference", "ablations": "ablation"}


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
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes key=value; got {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    if isinstance(params.get("stages"), str):
        params["stages"] = tuple(params["stages"].split(","))
    return params


def init_distributed() -> None:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


OVERWRITE_HELP = "replace results in --out made with another configuration (default: refuse them)"
BINARIZE_HELP = "accept non-binary masks: 'nonzero' (value != 0) or 'half' (value >= 0.5) is foreground (default: refuse them)"


def build_options(preset: str, device: str, epochs: int | None, params: dict[str, Any], runs_dir: Path,
                  callbacks: tuple = (), evaluate_test: bool = True, workers: int = 0):
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.runner import RunOptions
    from mstnet.experiments.training import resolve_device

    return RunOptions(preset=run_preset(preset, epochs=epochs), device=resolve_device(device), params=params,
                      cache_dir=runs_dir / ".cache", callbacks=callbacks, evaluate_test=evaluate_test,
                      workers=workers)


def write_report(runs_dir: Path, out: Path | None, with_published: bool) -> Path | None:
    """Tables and figures for ``runs_dir`` (reads its result files only)."""
    from mstnet.reporting.build import build_report

    out = out or Path("reports") / runs_dir.name
    index = build_report([runs_dir], out, with_published=with_published)
    console.print(f"report: {index}")
    table = out / "paper_table.md"
    if table.exists():
        console.print(table.read_text(), markup=False, highlight=False, soft_wrap=True)
    return index


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("list")
    def list_command(
        pattern: str = typer.Argument("*", help="fnmatch pattern on experiment names"),
        group: str | None = typer.Option(None, help="paper-table, reference, ablation or extra"),
    ) -> None:
        """List registered experiments, baselines and ablations with a one-line description each."""
        from mstnet.experiments.registry import list_experiments

        table = Table("name", "group", "tasks", "Table-1 row", "description")
        for spec in list_experiments(pattern, group=group):
            table.add_row(spec.name, spec.group, "+".join(t[:3] for t in spec.tasks), spec.table_row or "", spec.description)
        console.print(table)

    @app.command("run")
    def run_command(
        name: str = typer.Argument(..., help="experiment name (see `mstnet list`)"),
        data: Path | None = typer.Option(None, help="cohort folder (manifest, NLST layout, ...); default: the embedded synthetic cohort"),
        synthetic: str | None = typer.Option(None, help="use the embedded synthetic cohort of this preset"),
        preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
        folds: str | None = typer.Option(None, help="comma-separated folds, e.g. 0,1 (default: all)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
        out: Path = typer.Option(Path("runs"), help="results folder"),
        set_: list[str] = typer.Option(None, "--set", help="hyperparameter override key=value (repeatable)"),
        seed: int = typer.Option(0, help="seed of the folds"),
        jobs: int = typer.Option(1, min=1, help="folds trained in parallel processes"),
        workers: int = typer.Option(0, min=0, help="DataLoader worker processes per training process (results do not depend on it)"),
        params_from: str | None = typer.Option(None, "--params", help="'best': the best trial of an Optuna study (--study, --storage); --set still wins"),
        study: str | None = typer.Option(None, help="study for --params best (default <name>-<preset>-fold0)"),
        storage: str | None = typer.Option(None, help="storage for --params best (default OUT/<name>/tuning/study.db)"),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    ) -> None:
        """Train and evaluate one experiment on the cross-validation folds; finished folds are skipped."""
        from mstnet.experiments.registry import get_experiment
        from mstnet.experiments.reproduce import prepare_runs, run_group

        init_distributed()
        spec = get_experiment(name)
        params = parse_assignments(set_)
        if params_from is not None:
            if params_from != "best":
                raise typer.BadParameter(f"--params takes 'best'; got {params_from!r}")
            from mstnet.experiments.tuning import default_storage, default_study_name, load_best_params

            params = {**load_best_params(study or default_study_name(name, synthetic or preset),
                                         storage or default_storage(out, name)), **params}
        options = build_options(synthetic or preset, device, epochs, params, out, workers=workers)
        prepared = prepare_runs(out, options.preset, data=data, seed=seed, write=False, binarize_masks=binarize_masks)
        run_group(prepared, [spec], options, folds=parse_folds(folds), jobs=jobs, overwrite=overwrite)
        console.print(f"results in {out / spec.name.replace('/', '__')}")

    @app.command("reproduce")
    def reproduce_command(
        target: str = typer.Argument("paper-table", help="paper-table, references or ablations"),
        preset: str = typer.Option("cpu", help="size preset: tiny, cpu or paper"),
        data: Path | None = typer.Option(None, help="cohort folder; default: the embedded synthetic cohort"),
        out: Path | None = typer.Option(None, help="results folder (default runs/<target>-<preset>)"),
        report_out: Path | None = typer.Option(None, "--report", help="report folder (default reports/<results folder name>)"),
        folds: str | None = typer.Option(None, help="comma-separated folds (default: all five)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        epochs: int | None = typer.Option(None, min=1, help="epochs per training stage (default: the preset's)"),
        with_published: bool = typer.Option(True, help="show Table 1 as published on NLST beside the measured rows"),
        seed: int = typer.Option(0, help="seed of the folds"),
        jobs: int | None = typer.Option(None, min=1, help="(experiment, fold) pairs trained in parallel processes (default: the preset's)"),
        workers: int = typer.Option(0, min=0, help="DataLoader worker processes per training process (results do not depend on it)"),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", help=BINARIZE_HELP),
    ) -> None:
        """Run every experiment of a table on the same folds, then write the tables and figures."""
        from mstnet.experiments.registry import list_experiments
        from mstnet.experiments.reproduce import prepare_runs, run_group

        if target not in REPRODUCIBLE_GROUPS:
            raise typer.BadParameter(f"target must be one of {', '.join(sorted(REPRODUCIBLE_GROUPS))}; got {target!r}")
        init_distributed()
        out = out or Path("runs") / f"{target}-{preset}"
        clock = time.perf_counter()
        options = build_options(preset, device, epochs, {}, out, workers=workers)
        prepared = prepare_runs(out, options.preset, data=data, seed=seed, write=False, binarize_masks=binarize_masks)
        specs = list_experiments(group=REPRODUCIBLE_GROUPS[target])
        if target == "ablations":
            specs = list_experiments("mstnet") + specs
        console.print(f"{len(specs)} experiments x {len(parse_folds(folds) or range(prepared.splits.n_folds))} folds "
                      f"on {len(prepared.cohort)} patients -> {out}")
        run_group(prepared, specs, options, folds=parse_folds(folds), jobs=jobs or options.preset.jobs, overwrite=overwrite)
        write_report(out, report_out, with_published=with_published and target == "paper-table")
        console.print(f"wall time {time.perf_counter() - clock:.0f} s")
