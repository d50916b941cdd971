"""What one fold leaves in its folder besides checkpoints, written the same way for deep and tabular folds.

``metrics.json`` (:func:`mstnet.experiments.fold_metrics.fold_metrics`), ``predictions.csv``, ``segmentation.csv``, ``history.csv``,
``timing.csv``, ``train.log`` (:func:`fold_log`), ``attempts.json`` (:class:`FoldAttempts`) and, last,
``run.json``, whose presence marks the fold complete (:meth:`FoldRecord.finish`); the format is
``docs/results-format.md``.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mstnet.atomic import write_text_atomic
from mstnet.experiments.convergence import fold_plateau, short_of_plateau
from mstnet.experiments.optimisation import OPTIMIZER_LABELS
from mstnet.experiments.registry import LARGE_NODULE_MM, Recipe
from mstnet.experiments.training import cpu_bf16_steps, stages_for
from mstnet.results_files import (ATTEMPTS_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, RUN_FILE,
                                  TIMING_FILE)

TRAIN_LOG = "train.log"


def json_default(value: Any) -> Any:
    """JSON for what ``json.dumps`` cannot write itself: numpy scalars, paths, devices, tuples."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def environment(device: torch.device) -> dict[str, Any]:
    """The git commit, library versions and device of a run (``run.json``)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def recipe_summary(recipe: Recipe, tasks: Sequence[str] = ("segmentation", "classification"),
                   cached_stage: bool | None = None, device: torch.device | None = None) -> str:
    """One line naming what a recipe does for a model with ``tasks``, for table footnotes: the stages
    that train, optimizer and rate, schedule, epochs per stage, bias initialisation, whether the
    classification stage read cached frozen outputs (``cached_stage``; None: as the recipe asks), and
    scale augmentation, bf16 training steps on the CPU and test-time mirroring. With the ``device`` that
    trained, bf16 steps are named where they ran (:func:`mstnet.experiments.training.cpu_bf16_steps`):
    on a CPU without native bf16 the line says the steps stayed float32, and on CUDA it says nothing of them.

    Raises:
        ValueError: the recipe trains nothing for ``tasks`` (:func:`mstnet.experiments.training.stages_for`).
    """
    stages = stages_for(recipe, tasks)
    schedule = (f"warm-up {recipe.warmup_fraction:.0%} then cosine per step" if recipe.lr_schedule == "warmup_cosine"
                else "cosine per epoch")
    lengths = [stage.epochs for stage in stages]
    own_lengths = recipe.stage_epochs or recipe.segmentation_epochs
    epochs = "/".join(map(str, lengths)) if own_lengths or len(set(lengths)) > 1 else str(lengths[0])
    optimizer = OPTIMIZER_LABELS.get(recipe.optimizer, recipe.optimizer)
    cached = recipe.frozen_stage_cache if cached_stage is None else cached_stage
    return (f"{'+'.join(stage.name for stage in stages)}, {optimizer} lr {recipe.learning_rate:g}, {schedule}, "
            f"{epochs} epochs x batch {recipe.batch_size}"
            + (", output biases at the priors" if recipe.output_bias_init else "")
            + (f", classification stage on cached frozen outputs ({recipe.frozen_stage_augmentations} augmentations, "
               f"batch {recipe.frozen_stage_batch_size or recipe.batch_size})"
               if cached and any(stage.name == "classification" for stage in stages) else "")
            + (f", scale augmentation (p {recipe.scale_augmentation:g}, x0.7-1.4)" if recipe.scale_augmentation else "")
            + (f", patients with a nodule over {LARGE_NODULE_MM:g} mm sampled x{recipe.large_nodule_weight:g}"
               if recipe.large_nodule_weight != 1 else "")
            + _cpu_bf16_text(recipe.cpu_bf16, device)
            + (", test-time mirroring (8 flips)" if recipe.test_time_mirroring else ""))


def _cpu_bf16_text(cpu_bf16: bool, device: torch.device | None) -> str:
    """The footnote's words on bf16 training steps on the CPU (see :func:`recipe_summary`)."""
    if not cpu_bf16 or (device is not None and device.type != "cpu"):
        return ""
    if device is None or cpu_bf16_steps(cpu_bf16, device):
        return ", bf16 training steps on the CPU"
    return ", float32 training steps (bf16 asked, but the CPU has no native bf16)"


class FoldAttempts:
    """The attempts at one fold (``attempts.json``): start, finish and wall time of each.

    A new attempt is recorded when a fold starts (or resumes); :meth:`tick` (an epoch
    callback) keeps its wall time current, so a killed attempt still counts up to its last
    epoch. ``run.json`` gets the total over all attempts.
    """

    def __init__(self, fold_dir: Path, write: bool = True):
        self.path = Path(fold_dir) / ATTEMPTS_FILE
        self.write = write
        self.clock = time.perf_counter()
        self.attempts: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else []
        self.attempts.append({"started": datetime.now(timezone.utc).isoformat(), "finished": None, "wall_s": 0.0})
        self._save()

    def _save(self) -> None:
        if self.write:
            write_json(self.path, self.attempts)

    def tick(self, _record: Any = None) -> None:
        self.attempts[-1]["wall_s"] = time.perf_counter() - self.clock
        self._save()

    def finish(self, resumed_from_epoch: int | None = None) -> dict[str, Any]:
        """Close the current attempt; the fields of ``run.json`` that describe all attempts."""
        self.tick()
        self.attempts[-1].update(finished=datetime.now(timezone.utc).isoformat(), resumed_from_epoch=resumed_from_epoch)
        self._save()
        return {"started": self.attempts[0]["started"], "finished": self.attempts[-1]["finished"],
                "wall_s": sum(a["wall_s"] for a in self.attempts), "attempts": self.attempts}


@contextmanager
def fold_log(fold_dir: Path) -> Iterator[None]:
    """Append the package's log records (INFO and up) to ``fold_dir/train.log`` while the fold runs."""
    handler = logging.FileHandler(Path(fold_dir) / TRAIN_LOG, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("mstnet")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()
        package_logger.setLevel(previous_level)


@dataclass
class FoldRecord:
    """The writer of one fold's results, deep or tabular: its folder, what it is and its attempts."""

    fold_dir: Path
    experiment: str
    fold_index: int
    splits_hash: str
    device: torch.device
    attempts: FoldAttempts

    def write_history(self, history: pd.DataFrame, seconds: Sequence[float]) -> None:
        """``history.csv`` (one row per epoch) and, when every epoch was timed, ``timing.csv``."""
        write_text_atomic(self.fold_dir / HISTORY_FILE, history.to_csv(index=False))
        if len(seconds) == len(history):
            timing = history[["stage", "epoch", "step"]].assign(seconds=list(seconds))
            write_text_atomic(self.fold_dir / TIMING_FILE, timing.to_csv(index=False))

    def finish(self, metrics: dict[str, Any], patients: list[dict], threshold: float,
               selected_epoch: dict[str, int] | None = None, resumed_from_epoch: int | None = None,
               history: pd.DataFrame | None = None, recipe_text: str | None = None) -> None:
        """predictions.csv, metrics.json, then run.json (last: its presence marks the fold complete).

        With a training ``history``, run.json also holds the training budget (``optimizer_steps``)
        and the plateau verdict of every stage (:mod:`mstnet.experiments.convergence`).
        """
        if patients:
            write_text_atomic(self.fold_dir / PREDICTIONS_FILE, pd.DataFrame(patients).to_csv(index=False))
        write_json(self.fold_dir / METRICS_FILE, metrics)
        training: dict[str, Any] = {}
        if history is not None and len(history):
            rows = history.to_dict("records")
            verdicts = fold_plateau(rows)
            training = {"optimizer_steps": int(rows[-1]["step"]),
                        "plateau": verdicts, "plateau_reached": all(v["reached"] for v in verdicts.values()),
                        "short_of_plateau": short_of_plateau(verdicts)}
        if recipe_text is not None:
            training["recipe_summary"] = recipe_text
        write_json(self.fold_dir / RUN_FILE, {
            "status": "complete", "experiment": self.experiment, "fold": self.fold_index,
            "splits_hash": self.splits_hash, **self.attempts.finish(resumed_from_epoch), "selected_epoch": selected_epoch,
            "threshold": threshold, "resumed_from_epoch": resumed_from_epoch, **training, **environment(self.device),
        })
