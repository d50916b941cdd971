"""Aggregation and statistics for the results table (``shared/design/protocol.md``).

- :func:`mean_std`: mean +/- std over folds.
- :func:`bootstrap_ci`: percentile bootstrap over patients of a metric of pooled out-of-fold
  predictions (>= 1000 resamples, fixed seed).
- :func:`bootstrap_mean_ci`: the same for the mean of per-scan values (e.g. Dice), resampling
  patients, not scans.
- :func:`delong_test` / :func:`delong_auc_variance`: DeLong et al. (1988) paired test of two
  correlated ROC AUCs, with the O(N log N) midrank algorithm of Sun & Xu (2014),
  "Fast implementation of DeLong's algorithm for comparing the areas under correlated
  receiver operating characteristic curves", IEEE Signal Processing Letters 21(11).
- :func:`wilcoxon_signed_rank`: paired Wilcoxon signed-rank test (scipy) of paired values.
- :func:`per_patient_means` / :func:`wilcoxon_per_patient`: the same test on per-patient means
  of per-scan values (a patient's scans are not independent pairs), as the tables use it.
- :func:`patient_draws` / :func:`classification_metric_samples` / :func:`percentile_interval`:
  the table's bootstrap, every classification metric of every resample at once.
- :func:`mcnemar_exact` / :func:`bootstrap_p_value`: paired p-values of the ablation table.
- :func:`seed_statistics`: mean over training seeds and the spread between them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from mstnet.metrics.classification import nan_weighted_average, validate_binary_predictions
from mstnet.metrics.thresholds import DECISION_THRESHOLD

log = logging.getLogger(__name__)


def _as_float_vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    return array


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over folds.

    NaN entries (e.g. a fold whose AUC is undefined) are left out with a logged warning. One
    finite value gives std 0.0; none gives (nan, nan).
    """
    array = _as_float_vector(values, "values")
    finite = array[~np.isnan(array)]
    if finite.size < array.size:
        log.warning("mean_std: leaving out %d NaN value(s) of %d", array.size - finite.size, array.size)
    if finite.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    return float(np.mean(finite)), std


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence: expected a level strictly between 0 and 1, got {confidence}")


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its group number (0..G-1, numbered by first appearance), and each group's first row."""
    if groups is None:
        return np.arange(n), np.arange(n)
    keys = np.asarray(groups)
    if keys.shape != (n,):
        raise ValueError(f"groups: expected one patient id per value ({n}), got shape {keys.shape}")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # renumber groups by first appearance so results do not depend on how ids sort
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse], np.sort(first)


def _resampled_groups(
    rng: np.random.Generator, n_resamples: int, group_strata: np.ndarray | None, n_groups: int
) -> np.ndarray:
    """(n_resamples, G) group indices drawn with replacement, within each stratum if given."""
    if group_strata is None:
        return rng.integers(0, n_groups, size=(n_resamples, n_groups))
    columns = []
    for stratum in np.unique(group_strata):
        members = np.flatnonzero(group_strata == stratum)
        columns.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])
    return np.concatenate(columns, axis=1)


def percentile_interval(samples: Any, confidence: float = 0.95, what: str | None = None) -> tuple[float, float]:
    """Two-sided percentile interval of the finite bootstrap values; (nan, nan) when none is finite.

    With ``what`` (the caller's name), undefined values left out are logged as a warning.
    """
    estimates = np.asarray(samples, float)
    finite = estimates[np.isfinite(estimates)]
    if what is not None and finite.size < estimates.size:
        log.warning("%s: %d of %d bootstrap resamples gave an undefined value and were left out",
                    what, estimates.size - finite.size, estimates.size)
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: Any = None,
    stratify: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(y_true, y_prob)`` over patients.

    Args:
        y_true: (N,) labels 0/1 of the pooled out-of-fold predictions.
        y_prob: (N,) malignancy probabilities.
        metric_fn: ``f(labels, probabilities) -> float``, e.g. ``sklearn.metrics.roc_auc_score``
            or ``lambda y, p: classification_metrics(y, p)["f1"]``. A resample on which it
            returns NaN is left out (logged).
        n_resamples: number of bootstrap resamples. Defaults to 1000.
        seed: seed of the numpy generator; the same seed gives the same interval. Defaults to 0.
        confidence: two-sided level. Defaults to 0.95.
        groups: (N,) patient ids; all rows of a patient are drawn together. Defaults to None
            (each row is its own patient).
        stratify: resample benign and malignant patients separately, keeping the class counts
            fixed (every resample then holds both classes, so AUC is always defined). A
            patient's rows must then share one label. Defaults to False.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when every resample was undefined.
    """
    _check_resampling(n_resamples, confidence)
    labels, probabilities = validate_binary_predictions(y_true, y_prob)
    group_of_row, first_rows = _group_index(groups, labels.size)
    n_groups = first_rows.size
    group_strata = None
    if stratify:
        group_strata = labels[first_rows]
        if np.any(labels != group_strata[group_of_row]):
            raise ValueError("bootstrap_ci(stratify=True): a patient (group) has rows with different labels")
    rows_of_group = [np.flatnonzero(group_of_row == g) for g in range(n_groups)] if groups is not None else None
    rng = np.random.default_rng(seed)
    draws = _resampled_groups(rng, int(n_resamples), group_strata, n_groups)
    estimates = np.empty(draws.shape[0])
    for i, drawn in enumerate(draws):
        rows = drawn if rows_of_group is None else np.concatenate([rows_of_group[g] for g in drawn])
        estimates[i] = metric_fn(labels[rows], probabilities[rows])
    return percentile_interval(estimates, confidence, "bootstrap_ci")


def bootstrap_mean_ci(
    values: Any,
    groups: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-scan values, resampling patients.

    Args:
        values: (N,) per-scan values (e.g. Dice of every scan of every test patient); must be
            finite.
        groups: (N,) patient id of each scan; a drawn patient brings all its scans. Defaults
            to None (each value is its own patient).
        n_resamples: number of bootstrap resamples. Defaults to 1000.
        seed: seed of the numpy generator. Defaults to 0.
        confidence: two-sided level. Defaults to 0.95.

    Returns:
        ``(low, high)`` of the mean over scans of the resampled patients.
    """
    _check_resampling(n_resamples, confidence)
    array = _as_float_vector(values, "values")
    if array.size == 0:
        raise ValueError("values is empty: nothing to bootstrap")
    if not np.all(np.isfinite(array)):
        raise ValueError("values: every per-scan value must be finite (found NaN or inf)")
    group_of_row, first_rows = _group_index(groups, array.size)
    n_groups = first_rows.size
    sums = np.bincount(group_of_row, weights=array, minlength=n_groups)
    counts = np.bincount(group_of_row, minlength=n_groups).astype(np.float64)
    draws = patient_draws(n_groups, n_resamples, seed)
    estimates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return percentile_interval(estimates, confidence, "bootstrap_mean_ci")


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis with ties given their average rank."""
    return stats.rankdata(values, method="average", axis=-1)


def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (K,) and their DeLong covariance (K, K) for (K, N) scores; Sun & Xu (2014).

    With m positives X and n negatives Y, and midranks T_x (within X), T_y (within Y), T_z
    (within X and Y together): AUC = (sum T_z[X] - m(m+1)/2) / (m n); the structural
    components are V10 = (T_z[X] - T_x) / n and V01 = 1 - (T_z[Y] - T_y) / m; the covariance is
    S10 / m + S01 / n with S10, S01 the sample covariances (ddof=1) of V10 and V01.
    """
    positives, negatives = scores[:, labels == 1], scores[:, labels == 0]
    m, n = positives.shape[1], negatives.shape[1]
    rank_positives, rank_negatives = _midranks(positives), _midranks(negatives)
    rank_all = _midranks(np.concatenate([positives, negatives], axis=1))
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (rank_all[:, :m] - rank_positives) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_negatives) / m
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, s10 / m + s01 / n


def delong_auc_variance(y_true: Any, y_prob: Any) -> tuple[float, float]:
    """ROC AUC and its DeLong variance for one predictor: ``(auc, variance)``.

    ``y_true`` (N,) labels 0/1 with both classes present, ``y_prob`` (N,) scores. Raises
    ``ValueError`` when only one class is present (the AUC is then undefined).
    """
    labels, probabilities = validate_binary_predictions(y_true, y_prob)
    if np.unique(labels).size < 2:
        raise ValueError("delong_auc_variance: y_true holds a single class; the AUC is undefined")
    aucs, covariance = _delong_components(labels, probabilities[None, :])
    return float(aucs[0]), float(covariance[0, 0])


def delong_test(y_true: Any, prob_a: Any, prob_b: Any) -> dict[str, float]:
    """DeLong paired test of H0: AUC_a == AUC_b for two predictors scored on the same patients.

    Args:
        y_true: (N,) labels 0/1.
        prob_a: (N,) scores of predictor A (e.g. MST-Net).
        prob_b: (N,) scores of predictor B (e.g. a baseline).

    Returns:
        ``{"auc_a", "auc_b", "z", "p_value"}``: z = (AUC_a - AUC_b) / sqrt(Var(AUC_a - AUC_b)),
        two-sided p from the standard normal. When the variance of the difference is 0 (e.g.
        identical predictors), z = 0 and p = 1 if the AUCs are equal. With a single class
        present every value is NaN (logged warning).
    """
    labels, scores_a = validate_binary_predictions(y_true, prob_a)
    _, scores_b = validate_binary_predictions(labels, prob_b)
    nan = float("nan")
    if np.unique(labels).size < 2:
        log.warning("delong_test: y_true holds a single class; the AUCs and the test are undefined")
        return {"auc_a": nan, "auc_b": nan, "z": nan, "p_value": nan}
    aucs, covariance = _delong_components(labels, np.stack([scores_a, scores_b]))
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    if variance <= 1e-15:
        z = 0.0 if math.isclose(difference, 0.0, abs_tol=1e-12) else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    p_value = float(min(1.0, 2.0 * stats.norm.sf(abs(z))))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": float(z), "p_value": p_value}


def wilcoxon_signed_rank(values_a: Any, values_b: Any) -> float:
    """Two-sided p-value of the paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``).

    ``values_a`` and ``values_b`` are (N,) paired values, one pair per independent unit (e.g.
    per-patient mean Dice of MST-Net and of a baseline; for per-scan values use
    :func:`wilcoxon_per_patient`). Pairs with a NaN on either side are left out (logged).
    Returns NaN when fewer than 2 pairs remain, and 1.0 when every difference is zero (scipy
    would fail there). Zero differences are otherwise dropped (scipy's ``zero_method="wilcox"``).
    """
    a, b = _as_float_vector(values_a, "values_a"), _as_float_vector(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b must be paired (same length), got {a.size} and {b.size}")
    valid = ~(np.isnan(a) | np.isnan(b))
    if not valid.all():
        log.warning("wilcoxon_signed_rank: leaving out %d pair(s) with NaN of %d", int((~valid).sum()), a.size)
    differences = a[valid] - b[valid]
    if differences.size < 2:
        log.warning("wilcoxon_signed_rank: %d valid pair(s); at least 2 are needed, returning NaN", differences.size)
        return float("nan")
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def per_patient_means(values: Any, patients: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the per-scan ``values`` of each patient: ``(patient ids, means)``, patients in first-seen order.

    ``values`` (N,) numbers, ``patients`` (N,) the patient id of each scan. NaN values are left
    out of their patient's mean; a patient with no finite value gets NaN.
    """
    array = _as_float_vector(values, "values")
    group_of_row, first_rows = _group_index(np.asarray(patients), array.size)
    finite = ~np.isnan(array)
    sums = np.bincount(group_of_row[finite], weights=array[finite], minlength=first_rows.size)
    counts = np.bincount(group_of_row[finite], minlength=first_rows.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return np.asarray(patients)[first_rows], np.where(counts > 0, means, np.nan)


def wilcoxon_per_patient(values_a: Any, values_b: Any, patients: Any) -> float:
    """Wilcoxon signed-rank p-value of paired per-scan values, paired by patient.

    Scans of one patient (its time points) are not independent, so they are not separate
    pairs: scan pairs with a NaN on either side are left out, each patient's ``values_a`` and
    ``values_b`` are averaged over its remaining scans, and :func:`wilcoxon_signed_rank` is
    run on the per-patient means (one pair per patient).

    Args:
        values_a: (N,) per-scan values of method A (e.g. Dice of MST-Net).
        values_b: (N,) the same scans' values of method B.
        patients: (N,) patient id of each scan.

    Returns:
        The two-sided p-value (NaN with fewer than 2 patients, 1.0 when every patient's
        difference is zero).
    """
    a, b = _as_float_vector(values_a, "values_a"), _as_float_vector(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b must be paired (same length), got {a.size} and {b.size}")
    ids = np.asarray(patients)
    if ids.shape != a.shape:
        raise ValueError(f"patients: expected one patient id per scan ({a.size}), got shape {ids.shape}")
    valid = ~(np.isnan(a) | np.isnan(b))
    if not valid.all():
        log.warning("wilcoxon_per_patient: leaving out %d scan pair(s) with NaN of %d", int((~valid).sum()), a.size)
    if not valid.any():
        return float("nan")
    _, means_a = per_patient_means(a[valid], ids[valid])
    _, means_b = per_patient_means(b[valid], ids[valid])
    return wilcoxon_signed_rank(means_a, means_b)


def patient_draws(n_patients: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, N) patient indices drawn with replacement, as :func:`bootstrap_ci` draws them."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    return _resampled_groups(np.random.default_rng(seed), int(n_resamples), None, n_patients)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with NaN where the denominator is 0 (scikit-learn's ``zero_division=np.nan``)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
                     where=denominator > 0)


def classification_metric_samples(
    labels: np.ndarray, probabilities: np.ndarray, draws: np.ndarray, threshold: float | np.ndarray = DECISION_THRESHOLD,
    average: str = "binary",
) -> dict[str, np.ndarray]:
    """Every classification metric on every resample at once.

    Args:
        labels: (N,) 0/1 labels of the pooled patients.
        probabilities: (N,) malignancy probabilities.
        draws: (R, N) patient indices of R resamples (:func:`patient_draws`).
        threshold: a patient is malignant when its probability is >= threshold; a scalar, or
            (N,) thresholds, one per patient (each fold's own).
        average: "binary" (malignant class) or "weighted" (support-weighted over both classes),
            as in :func:`mstnet.metrics.classification_metrics`.

    Returns:
        metric name -> (R,) values, the same keys as ``classification_metrics``; undefined
        values are NaN as there (precision with no positive prediction, AUC on a resample
        holding one class, ...).
    """
    y = np.asarray(labels)[draws].astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)[draws]
    threshold = np.asarray(threshold, dtype=np.float64)
    predicted = p >= (threshold[draws] if threshold.ndim == 1 else threshold)
    n = y.shape[1]
    tp = (y & predicted).sum(axis=1)
    fp = (~y & predicted).sum(axis=1)
    tn = (~y & ~predicted).sum(axis=1)
    fn = (y & ~predicted).sum(axis=1)
    recall_1, recall_0 = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision_1, precision_0 = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    f1_1, f1_0 = _ratio(2 * tp, 2 * tp + fp + fn), _ratio(2 * tn, 2 * tn + fn + fp)
    if average == "binary":
        precision, recall, f1, specificity = precision_1, recall_1, f1_1, recall_0
    elif average == "weighted":
        weights = np.stack([tn + fp, tp + fn], axis=-1)  # support of class 0, class 1

        def weighted(value_0: np.ndarray, value_1: np.ndarray) -> np.ndarray:
            return nan_weighted_average(np.stack([value_0, value_1], axis=-1), weights)

        precision, recall, f1 = weighted(precision_0, precision_1), weighted(recall_0, recall_1), weighted(f1_0, f1_1)
        specificity = weighted(recall_1, recall_0)
    else:
        raise ValueError(f"average: expected 'binary' or 'weighted', got {average!r}")
    positives = y.sum(axis=1)
    negatives = n - positives
    ranks = stats.rankdata(p, method="average", axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2.0) / (positives * negatives)
    auc = np.where((positives > 0) & (negatives > 0), auc, np.nan)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "specificity": specificity,
            "f1": f1, "auc": auc, "brier": ((p - y) ** 2).mean(axis=1)}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired correct/incorrect outcomes (binomial on discordant pairs)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value of H0: difference = 0, ``min(1, 2 min(P(d <= 0), P(d >= 0)))``."""
    finite = np.asarray(differences, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan
    return float(min(1.0, 2.0 * min((finite <= 0).mean(), (finite >= 0).mean())))


def seed_statistics(values: np.ndarray) -> tuple[np.ndarray, float]:
    """For per-seed statistics ``values`` (seeds along axis 0): their mean over the seeds where defined (NaN
    where none is), and the sample std (ddof=1) between the seeds' first entries (the point estimates), NaN
    with fewer than two defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    counts = defined.sum(axis=0)
    mean = np.divide(np.where(defined, values, 0.0).sum(axis=0), counts, out=np.full(values.shape[1:], np.nan),
                     where=counts > 0)
    point = values[:, 0][defined[:, 0]]
    return mean, float(np.std(point, ddof=1)) if point.size > 1 else math.nan
