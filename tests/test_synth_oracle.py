"""Brock model, VDT densities and the oracle posterior against hand and scipy computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.integrate import quad
from scipy.special import expit

from mstnet.synth import draw_cohort_table, synth_config
from mstnet.synth.oracle import ORACLE_KEYS, oracle_aucs, oracle_scores
from mstnet.synth.risk import LN2, GrowthModel, brock_logit, brock_terms, solve_offset, texture_class
from mstnet.synth.shape_bank import build_shape_bank


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    bank = build_shape_bank(scan_ids=tuple(range(1, 31)), workers=1, progress=False)
    return draw_cohort_table(synth_config("cpu", n_patients=4000, seed=11), bank)


def test_brock_logit_matches_the_published_formula_by_hand():
    # a 64-year-old woman, family history, no emphysema, 8 mm part-solid spiculated upper-lobe nodule, 2 nodules
    terms = brock_terms([64], [1], [1], [0], [1], [2], [8.0], np.array(["part_solid"]), [1])
    by_hand = (-6.8071 + 0.0321 * 2 + 0.5635 + 0.3013 + 0.0 - 5.6693 * ((8 / 10) ** -0.5 - 1.58113883)
               + 0.7116 + 0.3395 - 0.0803 * (2 - 4) + 0.7729)
    assert brock_logit(terms)[0] == pytest.approx(by_hand)
    parsimonious = brock_terms([64], [1], [1], [0], [1], [2], [8.0], np.array(["part_solid"]), [1], include_spiculation=False)
    assert brock_logit(parsimonious)[0] == pytest.approx(by_hand - 0.7729)


def test_texture_classes_follow_lidc_ratings():
    assert list(texture_class([1, 2, 2.5, 3, 3.5, 4, 5])) == ["non_solid", "non_solid", "part_solid", "part_solid", "part_solid", "solid", "solid"]


def test_offset_gives_the_target_expected_fraction():
    logits = np.random.default_rng(0).normal(-4, 1.5, 500)
    offset = solve_offset(logits, 0.4)
    assert expit(logits + offset).mean() == pytest.approx(0.4, abs=1e-9)


def test_growth_density_of_malignant_solid_matches_scipy_lognormal_of_vdt():
    model = GrowthModel()
    rates = np.array([0.001, 0.003, 0.01])
    median = dict(model.malignant_vdt_median_days)["solid"]
    vdt = LN2 / rates
    # change of variables r = ln2 / T: p(r) = p_T(ln2 / r) * ln2 / r^2
    expected = stats.lognorm(s=model.malignant_vdt_sigma, scale=median).pdf(vdt) * LN2 / rates**2
    assert model.density(rates, 1, np.array(["solid"] * 3)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("label,texture", [(1, "solid"), (1, "non_solid"), (0, "solid")])
def test_growth_densities_integrate_to_one_and_match_samples(label, texture):
    model = GrowthModel()
    density = lambda r: float(model.density(np.array([r]), label, np.array([texture]))[0])  # noqa: E731
    total = sum(quad(density, a, b, limit=400, points=[0.0] if a < 0 < b else None)[0] for a, b in [(-0.05, -1e-3), (-1e-3, 1e-3), (1e-3, 0.05)])
    assert total == pytest.approx(1.0, abs=2e-3)
    samples = model.sample_rate(np.random.default_rng(1), np.full(20000, label), np.full(20000, texture))
    probability, _ = quad(density, 0.0, 0.002, limit=200)
    assert np.mean((samples > 0) & (samples < 0.002)) == pytest.approx(probability, abs=0.015)


def test_oracle_posterior_is_prior_times_likelihood_ratio(table):
    model = synth_config("cpu").growth
    row = table.iloc[0]
    prior = row["true_risk"]
    p1 = model.density(np.array([row["growth_rate_per_day"]]), 1, np.array([row["texture"]]))[0]
    p0 = model.density(np.array([row["growth_rate_per_day"]]), 0, np.array([row["texture"]]))[0]
    assert row["oracle_posterior"] == pytest.approx(prior * p1 / (prior * p1 + (1 - prior) * p0), rel=1e-6)


def test_oracle_is_calibrated(table):
    posterior, label = table["oracle_posterior"].to_numpy(), table["label"].to_numpy()
    bins = np.digitize(posterior, [0.1, 0.5, 0.9])
    for b in np.unique(bins):
        chosen = bins == b
        if chosen.sum() > 100:
            assert label[chosen].mean() == pytest.approx(posterior[chosen].mean(), abs=0.06)
    brier = lambda p: np.mean((p - label) ** 2)  # noqa: E731
    assert brier(posterior) < brier(table["true_risk"].to_numpy())


def test_oracle_auc_with_everything_beats_the_subsets(table):
    model = synth_config("cpu").growth
    aucs = oracle_aucs(table, oracle_scores(table, model))
    assert set(aucs) == set(ORACLE_KEYS)
    assert aucs["everything"] >= aucs["single_timepoint"]
    assert aucs["everything"] >= aucs["clinical_only"]
    assert aucs["everything"] >= aucs["imaging_only"] - 1e-3
    assert 0.55 < aucs["clinical_only"] < 0.75
    from sklearn.metrics import roc_auc_score

    assert aucs["clinical_only"] == pytest.approx(roc_auc_score(table["label"], table["oracle_clinical_only"]))
