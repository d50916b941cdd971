"""Brock model, VDT densities and the oracle: posteriors per information set against hand, scipy and brute-force simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.integrate import quad
from scipy.special import expit, logsumexp, ndtr
from sklearn.metrics import roc_auc_score

from mstnet.information import INFORMATION_KEYS, parse_information_key
from mstnet.synth import draw_cohort_table, synth_config
from mstnet.synth.information_sets import InformationOracle
from mstnet.synth.information_terms import _atoms, _hidden_term_distribution, _HiddenTerms, _observed
from mstnet.synth.oracle import ORACLE_KEYS, oracle_aucs, oracle_report, oracle_scores, stored_scores, synth_config_from_json
from mstnet.synth.risk import BROCK_COEFFICIENTS, LN2, TEXTURES, GrowthModel, brock_logit, brock_terms, solve_offset, texture_class
from mstnet.synth.scan_likelihoods import DaysToRound, _interval_moments
from mstnet.synth.shape_bank import build_shape_bank

SAMPLE_PATIENTS = 30_000


@pytest.fixture(scope="module")
def bank():
    return build_shape_bank(scan_ids=tuple(range(1, 31)), workers=1, progress=False)


@pytest.fixture(scope="module")
def table(bank) -> pd.DataFrame:
    return draw_cohort_table(synth_config("cpu", n_patients=4000, seed=11), bank)


@pytest.fixture(scope="module")
def sample(bank) -> pd.DataFrame:
    """A large draw by the generator's own code (drawn with replacement from the small bank: independent patients)."""
    return draw_cohort_table(synth_config("cpu", n_patients=SAMPLE_PATIENTS, seed=7), bank)


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


@pytest.mark.parametrize("label,texture", [(1, "part_solid"), (0, "solid")])
def test_growth_distribution_function_integrates_the_density(label, texture):
    model = GrowthModel()
    density = lambda r: float(model.density(np.array([r]), label, np.array([texture]))[0])  # noqa: E731
    for x in (-0.004, -1e-4, 0.0, 3e-4, 0.002, 0.01):
        below = quad(density, -0.5, x, limit=500, points=[p for p in (0.0, -1e-3, 1e-3) if -0.5 < p < x] or None)[0]
        assert model.cdf(np.array([x]), label, np.array([texture]))[0] == pytest.approx(below, abs=1e-7)
        assert model.cdf(np.array([x]), label, np.array([texture]), upper=True)[0] == pytest.approx(1 - below, abs=1e-7)


def test_everything_is_prior_times_likelihood_ratio_where_the_growth_is_seen(table):
    model = synth_config("cpu").growth
    row = table[(table["volume_T1_mm3"] > 10) & (table["diameter_T2_mm"] < 29.9)].iloc[0]
    prior = row["true_risk"]
    p1 = model.density(np.array([row["growth_rate_per_day"]]), 1, np.array([row["texture"]]))[0]
    p0 = model.density(np.array([row["growth_rate_per_day"]]), 0, np.array([row["texture"]]))[0]
    assert row["oracle_posterior"] == pytest.approx(prior * p1 / (prior * p1 + (1 - prior) * p0), rel=1e-6)


def test_everything_is_the_censoring_ratio_where_every_later_volume_is_clipped(table):
    model = synth_config("cpu").growth
    row = table[(table["volume_T1_mm3"] == np.minimum(10.0, table["volume_T0_mm3"]))].iloc[0]
    rho = np.log(min(10.0, row["volume_T0_mm3"]) / row["volume_T0_mm3"]) / row["days_T1"]
    f1, f0 = (model.cdf(np.array([rho]), label, np.array([row["texture"]]))[0] for label in (1, 0))
    prior = row["true_risk"]
    assert row["oracle_posterior"] == pytest.approx(prior * f1 / (prior * f1 + (1 - prior) * f0), rel=1e-6)


def test_oracle_is_calibrated(table):
    posterior, label = table["oracle_posterior"].to_numpy(), table["label"].to_numpy()
    bins = np.digitize(posterior, [0.1, 0.5, 0.9])
    for b in np.unique(bins):
        chosen = bins == b
        if chosen.sum() > 100:
            assert label[chosen].mean() == pytest.approx(posterior[chosen].mean(), abs=0.06)
    brier = lambda p: np.mean((p - label) ** 2)  # noqa: E731
    assert brier(posterior) < brier(table["true_risk"].to_numpy())


def test_every_information_set_has_a_column_an_auc_and_a_method(table, bank):
    assert ORACLE_KEYS == (*INFORMATION_KEYS, "everything")
    scores = stored_scores(table)
    assert list(scores.columns) == list(ORACLE_KEYS)
    assert ((scores >= 0) & (scores <= 1)).all().all()
    report = oracle_report(table, synth_config("cpu"), bank, scores=scores)
    assert set(report["auc"]) == set(report["method"]) == set(ORACLE_KEYS)
    assert all(0.5 < value < 1.0 for value in report["auc"].values())
    assert report["patients"] == 4000 and report["malignant"] == int(table["label"].sum())
    # recomputing from the truth columns alone gives the same posteriors
    again = oracle_scores(table.drop(columns=[c for c in table if c.startswith("oracle_")]), synth_config("cpu"), bank)
    assert np.abs(again.to_numpy() - scores.to_numpy()).max() < 1e-12


def test_scans3_with_clinical_and_reads_is_everything(table):
    scores = stored_scores(table)
    assert np.abs(scores["scans3+clinical+reads"] - scores["everything"]).max() < 1e-9


def test_posteriors_do_not_depend_on_row_order_or_chunking(table, bank, monkeypatch):
    config = synth_config("cpu")
    part = table.iloc[:600]
    reference = InformationOracle(config, bank).posteriors(part)
    shuffled = part.sample(frac=1.0, random_state=0)
    monkeypatch.setattr("mstnet.synth.information_sets._MAX_PAIRS", 500)
    again = InformationOracle(config, bank).posteriors(shuffled).loc[part.index]
    assert np.abs(again.to_numpy() - reference.to_numpy()).max() < 1e-12


def test_hidden_terms_are_the_exact_mixture():
    config = synth_config("cpu")
    values, probabilities = _hidden_term_distribution(config, True, True)
    assert probabilities.sum() == pytest.approx(1.0) and values.size == 20 * 2 * 2 * 2 * 2 * 10
    # each part is the exact pmf of the ClinicalMarginals draw: compare mean and variance with sampled records
    records = config.clinical.draw(np.random.default_rng(0), 400_000)
    terms = brock_terms(records["age"], records["female"], records["family_history"], records["emphysema"],
                        records["upper_lobe"], records["nodule_count"], np.full(400_000, 8.0), np.full(400_000, "solid"),
                        np.zeros(400_000))
    for names, hidden_clinical in ((("age", "female", "family_history"), True), (("emphysema", "upper_lobe", "nodule_count"), False)):
        part_values, part_p = _hidden_term_distribution(config, hidden_clinical, not hidden_clinical)
        sampled = sum(terms[name] for name in names)
        mean = (part_values * part_p).sum()
        assert mean == pytest.approx(sampled.mean(), abs=2e-3)
        assert ((part_values - mean) ** 2 * part_p).sum() == pytest.approx(sampled.var(), rel=0.01)
    hidden = _HiddenTerms(values, probabilities)
    x = np.linspace(-45, 45, 401)
    log1, log0 = hidden(x)
    exact1 = logsumexp(np.log(probabilities) + np.log(expit(x[:, None] + values)), axis=1)
    exact0 = logsumexp(np.log(probabilities) + np.log(expit(-(x[:, None] + values))), axis=1)
    assert np.abs(log1 - exact1).max() < 1e-6 and np.abs(log0 - exact0).max() < 1e-6


def test_interval_moments_are_those_of_the_rounded_floored_intervals():
    draws = np.round(np.maximum(np.random.default_rng(2).normal(365.0, 30.0, 400_000), 30.0))
    mean, variance = _interval_moments(365.0, 30.0)
    assert mean == pytest.approx(draws.mean(), abs=0.2) and variance == pytest.approx(draws.var(), rel=0.01)
    assert _interval_moments(20.0, 0.0) == (30.0, 0.0)


@pytest.mark.parametrize("label,texture", [(1, "solid"), (1, "non_solid"), (0, "part_solid")])
def test_growth_over_unseen_days_matches_fine_integration(label, texture):
    growth = GrowthModel()
    days = DaysToRound(730.0, 2 * 900.0)
    s = np.linspace(days.mean - 12 * np.sqrt(days.variance), days.mean + 12 * np.sqrt(days.variance), 200_001)
    p_s = stats.norm(days.mean, np.sqrt(days.variance)).pdf(s)
    for a in (-2.0, -0.1, 0.0, 0.05, 0.7, 2.5):
        f = growth.density(a / s, label, np.array([texture])) / s * p_s
        total = np.trapezoid(f, s)
        if total > 1e-12:
            assert days.growth_density(growth, label, texture, np.array(a)) == pytest.approx(total, rel=1e-4)
            cut = np.trapezoid(np.where(s <= 700.0, f, 0.0), s)
            assert days.growth_density(growth, label, texture, np.array(a), np.array(700.0)) == pytest.approx(cut, rel=1e-3, abs=1e-9 * total)
        below = np.trapezoid(growth.cdf(a / s, label, np.array([texture])) * p_s, s)
        assert days.growth_cdf(growth, label, texture, np.array(a)) == pytest.approx(below, rel=1e-5, abs=1e-12)


def test_latest_scan_posterior_matches_a_sum_over_the_exact_discrete_days(table, bank):
    """scans1 (T0 not seen): the normal days and the interpolated grid against the exact pmf of two rounded intervals."""
    config = synth_config("cpu")
    part = table.iloc[:200]
    part = part[(part["volume_T2_mm3"] > 10.0) & (part["diameter_T2_mm"] < 29.99)]
    mine = InformationOracle(config, bank).posteriors(part, ("scans1", "scans1+reads"))
    days = np.arange(150, 600)
    one = ndtr((days + 0.5 - 365) / 30) - ndtr((days - 0.5 - 365) / 30)
    p_two = np.convolve(one, one)
    two = np.arange(300, 300 + p_two.size)
    atoms, obs = _atoms(config, bank), _observed(part, config)
    for key, reads in (("scans1", False), ("scans1+reads", True)):
        values, probabilities = _hidden_term_distribution(config, True, not reads)
        for i in range(len(part)):
            b = np.flatnonzero((atoms.texture == obs.texture[i]) & (atoms.spiculated == obs.spiculated[i]))
            volume = obs.volume[i, 2]
            ok = (volume > atoms.low[b]) & (volume < atoms.high[b])
            a = np.log(volume) - atoms.log_volume[b]
            texture = np.array([TEXTURES[obs.texture[i]]])
            x = BROCK_COEFFICIENTS["intercept"] + obs.offset + (obs.reads[i] if reads else 0.0) + atoms.brock[b]
            prior1 = (expit(x[:, None] + values) * probabilities).sum(axis=1)
            numerator = [((1 - prior1, prior1)[y] * ok * (config.growth.density(a[:, None] / two, y, texture) / two * p_two).sum(axis=1)).sum()
                         for y in (0, 1)]
            assert mine[key].iloc[i] == pytest.approx(numerator[1] / sum(numerator), abs=2e-4)


# ---------------------------------------------------------------------------------------- brute force


def _quantile_bins(x: np.ndarray, k: int) -> np.ndarray:
    return np.searchsorted(np.quantile(x, np.linspace(0, 1, k + 1)[1:-1]), x)


def _cells(frame: pd.DataFrame, key: str) -> np.ndarray:
    """A coarse binning of what the information set sees (each bin a function of it): cell codes per patient.

    Clinical record: tertiles of its Brock terms and the >= 4 mm flag; reads: tertiles of theirs, texture and
    spiculation; scans: bins of the latest volume, of the growth between the last two rounds, of the T0 volume."""
    scans, clinical, reads = parse_information_key(key)
    terms = brock_terms(frame["age"], frame["female"], frame["family_history"], frame["emphysema"], frame["upper_lobe"],
                        frame["nodule_count"], frame["diameter_T0_mm"], frame["texture"].to_numpy(), frame["spiculated"])
    parts = []
    if clinical:
        parts += [_quantile_bins(terms["age"] + terms["female"] + terms["family_history"], 3), frame["scr_res0"] // 4]
    if reads:
        parts.append(_quantile_bins(terms["emphysema"] + terms["upper_lobe"] + terms["nodule_count"], 3))
    if reads or scans:
        parts += [frame["texture"].map(TEXTURES.index), frame["spiculated"]]
    if scans:
        parts.append(_quantile_bins(np.log(frame["volume_T2_mm3"].to_numpy()), 6))
    if scans >= 2:
        parts.append(_quantile_bins(np.log(frame["volume_T2_mm3"] / frame["volume_T1_mm3"]).to_numpy(), 6))
    if scans >= 3:
        parts.append(_quantile_bins(np.log(frame["volume_T0_mm3"].to_numpy()), 3))
    code = np.zeros(len(frame), dtype=np.int64)
    for part in parts:
        part = np.asarray(part, dtype=np.int64)
        code = code * (part.max() + 1) + part
    return np.unique(code, return_inverse=True)[1]


def _calibration_statistic(cells: np.ndarray, label: np.ndarray, posterior: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Mean over cells of (sum(y - p))^2 / sum(p (1 - p)): each term has expectation 1 when p = p(y | what is seen).

    Cells whose binomial variance under ``reference`` (default ``posterior``) is below 3 are left out (their terms
    are far from normal)."""
    reference = posterior if reference is None else reference
    excess = np.bincount(cells, weights=label - posterior)
    variance = np.bincount(cells, weights=posterior * (1 - posterior))
    keep = np.bincount(cells, weights=reference * (1 - reference)) >= 3.0
    return float(np.mean(excess[keep] ** 2 / np.maximum(variance[keep], 1e-12)))


@pytest.mark.parametrize("key", ORACLE_KEYS)
def test_posterior_matches_counting_in_a_large_simulation(sample, key):
    """Brute force: in each cell of a binning of what the set sees, the malignant fraction of a large generator
    sample equals the mean posterior (the tower property of a Bayes posterior), as often as chance allows."""
    scores = stored_scores(sample)
    label = sample["label"].to_numpy()
    cells = _cells(sample, "scans3+clinical+reads" if key == "everything" else key)
    posterior = scores[key].to_numpy()
    observed = _calibration_statistic(cells, label, posterior)
    rng = np.random.default_rng(0)
    null = [_calibration_statistic(cells, (rng.random(label.size) < posterior).astype(float), posterior) for _ in range(60)]
    assert observed < np.mean(null) + 4 * np.std(null), (observed, np.mean(null), np.std(null))
    # and the check has power: a posterior off by 1 in log-odds fails it
    clipped = np.clip(posterior, 1e-15, 1 - 1e-15)
    shifted = expit(np.log(clipped / (1 - clipped)) + 1.0)
    assert _calibration_statistic(cells, label, shifted, reference=posterior) > np.mean(null) + 6 * np.std(null)


def test_the_old_single_timepoint_score_is_not_a_posterior(sample):
    terms = brock_terms(sample["age"], sample["female"], sample["family_history"], sample["emphysema"], sample["upper_lobe"],
                        sample["nodule_count"], sample["diameter_T2_mm"], sample["texture"].to_numpy(), sample["spiculated"])
    old = expit(np.asarray(brock_logit(terms)) + sample["logit_offset"].to_numpy())
    cells = _cells(sample, "scans1+clinical+reads")
    label = sample["label"].to_numpy()
    new = stored_scores(sample)["scans1+clinical+reads"].to_numpy()
    assert _calibration_statistic(cells, label, old, reference=new) > 5 * _calibration_statistic(cells, label, new)


@pytest.mark.parametrize("key", ["clinical", "reads", "clinical+reads"])
def test_sets_without_scans_equal_the_counted_fraction_in_each_exact_cell(sample, key):
    """Without scans what a set sees is discrete: the posterior is one number per cell, the cell's malignant fraction."""
    _, clinical, reads = parse_information_key(key)
    columns = (["age", "female", "family_history", "scr_res0"] if clinical else []) + (
        ["emphysema", "upper_lobe", "nodule_count", "texture", "spiculated"] if reads else [])
    frame = sample[columns].assign(p=stored_scores(sample)[key].to_numpy(), y=sample["label"].to_numpy())
    cells = frame.groupby(columns).agg(n=("y", "size"), y=("y", "mean"), p=("p", "mean"), spread=("p", np.ptp))
    assert cells["spread"].max() < 1e-12
    big = cells[cells["n"] >= 30]
    z = (big["y"] - big["p"]) / np.sqrt(big["p"] * (1 - big["p"]) / big["n"])
    assert np.abs(z).max() < 4.5 and np.mean(z**2) < 1 + 4 * np.sqrt(2 / len(z))
    if len(cells) < 500:
        # the AUC of the counted fractions (the brute-force posterior, learnt on one half) equals the oracle's
        half = np.arange(len(frame)) % 2 == 0
        learnt = frame[half].groupby(columns)["y"].mean().rename("counted")
        scored = frame[~half].join(learnt, on=columns).fillna({"counted": frame["y"].mean()})
        assert roc_auc_score(scored["y"], scored["counted"]) == pytest.approx(roc_auc_score(scored["y"], scored["p"]), abs=0.01)


def test_binned_counting_never_beats_the_oracle(sample):
    """The counted malignant fraction per cell, learnt on one half and scored on the other, is a rule on what the set
    sees: its AUC stays below the Bayes posterior's (within Monte Carlo error) and close to it where the cells are fine."""
    half = np.arange(len(sample)) % 2 == 0
    label = sample["label"].to_numpy()
    scores = stored_scores(sample)
    for key in INFORMATION_KEYS:
        cells = _cells(sample, key)
        count = np.bincount(cells[half], minlength=cells.max() + 1)
        rate = (np.bincount(cells[half], weights=label[half], minlength=cells.max() + 1) + 0.5) / (count + 1.0)
        counted = roc_auc_score(label[~half], rate[cells[~half]])
        oracle = roc_auc_score(label[~half], scores[key].to_numpy()[~half])
        assert counted <= oracle + 0.005, key
        if cells.max() < 400:  # cells fine enough and well filled: counting comes close
            assert counted >= oracle - 0.03, key


def test_more_information_never_lowers_the_ceiling(sample):
    aucs = oracle_aucs(sample, stored_scores(sample))
    for smaller, larger in itertools.permutations(INFORMATION_KEYS, 2):
        (s1, c1, r1), (s2, c2, r2) = parse_information_key(smaller), parse_information_key(larger)
        if s1 <= s2 and c1 <= c2 and r1 <= r2:
            assert aucs[larger] >= aucs[smaller] - 0.003, (smaller, larger)
    assert aucs["everything"] == pytest.approx(aucs["scans3+clinical+reads"], abs=1e-6)
    # the signals are where the generator put them: growth dominates, the clinical record adds a little
    assert aucs["scans2"] > aucs["scans1"] + 0.01 and aucs["scans1"] > aucs["clinical+reads"] + 0.1
    assert 0.55 < aucs["clinical"] < 0.75


def test_config_round_trips_through_cohort_json():
    config = synth_config("tiny", n_patients=7, seed=4, **{"growth.malignant_vdt_sigma": 0.55, "noise_sd_hu_range": (25.0, 30.0)})
    import json

    again = synth_config_from_json(json.loads(json.dumps(config.to_json())))
    assert again == config and again.fingerprint() == config.fingerprint()
