"""The one output type every model in the project returns, and the foreground probability of its logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ModelOutput:
    """What a model's ``forward(images, clinical_categorical, clinical_numeric, days)`` returns.

    Attributes:
        seg_logits: segmentation logits ``[B, T, K, D, H, W]`` (K = 1: sigmoid foreground;
            K = 2: softmax background/foreground), or None for classification-only models.
        cls_logits: malignancy logits ``[B, 2]`` (benign, malignant), or None for
            segmentation-only models.
        features: named intermediate tensors for inspection (e.g. ``"z12"``,
            ``"image_vector"``); never used by the loss.
    """

    seg_logits: Tensor | None
    cls_logits: Tensor | None
    features: dict[str, Tensor] = field(default_factory=dict)


def foreground_map(seg_logits: Tensor) -> Tensor:
    """Foreground probability of segmentation logits, in their dtype, channel axis kept (size 1):
    (N, K, D, H, W) -> (N, 1, D, H, W), or [B, T, K, D, H, W] -> [B, T, 1, D, H, W].

    K = 1: sigmoid; K > 1: softmax over the channels, summed over every channel but the
    background (channel 0).
    """
    channel = seg_logits.dim() - 4
    classes = seg_logits.shape[channel]
    if classes == 1:
        return torch.sigmoid(seg_logits)
    return torch.softmax(seg_logits, dim=channel).narrow(channel, 1, classes - 1).sum(dim=channel, keepdim=True)
