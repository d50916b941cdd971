"""Risk and growth model of the synthetic cohort: Brock (PanCan) logit, NLST-like clinical marginals, VDT distributions.

Sources (see ``docs/cohort.md``):

- Brock / PanCan model, McWilliams et al., NEJM 2013 (parsimonious model; the full model
  adds spiculation), coefficients in :mod:`mstnet.brock`.
- NLST population, Aberle et al., NEJM 2011 (age 55-74, 59% men, 48% current smokers,
  >= 30 pack-years, about 91% white).
- Volume doubling time VDT = dt ln 2 / ln(V1 / V0); < 400 days is suspicious (NELSON,
  Lung-RADS practice); malignant solid nodules mostly 30-400 days, sub-solid cancers slower,
  benign nodules mostly stable, some growing slowly, some shrinking.

Growth is parameterised by the exponential rate ``r = ln 2 / VDT`` (per day; negative for a
shrinking nodule, whose halving time is ``-ln 2 / r``), so V(t) = V0 exp(r t). Every density
is in ``r``, which makes the oracle's likelihood ratio exact (:func:`growth_rate_density`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, ndtr

from mstnet.brock import BROCK_AGE_CENTRE, BROCK_COEFFICIENTS, BROCK_NODULE_COUNT_CENTRE, BROCK_SIZE_CENTRE

LN2 = float(np.log(2.0))

TEXTURES: tuple[str, ...] = ("solid", "part_solid", "non_solid")
"""Nodule consistency classes (Brock's nodule type)."""

CLINICAL_TERMS: tuple[str, ...] = ("age", "female", "family_history", "emphysema", "upper_lobe", "nodule_count")
"""Brock terms that come from the clinical record (``clinical.csv``)."""

IMAGING_TERMS: tuple[str, ...] = ("size", "part_solid", "non_solid", "spiculation")
"""Brock terms that come from the nodule itself (visible in the images)."""

RECORD_TERMS: tuple[str, ...] = ("age", "female", "family_history")
"""Brock terms of the clinical record proper (demographics and history; information set ``clinical``)."""

READ_TERMS: tuple[str, ...] = ("emphysema", "upper_lobe", "nodule_count")
"""Brock terms a radiologist reads off the CT (information set ``reads``)."""

APPEARANCE_TERMS: tuple[str, ...] = ("part_solid", "non_solid", "spiculation")
"""Brock terms of the nodule's appearance (texture and spiculation; seen in every scan)."""


@dataclass(frozen=True)
class BrockEffects:
    """Multipliers of the Brock coefficients in the generator's malignancy logit (1 = the published model).

    The default cohorts use the published model. A signal-controlled cohort (the ``claims``
    preset, :mod:`mstnet.synth.presets`) sets how much of the outcome each kind of information
    carries: the generator draws the labels, and the oracle computes its ceilings, with the
    same scaled coefficients, so every ceiling stays exact.

    Attributes:
        record: multiplies :data:`RECORD_TERMS` (age, sex, family history).
        reads: multiplies :data:`READ_TERMS` (emphysema, upper lobe, nodule count).
        size: multiplies the diameter term (0: the T0 size carries no risk of its own).
        appearance: multiplies :data:`APPEARANCE_TERMS` (texture and spiculation).
    """

    record: float = 1.0
    reads: float = 1.0
    size: float = 1.0
    appearance: float = 1.0

    def coefficients(self) -> dict[str, float]:
        """:data:`~mstnet.brock.BROCK_COEFFICIENTS` with each group scaled (the intercept as published)."""
        scale = {**{name: self.record for name in RECORD_TERMS}, **{name: self.reads for name in READ_TERMS},
                 "size": self.size, **{name: self.appearance for name in APPEARANCE_TERMS}}
        return {name: value * scale.get(name, 1.0) for name, value in BROCK_COEFFICIENTS.items()}


def texture_class(lidc_texture: np.ndarray) -> np.ndarray:
    """LIDC texture rating (median of readers, 1 = non-solid ... 5 = solid) -> ``TEXTURES`` name.

    <= 2 non-solid (ground glass), < 4 part-solid (mixed), >= 4 solid.
    """
    lidc_texture = np.asarray(lidc_texture, dtype=float)
    return np.where(lidc_texture <= 2, "non_solid", np.where(lidc_texture < 4, "part_solid", "solid"))


def brock_terms(age: np.ndarray, female: np.ndarray, family_history: np.ndarray, emphysema: np.ndarray,
                upper_lobe: np.ndarray, nodule_count: np.ndarray, diameter_mm: np.ndarray, texture: np.ndarray,
                spiculated: np.ndarray, include_spiculation: bool = True,
                effects: BrockEffects | None = None) -> dict[str, np.ndarray]:
    """Each Brock term (coefficient times covariate) per patient; the logit is their sum plus the intercept.

    All arguments are (N,) arrays; ``texture`` holds ``TEXTURES`` names, ``diameter_mm`` the
    nodule's longest axial diameter in mm. ``effects`` scales the coefficients (None: as published).
    """
    c = BROCK_COEFFICIENTS if effects is None else effects.coefficients()
    diameter = np.maximum(np.asarray(diameter_mm, dtype=float), 0.5)
    texture = np.asarray(texture)
    terms = {
        "age": c["age"] * (np.asarray(age, float) - BROCK_AGE_CENTRE),
        "female": c["female"] * np.asarray(female, float),
        "family_history": c["family_history"] * np.asarray(family_history, float),
        "emphysema": c["emphysema"] * np.asarray(emphysema, float),
        "upper_lobe": c["upper_lobe"] * np.asarray(upper_lobe, float),
        "nodule_count": c["nodule_count"] * (np.asarray(nodule_count, float) - BROCK_NODULE_COUNT_CENTRE),
        "size": c["size"] * ((diameter / 10.0) ** -0.5 - BROCK_SIZE_CENTRE),
        "part_solid": c["part_solid"] * (texture == "part_solid"),
        "non_solid": c["non_solid"] * (texture == "non_solid"),
        "spiculation": c["spiculation"] * np.asarray(spiculated, float) * float(include_spiculation),
    }
    return terms


def brock_logit(terms: dict[str, np.ndarray], names: tuple[str, ...] | None = None) -> np.ndarray:
    """Intercept plus the sum of the named terms (default: all)."""
    names = tuple(terms) if names is None else names
    return BROCK_COEFFICIENTS["intercept"] + sum(terms[name] for name in names)


def solve_offset(logit: np.ndarray, target_fraction: float) -> float:
    """The offset b with mean(sigmoid(logit + b)) = ``target_fraction`` (the expected malignant fraction)."""
    if not 0.0 < target_fraction < 1.0:
        raise ValueError(f"malignant_fraction must lie in (0, 1); got {target_fraction}")
    return float(brentq(lambda b: expit(logit + b).mean() - target_fraction, -50.0, 50.0, xtol=1e-10))


@dataclass(frozen=True)
class ClinicalMarginals:
    """NLST-like distributions of the clinical variables (Aberle et al. 2011; PanCan for nodule counts).

    Attributes:
        age_range: entry ages (years); age = low + (high - low) * Beta(age_beta_a, age_beta_b),
            rounded down (defaults give mean about 61).
        age_beta_a: first Beta shape (default 1.3).
        age_beta_b: second Beta shape (default 2.7).
        female_fraction: share of women (default 0.41; NLST 59% men).
        current_smoker_fraction: share of current smokers (default 0.48; the rest quit within 15 years).
        pack_years_minimum: eligibility floor (default 30).
        pack_years_excess_median: median of pack-years above the floor (default 18, so the median is 48).
        pack_years_excess_sigma: log-normal sigma of the excess (default 0.8).
        race_codes: NLST race codes: 1 white, 2 Black, 3 Asian, 4 American Indian / Alaska native,
            5 native Hawaiian / Pacific islander, 6 more than one race.
        race_probabilities: their shares (default about 91 / 4.4 / 2 / 0.4 / 0.3 / 1.9 %).
        family_history_fraction: first-degree family history of lung cancer (default 0.22).
        emphysema_fraction: emphysema (default 0.25).
        extra_nodules_mean: nodule count = 1 + Poisson(this) capped at ``max_nodule_count`` (default 1.5).
        max_nodule_count: cap of the nodule count (default 10).
        upper_lobe_fraction: nodule in an upper lobe (default 0.55).
    """

    age_range: tuple[float, float] = (55.0, 75.0)
    age_beta_a: float = 1.3
    age_beta_b: float = 2.7
    female_fraction: float = 0.41
    current_smoker_fraction: float = 0.48
    pack_years_minimum: float = 30.0
    pack_years_excess_median: float = 18.0
    pack_years_excess_sigma: float = 0.8
    race_codes: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    race_probabilities: tuple[float, ...] = (0.910, 0.044, 0.020, 0.004, 0.003, 0.019)
    family_history_fraction: float = 0.22
    emphysema_fraction: float = 0.25
    extra_nodules_mean: float = 1.5
    max_nodule_count: int = 10
    upper_lobe_fraction: float = 0.55

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` independent clinical records as (n,) arrays (NLST codes: gender 1 male 2 female, cigsmok 1 current 0 former)."""
        low, high = self.age_range
        probabilities = np.asarray(self.race_probabilities, float)
        female = rng.random(n) < self.female_fraction
        return {
            "age": np.floor(low + (high - low) * rng.beta(self.age_beta_a, self.age_beta_b, n)).astype(int),
            "gender": np.where(female, 2, 1),
            "female": female.astype(int),
            "cigsmok": (rng.random(n) < self.current_smoker_fraction).astype(int),
            "pack_years": np.round(self.pack_years_minimum + rng.lognormal(np.log(self.pack_years_excess_median), self.pack_years_excess_sigma, n), 1),
            "race": rng.choice(np.asarray(self.race_codes), size=n, p=probabilities / probabilities.sum()),
            "family_history": (rng.random(n) < self.family_history_fraction).astype(int),
            "emphysema": (rng.random(n) < self.emphysema_fraction).astype(int),
            "nodule_count": np.minimum(1 + rng.poisson(self.extra_nodules_mean, n), self.max_nodule_count),
            "upper_lobe": (rng.random(n) < self.upper_lobe_fraction).astype(int),
        }


def _lognormal_rate_density(rate: np.ndarray, median_days: float, sigma: float) -> np.ndarray:
    """Density of r = ln2 / T for T ~ LogNormal(ln median_days, sigma), at rate > 0 (0 elsewhere)."""
    rate = np.asarray(rate, float)
    positive = rate > 0
    safe = np.where(positive, rate, 1.0)
    z = (np.log(safe) - (np.log(LN2) - np.log(median_days))) / sigma
    return np.where(positive, np.exp(-0.5 * z**2) / (safe * sigma * np.sqrt(2 * np.pi)), 0.0)


def _lognormal_rate_cdf(rate: np.ndarray, median_days: float | np.ndarray, sigma: float, upper: bool) -> np.ndarray:
    """P(r <= rate) (``upper``: P(r > rate)) for r = ln2 / T, T ~ LogNormal(ln median_days, sigma)."""
    rate = np.asarray(rate, float)
    positive = rate > 0
    z = (np.log(np.where(positive, rate, 1.0)) - (np.log(LN2) - np.log(median_days))) / sigma
    return np.where(positive, ndtr(-z if upper else z), 1.0 if upper else 0.0)


@dataclass(frozen=True)
class GrowthModel:
    """Label- and texture-dependent growth, as volume doubling times (days).

    Malignant: VDT ~ LogNormal(ln median, sigma) with the median by texture. Benign: a
    mixture of stable (rate ~ Normal(0, ln 2 / ``benign_stable_vdt_scale_days``)), slowly
    growing (VDT log-normal) and shrinking (halving time log-normal) nodules, whatever the
    texture.

    Attributes:
        malignant_vdt_median_days: median VDT of cancers by texture (default solid 180,
            part-solid 450, non-solid 800 days).
        malignant_vdt_sigma: log-normal sigma of cancers' VDT (default 0.6: 95% of solid
            cancers within about 55-590 days).
        benign_stable_fraction: share of stable benign nodules (default 0.65).
        benign_growing_fraction: share of slowly growing benign nodules (default 0.2); the
            rest shrink.
        benign_stable_vdt_scale_days: stable nodules' rate sd is ln 2 / this (default 4000 days).
        benign_growing_vdt_median_days: median VDT of growing benign nodules (default 800).
        benign_growing_vdt_sigma: its log-normal sigma (default 0.6).
        benign_shrinking_halving_median_days: median halving time of shrinking ones (default 300).
        benign_shrinking_halving_sigma: its log-normal sigma (default 0.6).
    """

    malignant_vdt_median_days: tuple[tuple[str, float], ...] = (("solid", 180.0), ("part_solid", 450.0), ("non_solid", 800.0))
    malignant_vdt_sigma: float = 0.6
    benign_stable_fraction: float = 0.65
    benign_growing_fraction: float = 0.2
    benign_stable_vdt_scale_days: float = 4000.0
    benign_growing_vdt_median_days: float = 800.0
    benign_growing_vdt_sigma: float = 0.6
    benign_shrinking_halving_median_days: float = 300.0
    benign_shrinking_halving_sigma: float = 0.6

    def __post_init__(self) -> None:
        if self.benign_stable_fraction + self.benign_growing_fraction > 1.0:
            raise ValueError("benign_stable_fraction + benign_growing_fraction must not exceed 1")
        missing = set(TEXTURES) - {name for name, _ in self.malignant_vdt_median_days}
        if missing:
            raise ValueError(f"malignant_vdt_median_days lacks textures {sorted(missing)}")

    def _malignant_median(self, texture: np.ndarray) -> np.ndarray:
        table = dict(self.malignant_vdt_median_days)
        return np.array([table[t] for t in np.asarray(texture)], dtype=float)

    def sample_rate(self, rng: np.random.Generator, label: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """Growth rates (per day) for (N,) labels and textures."""
        label = np.asarray(label)
        n = len(label)
        malignant = LN2 / rng.lognormal(np.log(self._malignant_median(texture)), self.malignant_vdt_sigma, n)
        component = rng.random(n)
        stable = rng.normal(0.0, LN2 / self.benign_stable_vdt_scale_days, n)
        growing = LN2 / rng.lognormal(np.log(self.benign_growing_vdt_median_days), self.benign_growing_vdt_sigma, n)
        shrinking = -LN2 / rng.lognormal(np.log(self.benign_shrinking_halving_median_days), self.benign_shrinking_halving_sigma, n)
        benign = np.where(component < self.benign_stable_fraction, stable,
                          np.where(component < self.benign_stable_fraction + self.benign_growing_fraction, growing, shrinking))
        return np.where(label == 1, malignant, benign)

    def density(self, rate: np.ndarray, label: int, texture: np.ndarray) -> np.ndarray:
        """p(rate | label, texture) for (N,) rates and textures (exact densities of :meth:`sample_rate`)."""
        rate = np.asarray(rate, float)
        if label == 1:
            medians = self._malignant_median(texture)
            return _lognormal_rate_density(rate, medians, self.malignant_vdt_sigma)
        stable_sd = LN2 / self.benign_stable_vdt_scale_days
        shrink_fraction = 1.0 - self.benign_stable_fraction - self.benign_growing_fraction
        return (
            self.benign_stable_fraction * np.exp(-0.5 * (rate / stable_sd) ** 2) / (stable_sd * np.sqrt(2 * np.pi))
            + self.benign_growing_fraction * _lognormal_rate_density(rate, self.benign_growing_vdt_median_days, self.benign_growing_vdt_sigma)
            + shrink_fraction * _lognormal_rate_density(-rate, self.benign_shrinking_halving_median_days, self.benign_shrinking_halving_sigma)
        )

    def cdf(self, rate: np.ndarray, label: int, texture: np.ndarray, upper: bool = False) -> np.ndarray:
        """P(r <= rate | label, texture) (``upper``: P(r > rate)), exact distribution functions of :meth:`sample_rate`.

        Any shape of ``rate``; ``texture`` broadcasts against it (it matters for cancers only).
        """
        rate = np.asarray(rate, float)
        if label == 1:
            return _lognormal_rate_cdf(rate, self._malignant_median(np.atleast_1d(texture)).reshape(np.shape(texture)),
                                       self.malignant_vdt_sigma, upper)
        stable_sd = LN2 / self.benign_stable_vdt_scale_days
        shrink_fraction = 1.0 - self.benign_stable_fraction - self.benign_growing_fraction
        return (
            self.benign_stable_fraction * ndtr((-rate if upper else rate) / stable_sd)
            + self.benign_growing_fraction * _lognormal_rate_cdf(rate, self.benign_growing_vdt_median_days, self.benign_growing_vdt_sigma, upper)
            # a shrinking nodule's rate is minus a log-normal rate: r <= x  <=>  -r >= -x
            + shrink_fraction * _lognormal_rate_cdf(-rate, self.benign_shrinking_halving_median_days, self.benign_shrinking_halving_sigma, not upper)
        )

    def log_likelihood_ratio(self, rate: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """log p(rate | malignant, texture) - log p(rate | benign), floored to stay finite."""
        tiny = 1e-300
        return np.log(self.density(rate, 1, texture) + tiny) - np.log(self.density(rate, 0, texture) + tiny)


def vdt_days(rate: np.ndarray) -> np.ndarray:
    """Volume doubling time ln 2 / r in days (negative: halving time of a shrinking nodule; inf for r = 0)."""
    rate = np.asarray(rate, float)
    with np.errstate(divide="ignore"):
        return np.where(rate == 0, np.inf, LN2 / np.where(rate == 0, 1.0, rate))
