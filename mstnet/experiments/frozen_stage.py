"""The classification stage of the two-stage recipe without recomputing the frozen network.

In the paper's second stage the segmentation network is frozen: for a given input its
outputs (the classifier reads ``z12`` and the foreground probability,
:meth:`mstnet.models.mstnet.MSTNet.frozen_features`) never change. Recomputing them every
epoch is most of the stage's cost. With ``Recipe.frozen_stage_cache`` the harness computes
them once per fold for each training patient and each of a fixed, finite set of
augmentations (:data:`AUGMENTATIONS`: the in-plane flips and rotations by 90 degrees, then the
same with the slices reversed), keeps them in memory, and reuses them every epoch; the
classification network (clinical encoder, global branch, fusion, head) trains on them as
usual. Each epoch draws, per patient, one augmentation of the set from (epoch seed, patient
index), so the draws are reproducible and a resumed stage equals an uninterrupted one.

What this changes against the recomputing stage: the random augmentations of the training
loader (flips, rotations, noise, crop jitter; :class:`mstnet.data.transforms.AugmentConfig`)
are replaced by the finite set on the un-jittered crop. For the same draws both paths give
the same logits and losses (``tests/test_frozen_stage.py``); ``cache=False`` is that
recomputing path.

Memory: one entry per (patient, augmentation) holds ``T x (C x g + D x H x W)`` float32
values, e.g. 96 training patients x 8 augmentations x 2 x 16 x 48 x 48 about 230 MB at the
cpu preset; at the paper's 16 x 512 x 512, 33 MB per entry, so there choose few augmentations
(``frozen_stage_augmentations``) or leave the cache off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Augmentation:
    """One element of the finite augmentation set, applied to ``[..., D, H, W]`` tensors:
    flip W if ``flip_width``, then rotate in plane by ``quarter_turns`` x 90 degrees, then
    reverse the slices if ``flip_depth``."""

    quarter_turns: int
    flip_width: bool
    flip_depth: bool

    def __call__(self, volume: Tensor) -> Tensor:
        if self.flip_width:
            volume = volume.flip(-1)
        if self.quarter_turns:
            volume = torch.rot90(volume, self.quarter_turns, dims=(-2, -1))
        if self.flip_depth:
            volume = volume.flip(-3)
        return volume.contiguous()


AUGMENTATIONS: tuple[Augmentation, ...] = tuple(
    Augmentation(turns, flip_width, flip_depth)
    for flip_depth in (False, True) for flip_width in (False, True) for turns in range(4)
)
"""The ordered set: the first is the identity, the first 8 are the in-plane dihedral group
(4 rotations x with/without a flip), the 16 add reversed slices. ``n`` augmentations means
the first ``n`` (non-square crops skip the odd rotations)."""


def augmentation_set(count: int, height: int, width: int) -> tuple[Augmentation, ...]:
    """The first ``count`` augmentations that keep an ``H x W`` plane's shape.

    Raises:
        ValueError: ``count`` below 1 or above what the shape allows (16 square, 8 otherwise).
    """
    allowed = tuple(a for a in AUGMENTATIONS if height == width or a.quarter_turns % 2 == 0)
    if not 1 <= count <= len(allowed):
        raise ValueError(f"frozen_stage_augmentations must be 1..{len(allowed)} for {height} x {width} crops, got {count}")
    return allowed[:count]


def augmentation_draw(epoch_seed: int, index: int, count: int) -> int:
    """Which of ``count`` augmentations patient ``index`` gets in the epoch of ``epoch_seed``."""
    return int(np.random.default_rng([epoch_seed % 2**63, index]).integers(count))


class FrozenStageData:
    """Training and validation batches for the classification stage, frozen outputs included.

    Each batch is the dataset's collated dict (clinical inputs, days, labels, ...) with
    ``"frozen"`` added: ``{"z12": [B, T, C, g...], "foreground": [B, T, 1, D, H, W]}``, the frozen
    network's outputs on the patient's un-augmented crop transformed by its drawn augmentation,
    and ``"augmentation"``: the drawn indices [B]. ``"image"`` is the transformed crop; with
    ``cache=False`` there is no ``"frozen"`` and the whole model runs on it (the recomputing path).

    Args:
        model: has ``frozen_features(images) -> (seg_logits, dict)`` (:class:`MSTNet`).
        train: the training patients, un-augmented (``__getitem__ -> item dict``).
        validation: the inner-validation patients, un-augmented.
        collate: item dicts -> batch dict.
        batch_size: patients per batch.
        augmentations: the finite set (:func:`augmentation_set`).
        device: where the model runs; cached entries are kept on the CPU.
        cache: keep the frozen outputs (default) or recompute them for every batch.
    """

    def __init__(self, model: nn.Module, train: Any, validation: Any, collate: Any, batch_size: int,
                 augmentations: Sequence[Augmentation], device: torch.device, cache: bool = True) -> None:
        self.model = model
        self.train = train
        self.validation = validation
        self.collate = collate
        self.batch_size = batch_size
        self.augmentations = tuple(augmentations)
        self.device = device
        self.cache = cache
        self.entries: dict[tuple[str, int, int], dict[str, Tensor]] = {}
        """(split, patient index, augmentation) -> frozen outputs of one patient, [T, ...] each."""
        self.computed = 0
        """Patient-augmentation entries computed by the frozen network (for tests and logs)."""

    def train_batches_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.batch_size)

    def train_batches(self, epoch_seed: int) -> Iterator[dict[str, Any]]:
        """One epoch: patients shuffled by ``epoch_seed``, one drawn augmentation each."""
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            draws = [augmentation_draw(epoch_seed, index, len(self.augmentations)) for index in indices]
            yield self._batch("train", self.train, indices, draws)

    def validation_batches(self) -> Iterator[dict[str, Any]]:
        """The inner-validation patients in order, un-augmented."""
        for start in range(0, len(self.validation), self.batch_size):
            indices = list(range(start, min(start + self.batch_size, len(self.validation))))
            yield self._batch("validation", self.validation, indices, [0] * len(indices))

    def _batch(self, split: str, dataset: Any, indices: Sequence[int], draws: Sequence[int]) -> dict[str, Any]:
        batch = self.collate([dataset[index] for index in indices])
        batch["image"] = torch.stack([self.augmentations[draw](image) for draw, image in zip(draws, batch["image"])])
        batch["augmentation"] = torch.tensor(list(draws))
        if not self.cache:
            return batch
        keys = [(split, index, draw) for index, draw in zip(indices, draws)]
        missing = [n for n, key in enumerate(keys) if key not in self.entries]
        computed = self._frozen_outputs(batch["image"][missing]) if missing else {}
        for row, n in enumerate(missing):
            self.entries[keys[n]] = {name: value[row] for name, value in computed.items()}
        batch["frozen"] = {name: torch.stack([self.entries[key][name] for key in keys]).to(self.device)
                           for name in self.entries[keys[0]]}
        return batch

    def _frozen_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """[n, T, 1, D, H, W] -> the frozen network's outputs, float32 on the CPU, one row per patient."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            _, frozen = self.model.frozen_features(images.to(self.device))
        self.model.train(was_training)
        self.computed += len(images)
        return {name: value.float().cpu() for name, value in frozen.items()}
