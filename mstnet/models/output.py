"""The one output type every model in the project returns."""

from __future__ import annotations

from dataclasses import dataclass, field

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
