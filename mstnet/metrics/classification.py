"""Per-patient classification metrics: benign (0) versus malignant (1) from probabilities.

Thin, validated wrappers around scikit-learn (``shared/design/protocol.md``, "Metrics,
exactly"): accuracy, precision, recall (sensitivity), specificity, F1, ROC AUC and the Brier
score. A patient is predicted malignant when its probability is >= ``threshold``.

Undefined ratios are NaN, not 0 (scikit-learn's ``zero_division=np.nan``): precision with no
positive prediction, recall with no malignant patient, specificity with no benign patient.
F1 = 2 TP / (2 TP + FP + FN) is undefined only when there is neither a malignant patient nor
a positive prediction; with malignant patients but no positive prediction (precision
undefined, recall 0) it is 0, the limit of the harmonic mean and what scikit-learn gives: the
classifier found none of the malignant patients, which is a defined, bad result.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mstnet.metrics.thresholds import DECISION_THRESHOLD

log = logging.getLogger(__name__)

AVERAGES: tuple[str, ...] = ("binary", "weighted")


def validate_binary_predictions(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 0/1 and probabilities as float64 in [0, 1], both 1-D of the same length.

    Raises ``ValueError`` naming the argument and the problem (empty, shape mismatch, labels
    other than 0/1, NaN or out-of-range probabilities).
    """
    labels = np.asarray(y_true.detach().cpu().numpy() if hasattr(y_true, "detach") else y_true)
    probabilities = np.asarray(y_prob.detach().cpu().numpy() if hasattr(y_prob, "detach") else y_prob, dtype=np.float64)
    if labels.ndim != 1 or probabilities.ndim != 1:
        raise ValueError(f"y_true and y_prob must be 1-D (one value per patient), got shapes {labels.shape} and {probabilities.shape}")
    if labels.shape != probabilities.shape:
        raise ValueError(f"y_true and y_prob must have the same length, got {labels.size} and {probabilities.size}")
    if labels.size == 0:
        raise ValueError("y_true and y_prob are empty: no patients to score")
    unexpected = set(np.unique(labels).tolist()) - {0, 1, True, False}
    if unexpected:
        raise ValueError(f"y_true: labels must be 0 (benign) or 1 (malignant), found {sorted(unexpected, key=str)[:5]}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError("y_prob: probabilities must be finite numbers in [0, 1]")
    return labels.astype(np.int64), probabilities


def nan_weighted_average(values: Any, weights: Any, axis: int = -1) -> Any:
    """Weighted average along ``axis`` leaving out NaN values, as scikit-learn averages per-class scores.

    This is ``sklearn.utils.extmath._nanaverage`` (what ``average="weighted"`` with
    ``zero_division=np.nan`` uses), broadcast over leading axes: NaN entries and their weights
    are left out; when the remaining weights sum to 0 the remaining values are averaged
    unweighted; NaN when no value is defined. Returns a float for 1-D input, else an array.
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), values.shape)
    defined = ~np.isnan(values)
    kept, kept_weights = np.where(defined, values, 0.0), np.where(defined, weights, 0.0)
    total, count = kept_weights.sum(axis=axis), defined.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = (kept * kept_weights).sum(axis=axis) / total
        plain = kept.sum(axis=axis) / count
    result = np.where(total > 0, weighted, plain)
    return float(result) if result.ndim == 0 else result


def roc_auc(y_true: Any, y_prob: Any) -> float:
    """ROC AUC of malignancy probabilities; NaN (with a logged warning) when only one class is present."""
    labels, probabilities = validate_binary_predictions(y_true, y_prob)
    if np.unique(labels).size < 2:
        log.warning("ROC AUC is undefined with a single class present (%d patients, all label %d); returning NaN",
                    labels.size, int(labels[0]))
        return float("nan")
    return float(roc_auc_score(labels, probabilities))


def _thresholded_ratios(labels: np.ndarray, predicted: np.ndarray, average: str,
                        zero_division: float) -> tuple[float, float, float, float]:
    """Precision, recall, specificity and F1 of 0/1 predictions, ``average`` as in :func:`classification_metrics`."""
    options = {"labels": [0, 1], "zero_division": np.nan if math.isnan(zero_division) else zero_division}
    recall_per_class = recall_score(labels, predicted, average=None, **options)
    if average == "binary":
        precision = precision_score(labels, predicted, average="binary", pos_label=1, **options)
        recall = recall_per_class[1]
        f1 = f1_score(labels, predicted, average="binary", pos_label=1, **options)
        specificity = recall_per_class[0]
    else:
        precision = precision_score(labels, predicted, average="weighted", **options)
        recall = recall_score(labels, predicted, average="weighted", **options)
        f1 = f1_score(labels, predicted, average="weighted", **options)
        support = np.bincount(labels, minlength=2)
        specificity = nan_weighted_average([recall_per_class[1], recall_per_class[0]], [support[0], support[1]])
    return precision, recall, specificity, f1


def classification_metrics(
    y_true: Any, y_prob: Any, threshold: float = DECISION_THRESHOLD, average: str = "binary", zero_division: float = math.nan
) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, F1, ROC AUC and Brier score for one set of patients.

    Args:
        y_true: (N,) labels, 0 benign / 1 malignant (numpy, list or torch tensor).
        y_prob: (N,) predicted malignancy probabilities in [0, 1].
        threshold: a patient is predicted malignant when its probability is >= threshold.
            Defaults to :data:`~mstnet.metrics.thresholds.DECISION_THRESHOLD` (0.5).
        average: ``"binary"`` (default): precision, recall, F1 of the malignant class and
            specificity = recall of the benign class. ``"weighted"`` (what the release used):
            scikit-learn's support-weighted average over both classes for precision, recall
            and F1; specificity is the same weighting of each class's specificity (the recall
            of the *other* class), i.e. ``(n0 * recall_1 + n1 * recall_0) / N`` (undefined
            class values left out as in :func:`nan_weighted_average`).
        zero_division: the value of an undefined ratio. Defaults to NaN (see the module
            docstring); ``0`` gives the convention of results written before it, which
            ``mstnet report`` uses only to recognise such files.

    Returns:
        ``{"accuracy", "precision", "recall", "specificity", "f1", "auc", "brier"}``. Undefined
        ratios are ``zero_division`` (NaN): precision with no positive prediction, recall with
        no malignant patient, specificity with no benign one, F1 with neither a malignant
        patient nor a positive prediction (F1 is 0, not NaN, when there are malignant patients
        but no positive prediction); ``auc`` is NaN with a logged warning when only one class
        is present. ``auc`` and ``brier`` do not depend on ``threshold`` or ``average``.

    Example:
        >>> classification_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])["accuracy"]
        0.5
    """
    if average not in AVERAGES:
        raise ValueError(f"average: expected one of {AVERAGES}, got {average!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold}")
    labels, probabilities = validate_binary_predictions(y_true, y_prob)
    if not (math.isnan(zero_division) or zero_division in (0, 1)):
        raise ValueError(f"zero_division: expected NaN, 0 or 1, got {zero_division}")
    predicted = (probabilities >= threshold).astype(np.int64)
    precision, recall, specificity, f1 = _thresholded_ratios(labels, predicted, average, zero_division)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "specificity": float(specificity),
        "f1": float(f1),
        "auc": roc_auc(labels, probabilities),
        "brier": float(brier_score_loss(labels, probabilities, pos_label=1)),
    }
