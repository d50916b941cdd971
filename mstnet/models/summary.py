"""Parameter and FLOP summary of MST-Net, checkable against the measured release sizes.

The model is built on the meta device, so the 409 M-parameter paper preset costs no memory;
``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of one forward pass on meta
tensors (a multiply-add counts as 2 FLOPs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mstnet.models.config import mstnet_config
from mstnet.models.mstnet import MSTNet, build_mstnet

REFERENCE_PARAMETERS: dict[str, float] = {
    "segmentation_network": 409.1e6,
    "vit": 267.5e6,
    "vit.patch_embedding": 201.3e6,
    "vit.blocks": 66.2e6,
    "decoder.z3": 27.1e6,
    "decoder.z6": 25.6e6,
    "decoder.z9": 19.7e6,
    "decoder.z12": 12.6e6,
    "decoder.fuse": 40.3e6,
    "decoder.head": 0.33e6,
    "stdm_z12": 7.67e6,
    "stdm_z9": 3.41e6,
    "classification_network": 15.75e6,
}
"""Parameter counts of the paper configuration measured from the public release
(design/mstnet-model.md). ``classification_network`` is the clinical encoder plus the
classifier (ResNet branch, fusion, CMAF, head)."""

SUMMARY_ROWS = (
    "vit", "vit.patch_embedding", "vit.position_embedding", "vit.blocks", "vit.norm",
    "stdm_z12", "stdm_z9",
    "decoder", "decoder.input_stem", "decoder.z3", "decoder.z6", "decoder.z9", "decoder.z12", "decoder.fuse",
    "decoder.head",
    "clinical", "classifier", "classifier.global_branch", "classifier.temporal_fusion", "classifier.image_projection",
    "classifier.cross_modal_fusion", "classifier.head",
)


def _count(model: nn.Module, name: str) -> int:
    try:
        return model.get_parameter(name).numel()
    except AttributeError:
        pass
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return 0
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: MSTNet) -> dict[str, int]:
    """Parameters per named part (absent optional parts count 0), plus the two networks."""
    rows = {name: _count(model, name) for name in SUMMARY_ROWS}
    rows["segmentation_network"] = sum(p.numel() for p in model.segmentation_parameters())
    rows["classification_network"] = sum(p.numel() for p in model.classification_parameters())
    return rows


def forward_flops(model: MSTNet, batch: int = 1) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass (eval mode, ``batch`` patients, all time points), total and
    per top-level module: the FLOPs spent inside that module's forward (STDM runs inside the
    decoder's forward, so its FLOPs appear under both). Runs on whatever device the model is
    on (meta costs nothing)."""
    config = model.config
    device = next(model.parameters()).device
    images = torch.zeros(batch, config.num_timepoints, 1, *config.image_size, device=device)
    categorical = torch.zeros(batch, len(config.clinical_cardinalities), dtype=torch.long, device=device)
    numeric = torch.zeros(batch, config.num_numeric, device=device)
    days = torch.zeros(batch, config.num_timepoints, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, categorical, numeric, days)
    model.train(was_training)
    per_module = {}
    for name, counts in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2:
            per_module[parts[1]] = int(sum(counts.values()))
    return int(counter.get_total_flops()), per_module


def model_summary(preset: str, flops: bool = True, **overrides: Any) -> dict[str, Any]:
    """JSON-able summary of MST-Net at ``preset`` (with config ``overrides``), built on meta.

    Keys: ``preset``, ``config``, ``total_params``, ``modules`` (name -> parameters),
    ``reference_params`` and ``relative_difference`` (paper preset only: rows of
    :data:`REFERENCE_PARAMETERS`), ``flops_per_forward`` and ``flops_by_module`` (batch of one
    patient, all time points; None when ``flops`` is False).
    """
    config = mstnet_config(preset, **overrides)
    with torch.device("meta"):
        model = build_mstnet(config)
    modules = parameter_table(model)
    summary: dict[str, Any] = {
        "preset": preset,
        "config": dataclasses.asdict(config),
        "input_shape": [1, config.num_timepoints, 1, *config.image_size],
        "total_params": sum(p.numel() for p in model.parameters()),
        "modules": modules,
        "flops_per_forward": None,
        "flops_by_module": None,
    }
    if preset == "paper" and not overrides:
        summary["reference_params"] = {name: int(value) for name, value in REFERENCE_PARAMETERS.items()}
        summary["relative_difference"] = {name: modules[name] / value - 1 for name, value in REFERENCE_PARAMETERS.items()}
    if flops:
        summary["flops_per_forward"], summary["flops_by_module"] = forward_flops(model)
    return summary
