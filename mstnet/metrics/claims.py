"""Statistics of the claims table: the verdict rule of a paired comparison and the power of the paired AUC test.

A claim compares a model with a variant that lacks one kind of information (``A`` the full
model, ``B`` the variant; the gap is A - B). :func:`claim_verdict` turns a gap and its paired
p-value into a verdict, the same rule for the measured models and for the ceilings (the oracle
posteriors of their information sets) on the same patients. :func:`paired_auc_power` estimates
how often DeLong's paired test finds a true AUC gap in a cohort of a given size, by drawing many
cohorts of that size from a large population of patients (each patient a row of the generator's
truth table, so a drawn cohort has the generator's own distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mstnet.metrics.classification import validate_binary_predictions
from mstnet.metrics.statistics import delong_test

SIGNIFICANCE = 0.05
"""Two-sided level of every paired test behind a verdict."""

SUPPORTED, NOT_DETECTED, CONTRADICTED, NOT_TESTABLE = "supported", "not detected", "contradicted", "not testable"
VERDICTS: tuple[str, ...] = (SUPPORTED, NOT_DETECTED, CONTRADICTED, NOT_TESTABLE)
"""Every verdict :func:`claim_verdict` gives."""


def claim_verdict(gap: float, p_value: float, alpha: float = SIGNIFICANCE) -> str:
    """The verdict on "A beats B" from the gap A - B and the two-sided paired p-value.

    ``supported``: gap > 0 and p < ``alpha``; ``contradicted``: gap < 0 and p < ``alpha``;
    ``not detected``: otherwise (p >= ``alpha``, or a gap of exactly 0); ``not testable``: the
    gap or the p-value is missing (NaN).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if math.isnan(gap) or math.isnan(p_value):
        return NOT_TESTABLE
    if p_value < alpha and gap > 0:
        return SUPPORTED
    if p_value < alpha and gap < 0:
        return CONTRADICTED
    return NOT_DETECTED


@dataclass(frozen=True)
class PowerEstimate:
    """How often a paired AUC comparison is found at one cohort size.

    Attributes:
        n_patients: patients per drawn cohort.
        n_cohorts: cohorts drawn.
        power: share of cohorts whose verdict is ``supported`` (gap > 0, DeLong p < alpha).
        standard_error: binomial standard error of ``power`` (the Monte Carlo error).
        mean_gap: mean AUC gap A - B over the drawn cohorts.
        population_gap: AUC gap A - B on the whole population.
    """

    n_patients: int
    n_cohorts: int
    power: float
    standard_error: float
    mean_gap: float
    population_gap: float


def paired_auc_power(labels: Any, scores_a: Any, scores_b: Any, n_patients: int, n_cohorts: int = 1000, seed: int = 0,
                     alpha: float = SIGNIFICANCE) -> PowerEstimate:
    """Simulated power of DeLong's paired test of AUC(A) > AUC(B) in cohorts of ``n_patients``.

    Each of ``n_cohorts`` cohorts is ``n_patients`` rows drawn without replacement from the
    population (``labels``, ``scores_a``, ``scores_b``: (P,) arrays, P well above
    ``n_patients``); a cohort counts as found when :func:`claim_verdict` says ``supported``.
    A cohort that happens to hold a single class counts as not found.

    Raises:
        ValueError: ``n_patients`` not below the population size, fewer than 2 patients or no
            cohorts.
    """
    labels, probability_a = validate_binary_predictions(labels, scores_a)
    _, probability_b = validate_binary_predictions(labels, scores_b)
    population = labels.size
    if not 2 <= n_patients < population:
        raise ValueError(f"n_patients must lie in [2, {population}) for a population of {population}; got {n_patients}")
    if n_cohorts < 1:
        raise ValueError(f"n_cohorts must be >= 1, got {n_cohorts}")
    rng = np.random.default_rng(seed)
    found, gaps = 0, []
    for _ in range(n_cohorts):
        rows = rng.choice(population, size=n_patients, replace=False)
        if np.unique(labels[rows]).size < 2:
            continue
        test = delong_test(labels[rows], probability_a[rows], probability_b[rows])
        gap = test["auc_a"] - test["auc_b"]
        gaps.append(gap)
        found += claim_verdict(gap, test["p_value"], alpha) == SUPPORTED
    whole = delong_test(labels, probability_a, probability_b)
    power = found / n_cohorts
    return PowerEstimate(n_patients=n_patients, n_cohorts=n_cohorts, power=power,
                         standard_error=math.sqrt(power * (1.0 - power) / n_cohorts),
                         mean_gap=float(np.mean(gaps)) if gaps else math.nan,
                         population_gap=whole["auc_a"] - whole["auc_b"])
