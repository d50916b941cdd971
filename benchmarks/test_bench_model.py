"""One training step (forward + backward + Adam step) at the cpu preset, 2 patients x 2 time points:
MST-Net versus MONAI's UNETR applied per time point at the same hidden and feature size.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_model.py --benchmark-enable``. The
ratio is printed and stored in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from monai.networks.nets import UNETR

from mstnet.models import ModelOutput, build_mstnet, mstnet_config
from mstnet.models.losses import MultiTaskLoss

log = logging.getLogger(__name__)

IMAGE_SIZE = (16, 64, 64)
STEP_SECONDS: dict[str, float] = {}


class UNETRPerTimepoint(torch.nn.Module):
    """MONAI UNETR on each scan of [B, T, 1, D, H, W] (shared weights), segmentation only.

    Same hidden size, MLP width and heads as the MST-Net preset; feature_size = the last
    MST-Net decoder width, so UNETR's decoder widths (f, 2f, 4f, 8f) equal MST-Net's. UNETR
    fixes its patch at 16 x 16 x 16 (MST-Net cpu: 4 x 16 x 16)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.net = UNETR(1, 1, config.image_size, feature_size=config.decoder_channels[-1],
                         hidden_size=config.hidden_size, mlp_dim=config.mlp_size, num_heads=config.num_heads,
                         norm_name="batch")

    def forward(self, images, clinical_categorical=None, clinical_numeric=None, days=None) -> ModelOutput:
        batch, timepoints = images.shape[:2]
        logits = self.net(images.flatten(0, 1))
        return ModelOutput(seg_logits=logits.reshape(batch, timepoints, *logits.shape[1:]), cls_logits=None)


def _training_step(model, inputs):
    images, categorical, masks, labels, has_mask, days = inputs
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = MultiTaskLoss(0.7, 0.3)

    def step():
        output = model(images, categorical, None, days)
        loss, _ = loss_fn(output, masks, labels, has_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _inputs(config):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 2, 1, *config.image_size, generator=generator)
    masks = (images > 1.5).float()
    categorical = torch.zeros(2, len(config.clinical_cardinalities), dtype=torch.long)
    return images, categorical, masks, torch.tensor([0, 1]), torch.tensor([True, True]), torch.tensor([[0.0, 365.0]] * 2)


@pytest.mark.parametrize("name", ["mstnet", "unetr"])
def test_training_step_cpu_preset(benchmark, name):
    torch.manual_seed(0)
    config = mstnet_config("cpu", image_size=IMAGE_SIZE, training="joint")
    model = build_mstnet(config) if name == "mstnet" else UNETRPerTimepoint(config)
    model.train()
    step = _training_step(model, _inputs(config))
    step()  # warm-up (allocator, oneDNN primitive caches)
    benchmark.pedantic(step, rounds=5, iterations=1)
    STEP_SECONDS[name] = benchmark.stats.stats.min
    benchmark.extra_info["parameters"] = sum(p.numel() for p in model.parameters())
    benchmark.extra_info["image_size"] = list(IMAGE_SIZE)
    if len(STEP_SECONDS) == 2:
        ratio = STEP_SECONDS["mstnet"] / STEP_SECONDS["unetr"]
        benchmark.extra_info["mstnet_over_unetr"] = ratio
        log.warning("training step, 2 patients x 2 time points at %s: MST-Net %.3f s, UNETR %.3f s, ratio %.2f",
                    IMAGE_SIZE, STEP_SECONDS["mstnet"], STEP_SECONDS["unetr"], ratio)
