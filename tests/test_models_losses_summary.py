"""MultiTaskLoss against MONAI / hand computation, and the summary against the release's sizes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from typer.testing import CliRunner

from mstnet.cli import build_app
from mstnet.models.losses import MultiTaskLoss
from mstnet.models.output import ModelOutput
from mstnet.models.summary import REFERENCE_PARAMETERS


def _batch(classes=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    seg = torch.randn(2, 2, classes, 4, 8, 8, generator=generator)
    cls = torch.randn(2, 2, generator=generator)
    masks = (torch.rand(2, 2, 1, 4, 8, 8, generator=generator) > 0.7).float()
    return ModelOutput(seg, cls), masks, torch.tensor([1, 0])


def test_joint_loss_is_weighted_dice_ce_over_scans_with_masks_plus_cross_entropy():
    output, masks, labels = _batch()
    has_mask = torch.tensor([True, False])
    total, parts = MultiTaskLoss(0.7, 0.3)(output, masks, labels, has_mask)
    seg = DiceCELoss(sigmoid=True)(output.seg_logits[0], masks[0])
    cls = -torch.log_softmax(output.cls_logits, 1)[torch.arange(2), labels].mean()
    torch.testing.assert_close(parts["segmentation"], seg)
    torch.testing.assert_close(parts["classification"], cls)
    torch.testing.assert_close(total, 0.7 * seg + 0.3 * cls)


def test_plain_dice_and_softmax_logits():
    output, masks, labels = _batch(classes=2)
    _, parts = MultiTaskLoss(1.0, 0.0, segmentation_loss="dice")(output, masks, labels, torch.tensor([True, True]))
    expected = DiceLoss(softmax=True, to_onehot_y=True)(output.seg_logits.flatten(0, 1), masks.flatten(0, 1))
    torch.testing.assert_close(parts["segmentation"], expected)
    assert "classification" not in parts


def test_dice_of_a_perfect_prediction_is_near_zero():
    masks = torch.zeros(1, 1, 1, 4, 8, 8)
    masks[..., 1:3, 2:6, 2:6] = 1
    logits = (masks * 2 - 1) * 50
    _, parts = MultiTaskLoss(1.0, 0.0, "dice")(ModelOutput(logits, None), masks, torch.tensor([0]), torch.tensor([True]))
    assert parts["segmentation"] < 1e-4


def test_segmentation_only_classification_only_and_no_masks():
    output, masks, labels = _batch()
    loss = MultiTaskLoss(0.7, 0.3)
    seg_only, parts = loss(ModelOutput(output.seg_logits, None), masks, labels, torch.tensor([True, True]))
    assert set(parts) == {"segmentation"}
    torch.testing.assert_close(seg_only, 0.7 * parts["segmentation"])
    cls_only, parts = loss(ModelOutput(None, output.cls_logits), None, labels, torch.tensor([False, False]))
    torch.testing.assert_close(cls_only, 0.3 * F.cross_entropy(output.cls_logits, labels))
    logits = output.seg_logits.clone().requires_grad_()
    no_masks, parts = loss(ModelOutput(logits, output.cls_logits), masks, labels, torch.tensor([False, False]))
    assert parts["segmentation"] == 0
    no_masks.backward()
    assert logits.grad is not None


def test_loss_errors_name_the_expected_shapes():
    output, masks, labels = _batch()
    with pytest.raises(ValueError, match=r"masks must be \[B, T, 1, D, H, W\]"):
        MultiTaskLoss()(output, masks[:, :1], labels, torch.tensor([True, True]))
    with pytest.raises(ValueError, match="nothing to train"):
        MultiTaskLoss(0.0, 1.0)(ModelOutput(output.seg_logits, None), masks, labels, torch.tensor([True, True]))


def test_summary_json_matches_the_release_parameter_counts_within_two_percent():
    result = CliRunner().invoke(build_app(), ["model", "summary", "paper", "--json", "--no-flops"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    modules = summary["modules"]
    for name, reference in REFERENCE_PARAMETERS.items():
        assert abs(modules[name] / reference - 1) < 0.02, (name, modules[name], reference)
    assert modules["vit.blocks"] == 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 2048 + 2048 + 768 + 4 * 768)
    assert modules["vit.patch_embedding"] == 768 * 16 * 128 * 128 + 768
    assert summary["total_params"] == modules["segmentation_network"] + modules["classification_network"]


def test_summary_counts_flops_on_the_meta_device():
    result = CliRunner().invoke(build_app(), ["model", "summary", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["flops_per_forward"] > 0
    by_module = summary["flops_by_module"]
    assert summary["flops_per_forward"] == by_module["vit"] + by_module["decoder"] + by_module["classifier"] + by_module["clinical"]
    assert by_module["stdm_z12"] < by_module["decoder"]
    patch_embedding_flops = 2 * 2 * (4 * 8 * 8) * 32 * (2 * 4 * 4)  # 2 scans, MACs per token x tokens
    assert summary["flops_by_module"]["vit"] > patch_embedding_flops
