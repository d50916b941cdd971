"""Classification metrics against scikit-learn, binary and weighted, at several thresholds."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mstnet.metrics import classification_metrics

KEYS = {"accuracy", "precision", "recall", "specificity", "f1", "auc", "brier"}


def predictions(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probabilities = np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1)
    return labels, probabilities


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_binary_average_matches_sklearn(seed, threshold):
    labels, probabilities = predictions(seed)
    predicted = (probabilities >= threshold).astype(int)
    result = classification_metrics(labels, probabilities, threshold=threshold)
    assert set(result) == KEYS
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, zero_division=np.nan), nan_ok=True)
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted, zero_division=np.nan), nan_ok=True)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probabilities))
    assert result["brier"] == pytest.approx(brier_score_loss(labels, probabilities))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.7])
def test_weighted_average_matches_sklearn(seed, threshold):
    labels, probabilities = predictions(seed)
    predicted = (probabilities >= threshold).astype(int)
    result = classification_metrics(labels, probabilities, threshold=threshold, average="weighted")
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, average="weighted",
                                                                zero_division=np.nan), nan_ok=True)
    assert result["recall"] == pytest.approx(recall_score(labels, predicted, average="weighted"))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted, average="weighted", zero_division=np.nan),
                                         nan_ok=True)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    # weighted specificity: each class's specificity (recall of the other class) weighted by its support
    n_benign, n_malignant = np.sum(labels == 0), np.sum(labels == 1)
    expected = (n_benign * recall_score(labels, predicted, pos_label=1)
                + n_malignant * recall_score(labels, predicted, pos_label=0)) / labels.size
    assert result["specificity"] == pytest.approx(expected)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probabilities))


def test_hand_computed_confusion_matrix():
    # TP = 2 (0.9, 0.7), FN = 1 (0.2), TN = 2 (0.1, 0.3), FP = 1 (0.6)
    labels = [1, 1, 1, 0, 0, 0]
    probabilities = [0.9, 0.7, 0.2, 0.1, 0.3, 0.6]
    result = classification_metrics(labels, probabilities)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["auc"] == pytest.approx(7 / 9)  # 7 of the 9 (malignant, benign) pairs are ordered right
    assert result["brier"] == pytest.approx(np.mean(np.square(np.array(probabilities) - labels)))


def test_probability_equal_to_threshold_is_malignant():
    result = classification_metrics([0, 1], [0.2, 0.5], threshold=0.5)
    assert result["recall"] == 1.0 and result["accuracy"] == 1.0


def test_no_predicted_positive_gives_undefined_precision_and_zero_f1():
    result = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)
    assert math.isnan(result["precision"])  # no positive prediction: undefined, not 0
    assert result["f1"] == 0.0 and result["recall"] == 0.0  # malignant patients, none found: F1 = 2TP/(2TP+FP+FN) = 0
    assert result["specificity"] == 1.0
    legacy = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9, zero_division=0)
    assert legacy["precision"] == 0.0 and legacy["f1"] == 0.0


# every corner of the confusion matrix: no positive prediction, no malignant patient, no benign one, both
UNDEFINED_CASES = [
    ([0, 1, 1], [0.1, 0.2, 0.3]),
    ([0, 0, 0], [0.1, 0.2, 0.3]),
    ([0, 0, 0], [0.1, 0.7, 0.3]),
    ([1, 1, 1], [0.1, 0.2, 0.3]),
    ([1, 1, 1], [0.9, 0.2, 0.8]),
    ([0, 1], [0.9, 0.8]),
    ([0, 0, 1, 1], [0.9, 0.1, 0.2, 0.3]),
]


@pytest.mark.parametrize("average", ["binary", "weighted"])
@pytest.mark.parametrize("case", range(len(UNDEFINED_CASES)))
def test_undefined_ratios_match_sklearn_zero_division_nan(case, average):
    labels, probabilities = (np.array(v) for v in UNDEFINED_CASES[case])
    predicted = (probabilities >= 0.5).astype(int)
    result = classification_metrics(labels, probabilities, average=average)
    options = {"labels": [0, 1], "zero_division": np.nan, "average": average}
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, **options), nan_ok=True)
    assert result["recall"] == pytest.approx(recall_score(labels, predicted, **options), nan_ok=True)
    assert result["f1"] == pytest.approx(f1_score(labels, predicted, **options), nan_ok=True)
    per_class = recall_score(labels, predicted, labels=[0, 1], average=None, zero_division=np.nan)
    if average == "binary":
        assert result["specificity"] == pytest.approx(per_class[0], nan_ok=True)
    if average == "binary" and not predicted.any():
        assert math.isnan(result["precision"])


def test_single_class_gives_nan_auc_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mstnet.metrics.classification"):
        result = classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(result["auc"])
    assert "single class" in caplog.text
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["brier"] == pytest.approx(brier_score_loss([0, 0, 0], [0.1, 0.7, 0.2]))


def test_accepts_torch_tensors_and_lists():
    labels, probabilities = predictions(4)
    expected = classification_metrics(labels, probabilities)
    assert classification_metrics(torch.from_numpy(labels), torch.from_numpy(probabilities)) == expected
    assert classification_metrics(labels.tolist(), probabilities.tolist()) == expected


@pytest.mark.parametrize(
    ("labels", "probabilities", "kwargs", "message"),
    [
        ([0, 1], [0.2], {}, "same length"),
        ([], [], {}, "empty"),
        ([0, 2], [0.2, 0.4], {}, "0 \\(benign\\) or 1"),
        ([0, 1], [0.2, 1.4], {}, "y_prob"),
        ([0, 1], [0.2, np.nan], {}, "y_prob"),
        ([0, 1], [0.2, 0.4], {"average": "macro"}, "average"),
        ([0, 1], [0.2, 0.4], {"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_input_is_named(labels, probabilities, kwargs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probabilities, **kwargs)
