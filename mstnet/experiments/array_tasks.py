"""What one task of a job array runs (:mod:`mstnet.experiments.launcher`): one fold of one experiment
(:class:`FoldTask`) or one Optuna worker on one outer fold (:class:`TuneTask`), as submitit callables."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any


def train_fold(name: str, prepared: Any, options: Any, fold: int) -> None:
    """What one array task does: :func:`run_experiment` on one fold of seed replicate ``options.seed_index``
    (skips it when finished, resumes it when not)."""
    from mstnet.experiments.registry import get_experiment
    from mstnet.experiments.runner import run_experiment

    run_experiment(get_experiment(name), prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[fold])


def _start_task() -> None:
    """In the task's process: the package's INFO log to the task's stderr log, and torch's threads
    to the CPUs SLURM gave the task (``--cpus-per-task``, else the job's CPUs on the node): torch's
    default, one thread per core of the node, would oversubscribe a node shared by several tasks."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for variable in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            torch.set_num_threads(int(value))
            break


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ModuleNotFoundError:  # submitit missing: --launcher slurm fails in Launcher(); local runs are unaffected
    _Checkpointable = object  # type: ignore[assignment,misc]


class FoldTask(_Checkpointable):  # type: ignore[misc,valid-type]
    """One (experiment, fold, training-seed replicate) as a submitit callable; requeued with the same arguments when its time
    limit comes (submitit's ``Checkpointable``), so the fold resumes from ``last.pt``."""

    def __init__(self, prepared: Any, options: Any, device: str = "auto", runner: Callable[..., Any] | None = None):
        self.prepared, self.options, self.device, self.runner = prepared, options, device, runner

    def __call__(self, name: str, fold: int, seed: int = 0) -> dict[str, Any]:
        from mstnet.experiments.runner import fold_is_complete
        from mstnet.experiments.training import resolve_device

        _start_task()
        options = replace(self.options, device=resolve_device(self.device), progress=False, seed_index=seed)
        (self.runner or train_fold)(name, self.prepared, options, fold)
        return {"experiment": name, "fold": fold, "seed": seed,
                "complete": fold_is_complete(self.prepared.runs_dir, name, fold, self.prepared.splits, seed)}


class TuneTask(_Checkpointable):  # type: ignore[misc,valid-type]
    """One Optuna worker on one outer fold: :func:`mstnet.experiments.tuning.tune` with fixed arguments."""

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = arguments

    def __call__(self, fold: int, worker: int) -> dict[str, Any]:
        from mstnet.experiments.tuning import tune

        _start_task()
        arguments = dict(self.arguments)
        if arguments.get("seed") is not None:
            arguments["seed"] = int(arguments["seed"]) + worker  # workers explore apart
        study = tune(fold=fold, study_name=arguments.pop("study_names")[fold], **arguments)
        return {"fold": fold, "worker": worker, "study": study.study_name, "trials": len(study.trials)}
