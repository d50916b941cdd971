"""``mstnet gpu-check`` (``make gpu-check``): the whole CUDA path of the paper preset in one command.

On a CUDA machine it:

1. builds MST-Net's ``paper`` preset (``mstnet_config("paper")``, ``build_mstnet``; 16 x 512 x
   512, two time points) and times forward, backward and an Adam step at batch 1 under bf16
   autocast (the harness's :func:`mstnet.experiments.training.autocast_context`), with the peak
   memory (``torch.cuda.max_memory_allocated``), steps per second, FLOPs per step
   (``torch.utils.flop_counter``, counted as ``benchmarks/_measure.py`` counts them) and the
   fraction of the device's bf16 matmul ceiling (the same 8192^2 bf16 matmul as
   ``benchmarks/test_bench_model.py::test_matmul_ceiling``);
2. finds the largest training batch that fits (doubling, then bisection, up to ``--max-batch``);
3. measures gradient checkpointing's memory saving (``gradient_checkpointing=True``) and its cost in time;
4. makes a paper-size synthetic cohort (16 x 512 x 512, ten patients, five of each label: the
   fewest that five folds with both labels allow) and runs one epoch of ``mstnet run mstnet
   --preset paper`` on fold 0;
5. runs the same under ``torchrun`` with every visible GPU (DDP, nccl).

It writes ``gpu-check.json`` (every number) and ``gpu-check.md`` (a summary) to ``--out``. Without
CUDA it prints ``no CUDA device: skipped`` and exits 0. ``--device cpu --preset tiny`` runs the
same code path on the CPU (what tests/test_gpu_check.py does, with the same functions). The measurements of one
training step are :mod:`mstnet.experiments.step_profile`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from mstnet.experiments.step_profile import (
    build_model,
    checkpointing_saving,
    free_memory,
    largest_batch,
    matmul_ceiling,
    time_step,
)

SKIP_MESSAGE = "no CUDA device: skipped"
FIVE_FOLDS_PATIENTS = 10


# --------------------------------------------------------------------------- one epoch of the harness


def make_cohort(out: Path, preset: str = "paper", n_patients: int = FIVE_FOLDS_PATIENTS, workers: int | None = None) -> Path:
    """A synthetic cohort of ``preset``'s size with ``n_patients`` patients, at least five of each label
    (so five folds each get both): the first seed from 0 whose drawn labels allow it."""
    from mstnet.synth import synth_config, synthesize_cohort
    from mstnet.synth.truth_table import draw_cohort_table
    from mstnet.synth.shape_bank import load_shape_bank

    from mstnet.experiments.presets import run_preset

    need = run_preset(preset).n_folds
    if n_patients < 2 * need:
        raise ValueError(f"{n_patients} patients cannot give {need} folds both labels: at least {2 * need}")
    base = synth_config(preset, n_patients=n_patients, malignant_fraction=0.5)
    bank = load_shape_bank(base.bank_spacing_mm, progress=False)
    for seed in range(500):
        config = synth_config(preset, n_patients=n_patients, malignant_fraction=0.5, seed=seed)
        labels = draw_cohort_table(config, bank)["label"]
        if min(int(labels.sum()), int(len(labels) - labels.sum())) >= need:
            return synthesize_cohort(config, Path(out), workers=workers, progress=False, bank=bank)
    raise RuntimeError(f"no seed below 500 gives {need} patients of each label among {n_patients}")


def run_epoch(cohort: Path, preset: str, device: str, out: Path, nproc: int | None = None,
              timeout: float | None = None) -> dict[str, Any]:
    """One epoch per training stage of ``mstnet run mstnet --preset PRESET`` on fold 0, in a subprocess;
    with ``nproc``, under ``torchrun --standalone --nproc_per_node NPROC`` (DDP)."""
    arguments = ["run", "mstnet", "--preset", preset, "--data", str(cohort), "--folds", "0", "--epochs", "1",
                 "--device", device, "--out", str(out)]
    if nproc is None:
        command = [sys.executable, "-m", "mstnet.cli", *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "mstnet.cli", *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    fold = Path(out) / "mstnet" / "fold0"
    shown = ["mstnet", *arguments] if nproc is None else ["torchrun", *command[3:]]
    result: dict[str, Any] = {"command": " ".join(shown),
                              "processes": nproc or 1, "returncode": done.returncode, "wall_s": wall,
                              "ok": done.returncode == 0 and (fold / "run.json").exists()}
    if result["ok"]:
        run = json.loads((fold / "run.json").read_text())
        metrics = json.loads((fold / "metrics.json").read_text())
        result.update(fold_wall_s=run.get("wall_s"), device=run.get("device"),
                      dice=(metrics.get("segmentation") or {}).get("dice"),
                      auc=(metrics.get("classification") or {}).get("auc"))
        timing = fold / "history.csv"
        if timing.exists():
            result["epochs"] = max(0, len(timing.read_text().splitlines()) - 1)
    else:
        result["log_tail"] = (done.stdout + done.stderr).splitlines()[-20:]
    return result


# --------------------------------------------------------------------------- the check


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "host": platform.node()}


def gpu_check(out: Path, preset: str = "paper", device: str = "cuda", max_batch: int = 64,
              patients: int = FIVE_FOLDS_PATIENTS, epoch: bool = True, ddp: bool = True,
              nproc: int | None = None, repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the module docstring; writes ``out/gpu-check.json`` and ``out/gpu-check.md``.

    ``repeats``: timed steps per measurement (their median; one warm-up step before them);
    ``nproc``: processes under torchrun (default: every visible GPU; 1 on the CPU)."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    report: dict[str, Any] = {"preset": preset, "device": device, "environment": environment(), "phases_s": {}}

    def phase(name: str, message: str, function: Callable[[], Any]) -> Any:
        log(message)
        started = time.perf_counter()
        value = function()
        report["phases_s"][name] = round(time.perf_counter() - started, 2)
        return value

    report["ceiling"] = phase("ceiling", "matmul ceiling ...", lambda: matmul_ceiling(device))
    model, config = build_model(preset, device)
    report["model"] = {"image_size": list(config.image_size), "timepoints": config.num_timepoints,
                       "parameters": sum(p.numel() for p in model.parameters())}
    report["batch1"] = phase("batch1", "batch 1: forward, backward, Adam step ...", lambda: time_step(
        model, config, 1, device, repeats=repeats, flops=True, ceiling_flop_per_s=report["ceiling"]["flop_per_s"]))
    del model
    free_memory()
    report["largest_batch"] = phase("largest_batch", f"largest batch (up to {max_batch}) ...",
                                    lambda: largest_batch(preset, device, limit=max_batch))
    report["gradient_checkpointing"] = phase("gradient_checkpointing", "gradient checkpointing ...",
                                             lambda: checkpointing_saving(preset, device, repeats=repeats))
    if epoch or ddp:
        cohort = phase("cohort", f"a {patients}-patient synthetic cohort of the {preset} size ...",
                       lambda: make_cohort(out / f"cohort-{preset}-{patients}", preset, patients))
        report["cohort"] = str(cohort)
        if epoch:
            report["epoch"] = phase("epoch", "one epoch of mstnet run mstnet ...",
                                    lambda: run_epoch(cohort, preset, device, out / "run-single"))
        if ddp:
            count = nproc or (torch.cuda.device_count() if device == "cuda" else 1)
            report["epoch_torchrun"] = phase("epoch_torchrun", f"the same under torchrun, {count} process(es) ...",
                                             lambda: run_epoch(cohort, preset, device, out / f"run-torchrun-{count}",
                                                               nproc=count))
    report["wall_s"] = time.perf_counter() - clock
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu-check.md").write_text(markdown(report))
    return report


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def markdown(report: dict[str, Any]) -> str:
    """The summary of :func:`gpu_check`'s report."""
    env, step, ceiling = report["environment"], report["batch1"], report["ceiling"]
    largest, checkpointing = report["largest_batch"], report["gradient_checkpointing"]
    lines = [
        f"# GPU check: MST-Net `{report['preset']}` preset on {report['device']}",
        "",
        f"- devices: {', '.join(env['devices']) or 'none (CPU)'}; torch {env['torch']}, CUDA {env['cuda']}, "
        f"bf16 {'yes' if env['bf16'] else 'no'}",
        f"- model: {report['model']['parameters'] / 1e6:,.1f} M parameters, input {report['model']['timepoints']} x "
        f"{' x '.join(map(str, report['model']['image_size']))} per patient",
        f"- matmul ceiling: {ceiling['flop_per_s'] / 1e12:,.2f} TFLOP/s ({ceiling['dtype']}, {ceiling['size']}^2)",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| batch 1: forward | {step['forward_s'] * 1e3:,.1f} ms |",
        f"| batch 1: backward | {step['backward_s'] * 1e3:,.1f} ms |",
        f"| batch 1: Adam step | {step['optimizer_s'] * 1e3:,.1f} ms |",
        f"| batch 1: steps per second | {step['steps_per_s']:,.2f} |",
        f"| batch 1: peak memory | {_mib(step['peak_memory_mib'])} |",
        f"| batch 1: FLOPs per forward + backward | {step.get('flops_per_step', 0) / 1e12:,.3f} TFLOP |",
        f"| batch 1: fraction of the matmul ceiling | {step.get('ceiling_fraction', float('nan')):.1%} |",
        f"| largest batch that fits | {largest['largest']} (limited by {largest['limited_by']}; "
        f"peak {_mib(largest['peak_memory_mib'])}) |",
        f"| gradient checkpointing, batch {checkpointing['batch']}: peak memory | "
        f"{_mib(checkpointing['checkpointed']['peak_memory_mib'])} vs {_mib(checkpointing['plain']['peak_memory_mib'])}"
        + (f" ({checkpointing['memory_saving_fraction']:.1%} saved)" if checkpointing["memory_saving_fraction"] is not None else "")
        + " |",
        f"| gradient checkpointing: step time | {checkpointing['time_ratio']:.2f}x |",
    ]
    for key, title in (("epoch", "one epoch, `mstnet run mstnet`"), ("epoch_torchrun", "one epoch under torchrun")):
        if key in report:
            run = report[key]
            if run["ok"]:
                lines.append(f"| {title}, {run['processes']} process(es) | {run['wall_s']:,.0f} s wall "
                             f"(fold {run.get('fold_wall_s') or 0:,.0f} s), Dice {run.get('dice') or 0:.3f}, "
                             f"AUC {run.get('auc') if run.get('auc') is not None else 'n/a'} |")
            else:
                lines.append(f"| {title}, {run['processes']} process(es) | FAILED (exit {run['returncode']}) |")
    lines += ["", f"Total {report['wall_s']:,.0f} s. Every number: `gpu-check.json`.", ""]
    for key in ("epoch", "epoch_torchrun"):
        if key in report:
            lines.append(f"- `{report[key]['command']}`")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("gpu-check")
    def gpu_check_command(
        out: Path = typer.Option(Path("reports/gpu-check"), help="folder for gpu-check.json, gpu-check.md and the runs"),
        preset: str = typer.Option("paper", help="MST-Net and run preset (paper; tiny for a quick dry run)"),
        device: str = typer.Option("cuda", help="cuda; cpu runs the same path on the CPU (with --preset tiny)"),
        max_batch: int = typer.Option(64, min=1, help="largest batch tried"),
        patients: int = typer.Option(FIVE_FOLDS_PATIENTS, min=FIVE_FOLDS_PATIENTS,
                                     help="patients of the synthetic cohort for the epoch runs"),
        epoch: bool = typer.Option(True, help="run one epoch of `mstnet run mstnet` (and under torchrun)"),
    ) -> None:
        """Check the paper preset on CUDA: timings, largest batch, memory, checkpointing, one epoch, DDP."""
        import torch

        if device not in ("cuda", "cpu"):
            raise typer.BadParameter(f"--device takes cuda or cpu; got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            typer.echo(SKIP_MESSAGE)
            return
        report = gpu_check(out, preset=preset, device=device, max_batch=max_batch, patients=patients, epoch=epoch,
                           ddp=epoch, log=lambda line: typer.echo(line, err=True))
        typer.echo((out / "gpu-check.md").read_text())
        failed = [key for key in ("epoch", "epoch_torchrun") if key in report and not report[key]["ok"]]
        if failed:
            for key in failed:
                typer.echo(f"{key} failed:\n" + "\n".join(report[key].get("log_tail", [])), err=True)
            raise typer.Exit(1)
