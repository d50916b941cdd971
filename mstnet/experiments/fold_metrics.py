"""``metrics.json`` of one fold, the same for the harness's deep and tabular folds and for ``mstnet evaluate``
(and what ``mstnet report`` recomputes from ``predictions.csv`` and ``segmentation.csv``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mstnet.metrics import DECISION_THRESHOLD, classification_metrics, mask_volumes, segmentation_metrics
from mstnet.metrics.segmentation import mask_pair
from mstnet.results_files import SEGMENTATION_METRICS


def scan_segmentation_row(pred: Any, truth: Any, spacing: Sequence[float]) -> dict[str, float]:
    """The metric columns of one ``segmentation.csv`` row: Dice, Jaccard, HD95 and ASD
    (:func:`~mstnet.metrics.segmentation_metrics`) and the reference and predicted volumes in mm^3
    (:func:`~mstnet.metrics.mask_volumes`) of two (D, H, W) masks at ``spacing`` (z, y, x) mm."""
    spacing = tuple(float(s) for s in spacing)
    pred, truth = mask_pair(pred, truth)  # converted once, for both calls
    return {**segmentation_metrics(pred, truth, spacing=spacing), **mask_volumes(pred, truth, spacing=spacing)}


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in metrics.items()}


def fold_metrics(scans: list[dict], patients: list[dict],
                 validation_threshold: float = DECISION_THRESHOLD) -> dict[str, Any]:
    """``metrics.json``: the mean of each per-scan segmentation metric (``segmentation.csv`` rows), and the
    classification metrics of the test patients (``predictions.csv`` rows) at :data:`DECISION_THRESHOLD` and
    at the inner-validation threshold; NaN written as null."""
    metrics: dict[str, Any] = {"segmentation": None, "classification": None, "convention": "monai",
                               "average": "binary", "threshold": DECISION_THRESHOLD}
    if scans:
        frame = pd.DataFrame(scans)
        metrics["segmentation"] = _clean({k: float(frame[k].mean()) for k in SEGMENTATION_METRICS})
    if patients:
        frame = pd.DataFrame(patients)
        labels, probabilities = frame["label"].to_numpy(), frame["probability"].to_numpy()
        metrics["classification"] = _clean(classification_metrics(labels, probabilities))
        metrics["classification_at_validation_threshold"] = _clean(
            classification_metrics(labels, probabilities, threshold=validation_threshold))
        metrics["validation_threshold"] = validation_threshold
    return metrics
