"""The claims table: the verdict rule at its boundaries, the power simulation against a closed form, and the
table's numbers against the run files (recomputed here with scikit-learn, scipy and pandas)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats
from sklearn.metrics import roc_auc_score

from mstnet.claims import CLAIM_EXPERIMENTS, CLAIMS
from mstnet.metrics.claims import (CONTRADICTED, NOT_DETECTED, NOT_TESTABLE, SUPPORTED, claim_verdict,
                                   paired_auc_power)
from mstnet.reporting.build import claims_sections
from mstnet.reporting.claims_formats import claims_csv, claims_markdown
from mstnet.reporting.claims_table import claims_table
from mstnet.reporting.results import load_results
from mstnet.results_files import ORACLE_POSTERIORS_FILE
from mstnet.synth.power import smallest_powered_size
from tests.fake_runs import FakeExperiment, write_fake_runs


@pytest.mark.parametrize("gap, p_value, verdict", [
    (0.05, 0.0499, SUPPORTED), (0.05, 0.05, NOT_DETECTED), (0.05, 0.0501, NOT_DETECTED),
    (-0.05, 0.0499, CONTRADICTED), (-0.05, 0.05, NOT_DETECTED), (0.0, 0.001, NOT_DETECTED),
    (1e-9, 1e-6, SUPPORTED), (-1e-9, 1e-6, CONTRADICTED), (math.nan, 0.01, NOT_TESTABLE), (0.1, math.nan, NOT_TESTABLE),
])
def test_verdict_rule_at_its_boundaries(gap, p_value, verdict):
    assert claim_verdict(gap, p_value) == verdict


def test_verdict_rule_refuses_a_level_outside_zero_one():
    with pytest.raises(ValueError, match="alpha"):
        claim_verdict(0.1, 0.01, alpha=1.0)


def _binormal_auc_difference_sd(separation: float, n_positive: float, n_negative: float) -> float:
    """Large-sample sd of AUC(A) - AUC(B) for A = separation * y + N(0, 1) and B = N(0, 1) independent of A.

    DeLong's structural components: Var(AUC) = Var(F0(X)) / m + Var(F1(Y)) / n, with F0 (F1) the
    CDF of the negatives' (positives') scores, X a positive's and Y a negative's score; the two
    predictors' noises are independent, so their covariance is 0. For B (no signal) both variances are 1/12.
    """
    def variance_of_cdf(shift: float) -> float:
        # Var(Phi(Z + shift)) for Z ~ N(0, 1)
        mean = integrate.quad(lambda z: stats.norm.cdf(z + shift) * stats.norm.pdf(z), -12, 12)[0]
        second = integrate.quad(lambda z: stats.norm.cdf(z + shift) ** 2 * stats.norm.pdf(z), -12, 12)[0]
        return second - mean**2

    variance_a = variance_of_cdf(separation) / n_positive + variance_of_cdf(-separation) / n_negative
    variance_b = (1 / 12) / n_positive + (1 / 12) / n_negative
    return math.sqrt(variance_a + variance_b)


def test_power_simulation_matches_the_closed_form_in_a_binormal_case():
    rng = np.random.default_rng(0)
    population, separation, n_patients, prevalence = 50_000, 0.55, 120, 0.4
    labels = (rng.random(population) < prevalence).astype(int)
    # probabilities as the test takes them: a monotone map of the binormal scores leaves every AUC unchanged
    scores_a = special.expit(separation * labels + rng.standard_normal(population))
    scores_b = special.expit(rng.standard_normal(population))
    gap = stats.norm.cdf(separation / math.sqrt(2)) - 0.5
    sd = _binormal_auc_difference_sd(separation, prevalence * n_patients, (1 - prevalence) * n_patients)
    z = stats.norm.ppf(0.975)
    closed_form = stats.norm.cdf(gap / sd - z)
    estimate = paired_auc_power(labels, scores_a, scores_b, n_patients, n_cohorts=800, seed=1)
    assert 0.3 < closed_form < 0.9  # a case where power is neither trivial nor certain
    assert estimate.power == pytest.approx(closed_form, abs=3 * estimate.standard_error + 0.03)
    assert estimate.mean_gap == pytest.approx(gap, abs=0.01)
    assert estimate.population_gap == pytest.approx(gap, abs=0.01)


def test_power_of_a_null_comparison_stays_near_half_the_level():
    rng = np.random.default_rng(2)
    labels = (rng.random(50_000) < 0.5).astype(int)
    signal = special.expit(labels + rng.standard_normal(50_000))
    # B equals A: the test never finds a gap; A against an equally good, independent predictor: one-sided 2.5%
    assert paired_auc_power(labels, signal, signal, 100, n_cohorts=200).power == 0.0
    twin = special.expit(labels + rng.standard_normal(50_000))
    estimate = paired_auc_power(labels, signal, twin, 100, n_cohorts=600, seed=3)
    assert estimate.power == pytest.approx(0.025, abs=0.02)


def test_power_simulation_refuses_a_cohort_as_large_as_the_population():
    with pytest.raises(ValueError, match="n_patients"):
        paired_auc_power([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.5] * 4, 4)


def test_smallest_powered_size_needs_every_required_comparison():
    frame = pd.DataFrame({
        "required_gap": [0.05, 0.05, 0.05, 0.10, 0.10, 0.10, None, None, None],
        "n_patients": [100, 200, 300] * 3,
        "power": [0.5, 0.85, 0.95, 0.9, 0.79, 0.99, 0.1, 0.1, 0.1],
    })
    assert smallest_powered_size(frame, 0.8) == 300
    assert smallest_powered_size(frame, 0.99) is None


def test_the_claims_name_registered_experiments_with_their_information_sets():
    from mstnet.experiments.registry import get_experiment

    for claim in CLAIMS:
        assert (get_experiment(claim.better).information, get_experiment(claim.worse).information) == claim.ceiling
    assert CLAIM_EXPERIMENTS[0] == "mstnet"


CLAIM_RUNS = (
    FakeExperiment("mstnet", ("segmentation", "classification"), table_row="MST-Net", separation=2.0, dice_level=0.78),
    FakeExperiment("image-only", ("segmentation", "classification"), group="ablation", information="scans2",
                   separation=1.6, dice_level=0.78),
    FakeExperiment("clinical-only", ("classification",), group="ablation", information="clinical", separation=0.7),
    FakeExperiment("single-timepoint", ("segmentation", "classification"), group="ablation",
                   information="scans1+clinical", separation=1.0, dice_level=0.70),
    FakeExperiment("planar-2d", ("segmentation", "classification"), group="ablation", information="scans2+clinical",
                   separation=1.9, dice_level=0.74),
)


@pytest.fixture(scope="module")
def claim_runs(tmp_path_factory):
    runs_dir = write_fake_runs(tmp_path_factory.mktemp("claims") / "runs", CLAIM_RUNS, n_patients=80)
    rng = np.random.default_rng(5)
    labels = np.arange(80) % 2
    posteriors = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(80)], "label": labels})
    for key, separation in (("scans2+clinical", 2.5), ("scans2", 1.8), ("scans1+clinical", 1.2), ("clinical", 0.6)):
        posteriors[f"oracle_{key}"] = 1 / (1 + np.exp(-(separation * (labels - 0.5) + rng.standard_normal(80))))
    posteriors.to_csv(runs_dir / ORACLE_POSTERIORS_FILE, index=False)
    return runs_dir, posteriors


def _pooled(runs_dir, name: str, kind: str) -> pd.DataFrame:
    return pd.concat([pd.read_csv(path, dtype={"patient_id": str})
                      for path in sorted((runs_dir / name).glob(f"fold*/{kind}.csv"))], ignore_index=True)


def test_claims_table_numbers_equal_a_recomputation_from_the_run_files(claim_runs):
    runs_dir, posteriors = claim_runs
    table = claims_table(load_results(runs_dir), n_resamples=200)
    frame = table.frame.set_index(["comparison", "metric"])
    assert set(frame.index) == {("mstnet vs image-only", "auc"), ("mstnet vs image-only", "dice"),
                                ("mstnet vs clinical-only", "auc"), ("mstnet vs single-timepoint", "auc"),
                                ("mstnet vs single-timepoint", "dice"), ("mstnet vs planar-2d", "auc"),
                                ("mstnet vs planar-2d", "dice")}
    for worse in ("image-only", "clinical-only", "single-timepoint", "planar-2d"):
        row = frame.loc[(f"mstnet vs {worse}", "auc")]
        merged = _pooled(runs_dir, "mstnet", "predictions").merge(
            _pooled(runs_dir, worse, "predictions"), on="patient_id", suffixes=("_a", "_b")).merge(posteriors, on="patient_id")
        auc_a = roc_auc_score(merged["label_a"], merged["probability_a"])
        auc_b = roc_auc_score(merged["label_a"], merged["probability_b"])
        assert row["n"] == len(merged) == 80
        assert row["measured_better"] == pytest.approx(auc_a, abs=1e-12)
        assert row["measured_gap"] == pytest.approx(auc_a - auc_b, abs=1e-12)
        assert row["measured_ci_low"] <= row["measured_gap"] <= row["measured_ci_high"]
        assert row["verdict"] == claim_verdict(row["measured_gap"], row["measured_p"])
        claim = next(c for c in CLAIMS if c.worse == worse)
        ceiling_a = roc_auc_score(merged["label"], merged[f"oracle_{claim.ceiling[0]}"])
        ceiling_b = roc_auc_score(merged["label"], merged[f"oracle_{claim.ceiling[1]}"])
        assert row["ceiling_gap"] == pytest.approx(ceiling_a - ceiling_b, abs=1e-12)
        assert row["ceiling_verdict"] == claim_verdict(row["ceiling_gap"], row["ceiling_p"])
        assert row["agreement"] == ("yes" if row["verdict"] == row["ceiling_verdict"] else "no")
    same = frame.loc[("mstnet vs planar-2d", "auc")]
    assert (same["ceiling_gap"], same["ceiling_p"], same["ceiling_verdict"]) == (0.0, 1.0, NOT_DETECTED)
    assert "same information" in same["note"]
    dice = frame.loc[("mstnet vs single-timepoint", "dice")]
    scans = _pooled(runs_dir, "mstnet", "segmentation").merge(
        _pooled(runs_dir, "single-timepoint", "segmentation"), on=["patient_id", "timepoint"], suffixes=("_a", "_b"))
    per_patient = scans.assign(diff=scans["dice_a"] - scans["dice_b"]).groupby("patient_id")["diff"].mean()
    assert dice["n"] == len(scans)
    assert dice["measured_gap"] == pytest.approx((scans["dice_a"] - scans["dice_b"]).mean(), abs=1e-12)
    assert dice["measured_p"] == pytest.approx(stats.wilcoxon(per_patient).pvalue, rel=1e-9)
    assert dice["ceiling_verdict"] == "no ceiling" and dice["agreement"] == "n/a"
    assert "vacuous" in frame.loc[("mstnet vs image-only", "dice"), "note"]


def test_ranking_check_is_kendalls_tau_of_measured_auc_against_ceiling(claim_runs):
    runs_dir, posteriors = claim_runs
    table = claims_table(load_results(runs_dir), n_resamples=50)
    measured, ceilings = [], []
    for experiment in CLAIM_RUNS:
        predictions = _pooled(runs_dir, experiment.name, "predictions").merge(posteriors, on="patient_id")
        measured.append(roc_auc_score(predictions["label_x"], predictions["probability"]))
        ceilings.append(roc_auc_score(predictions["label_x"], predictions[f"oracle_{experiment.information}"]))
    ranking = table.ranking.set_index("experiment")
    assert list(ranking.index) == [e.name for e in CLAIM_RUNS]
    assert np.allclose(ranking["auc"], measured) and np.allclose(ranking["ceiling"], ceilings)
    assert table.kendall_tau == pytest.approx(stats.kendalltau(measured, ceilings).statistic, abs=1e-12)


def test_claims_table_is_written_in_every_format_with_its_figure(claim_runs, tmp_path):
    runs_dir, _ = claim_runs
    sections = claims_sections(load_results(runs_dir), tmp_path / "report", tmp_path / "report" / "figures",
                               n_resamples=200)
    assert [section.title for section in sections] == ["Claims table", "Claims: measured AUC against ceiling"]
    for suffix in ("md", "csv", "tex", "html"):
        assert (tmp_path / "report" / f"claims_table.{suffix}").stat().st_size > 0
    assert (tmp_path / "report" / "figures" / "claims_auc_vs_ceiling.png").exists()
    written = pd.read_csv(tmp_path / "report" / "claims_table.csv")
    table = claims_table(load_results(runs_dir), n_resamples=200)
    assert len(written) == len(table.frame)
    assert np.allclose(written["measured_gap"], table.frame["measured_gap"])
    markdown = claims_markdown(table)
    assert markdown.count("\n| multimodal |") == 3 and "Kendall's tau" in markdown
    assert claims_csv(table).splitlines()[0].startswith("claim,comparison,lacks,metric")


def test_no_claims_table_without_a_claims_pair(tmp_path):
    runs_dir = write_fake_runs(tmp_path / "runs", CLAIM_RUNS[:1], n_patients=20)
    assert claims_table(load_results(runs_dir)) is None


def test_a_patient_missing_from_the_oracle_posteriors_is_named(claim_runs, tmp_path):
    runs_dir, posteriors = claim_runs
    copied = shutil.copytree(runs_dir, tmp_path / "runs")
    posteriors[posteriors["patient_id"] != "P017"].to_csv(copied / ORACLE_POSTERIORS_FILE, index=False)
    with pytest.raises(ValueError, match=r"patient 'P017' has no oracle posterior in oracle_posteriors.csv"):
        claims_table(load_results(copied), n_resamples=20)


def test_claims_notes_name_each_recipe_and_the_folds_short_of_their_plateau(claim_runs, tmp_path):
    runs_dir, _ = claim_runs
    copied = shutil.copytree(runs_dir, tmp_path / "runs")
    for name, recipe, steps in (("mstnet", "segmentation+classification, 24/16 epochs", 1700),
                                ("image-only", "segmentation+classification, 8/16 epochs", 900)):
        for fold in range(5):
            path = copied / name / f"fold{fold}" / "run.json"
            run = json.loads(path.read_text())
            short = name == "image-only" and fold in (1, 3)
            run.update(recipe_summary=recipe, optimizer_steps=steps + fold, plateau_reached=not short,
                       short_of_plateau="segmentation: val_dice +0.042" if short else "")
            path.write_text(json.dumps(run))
    notes = " ".join(claims_table(load_results(copied), n_resamples=20).notes)
    assert "MST-Net: segmentation+classification, 24/16 epochs, 1702 optimizer steps per fold" in notes
    assert "image-only: segmentation+classification, 8/16 epochs, 902 optimizer steps per fold" in notes
    assert "Short of the plateau" in notes
    assert "image-only (2 of 5 folds: fold 1 segmentation: val_dice +0.042; fold 3 segmentation: val_dice +0.042)" in notes
    assert "MST-Net (" not in notes
