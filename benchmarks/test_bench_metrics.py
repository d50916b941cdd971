"""Speed of segmentation_metrics on a full NLST-sized scan versus MONAI's surface-distance metrics.

A 16 x 512 x 512 volume holding one small nodule (a ball of radius 5 voxels) and a prediction
shifted by one voxel, spacing (2.5, 0.7, 0.7) mm. MONAI's ``HausdorffDistanceMetric(percentile=95)``
plus ``SurfaceDistanceMetric(symmetric=True)`` on the full volume is the reference: the values
must agree to 1e-4 mm and ours must be at least 5x faster.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_metrics.py --benchmark-enable``
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

from mstnet.metrics import segmentation_metrics

SHAPE = (16, 512, 512)
SPACING = (2.5, 0.7, 0.7)
REPEATS = 5
MIN_SPEEDUP = 5.0


@pytest.fixture(scope="module")
def nodule_pair() -> tuple[np.ndarray, np.ndarray]:
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centre = (8, 300, 210)
    target = sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= 5**2
    pred = np.roll(target, shift=1, axis=2)
    return pred, target


def monai_hd95_asd(y_pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """MONAI's HD95 and symmetric ASD of (1, 1, D, H, W) float tensors, full volume."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95)(y_pred, y, spacing=SPACING)
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True)(y_pred, y, spacing=SPACING)
    return {"hd95": hd95.item(), "asd": asd.item()}


def best_time(function, *args) -> float:
    timings = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(*args)
        timings.append(time.perf_counter() - start)
    return min(timings)


def as_monai_input(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask).float()[None, None]


def test_segmentation_metrics_full_scan(benchmark, nodule_pair):
    benchmark.group = "segmentation metrics"
    pred, target = nodule_pair
    result = benchmark(segmentation_metrics, pred, target, SPACING)
    benchmark.extra_info.update(items_per_call=1, item="scan pair", baselines=["test_monai_hd95_and_asd_full_scan"])
    assert 0.5 < result["dice"] < 1.0


def test_monai_hd95_and_asd_full_scan(benchmark, nodule_pair):
    benchmark.group = "segmentation metrics"
    pred, target = nodule_pair
    result = benchmark(monai_hd95_asd, as_monai_input(pred), as_monai_input(target))
    benchmark.extra_info.update(items_per_call=1, item="scan pair")
    assert result["hd95"] > 0


def test_matches_monai_and_is_at_least_five_times_faster(nodule_pair):
    pred, target = nodule_pair
    y_pred, y = as_monai_input(pred), as_monai_input(target)
    ours, reference = segmentation_metrics(pred, target, SPACING), monai_hd95_asd(y_pred, y)
    assert ours["hd95"] == pytest.approx(reference["hd95"], abs=1e-4)
    assert ours["asd"] == pytest.approx(reference["asd"], abs=1e-4)
    ours_seconds = best_time(segmentation_metrics, pred, target, SPACING)
    monai_seconds = best_time(monai_hd95_asd, y_pred, y)
    speedup = monai_seconds / ours_seconds
    assert speedup >= MIN_SPEEDUP, (
        f"segmentation_metrics took {ours_seconds * 1e3:.1f} ms, MONAI {monai_seconds * 1e3:.1f} ms: "
        f"{speedup:.1f}x < {MIN_SPEEDUP}x")
