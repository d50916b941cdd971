"""Segmentation metrics for one pair of binary masks: Dice, Jaccard, HD95 and ASD in mm.

The definitions are those of ``shared/design/protocol.md`` ("Metrics, exactly"):

- Dice = 2|P and G| / (|P| + |G|); Jaccard = |P and G| / |P or G|.
- Surface voxels: mask voxels with at least one 6-neighbour outside the mask or outside the
  volume (the same rule as MONAI's and medpy's ``binary_erosion`` with scipy's default
  ``border_value=0``).
- Directed surface distances P->G and G->P: exact Euclidean distance in mm (``spacing``)
  from every surface voxel of one mask to the nearest surface voxel of the other.
- Convention ``"monai"`` (default; also DeepMind's surface-distance):
  HD95 = max(q95(P->G), q95(G->P)); ASD = mean of the pooled distances (P->G and G->P
  together), as ``SurfaceDistanceMetric(symmetric=True)``.
- Convention ``"medpy"`` (``medpy.metric.binary.hd95`` / ``assd``): HD95 = q95 of the pooled
  distances; ASD = mean of the two directed means.
- Percentiles use linear interpolation (``np.percentile`` default, the same as the
  ``torch.quantile`` MONAI calls).
- Edge cases: both masks empty -> Dice 1, Jaccard 1, HD95 0, ASD 0; exactly one empty ->
  Dice 0, Jaccard 0, HD95 = ASD = the diagonal of the volume in mm,
  ``sqrt(sum((shape_i * spacing_i) ** 2))``. No value is ever NaN or infinite.

Speed: surface extraction and distances run on the bounding box of P or G plus a one-voxel
margin (clipped to the volume), not on the whole volume. The margin gives every mask voxel
its true 6-neighbours inside the crop; where the crop is clipped it coincides with the volume
border, which erosion treats as outside, exactly as on the full volume. Nearest surface
distances are exact (k-d tree on physical coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from mstnet.metrics.thresholds import DECISION_THRESHOLD

CONVENTIONS: tuple[str, ...] = ("monai", "medpy")
HD_PERCENTILE: float = 95.0


def to_binary_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """A boolean numpy copy of ``mask`` (numpy array or torch tensor, any shape).

    Boolean input is used as is; any numeric input is foreground where the value is > 0.5, so
    0/1 integer masks, 0/255 masks and probability maps (thresholded at 0.5) all work.
    Raises ``ValueError`` naming ``name`` for NaN values or non-numeric input.
    """
    if hasattr(mask, "detach"):  # torch.Tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name}: expected a numeric or boolean array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f"{name}: contains NaN values; a mask must be binary or a probability map")
    return array > DECISION_THRESHOLD


def mask_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``target`` as boolean arrays (:func:`to_binary_mask`); ``ValueError`` unless same shape."""
    pred_mask, target_mask = to_binary_mask(pred, "pred"), to_binary_mask(target, "target")
    if pred_mask.shape != target_mask.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred_mask.shape} and {target_mask.shape}")
    return pred_mask, target_mask


def _check_spacing(spacing: Sequence[float] | float, ndim: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.shape != (ndim,):
        raise ValueError(f"spacing: expected {ndim} values (one per array axis, in mm), got {tuple(np.ravel(spacing))}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing: every value must be a positive finite number of mm, got {tuple(values)}")
    return values


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the volume's diagonal: the finite worst case for HD95 and ASD."""
    return float(math.sqrt(sum((int(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def union_bounding_box(pred: np.ndarray, target: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``pred | target`` grown by ``margin`` and clipped to the volume.

    Returns None when both masks are empty. Works axis by axis on projections, so it never
    allocates a second full-size array.
    """
    box = []
    for axis in range(pred.ndim):
        other_axes = tuple(a for a in range(pred.ndim) if a != axis)
        occupied = np.any(pred, axis=other_axes) | np.any(target, axis=other_axes)
        indices = np.flatnonzero(occupied)
        if indices.size == 0:
            return None
        box.append(slice(max(int(indices[0]) - margin, 0), min(int(indices[-1]) + margin + 1, pred.shape[axis])))
    return tuple(box)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of ``mask``: voxels with a 6-neighbour (face neighbour) outside the mask or the array.

    Shapes: ``mask`` (D, H, W) (any dimension works; the rule is face connectivity) -> same shape.
    """
    return mask & ~binary_erosion(mask, border_value=0)


def directed_surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, (P->G, G->P), for two non-empty boolean masks.

    ``pred`` and ``target`` are (D, H, W) boolean arrays of the same shape; ``spacing`` is in mm
    per array axis. Returns two float64 vectors, one entry per surface voxel of P and of G.
    """
    pred_mask, target_mask = mask_pair(pred, target)
    if not pred_mask.any() or not target_mask.any():
        raise ValueError("directed_surface_distances needs two non-empty masks")
    box = union_bounding_box(pred_mask, target_mask)
    return _cropped_surface_distances(pred_mask[box], target_mask[box], _check_spacing(spacing, pred_mask.ndim))


def _cropped_surface_distances(
    pred_crop: np.ndarray, target_crop: np.ndarray, spacing_mm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances on a crop from :func:`union_bounding_box` (margin 1), both masks non-empty."""
    pred_points = np.argwhere(surface_voxels(pred_crop)) * spacing_mm
    target_points = np.argwhere(surface_voxels(target_crop)) * spacing_mm
    pred_to_target = cKDTree(target_points).query(pred_points, k=1)[0]
    target_to_pred = cKDTree(pred_points).query(target_points, k=1)[0]
    return pred_to_target, target_to_pred


def _distance_summary(pred_to_target: np.ndarray, target_to_pred: np.ndarray, convention: str) -> tuple[float, float]:
    if convention == "monai":
        hd95 = max(np.percentile(pred_to_target, HD_PERCENTILE), np.percentile(target_to_pred, HD_PERCENTILE))
        asd = np.concatenate([pred_to_target, target_to_pred]).mean()
    else:
        hd95 = np.percentile(np.concatenate([pred_to_target, target_to_pred]), HD_PERCENTILE)
        asd = (pred_to_target.mean() + target_to_pred.mean()) / 2.0
    return float(hd95), float(asd)


def segmentation_metrics(
    pred: Any,
    target: Any,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    convention: str = "monai",
) -> dict[str, float]:
    """Dice, Jaccard, HD95 (mm) and ASD (mm) of one predicted mask against its ground truth.

    Args:
        pred: predicted mask, (D, H, W) numpy array or torch tensor; bool, or numeric with
            foreground where the value is > 0.5.
        target: ground-truth mask of the same shape and rules.
        spacing: voxel size in mm per array axis, (D, H, W) order; a single number means
            isotropic. Defaults to ``(1.0, 1.0, 1.0)``.
        convention: ``"monai"`` (default: HD95 = max of the directed 95th percentiles, ASD =
            mean of the pooled distances) or ``"medpy"`` (HD95 = 95th percentile of the pooled
            distances, ASD = mean of the two directed means).

    Returns:
        ``{"dice", "jaccard", "hd95", "asd"}`` as floats; Dice and Jaccard in [0, 1]. Both masks
        empty: 1, 1, 0, 0. Exactly one empty: 0, 0 and the volume diagonal in mm for both
        distances. Never NaN or infinite.

    Example:
        >>> import numpy as np
        >>> truth = np.zeros((8, 16, 16), bool); truth[2:6, 4:10, 4:10] = True
        >>> pred = np.roll(truth, 1, axis=2)
        >>> round(segmentation_metrics(pred, truth, spacing=(2.5, 0.7, 0.7))["dice"], 4)
        0.8333
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    pred_mask, target_mask = mask_pair(pred, target)
    if pred_mask.ndim < 1:
        raise ValueError("pred and target must be arrays with at least one axis")
    spacing_mm = _check_spacing(spacing, pred_mask.ndim)

    box = union_bounding_box(pred_mask, target_mask)
    if box is None:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    pred_crop, target_crop = pred_mask[box], target_mask[box]
    pred_size, target_size = int(pred_crop.sum()), int(target_crop.sum())
    overlap = int(np.count_nonzero(pred_crop & target_crop))
    union = pred_size + target_size - overlap
    dice = 2.0 * overlap / (pred_size + target_size)
    jaccard = overlap / union
    if pred_size == 0 or target_size == 0:
        diagonal = volume_diagonal(pred_mask.shape, spacing_mm)
        return {"dice": 0.0, "jaccard": 0.0, "hd95": diagonal, "asd": diagonal}
    pred_to_target, target_to_pred = _cropped_surface_distances(pred_crop, target_crop, spacing_mm)
    hd95, asd = _distance_summary(pred_to_target, target_to_pred, convention)
    return {"dice": float(dice), "jaccard": float(jaccard), "hd95": hd95, "asd": asd}


def mask_volumes(pred: Any, target: Any, spacing: Sequence[float] | float = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Volumes in mm^3 of a predicted mask and its ground truth: voxel count x voxel volume.

    ``pred`` and ``target`` follow :func:`segmentation_metrics`' rules (same shape; bool, or
    foreground where > 0.5); ``spacing`` is mm per axis. Returns ``{"reference_volume_mm3",
    "predicted_volume_mm3"}``: what the per-scan rows of ``segmentation.csv`` carry beside the
    overlap metrics, so results can be read by nodule size and as volume agreement.

    Example:
        >>> import numpy as np
        >>> truth = np.zeros((4, 8, 8), bool); truth[1:3, 2:6, 2:6] = True
        >>> mask_volumes(truth[:, ::-1], truth, spacing=(2.0, 0.5, 0.5))["reference_volume_mm3"]
        16.0
    """
    pred_mask, target_mask = mask_pair(pred, target)
    voxel_mm3 = float(np.prod(_check_spacing(spacing, pred_mask.ndim)))
    return {"reference_volume_mm3": float(np.count_nonzero(target_mask)) * voxel_mm3,
            "predicted_volume_mm3": float(np.count_nonzero(pred_mask)) * voxel_mm3}


def segmentation_metrics_batch(
    preds: Any,
    targets: Any,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    convention: str = "monai",
) -> list[dict[str, float]]:
    """:func:`segmentation_metrics` for each pair along the leading axis.

    ``preds`` and ``targets`` are (B, D, H, W) arrays or tensors (or sequences of (D, H, W)
    masks); one ``spacing`` for all. Returns B dictionaries in order.
    """
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets must hold the same number of masks, got {len(preds)} and {len(targets)}")
    return [
        segmentation_metrics(pred, target, spacing=spacing, convention=convention)
        for pred, target in zip(preds, targets)
    ]
