"""Statistics: DeLong against an O(N^2) structural-components computation, bootstrap, Wilcoxon, mean/std."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mstnet.metrics import (
    bootstrap_ci,
    bootstrap_mean_ci,
    delong_auc_variance,
    delong_test,
    mean_std,
    per_patient_means,
    wilcoxon_per_patient,
    wilcoxon_signed_rank,
)


def correlated_predictors(seed: int, n: int = 80, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    score_a = 1 / (1 + np.exp(-(1.2 * labels + shared + 0.5 * rng.normal(size=n))))
    score_b = 1 / (1 + np.exp(-(0.6 * labels + shared + 0.9 * rng.normal(size=n))))
    if ties:
        score_a, score_b = np.round(score_a, 1), np.round(score_b, 1)
    return labels, score_a, score_b


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC: fast enough to call thousands of times (sklearn's checks dominate at this size)."""
    positives = labels == 1
    m, n = positives.sum(), labels.size - positives.sum()
    return float((stats.rankdata(scores)[positives].sum() - m * (m + 1) / 2) / (m * n))


def test_rank_auc_helper_is_sklearns_auc():
    labels, score, _ = correlated_predictors(0, ties=True)
    assert rank_auc(labels, score) == pytest.approx(roc_auc_score(labels, score), abs=1e-12)


def quadratic_delong(labels: np.ndarray, scores: list[np.ndarray]):
    """DeLong et al. (1988) written out: psi over all (positive, negative) pairs."""
    structural_pos, structural_neg, aucs = [], [], []
    for score in scores:
        positives, negatives = score[labels == 1], score[labels == 0]
        psi = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
        aucs.append(psi.mean())
        structural_pos.append(psi.mean(axis=1))
        structural_neg.append(psi.mean(axis=0))
    m, n = np.sum(labels == 1), np.sum(labels == 0)
    covariance = np.cov(np.array(structural_pos)) / m + np.cov(np.array(structural_neg)) / n
    return np.array(aucs), covariance


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_the_quadratic_definition_and_sklearn_auc(seed, ties):
    labels, score_a, score_b = correlated_predictors(seed, ties=ties)
    aucs, covariance = quadratic_delong(labels, [score_a, score_b])
    auc, variance = delong_auc_variance(labels, score_a)
    assert auc == pytest.approx(roc_auc_score(labels, score_a), abs=1e-12)
    assert variance == pytest.approx(covariance[0, 0], rel=1e-10)
    result = delong_test(labels, score_a, score_b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(labels, score_a), abs=1e-12)
    assert result["auc_b"] == pytest.approx(roc_auc_score(labels, score_b), abs=1e-12)
    z = (aucs[0] - aucs[1]) / math.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert result["z"] == pytest.approx(z, rel=1e-10)
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    assert 0.0 <= result["p_value"] <= 1.0


def test_delong_variance_agrees_with_a_bootstrap_estimate():
    labels, score, _ = correlated_predictors(5, n=200)
    _, variance = delong_auc_variance(labels, score)
    rows = np.random.default_rng(0).integers(0, labels.size, size=(2000, labels.size))
    resampled = [rank_auc(labels[r], score[r]) for r in rows]
    assert variance == pytest.approx(np.var(resampled, ddof=1), rel=0.2)


def test_delong_detects_a_clearly_better_predictor():
    labels, score_a, _ = correlated_predictors(3, n=300)
    noise = np.random.default_rng(9).uniform(size=labels.size)
    result = delong_test(labels, score_a, noise)
    assert result["auc_a"] > result["auc_b"] and result["z"] > 0 and result["p_value"] < 1e-3


def test_delong_identical_predictors_give_p_one():
    labels, score_a, _ = correlated_predictors(1)
    result = delong_test(labels, score_a, score_a.copy())
    assert result["z"] == 0.0 and result["p_value"] == 1.0
    assert delong_test([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.3, 0.1, 0.7, 0.95])["p_value"] == 1.0  # both perfect


def test_delong_single_class_is_nan_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mstnet.metrics.statistics"):
        result = delong_test([1, 1, 1], [0.2, 0.4, 0.9], [0.1, 0.5, 0.3])
    assert all(math.isnan(v) for v in result.values()) and "single class" in caplog.text
    with pytest.raises(ValueError, match="single class"):
        delong_auc_variance([0, 0], [0.1, 0.2])


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic_by_seed():
    labels, score, _ = correlated_predictors(2, n=120)
    low, high = bootstrap_ci(labels, score, rank_auc, n_resamples=500, seed=4, stratify=True)
    assert low < roc_auc_score(labels, score) < high
    assert (low, high) == bootstrap_ci(labels, score, rank_auc, n_resamples=500, seed=4, stratify=True)
    assert (low, high) != bootstrap_ci(labels, score, rank_auc, n_resamples=500, seed=5, stratify=True)


def test_bootstrap_ci_narrows_with_more_patients():
    small_labels, small_score, _ = correlated_predictors(7, n=60)
    large_labels, large_score, _ = correlated_predictors(7, n=600)
    small = bootstrap_ci(small_labels, small_score, rank_auc, n_resamples=300, stratify=True)
    large = bootstrap_ci(large_labels, large_score, rank_auc, n_resamples=300, stratify=True)
    assert large[1] - large[0] < 0.6 * (small[1] - small[0])


def test_bootstrap_ci_resamples_whole_patients():
    """Rows duplicated per patient: the patient bootstrap equals the one-row-per-patient bootstrap."""
    labels, score, _ = correlated_predictors(8, n=50)
    patient_ids = np.repeat(np.arange(50), 3)
    grouped = bootstrap_ci(np.repeat(labels, 3), np.repeat(score, 3), rank_auc,
                           n_resamples=200, seed=1, groups=patient_ids)
    plain = bootstrap_ci(labels, score, rank_auc, n_resamples=200, seed=1)
    assert grouped == pytest.approx(plain, abs=1e-12)


def test_bootstrap_ci_stratified_keeps_class_counts():
    labels, score, _ = correlated_predictors(6, n=40)
    seen = []
    bootstrap_ci(labels, score, lambda y, p: seen.append(int(y.sum())) or 0.0, n_resamples=50, stratify=True)
    assert set(seen) == {int(labels.sum())}


def test_bootstrap_ci_leaves_out_undefined_resamples(caplog):
    labels = np.array([0] * 9 + [1])
    score = np.linspace(0.1, 0.9, 10)
    nan_safe_auc = lambda y, p: rank_auc(y, p) if np.unique(y).size == 2 else float("nan")  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="mstnet.metrics.statistics"):
        low, high = bootstrap_ci(labels, score, nan_safe_auc, n_resamples=200)
    assert low == high == 1.0 and "left out" in caplog.text


def test_bootstrap_mean_ci_matches_a_direct_patient_bootstrap():
    rng = np.random.default_rng(3)
    patient_ids = np.repeat([f"p{i:02d}" for i in range(30)], 2)  # two scans per patient
    dice = rng.uniform(0.5, 0.95, patient_ids.size)
    low, high = bootstrap_mean_ci(dice, groups=patient_ids, n_resamples=400, seed=11)
    # the same draws written out: patients numbered in order of first appearance
    draws = np.random.default_rng(11).integers(0, 30, size=(400, 30))
    per_patient = dice.reshape(30, 2)
    means = np.array([per_patient[d].mean() for d in draws])
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert low < dice.mean() < high


def test_bootstrap_mean_ci_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([0.5, np.nan, 0.7])


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 25)
    b = a - rng.normal(0.03, 0.05, 25)
    assert wilcoxon_signed_rank(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue)


def test_wilcoxon_edge_cases(caplog):
    assert wilcoxon_signed_rank([0.7, 0.8, 0.9], [0.7, 0.8, 0.9]) == 1.0
    with caplog.at_level(logging.WARNING, logger="mstnet.metrics.statistics"):
        assert math.isnan(wilcoxon_signed_rank([0.7], [0.6]))
        assert math.isnan(wilcoxon_signed_rank([0.7, np.nan], [0.6, 0.5]))
    a = [0.7, 0.8, 0.9, 0.5, np.nan, 0.6]
    b = [0.6, 0.85, 0.7, 0.4, 0.3, 0.55]
    assert wilcoxon_signed_rank(a, b) == pytest.approx(stats.wilcoxon(np.delete(a, 4), np.delete(b, 4)).pvalue)
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_signed_rank([0.1, 0.2], [0.1])


def test_wilcoxon_per_patient_pairs_patients_not_scans():
    # two scans (T0, T1) per patient; patient P3 has a NaN scan, left out of its mean
    patients = ["P1", "P1", "P2", "P2", "P3", "P3", "P4", "P4", "P5", "P5", "P6", "P6"]
    a = np.array([0.80, 0.84, 0.70, 0.66, 0.90, np.nan, 0.60, 0.64, 0.75, 0.79, 0.85, 0.81])
    b = np.array([0.78, 0.76, 0.69, 0.61, 0.80, 0.70, 0.62, 0.57, 0.70, 0.72, 0.86, 0.72])
    mean_a = [0.82, 0.68, 0.90, 0.62, 0.77, 0.83]
    mean_b = [0.77, 0.65, 0.80, 0.595, 0.71, 0.79]
    ids, means = per_patient_means(a, patients)
    assert list(ids) == ["P1", "P2", "P3", "P4", "P5", "P6"] and means == pytest.approx(mean_a)
    expected = stats.wilcoxon(mean_a, mean_b).pvalue
    assert wilcoxon_per_patient(a, b, patients) == pytest.approx(expected, rel=1e-12)
    # not the per-scan test, which counts each patient's scans as independent pairs
    valid = ~np.isnan(a)
    assert wilcoxon_per_patient(a, b, patients) != pytest.approx(stats.wilcoxon(a[valid], b[valid]).pvalue)
    # scan order does not matter
    order = np.random.default_rng(0).permutation(len(patients))
    assert wilcoxon_per_patient(a[order], b[order], np.array(patients)[order]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="one patient id per scan"):
        wilcoxon_per_patient(a, b, patients[:-1])


def test_mean_std_over_folds():
    assert mean_std([0.7, 0.8, 0.75, 0.9, 0.85]) == pytest.approx((0.8, np.std([0.7, 0.8, 0.75, 0.9, 0.85], ddof=1)))
    assert mean_std([0.6]) == (0.6, 0.0)
    assert mean_std([0.6, np.nan, 0.8]) == pytest.approx((0.7, math.sqrt(0.02)))
    assert all(math.isnan(v) for v in mean_std([]))
