"""Deep baselines: every registered one builds at the tiny preset, runs forward and backward,
returns the fields its tasks call for; the wrappers equal a loop over time points / slices."""


import pytest
import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

from baselines._common import (
    LatestScanClassifier,
    PerTimepointSegmentation,
    SliceWiseSegmentation,
    pad_to_multiple,
)
from baselines.acsnet import local_context_attention
from baselines.naslung import ChannelAttention3d, SpatialAttention3d
from baselines.scan import SpatialChannelSqueezeExcitation3d
from mstnet.experiments.registry import ModelContext, list_experiments

DEEP = [s.name for g in ("paper-table", "reference") for s in list_experiments(group=g)
        if s.kind == "torch" and s.name != "mstnet"]
TABLE_ROWS = {"UNETR", "ACSNet", "NASLung", "SCAN", "DeepCAD", "MLTN"}


def test_every_table_row_is_registered_once():
    rows = [s.table_row for s in list_experiments(group="paper-table") if s.name != "mstnet"]
    assert sorted(rows) == sorted(TABLE_ROWS)


@pytest.mark.parametrize("name", DEEP)
def test_baseline_builds_runs_forward_and_backward_at_tiny(name):
    from mstnet.experiments.registry import get_experiment

    spec = get_experiment(name)
    t = spec.data_view.timepoints
    context = ModelContext(image_size=(8, 32, 32), num_timepoints=t, clinical_cardinalities=(3, 3),
                           num_numeric=1, use_clinical=spec.data_view.use_clinical, preset="tiny")
    torch.manual_seed(0)
    model = spec.build(context)
    images = torch.randn(2, t, 1, 8, 32, 32)
    output = model(images, clinical_categorical=torch.ones(2, 2, dtype=torch.long),
                   clinical_numeric=torch.zeros(2, 1), days=torch.zeros(2, t))
    loss = torch.zeros(())
    if "segmentation" in spec.tasks:
        assert output.seg_logits.shape == (2, t, 1, 8, 32, 32)
        loss = loss + output.seg_logits.float().mean()
    else:
        assert output.seg_logits is None
    if "classification" in spec.tasks:
        assert output.cls_logits.shape == (2, 2)
        loss = loss + output.cls_logits.float().sum()
    else:
        assert output.cls_logits is None
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert torch.isfinite(loss)


class Scale3d(nn.Module):
    """A deterministic 'network' with a size requirement: fails on sizes not divisible by 4."""

    def forward(self, x):
        assert all(s % 4 == 0 for s in x.shape[2:])
        return x * 2.0 + x.roll(1, dims=-1)


def test_per_timepoint_equals_a_loop_and_crops_padding():
    images = torch.randn(2, 3, 1, 6, 10, 12)
    output = PerTimepointSegmentation(Scale3d(), size_divisor=4)(images).seg_logits
    for t in range(3):
        padded = pad_to_multiple(images[:, t], (4, 4, 4))
        expected = Scale3d()(padded)[:, :, :6, :10, :12]
        torch.testing.assert_close(output[:, t], expected)


def test_slice_wise_equals_a_loop_over_slices():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    images = torch.randn(2, 2, 1, 5, 8, 8)
    output = SliceWiseSegmentation(conv)(images).seg_logits
    with torch.no_grad():
        for b in range(2):
            for t in range(2):
                for z in range(5):
                    torch.testing.assert_close(output[b, t, :, z], conv(images[b, t, :, z][None])[0])


def test_latest_scan_classifier_sees_only_the_last_time_point():
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    model = LatestScanClassifier(net)
    images = torch.randn(3, 2, 1, 4, 4, 4)
    changed = images.clone()
    changed[:, 0] = torch.randn(3, 1, 4, 4, 4)
    torch.testing.assert_close(model(images).cls_logits, model(changed).cls_logits)


def test_pad_to_multiple_replicates_edges():
    x = torch.arange(6.0).reshape(1, 1, 1, 2, 3)
    padded = pad_to_multiple(x, (1, 4, 4))
    assert padded.shape == (1, 1, 1, 4, 4)
    torch.testing.assert_close(padded[0, 0, 0, :, 3], torch.tensor([2.0, 5.0, 5.0, 5.0]))


def test_scse_channel_branch_is_monai_channel_se():
    torch.manual_seed(0)
    block = SpatialChannelSqueezeExcitation3d(8, reduction=2)
    reference = ChannelSELayer(spatial_dims=3, in_channels=8, r=2)
    reference.load_state_dict(block.channel_se.state_dict())
    x = torch.randn(2, 8, 3, 4, 4)
    spatial = x * torch.sigmoid(block.spatial_gate(x))
    torch.testing.assert_close(block(x), reference(x) + spatial)


def test_cbam_attention_against_hand_computation():
    torch.manual_seed(0)
    channel = ChannelAttention3d(4, reduction=2)
    spatial = SpatialAttention3d(kernel_size=3)
    x = torch.randn(2, 4, 3, 5, 5)
    w1, w2 = channel.mlp[0].weight[:, :, 0, 0, 0], channel.mlp[2].weight[:, :, 0, 0, 0]

    def mlp(v):
        return torch.relu(v @ w1.T) @ w2.T

    expected = torch.sigmoid(mlp(x.mean(dim=(2, 3, 4))) + mlp(x.amax(dim=(2, 3, 4))))
    torch.testing.assert_close(channel(x)[:, :, 0, 0, 0], expected)
    maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    torch.testing.assert_close(spatial(x), torch.sigmoid(torch.nn.functional.conv3d(maps, spatial.conv.weight, padding=1)))


def test_local_context_attention_peaks_where_prediction_is_uncertain():
    skip = torch.ones(1, 2, 2, 2)
    prediction = torch.tensor([[[[0.0, 50.0], [-50.0, 0.0]]]])
    out = local_context_attention(skip, prediction)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
