"""Non-deep references: Brock against hand-computed probabilities, the growth rule on volumes with
known doubling times, logistic regressions against scikit-learn fitted directly."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from baselines.nondeep import BrockModel, ClinicalLogisticRegression, FeatureColumnError, GrowthRule
from mstnet.experiments.registry import get_experiment


def brock_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["p1", "p2", "p3"],
        "age": [62.0, 70.0, 55.0],
        "gender": [1, 2, "F"],
        "family_history": [0, 1, "no"],
        "emphysema": [0, 1, 1],
        "upper_lobe": [0, 1, 0],
        "nodule_type": ["solid", "part-solid", "non-solid"],
        "nodule_count": [4, 1, 6],
        "diameter_mm_t0": [10.0, 15.0, 6.0],
        "volume_mm3_t0": [523.6, 1767.1, 113.1],
        "days_t0": [0.0, 0.0, 0.0],
    }).set_index("patient_id")


def test_brock_matches_hand_computed_probabilities():
    # p1: every term at its reference value, 10 mm nodule: (10/10)^-0.5 - 1.58113883 = -0.58113883
    logit_1 = -6.8071 - 5.6693 * (1.0 - 1.58113883)
    # p2: 70-year-old woman, family history, emphysema, 15 mm part-solid upper-lobe nodule, 1 nodule
    logit_2 = (-6.8071 + 0.0321 * 8 + 0.5635 + 0.3013 + 0.3462 - 5.6693 * (1.5 ** -0.5 - 1.58113883)
               + 0.7116 + 0.3395 - 0.0803 * (1 - 4))
    # p3: 55-year-old woman, emphysema, 6 mm non-solid nodule, 6 nodules
    logit_3 = (-6.8071 + 0.0321 * (55 - 62) + 0.5635 + 0.3462 - 5.6693 * (0.6 ** -0.5 - 1.58113883)
               - 0.3055 - 0.0803 * (6 - 4))
    expected = [1 / (1 + math.exp(-z)) for z in (logit_1, logit_2, logit_3)]
    model = BrockModel().fit(brock_frame(), np.array([0, 1, 0]))
    np.testing.assert_allclose(model.predict_proba(brock_frame()), expected, rtol=1e-12)
    assert expected[0] == pytest.approx(0.0290, abs=5e-4)


def test_brock_spiculation_adds_published_coefficient():
    frame = brock_frame().assign(spiculated=[1, 0, 0])
    delta = BrockModel().logit(frame) - BrockModel().logit(brock_frame())
    np.testing.assert_allclose(delta, [0.7729, 0.0, 0.0])


def test_brock_missing_column_is_named():
    with pytest.raises(FeatureColumnError, match="emphysema"):
        BrockModel().predict_proba(brock_frame().drop(columns="emphysema"))
    reference = BrockModel(allow_missing=True).logit(brock_frame().drop(columns="emphysema"))
    np.testing.assert_allclose(reference, BrockModel().logit(brock_frame()) - 0.3462 * np.array([0, 1, 1]))


def test_brock_bad_gender_names_patient_and_value():
    with pytest.raises(FeatureColumnError, match=r"p2.*gender.*'X'"):
        BrockModel().predict_proba(brock_frame().assign(gender=[1, "X", 2]))


def growth_frame(doubling_times: list[float], interval: float = 365.0) -> pd.DataFrame:
    v0 = np.array([500.0, 300.0, 1000.0, 250.0][: len(doubling_times)])
    v1 = v0 * 2.0 ** (interval / np.array(doubling_times))
    return pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(len(v0))],
        "volume_mm3_t0": v0, "volume_mm3_t1": v1,
        "diameter_mm_t0": (6 * v0 / math.pi) ** (1 / 3), "diameter_mm_t1": (6 * v1 / math.pi) ** (1 / 3),
        "days_t0": 0.0, "days_t1": interval,
    }).set_index("patient_id")


def test_growth_rule_on_known_doubling_times():
    rule = GrowthRule()
    frame = growth_frame([100.0, 399.0, 401.0, -800.0])
    np.testing.assert_array_equal(rule.predict(frame), [1, 1, 0, 0])
    scores = rule.predict_proba(frame)
    r0 = math.log(2) / 400
    expected = [1 / (1 + math.exp(-2 * (math.log(2) / vdt - r0) / r0)) for vdt in (100.0, 399.0, 401.0, -800.0)]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    assert rule.predict_proba(growth_frame([400.0]))[0] == pytest.approx(0.5)
    stable = growth_frame([1e300])
    assert rule.predict_proba(stable)[0] == pytest.approx(1 / (1 + math.exp(2)))


def test_growth_rule_needs_two_scans():
    with pytest.raises(FeatureColumnError, match="two scans"):
        GrowthRule().fit(brock_frame(), np.zeros(3))


def logistic_frame(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    age = rng.normal(62, 5, n) + 3 * labels
    gender = rng.integers(1, 3, n)
    base = pd.DataFrame({"patient_id": [f"q{i}" for i in range(n)], "age": age, "gender": gender}).set_index("patient_id")
    v0 = rng.uniform(100, 500, n)
    v1 = v0 * 2.0 ** (365.0 / np.where(labels == 1, 200.0, 2000.0))
    base = base.assign(volume_mm3_t0=v0, volume_mm3_t1=v1, diameter_mm_t0=(6 * v0 / math.pi) ** (1 / 3),
                       diameter_mm_t1=(6 * v1 / math.pi) ** (1 / 3), days_t0=0.0, days_t1=365.0)
    return base, labels


def test_clinical_logistic_regression_matches_sklearn():
    frame, labels = logistic_frame()
    model = ClinicalLogisticRegression().fit(frame, labels)
    assert model.columns == (["gender"], ["age"])
    design = np.column_stack([(frame["gender"] == 1).astype(float), (frame["gender"] == 2).astype(float),
                              StandardScaler().fit_transform(frame[["age"]])[:, 0]])
    reference = LogisticRegression(max_iter=2000).fit(design, labels)
    np.testing.assert_allclose(model.predict_proba(frame), reference.predict_proba(design)[:, 1], rtol=1e-5)


def test_growth_logistic_regression_uses_growth():
    frame, labels = logistic_frame()
    clinical = ClinicalLogisticRegression().fit(frame, labels)
    growth = ClinicalLogisticRegression(include_growth=True).fit(frame, labels)
    assert "growth_rate_per_year" in growth.columns[1]
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(labels, growth.predict_proba(frame)) == 1.0
    assert roc_auc_score(labels, clinical.predict_proba(frame)) < 1.0


def test_tabular_experiments_are_registered():
    for name, information in (("logreg-clinical", "clinical"), ("brock", "scans1+clinical+reads"),
                              ("growth-rule", "scans2"), ("logreg-growth", "scans2+clinical")):
        spec = get_experiment(name)
        assert spec.kind == "tabular" and spec.information == information and spec.tasks == ("classification",)
