"""The optimizer and learning-rate schedule of one training stage, both from the recipe.

``Recipe.optimizer`` chooses the optimizer (:data:`mstnet.experiments.registry.OPTIMIZERS`):

- ``"adam"`` (default, the public release's): Adam with the recipe's learning rate and
  L2 weight decay;
- ``"adamw"``: AdamW, the same with decoupled weight decay (``Recipe.weight_decay``, 0 by
  default, where it equals Adam);
- ``"sgd"``: SGD with Nesterov momentum :data:`SGD_MOMENTUM`, as nnU-Net trains (which pairs
  it with a learning rate of 1e-2 and weight decay 3e-5: set them with ``--set``).

``Recipe.lr_schedule`` chooses the schedule (:func:`stage_scheduler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mstnet.experiments.registry import Recipe

SGD_MOMENTUM = 0.99
"""Momentum of ``Recipe.optimizer="sgd"`` (Nesterov), nnU-Net's."""

OPTIMIZER_LABELS = {"adam": "Adam", "adamw": "AdamW", "sgd": f"SGD (Nesterov momentum {SGD_MOMENTUM:g})"}
"""How footnotes name each ``Recipe.optimizer``."""


def stage_optimizer(recipe: Recipe, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``recipe.optimizer`` names, over the parameters a stage trains.

    Raises:
        ValueError: an optimizer name outside :data:`OPTIMIZER_LABELS` (``checked_recipe`` refuses
            it earlier, with the valid names).
    """
    parameters = list(parameters)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=recipe.learning_rate, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; choose one of {', '.join(OPTIMIZER_LABELS)}")


def stage_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, steps_per_epoch: int):
    """The learning-rate schedule of one stage, and whether it steps per optimizer step.

    ``"epoch_cosine"`` (the release): cosine decay per epoch to ``final_lr_fraction`` x the
    rate. ``"warmup_cosine"``: linear warm-up over the first ``warmup_fraction`` of the
    stage's optimizer steps, then cosine decay per step to ``final_lr_fraction`` x the rate.
    """
    if recipe.lr_schedule == "epoch_cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(epochs, 1), eta_min=recipe.learning_rate * recipe.final_lr_fraction), False
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(int(round(recipe.warmup_fraction * total)), total - 1)
    floor = recipe.final_lr_fraction

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler: Any | None) -> None:
    """One optimizer step (through the AMP scaler), then the per-step schedule if there is one."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
