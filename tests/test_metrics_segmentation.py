"""Segmentation metrics against MONAI, medpy and a brute-force computation written here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist

from mstnet.metrics import mask_volumes, segmentation_metrics, segmentation_metrics_batch, surface_voxels

ANISOTROPIC = (2.5, 0.7, 0.7)
SHAPE = (12, 28, 30)


def blob(seed: int, shape=SHAPE, touch_border: bool = False) -> np.ndarray:
    """Irregular binary mask: smoothed Gaussian noise above half its std; one-voxel empty frame unless touch_border."""
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma=(1.0, 2.5, 2.5))
    mask = noise > 0.5 * noise.std()
    if not touch_border:
        mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1] = (False,) * 6
    assert mask.any()
    return mask


def brute_force_surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask, the volume padded with background."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            shifted = np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            interior &= shifted
    return mask & ~interior


def brute_force_metrics(pred: np.ndarray, target: np.ndarray, spacing, convention: str) -> dict[str, float]:
    """All-pairs distances between surface voxels in physical coordinates (no cropping, no trees)."""
    pred_points = np.argwhere(brute_force_surface(pred)) * np.asarray(spacing)
    target_points = np.argwhere(brute_force_surface(target)) * np.asarray(spacing)
    distances = cdist(pred_points, target_points)
    p_to_g, g_to_p = distances.min(axis=1), distances.min(axis=0)
    overlap = np.logical_and(pred, target).sum()
    if convention == "monai":
        hd95 = max(np.percentile(p_to_g, 95), np.percentile(g_to_p, 95))
        asd = np.concatenate([p_to_g, g_to_p]).mean()
    else:
        hd95 = np.percentile(np.concatenate([p_to_g, g_to_p]), 95)
        asd = (p_to_g.mean() + g_to_p.mean()) / 2
    return {"dice": 2 * overlap / (pred.sum() + target.sum()),
            "jaccard": overlap / np.logical_or(pred, target).sum(), "hd95": hd95, "asd": asd}


def monai_metrics(pred: np.ndarray, target: np.ndarray, spacing) -> dict[str, float]:
    y_pred = torch.as_tensor(pred, dtype=torch.float32)[None, None]
    y = torch.as_tensor(target, dtype=torch.float32)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": DiceMetric(include_background=True)(y_pred, y).item(),
            "jaccard": MeanIoU(include_background=True)(y_pred, y).item(),
            "hd95": HausdorffDistanceMetric(include_background=True, percentile=95)(y_pred, y, spacing=spacing).item(),
            "asd": SurfaceDistanceMetric(include_background=True, symmetric=True)(y_pred, y, spacing=spacing).item(),
        }


def assert_metrics_close(ours: dict, expected: dict, tolerance: float = 1e-4) -> None:
    for key in ("dice", "jaccard", "hd95", "asd"):
        assert ours[key] == pytest.approx(expected[key], abs=tolerance), key


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("touch_border", [False, True])
def test_default_convention_matches_monai_with_anisotropic_spacing(seed, touch_border):
    pred, target = blob(2 * seed, touch_border=touch_border), blob(2 * seed + 1, touch_border=touch_border)
    assert_metrics_close(segmentation_metrics(pred, target, spacing=ANISOTROPIC), monai_metrics(pred, target, ANISOTROPIC))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shifted_prediction_matches_monai(seed):
    target = blob(seed)
    pred = np.roll(target, shift=(0, 1, -2), axis=(0, 1, 2))
    assert_metrics_close(segmentation_metrics(pred, target, spacing=ANISOTROPIC), monai_metrics(pred, target, ANISOTROPIC))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("touch_border", [False, True])
def test_medpy_convention_matches_medpy(seed, touch_border):
    """hd95 is medpy's; assd is the mean of medpy's two directed ``asd`` (medpy <= 0.4's assd).

    medpy 0.5 changed ``assd`` to the pooled mean, which is our default convention's ASD.
    medpy erodes with scipy's border_value=0, so border-touching masks agree as well.
    """
    pred, target = blob(10 + seed, touch_border=touch_border), blob(20 + seed, touch_border=touch_border)
    ours = segmentation_metrics(pred, target, spacing=ANISOTROPIC, convention="medpy")
    assert ours["dice"] == pytest.approx(medpy_binary.dc(pred, target), abs=1e-12)
    assert ours["jaccard"] == pytest.approx(medpy_binary.jc(pred, target), abs=1e-12)
    assert ours["hd95"] == pytest.approx(medpy_binary.hd95(pred, target, voxelspacing=ANISOTROPIC), abs=1e-4)
    mean_of_directed = (medpy_binary.asd(pred, target, voxelspacing=ANISOTROPIC)
                        + medpy_binary.asd(target, pred, voxelspacing=ANISOTROPIC)) / 2
    assert ours["asd"] == pytest.approx(mean_of_directed, abs=1e-4)
    pooled = segmentation_metrics(pred, target, spacing=ANISOTROPIC)["asd"]
    assert pooled == pytest.approx(medpy_binary.assd(pred, target, voxelspacing=ANISOTROPIC), abs=1e-4)


@pytest.mark.parametrize("convention", ["monai", "medpy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_conventions_match_brute_force_when_masks_touch_the_border(convention, seed):
    pred, target = blob(30 + seed, touch_border=True), blob(40 + seed, touch_border=True)
    assert pred[0].any() or pred[-1].any() or pred[:, :, 0].any()
    assert_metrics_close(segmentation_metrics(pred, target, ANISOTROPIC, convention),
                         brute_force_metrics(pred, target, ANISOTROPIC, convention), tolerance=1e-9)


def test_surface_voxels_follow_the_six_neighbour_rule_with_the_border_outside():
    for seed in range(3):
        mask = blob(seed, touch_border=True)
        np.testing.assert_array_equal(surface_voxels(mask), brute_force_surface(mask))
    cube = np.ones((3, 3, 3), dtype=bool)
    assert surface_voxels(cube).sum() == 26  # only the centre voxel has all six neighbours inside


@pytest.mark.parametrize("convention", ["monai", "medpy"])
def test_cropping_matches_full_volume_for_a_small_object_at_a_volume_corner(convention):
    """A nodule in a corner: the crop is clipped by the volume on three sides and free on three."""
    target = np.zeros((10, 40, 40), dtype=bool)
    target[0:3, 0:5, 0:4] = True
    target[1, 5, 1] = True
    pred = np.zeros_like(target)
    pred[0:4, 1:6, 0:3] = True
    assert_metrics_close(segmentation_metrics(pred, target, ANISOTROPIC, convention),
                         brute_force_metrics(pred, target, ANISOTROPIC, convention), tolerance=1e-9)


def test_distances_do_not_depend_on_empty_space_around_the_masks():
    pred, target = blob(5), blob(6)
    embedded_pred, embedded_target = (np.pad(m, ((3, 1), (0, 20), (7, 0))) for m in (pred, target))
    assert_metrics_close(segmentation_metrics(embedded_pred, embedded_target, ANISOTROPIC),
                         segmentation_metrics(pred, target, ANISOTROPIC), tolerance=1e-12)


def test_hand_computed_two_voxel_example():
    """P = one voxel, G = one voxel two slices away: every distance is 2 * 2.5 mm."""
    pred, target = np.zeros((5, 3, 3), bool), np.zeros((5, 3, 3), bool)
    pred[1, 1, 1], target[3, 1, 1] = True, True
    for convention in ("monai", "medpy"):
        assert segmentation_metrics(pred, target, ANISOTROPIC, convention) == {
            "dice": 0.0, "jaccard": 0.0, "hd95": 5.0, "asd": 5.0}


def test_both_empty_is_a_perfect_score():
    empty = np.zeros(SHAPE, dtype=bool)
    assert segmentation_metrics(empty, empty, ANISOTROPIC) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


@pytest.mark.parametrize("convention", ["monai", "medpy"])
def test_exactly_one_empty_gives_the_volume_diagonal(convention):
    empty, mask = np.zeros(SHAPE, dtype=bool), blob(0)
    diagonal = math.sqrt((12 * 2.5) ** 2 + (28 * 0.7) ** 2 + (30 * 0.7) ** 2)
    for pred, target in ((empty, mask), (mask, empty)):
        result = segmentation_metrics(pred, target, ANISOTROPIC, convention)
        assert result == {"dice": 0.0, "jaccard": 0.0, "hd95": pytest.approx(diagonal), "asd": pytest.approx(diagonal)}
        assert all(math.isfinite(v) for v in result.values())


def test_identical_masks_have_zero_distance():
    mask = blob(3)
    assert segmentation_metrics(mask, mask, ANISOTROPIC) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


def test_accepts_torch_tensors_integer_and_probability_masks():
    pred, target = blob(7), blob(8)
    expected = segmentation_metrics(pred, target, ANISOTROPIC)
    assert segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(target), ANISOTROPIC) == expected
    assert segmentation_metrics(pred.astype(np.uint8) * 255, target.astype(np.int64), ANISOTROPIC) == expected
    probabilities = np.where(pred, 0.51, 0.5).astype(np.float32)  # exactly 0.5 is background
    assert segmentation_metrics(torch.from_numpy(probabilities), target, ANISOTROPIC) == expected


def test_isotropic_scalar_spacing_equals_repeated_spacing():
    pred, target = blob(1), blob(2)
    assert segmentation_metrics(pred, target, 0.8) == segmentation_metrics(pred, target, (0.8, 0.8, 0.8))


def test_batch_is_the_per_pair_result():
    preds, targets = np.stack([blob(1), blob(2)]), np.stack([blob(3), blob(4)])
    results = segmentation_metrics_batch(preds, targets, ANISOTROPIC, "medpy")
    assert results == [segmentation_metrics(p, t, ANISOTROPIC, "medpy") for p, t in zip(preds, targets)]


@pytest.mark.parametrize(
    ("pred", "target", "kwargs", "message"),
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {}, "same shape"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"spacing": (1.0, 1.0)}, "spacing"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"spacing": (1.0, 0.0, 1.0)}, "positive"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"convention": "nnunet"}, "convention"),
        (np.full((4, 4, 4), np.nan), np.zeros((4, 4, 4)), {}, "pred: contains NaN"),
    ],
)
def test_bad_input_is_named(pred, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(pred, target, **kwargs)


def test_mask_volumes_are_voxel_counts_times_the_voxel_volume():
    truth = np.zeros(SHAPE, bool)
    truth[2:5, 3:7, 4:9] = True  # 3 x 4 x 5 = 60 voxels of 2.5 x 0.7 x 0.7 mm = 1.225 mm^3
    pred = blob(3)
    volumes = mask_volumes(pred.astype(np.float32), truth, spacing=ANISOTROPIC)
    assert volumes["reference_volume_mm3"] == pytest.approx(60 * 1.225)
    assert volumes["predicted_volume_mm3"] == pytest.approx(int(pred.sum()) * 2.5 * 0.7 * 0.7)
    assert mask_volumes(np.zeros(SHAPE), truth, spacing=1.0) == {"reference_volume_mm3": 60.0, "predicted_volume_mm3": 0.0}
    with pytest.raises(ValueError, match="same shape"):
        mask_volumes(pred[:-1], truth)

