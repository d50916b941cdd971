"""What a fit records and resumes from: the epoch records (``history.csv``), the :class:`TrainingState`
of ``last.pt`` and the best weights of ``best.pt``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from mstnet.atomic import atomic_path
from mstnet.experiments.distributed import is_main_process


@dataclass
class EpochRecord:
    """What one epoch produced; a row of ``history.csv``."""

    stage: str
    epoch: int
    train_loss: float
    val_loss: float
    val_score: float
    lr: float
    val_dice: float = math.nan
    val_auc: float = math.nan
    step: int = 0
    """Optimizer steps of the fold so far, over every stage (the training budget spent)."""


@dataclass
class TrainingState:
    """Where a fit stands: everything :func:`mstnet.experiments.training.fit` needs to continue it, saved to ``last.pt`` after
    every epoch and at the end of every stage.

    The file holds :meth:`checkpoint`, a plain dict of these fields (the history as a list of
    dicts, weights and optimizer states as PyTorch state dicts), readable with ``torch.load``
    without this class.
    """

    stage_index: int = 0
    """The stage running, or the next to start."""
    epoch: int = 0
    """Epochs of that stage done."""
    history: list[EpochRecord] = field(default_factory=list)
    selected: dict[str, int] = field(default_factory=dict)
    """The selected (best inner-validation) epoch of each stage so far."""
    best_score: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    """The weights of the running stage's best epoch (on the CPU)."""
    best_weights_previous_stage: dict[str, torch.Tensor] | None = None
    """The finished stage's best weights, where the next stage starts."""
    stale: int = 0
    """Epochs since the running stage last improved (early stopping)."""
    steps: int = 0
    """Optimizer steps of the fit so far."""
    seconds: list[float] = field(default_factory=list)
    """Cumulative wall seconds at the end of each epoch of ``history``."""
    optimizer: dict[str, Any] | None = None
    """The running stage's optimizer state (None between stages: the next starts afresh)."""
    scheduler: dict[str, Any] | None = None
    weights: dict[str, torch.Tensor] | None = None
    """The model's weights when saved."""

    def checkpoint(self) -> dict[str, Any]:
        """The contents of ``last.pt``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["history"] = [vars(record) for record in self.history]
        return values

    @classmethod
    def from_checkpoint(cls, values: dict[str, Any]) -> "TrainingState":
        """The state :meth:`checkpoint` wrote."""
        state = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        state.history = [EpochRecord(**row) for row in state.history]
        return state


@dataclass(frozen=True)
class Checkpoints:
    """``last.pt`` (the :class:`TrainingState`) and ``best.pt`` (the best weights) of a run folder,
    written by the main process only; nothing without a folder."""

    folder: Path | None

    def _save(self, obj: Any, name: str) -> None:
        if self.folder is not None and is_main_process():
            _atomic_save(obj, self.folder / name)

    def save_state(self, state: TrainingState) -> None:
        self._save(state.checkpoint(), "last.pt")

    def save_best(self, weights: dict[str, torch.Tensor]) -> None:
        self._save(weights, "best.pt")

    def saved_state(self) -> TrainingState | None:
        last = None if self.folder is None else self.folder / "last.pt"
        if last is None or not last.exists():
            return None
        return TrainingState.from_checkpoint(torch.load(last, map_location="cpu", weights_only=False))


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
