"""The multi-task loss every model in the project is trained with."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import Tensor, nn

from mstnet.models.output import ModelOutput

DEFAULT_SEG_LOSS_WEIGHT = 0.7
"""Weight of the segmentation term in a joint (multi-task) stage: the release's joint run
(:class:`MultiTaskLoss`, :attr:`mstnet.experiments.registry.Recipe.seg_loss_weight`)."""

DEFAULT_CLS_LOSS_WEIGHT = 0.3
"""Weight of the classification term in a joint stage (the release's joint run)."""


class MultiTaskLoss(nn.Module):
    """``seg_weight`` x segmentation loss + ``cls_weight`` x cross-entropy.

    Segmentation: MONAI's ``DiceCELoss`` by default (Dice + binary/categorical cross-entropy,
    per scan, averaged over the scans that have a mask), or the release's plain ``DiceLoss``
    with ``segmentation_loss="dice"``. K = 1 logits use a sigmoid, K = 2 a softmax with the
    mask one-hot encoded. Classification: cross-entropy on ``[B, 2]`` logits. Computed in
    float32 (safe under autocast).

    A term is skipped when its weight is 0 or the model does not produce its logits
    (segmentation-only or classification-only models). Scans without a mask
    (``has_mask`` False) do not enter the segmentation term; a batch without any gives a
    zero term that still depends on the logits (so DDP sees every parameter used).

    ``loss(output, masks [B, T, 1, D, H, W], labels [B], has_mask [B] or [B, T] bool)
    -> (total, {"segmentation": ..., "classification": ...})`` (parts detached).

    Args:
        seg_weight: weight of the segmentation term (:data:`DEFAULT_SEG_LOSS_WEIGHT`).
        cls_weight: weight of the classification term (:data:`DEFAULT_CLS_LOSS_WEIGHT`).
        segmentation_loss: "dice_ce" (default) or "dice" (the release).
    """

    def __init__(self, seg_weight: float = DEFAULT_SEG_LOSS_WEIGHT, cls_weight: float = DEFAULT_CLS_LOSS_WEIGHT,
                 segmentation_loss: Literal["dice_ce", "dice"] = "dice_ce") -> None:
        super().__init__()
        if segmentation_loss not in ("dice_ce", "dice"):
            raise ValueError(f"segmentation_loss must be 'dice_ce' or 'dice', not {segmentation_loss!r}")
        if seg_weight < 0 or cls_weight < 0:
            raise ValueError(f"loss weights must be >= 0; got seg_weight={seg_weight}, cls_weight={cls_weight}")
        self.seg_weight = seg_weight
        self.cls_weight = cls_weight
        loss_class = DiceCELoss if segmentation_loss == "dice_ce" else DiceLoss
        self.binary_loss = loss_class(sigmoid=True)
        self.multiclass_loss = loss_class(softmax=True, to_onehot_y=True)

    def segmentation_term(self, seg_logits: Tensor, masks: Tensor, has_mask: Tensor) -> Tensor:
        """Mean segmentation loss over scans with masks; [B, T, K, D, H, W] logits, [B, T, 1, D, H, W] masks."""
        if masks is None or masks.shape[:2] != seg_logits.shape[:2] or masks.shape[2] != 1 \
                or masks.shape[3:] != seg_logits.shape[3:]:
            got = None if masks is None else tuple(masks.shape)
            raise ValueError(f"masks must be [B, T, 1, D, H, W] = {[*seg_logits.shape[:2], 1, *seg_logits.shape[3:]]} "
                             f"to match seg_logits {tuple(seg_logits.shape)}; got {got}")
        batch, timepoints = seg_logits.shape[:2]
        selected = has_mask.bool().to(seg_logits.device)
        if selected.dim() == 1:
            selected = selected[:, None].expand(batch, timepoints)
        if tuple(selected.shape) != (batch, timepoints):
            raise ValueError(f"has_mask must be [B] or [B, T] = [{batch}, {timepoints}]; got {tuple(has_mask.shape)}")
        if not bool(selected.any()):
            return seg_logits.sum() * 0.0
        logits = seg_logits[selected].float()
        target = masks[selected].float()
        if logits.shape[1] == 1:
            return self.binary_loss(logits, target)
        return self.multiclass_loss(logits, target.round())

    def forward(self, output: ModelOutput, masks: Tensor, labels: Tensor, has_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        total = None
        if output.seg_logits is not None and self.seg_weight > 0:
            terms["segmentation"] = self.segmentation_term(output.seg_logits, masks, has_mask)
            total = self.seg_weight * terms["segmentation"]
        if output.cls_logits is not None and self.cls_weight > 0:
            if labels is None or labels.dim() != 1 or labels.shape[0] != output.cls_logits.shape[0]:
                raise ValueError(f"labels must be [B] = [{output.cls_logits.shape[0]}]; "
                                 f"got {None if labels is None else tuple(labels.shape)}")
            terms["classification"] = F.cross_entropy(output.cls_logits.float(), labels.long().to(output.cls_logits.device))
            weighted = self.cls_weight * terms["classification"]
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(f"nothing to train: seg_weight={self.seg_weight} with seg_logits "
                             f"{'present' if output.seg_logits is not None else 'None'}, cls_weight={self.cls_weight} "
                             f"with cls_logits {'present' if output.cls_logits is not None else 'None'}")
        return total, {name: value.detach() for name, value in terms.items()}
