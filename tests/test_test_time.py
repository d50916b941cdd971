"""Test-time mirroring (mstnet.experiments.test_time) against a mean over flips computed with numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mstnet.experiments.test_time import mirror_flips, predict_batch
from mstnet.models.output import ModelOutput

SHAPE = (2, 2, 1, 4, 6, 5)  # [B, T, 1, D, H, W]: no two spatial sizes equal, so a wrong axis cannot pass


class Lopsided(nn.Module):
    """A model whose outputs change under every flip: a 3D convolution with a random, unsymmetric kernel
    (segmentation, two classes) and a classifier on the flattened, position-weighted image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 2, kernel_size=3, padding=1)
        self.position = nn.Parameter(torch.randn(int(np.prod(SHAPE[3:]))))

    def forward(self, images, clinical_categorical=None, clinical_numeric=None, days=None) -> ModelOutput:
        b, t = images.shape[:2]
        seg = self.conv(images.flatten(0, 1)).unflatten(0, (b, t))
        score = (images.flatten(2) * self.position).sum(dim=(1, 2))
        return ModelOutput(seg_logits=seg, cls_logits=torch.stack([-score, score], dim=1))


def _numpy_mean_over_flips(model: Lopsided, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground [B, T, D, H, W] and malignancy probability [B], each the mean over the 8 flips of
    (D, H, W), computed with numpy flips and numpy softmaxes."""
    foregrounds, probabilities = [], []
    for size in range(4):
        for axes in itertools.combinations((3, 4, 5), size):
            flipped = np.flip(images, axes).copy() if axes else images
            with torch.no_grad():
                out = model(torch.from_numpy(flipped))
            seg = out.seg_logits.numpy().astype(np.float64)
            foreground = np.exp(seg[:, :, 1]) / np.exp(seg).sum(axis=2)
            foregrounds.append(np.flip(foreground, tuple(a - 1 for a in axes)) if axes else foreground)
            cls = out.cls_logits.numpy().astype(np.float64)
            probabilities.append(np.exp(cls[:, 1]) / np.exp(cls).sum(axis=1))
    return np.mean(foregrounds, axis=0), np.mean(probabilities, axis=0)


def _batch(images: np.ndarray) -> dict:
    return {"image": torch.from_numpy(images), "clinical_categorical": None, "clinical_numeric": None, "days": None}


def test_mirror_flips_are_every_subset_of_the_spatial_axes_unflipped_first() -> None:
    flips = mirror_flips(True)
    assert flips[0] == () and len(flips) == len(set(flips)) == 8
    assert {frozenset(f) for f in flips} == {frozenset(s) for n in range(4) for s in itertools.combinations((-3, -2, -1), n)}
    assert mirror_flips(False) == [()]


def test_mirrored_prediction_is_the_mean_over_the_eight_flips_flipped_back() -> None:
    model = Lopsided().eval()
    images = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    probability, foreground = predict_batch(model, _batch(images), torch.device("cpu"), use_clinical=False, amp=False,
                                            mirroring=True)
    expected_foreground, expected_probability = _numpy_mean_over_flips(model, images)
    assert foreground.shape == (2, 2, 4, 6, 5) and probability.shape == (2,)
    np.testing.assert_allclose(foreground.numpy(), expected_foreground, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probability.numpy(), expected_probability, rtol=1e-5, atol=1e-6)
    plain_probability, plain_foreground = predict_batch(model, _batch(images), torch.device("cpu"), False, False)
    assert not np.allclose(plain_foreground.numpy(), expected_foreground, atol=1e-4)  # mirroring changed something


def test_unmirrored_prediction_is_the_plain_forward() -> None:
    model = Lopsided().eval()
    images = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    probability, foreground = predict_batch(model, _batch(images), torch.device("cpu"), False, False, mirroring=False)
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    np.testing.assert_array_equal(foreground.numpy(), torch.softmax(out.seg_logits, dim=2)[:, :, 1].numpy())
    np.testing.assert_array_equal(probability.numpy(), torch.softmax(out.cls_logits, dim=1)[:, 1].numpy())


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_a_single_task_model_gets_none_for_the_other(task: str) -> None:
    class OneTask(Lopsided):
        def forward(self, images, *args, **kwargs) -> ModelOutput:
            out = super().forward(images)
            return ModelOutput(out.seg_logits if task == "segmentation" else None,
                               out.cls_logits if task == "classification" else None)

    images = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    probability, foreground = predict_batch(OneTask().eval(), _batch(images), torch.device("cpu"), False, False, True)
    assert (foreground is None) == (task == "classification") and (probability is None) == (task == "segmentation")
