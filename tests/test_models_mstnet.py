"""The whole MST-Net: shapes for every preset and switch, gradients, recipes, errors, precision, compile."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch

from mstnet.models import MSTNet, ModelOutput, build_mstnet, mstnet_config
from mstnet.models.losses import MultiTaskLoss

SLOW = pytest.mark.skipif(os.environ.get("MSTNET_SLOW") != "1", reason="slow; set MSTNET_SLOW=1")


def make_inputs(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, config.num_timepoints, 1, *config.image_size, generator=generator)
    categorical = torch.stack([torch.randint(0, c, (batch,), generator=generator) for c in config.clinical_cardinalities], 1) \
        if config.clinical_cardinalities else torch.zeros(batch, 0, dtype=torch.long)
    numeric = torch.randn(batch, config.num_numeric, generator=generator)
    days = torch.arange(config.num_timepoints, dtype=torch.float32).repeat(batch, 1) * 365.0
    return images, categorical, numeric, days


def run(model, config, batch=2):
    images, categorical, numeric, days = make_inputs(config, batch)
    return model(images, categorical, numeric, days)


SWITCHES = [
    {},
    {"use_clinical": False},
    {"use_stdm": False},
    {"stdm_axis": "time"},
    {"temporal_fusion": "cmstf_nodiff"},
    {"temporal_fusion": "concat"},
    {"temporal_fusion": "mean"},
    {"temporal_fusion": "last"},
    {"time_encoding": True},
    {"cross_modal_fusion": "concat"},
    {"planar": True},
    {"planar": True, "stdm_axis": "time"},
    {"patch_embedding": "conv_stem"},
    {"num_seg_classes": 2},
    {"num_numeric": 3},
    {"clinical_cardinalities": (), "num_numeric": 2},
    {"gradient_checkpointing": True},
    {"channels_last_activations": True},
]


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: json.dumps(o) if o else "default")
def test_every_switch_gives_the_documented_shapes(overrides):
    torch.manual_seed(0)
    config = mstnet_config("tiny", **overrides)
    out = run(build_mstnet(config).eval(), config)
    assert isinstance(out, ModelOutput)
    assert out.seg_logits.shape == (2, 2, config.num_seg_classes, 8, 32, 32)
    assert out.cls_logits.shape == (2, 2)
    assert out.features["z12"].shape[:3] == (2, 2, config.hidden_size)
    assert torch.isfinite(out.seg_logits).all() and torch.isfinite(out.cls_logits).all()


@pytest.mark.parametrize("timepoints", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2])
def test_time_points_and_batch_sizes(timepoints, batch):
    config = mstnet_config("tiny", num_timepoints=timepoints, stdm_axis="time" if timepoints == 3 else "depth")
    out = run(build_mstnet(config).eval(), config, batch)
    assert out.seg_logits.shape == (batch, timepoints, 1, 8, 32, 32)
    assert out.cls_logits.shape == (batch, 2)


def test_cpu_preset_shapes_at_its_own_and_a_smaller_crop():
    for size in [(16, 96, 96), (16, 64, 64)]:
        config = mstnet_config("cpu", image_size=size)
        with torch.no_grad():
            out = run(build_mstnet(config).eval(), config, batch=1)
        assert out.seg_logits.shape == (1, 2, 1, *size)


def test_paper_preset_on_the_meta_device():
    config = mstnet_config("paper")
    with torch.device("meta"):
        model = build_mstnet(config).eval()
        out = run(model, config, batch=1)
    assert out.seg_logits.shape == (1, 2, 1, 16, 512, 512)
    assert out.cls_logits.shape == (1, 2)
    assert out.features["z12"].shape == (1, 2, 768, 1, 4, 4)


def test_config_round_trips_through_asdict_and_json():
    config = mstnet_config("cpu", image_size=[16, 64, 64], clinical_cardinalities=[3, 4])
    record = json.loads(json.dumps(dataclasses.asdict(config)))
    assert mstnet_config("paper", **record) == config
    assert config.image_size == (16, 64, 64)


def test_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        mstnet_config("tiny", image_size=(8, 30, 32))
    with pytest.raises(ValueError, match="temporal_fusion='sum'"):
        mstnet_config("tiny", temporal_fusion="sum")
    with pytest.raises(TypeError, match="unknown MSTNetConfig field"):
        mstnet_config("tiny", hidden=3)
    with pytest.raises(KeyError, match="unknown MST-Net preset"):
        mstnet_config("huge")


def _unused_parameters(model, config, loss_weights=(1.0, 1.0)):
    images, categorical, numeric, days = make_inputs(config)
    masks = (images > 1.0).float()
    out = model(images, categorical, numeric, days)
    loss, _ = MultiTaskLoss(*loss_weights)(out, masks, torch.tensor([0, 1]), torch.tensor([True, True]))
    loss.backward()
    return [name for name, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]


@pytest.mark.parametrize("overrides", [{}, {"planar": True, "stdm_axis": "time"}, {"patch_embedding": "conv_stem"},
                                       {"time_encoding": True, "num_numeric": 2}, {"temporal_fusion": "concat",
                                       "cross_modal_fusion": "concat", "num_seg_classes": 2}],
                         ids=["default", "planar-time", "conv-stem", "time-encoding", "concat"])
def test_backward_reaches_every_parameter_in_use(overrides):
    torch.manual_seed(0)
    config = mstnet_config("tiny", **overrides)
    model = build_mstnet(config).train()
    assert _unused_parameters(model, config) == []


def test_two_stage_recipe_freezes_the_segmentation_network():
    torch.manual_seed(0)
    config = mstnet_config("tiny")
    model = build_mstnet(config)
    seg_ids = {id(p) for p in model.segmentation_parameters()}
    cls_ids = {id(p) for p in model.classification_parameters()}
    assert not seg_ids & cls_ids and len(seg_ids | cls_ids) == len(list(model.parameters()))
    running_mean = model.decoder.head[0].adn.N.running_mean.clone()
    model.freeze_segmentation()
    model.train()
    assert not model.decoder.training and model.classifier.training
    assert _unused_parameters(model, config, loss_weights=(0.0, 1.0)) == []
    assert all(p.grad is None for p in model.segmentation_parameters())
    torch.testing.assert_close(model.decoder.head[0].adn.N.running_mean, running_mean)


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    config = mstnet_config("tiny", embedding_dropout=0.1, transformer_dropout=0.1, cmaf_dropout=0.2)
    model = build_mstnet(config).eval()
    first, second = run(model, config), run(model, config)
    torch.testing.assert_close(first.seg_logits, second.seg_logits, rtol=0, atol=0)
    torch.testing.assert_close(first.cls_logits, second.cls_logits, rtol=0, atol=0)


def test_wrong_inputs_give_clear_errors():
    config = mstnet_config("tiny")
    model = build_mstnet(config).eval()
    images, categorical, numeric, days = make_inputs(config)
    with pytest.raises(ValueError, match=r"images must be \[B, T, 1, D, H, W\].*got 5 dims"):
        model(images[:, 0], categorical)
    with pytest.raises(ValueError, match=re.escape("image_size (8, 32, 32)); got (2, 2, 1, 8, 32, 16)")):
        model(images[..., :16], categorical)
    with pytest.raises(ValueError, match="3 time points but the model was built for num_timepoints=2"):
        model(torch.cat([images, images[:, :1]], 1), categorical)
    with pytest.raises(ValueError, match="clinical_categorical is None.*use_clinical=True"):
        model(images)
    with pytest.raises(ValueError, match=r"clinical_categorical must be \[B, 2\]"):
        model(images, categorical[:, :1])
    with pytest.raises(ValueError, match=r"days must be \[B, T\]"):
        model(images, categorical, days=days[:, :1])
    model_without_clinical = build_mstnet(mstnet_config("tiny", use_clinical=False)).eval()
    assert model_without_clinical(images).cls_logits.shape == (2, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_and_backward(dtype):
    torch.manual_seed(0)
    config = mstnet_config("tiny", time_encoding=True, num_numeric=2)
    model = build_mstnet(config).train()
    images, categorical, numeric, days = make_inputs(config)
    with torch.autocast("cpu", dtype=dtype):
        out = model(images, categorical, numeric, days)
        loss, parts = MultiTaskLoss()(out, (images > 1).float(), torch.tensor([0, 1]), torch.tensor([True, False]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_checkpointing_and_channels_last_activations_do_not_change_the_numbers():
    config = mstnet_config("tiny")
    torch.manual_seed(0)
    reference = build_mstnet(config).train()
    variants = []
    for overrides in ({"gradient_checkpointing": True}, {"channels_last_activations": True}):
        torch.manual_seed(0)
        variant = build_mstnet(mstnet_config("tiny", **overrides)).train()
        variant.load_state_dict(reference.state_dict())
        variants.append(variant)
    outputs = []
    for model in [reference, *variants]:
        out = run(model, config)
        (out.seg_logits.square().mean() + out.cls_logits.square().mean()).backward()
        outputs.append((out.seg_logits.detach(), model.vit.patch_embedding.projection.weight.grad))
    for seg, grad in outputs[1:]:
        torch.testing.assert_close(seg, outputs[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad, outputs[0][1], atol=1e-4, rtol=1e-3)


def _compiles(backend: str) -> None:
    torch.manual_seed(0)
    config = mstnet_config("tiny")
    model = build_mstnet(config).eval()
    compiled = torch.compile(model, backend=backend)
    images, categorical, numeric, days = make_inputs(config)
    try:
        with torch.no_grad():
            out = compiled(images, categorical, numeric, days)
    except Exception as error:  # the environment may lack a working compiler toolchain
        pytest.skip(f"torch.compile(backend={backend!r}) failed in this environment: {type(error).__name__}: {error}")
    with torch.no_grad():
        expected = model(images, categorical, numeric, days)
    torch.testing.assert_close(out.seg_logits, expected.seg_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.cls_logits, expected.cls_logits, atol=1e-4, rtol=1e-4)


def test_torch_compile_traces_the_model():
    _compiles("aot_eager")


@SLOW
def test_torch_compile_with_inductor():
    _compiles("inductor")


def test_model_is_an_mstnet_module():
    assert isinstance(build_mstnet(mstnet_config("tiny")), MSTNet)
