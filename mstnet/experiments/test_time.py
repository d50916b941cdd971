"""A trained model's outputs on a batch, optionally averaged over mirrored inputs (test-time mirroring).

With mirroring, the batch's images are flipped along every combination of the depth, height and
width axes (8 inputs, the first the unflipped one), the model runs on each, every foreground map is
flipped back, and the foreground and malignancy probabilities are averaged: nnU-Net's test-time
mirroring, over the axes that the training augmentation flips (``RandFlipd`` on each spatial axis,
:func:`mstnet.data.transforms.augmentation_transform`). Used on the inner-validation threshold, the
test fold and ``mstnet predict``; the per-epoch inner-validation scores that choose the epoch stay
unmirrored.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from mstnet.experiments.training import autocast_context, forward_batch, malignancy_probability
from mstnet.models.output import foreground_map

SPATIAL_AXES: tuple[int, int, int] = (-3, -2, -1)
"""D, H, W of images ``[B, T, 1, D, H, W]`` and of foreground maps ``[B, T, D, H, W]`` alike."""


def mirror_flips(mirroring: bool) -> list[tuple[int, ...]]:
    """The flips a prediction averages over: every subset of :data:`SPATIAL_AXES` (8, the empty one
    first) with ``mirroring``, else only the unflipped input."""
    if not mirroring:
        return [()]
    return [axes for size in range(len(SPATIAL_AXES) + 1) for axes in itertools.combinations(SPATIAL_AXES, size)]


def _flipped(tensor: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return tensor.flip(axes) if axes else tensor


def predict_batch(model: torch.nn.Module, batch: dict[str, Any], device: torch.device, use_clinical: bool, amp: bool,
                  mirroring: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(malignancy probability ``[B]`` float32 or None, foreground probability ``[B, T, D, H, W]`` float32
    or None) of ``model`` (without gradients; the caller puts it in eval mode) on ``batch`` (already on ``device``; images
    ``[B, T, 1, D, H, W]``), each the mean over :func:`mirror_flips` of ``mirroring``; both on the CPU."""
    flips = mirror_flips(mirroring)
    probability = foreground = None
    for axes in flips:
        with torch.no_grad(), autocast_context(device, amp):
            output = forward_batch(model, {**batch, "image": _flipped(batch["image"], axes)}, use_clinical)
        if output.cls_logits is not None:
            draw = malignancy_probability(output.cls_logits).cpu()
            probability = draw if probability is None else probability + draw
        if output.seg_logits is not None:
            draw = _flipped(foreground_map(output.seg_logits.float())[:, :, 0], axes).cpu()
            foreground = draw if foreground is None else foreground + draw
    return (None if probability is None else probability / len(flips),
            None if foreground is None else foreground / len(flips))
