"""Output-bias initialisation at the training data's priors (nnU-Net / focal-loss practice).

A segmentation network whose last convolution starts at logit 0 predicts p = 0.5 on every
voxel, although about 2% of a nodule crop is foreground; Adam moves a bias by about the
learning rate per step, so a short run spends most of its steps unlearning that. The same
holds for a classifier head at p = 0.5 when a third of the patients are malignant.

:func:`initialise_output_biases` finds, for any model of the harness, the layer whose
output *is* the segmentation logits (the last biased convolution with K output channels
run in the forward pass) and the one whose output is the classification logits (the last
biased linear layer with 2 outputs), and shifts their biases so that on a batch of training
data the mean foreground probability equals the foreground prior and the mean malignancy
probability the class prior. The shift is found by bisection on the captured layer outputs,
so it is exact on that batch whatever the weights; the layers after it must be shape-only
(reshape, crop, upsampling), which holds for every registered model (tested).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SEGMENTATION_LAYERS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BISECTION_STEPS = 60
LOGIT_BOUND = 30.0


@dataclass(frozen=True)
class OutputBiasInit:
    """What :func:`initialise_output_biases` did: the layers found and the mean probabilities before and after."""

    segmentation_layer: str | None
    segmentation_before: float | None
    segmentation_after: float | None
    classification_layer: str | None
    classification_before: float | None
    classification_after: float | None


def _last_layers(model: nn.Module, run_forward, seg_channels: int | None) -> tuple[str | None, str | None, dict[str, Tensor]]:
    """Names of the last executed segmentation-logit and classification-logit layers, with their outputs."""
    order: list[str] = []
    outputs: dict[str, Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        biased = getattr(module, "bias", None) is not None
        if biased and (isinstance(module, SEGMENTATION_LAYERS) or (isinstance(module, nn.Linear) and module.out_features == 2)):
            def hook(_module, _inputs, output, name=name):
                order.append(name)
                outputs[name] = output.detach().float()
            handles.append(module.register_forward_hook(hook))
    try:
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    seg = next((n for n in reversed(order) if isinstance(modules[n], SEGMENTATION_LAYERS)
                and seg_channels is not None and modules[n].out_channels == seg_channels), None)
    cls = next((n for n in reversed(order) if isinstance(modules[n], nn.Linear)), None)
    return seg, cls, outputs


def _solve_shift(mean_probability, target: float) -> float:
    """The shift s with ``mean_probability(s) == target`` (increasing in s), by bisection."""
    low, high = -LOGIT_BOUND, LOGIT_BOUND
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if mean_probability(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def initialise_output_biases(model: nn.Module, run_forward, foreground_prior: float | None,
                             class_prior: float | None, seg_channels: int | None = 1) -> OutputBiasInit:
    """Shift the output biases of ``model`` to the priors (see the module docstring).

    Args:
        model: the model (its parameters are changed in place).
        run_forward: ``() -> Any``: one forward pass of ``model`` on a training batch.
        foreground_prior: mean foreground fraction of the training masks (None: leave the
            segmentation layer alone).
        class_prior: share of malignant training patients (None: leave the classifier alone).
        seg_channels: K of the segmentation logits (1: sigmoid foreground; 2: softmax, the
            foreground channel's bias is shifted against the background's).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        seg_name, cls_name, outputs = _last_layers(model, run_forward, seg_channels)
        modules = dict(model.named_modules())
        seg_before = seg_after = cls_before = cls_after = None
        if seg_name is not None and foreground_prior is not None and 0 < foreground_prior < 1:
            logits = outputs[seg_name]
            if seg_channels == 1:
                def seg_mean(shift: float) -> float:
                    return float(torch.sigmoid(logits + shift).mean())
            else:
                def seg_mean(shift: float) -> float:
                    shifted = logits.clone()
                    shifted[:, 1:] += shift
                    return float(torch.softmax(shifted, dim=1)[:, 1:].sum(dim=1).mean())
            seg_before = seg_mean(0.0)
            shift = _solve_shift(seg_mean, foreground_prior)
            bias = modules[seg_name].bias
            if seg_channels == 1:
                bias += shift
            else:
                bias[1:] += shift
            seg_after = seg_mean(shift)
        if cls_name is not None and class_prior is not None and 0 < class_prior < 1:
            logits = outputs[cls_name]

            def cls_mean(shift: float) -> float:
                return float(torch.softmax(logits + torch.tensor([0.0, shift]), dim=1)[:, 1].mean())

            cls_before = cls_mean(0.0)
            shift = _solve_shift(cls_mean, class_prior)
            modules[cls_name].bias[1] += shift
            cls_after = cls_mean(shift)
    model.train(was_training)
    result = OutputBiasInit(seg_name, seg_before, seg_after, cls_name, cls_before, cls_after)
    log.info("output biases at the priors: segmentation %s %s -> %s (prior %s), classification %s %s -> %s (prior %s)",
             seg_name, _fmt(seg_before), _fmt(seg_after), _fmt(foreground_prior),
             cls_name, _fmt(cls_before), _fmt(cls_after), _fmt(class_prior))
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def training_priors(dataset: Any) -> tuple[float | None, float]:
    """(mean foreground fraction of the masks, share of malignant patients) over the items of a
    training :class:`mstnet.data.dataset.PatientDataset`, as the model sees them (crops after
    augmentation at the dataset's current seed; scans without a mask left out)."""
    foreground, voxels, malignant = 0.0, 0, 0
    for index in range(len(dataset)):
        item = dataset[index]
        malignant += int(item["label"]) == 1
        present = item["mask_present"].bool()
        if present.any():
            masks = item["mask"][present]
            foreground += float(masks.sum())
            voxels += masks.numel()
    return (foreground / voxels if voxels else None), malignant / max(len(dataset), 1)
