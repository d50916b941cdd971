"""What an information set sees of a patient, which bank entries its T0 nodule can be, and the Brock terms it sums out.

Observation model (``docs/cohort.md``, "Ceilings per information set"). A set
``scansK+clinical+reads`` sees:

- ``scansK``: the latest K rounds of the patient (all of them when K >= the number of
  rounds): the true nodule volume at each of those rounds (hence its size), the days between
  those rounds, the texture (solid / part-solid / ground glass) and the spiculation. Where the
  generator clipped a volume (at ``min_volume_mm3``, or where the diameter reached
  ``max_diameter_mm``) the set sees that it was clipped. The T0 size - the Brock diameter - is
  seen only when T0 is among the K latest rounds: the oracle does not read the nodule's own
  diameter-to-volume ratio off a later scan (a fixed property of its LIDC entry which, known
  exactly, would single out the entry and with it the T0 diameter).
- ``clinical``: demographics, history and the screening result: race, cigsmok, gender, age,
  pack_years, family_history, scr_res0, scr_iso0. Race, smoking and pack-years do not enter
  the generator's logit (independent of the label, they drop out); scr_res0 tells whether
  the T0 nodule is >= 4 mm.
- ``reads``: the radiologist's reads: emphysema, upper_lobe, nodule_count, nodule_type
  (the texture) and spiculated.

:func:`_observed` reads all of it off the truth table (:class:`_Observed`); :func:`_atoms` lists
the T0 nodules the generator can draw (:class:`_Atoms`: uniform over the eligible LIDC bank
entries, texture, spiculation, diameter and volume jointly as the bank has them). The hidden
Brock terms follow :class:`~mstnet.synth.risk.ClinicalMarginals` (exact pmfs: the floored Beta
age, Bernoulli sex, family history, emphysema and upper lobe, the capped 1 + Poisson nodule
count, :func:`_hidden_term_distribution`); E_hidden, the expectation of sigmoid(L) over them,
is an exact sum over that pmf, tabulated on a 0.1 grid of the logit with cubic splines
(error < 1e-6, :class:`_HiddenTerms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.special import log_expit
from scipy.stats import beta as beta_distribution
from scipy.stats import poisson

from mstnet.synth.risk import TEXTURES, brock_terms, texture_class

if TYPE_CHECKING:
    from mstnet.synth.config import SynthConfig
    from mstnet.synth.shape_bank import ShapeBank

_RELATIVE = 1e-9


@dataclass(frozen=True)
class _Atoms:
    """The eligible bank entries: what the generator can draw as a T0 nodule (uniformly)."""

    texture: np.ndarray  # codes into TEXTURES
    spiculated: np.ndarray
    log_volume: np.ndarray
    low: np.ndarray  # clipping floor min(min_volume, V0)
    high: np.ndarray  # clipping ceiling V0 max(max_diameter / d0, 1)^3
    brock: np.ndarray  # size + texture + spiculation terms
    positive: np.ndarray  # d0 >= 4 mm (scr_res0 = 4)


@dataclass(frozen=True)
class _Observed:
    """What the truth table says, per patient, of everything an information set can see."""

    days: np.ndarray  # (N, rounds)
    volume: np.ndarray
    status: np.ndarray  # 0 unclipped, -1 at the floor, +1 at the ceiling (T0 always 0)
    texture: np.ndarray
    spiculated: np.ndarray
    clinical: np.ndarray  # age + female + family history terms
    reads: np.ndarray  # emphysema + upper lobe + nodule count terms
    nodule: np.ndarray  # size (T0 diameter) + texture + spiculation terms
    positive: np.ndarray
    low: np.ndarray
    high: np.ndarray
    offset: float

    @property
    def rounds(self) -> int:
        return self.days.shape[1]


def _atoms(config: SynthConfig, bank: ShapeBank) -> _Atoms:
    from mstnet.synth.truth_table import eligible_bank_indices

    chosen = eligible_bank_indices(bank, config)
    diameter = bank.column("diameter_mm")[chosen]
    volume = bank.column("volume_mm3")[chosen]
    texture = texture_class(bank.column("texture")[chosen])
    spiculated = (bank.column("spiculation")[chosen] >= config.spiculated_rating).astype(int)
    zeros = np.zeros(len(chosen))
    terms = brock_terms(zeros + 62, zeros, zeros, zeros, zeros, zeros + 4, diameter, texture, spiculated,
                        include_spiculation=config.include_spiculation,
                        effects=config.effects)
    return _Atoms(
        texture=np.array([TEXTURES.index(t) for t in texture]), spiculated=spiculated, log_volume=np.log(volume),
        low=np.minimum(config.min_volume_mm3, volume),
        high=volume * np.maximum(config.max_diameter_mm / diameter, 1.0) ** 3,
        brock=terms["size"] + terms["part_solid"] + terms["non_solid"] + terms["spiculation"], positive=diameter >= 4.0,
    )


def _observed(truth: pd.DataFrame, config: SynthConfig) -> _Observed:
    rounds = sorted(int(c[8:-4]) for c in truth.columns if c.startswith("volume_T") and c.endswith("_mm3"))
    days = np.stack([truth[f"days_T{k}"].to_numpy(float) for k in rounds], axis=1)
    volume = np.stack([truth[f"volume_T{k}_mm3"].to_numpy(float) for k in rounds], axis=1)
    diameter0 = truth["diameter_T0_mm"].to_numpy(float)
    low = np.minimum(config.min_volume_mm3, volume[:, 0])
    high = volume[:, 0] * np.maximum(config.max_diameter_mm / diameter0, 1.0) ** 3
    status = np.where(volume <= low[:, None] * (1 + _RELATIVE), -1, np.where(volume >= high[:, None] * (1 - _RELATIVE), 1, 0))
    status[:, 0] = 0
    texture = truth["texture"].astype(str).to_numpy()
    terms = brock_terms(truth["age"], truth["female"], truth["family_history"], truth["emphysema"], truth["upper_lobe"],
                        truth["nodule_count"], diameter0, texture, truth["spiculated"], include_spiculation=config.include_spiculation,
                        effects=config.effects)
    positive = truth["scr_res0"].to_numpy() == 4 if "scr_res0" in truth else diameter0 >= 4.0
    return _Observed(
        days=days, volume=volume, status=status.astype(np.int8),
        texture=np.array([TEXTURES.index(t) for t in texture]), spiculated=truth["spiculated"].to_numpy(int),
        clinical=np.asarray(terms["age"] + terms["female"] + terms["family_history"], float),
        reads=np.asarray(terms["emphysema"] + terms["upper_lobe"] + terms["nodule_count"], float),
        nodule=np.asarray(terms["size"] + terms["part_solid"] + terms["non_solid"] + terms["spiculation"], float),
        positive=np.asarray(positive, bool), low=low, high=high, offset=float(truth["logit_offset"].iloc[0]),
    )


def _hidden_term_distribution(config: SynthConfig, clinical_hidden: bool, reads_hidden: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact pmf (values, probabilities) of the sum of the Brock terms a set does not see."""
    c, marginals = config.effects.coefficients(), config.clinical
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    bernoulli = lambda coefficient, p: (np.array([0.0, coefficient]), np.array([1 - p, p]))  # noqa: E731
    if clinical_hidden:
        low, high = marginals.age_range
        ages = np.arange(np.floor(low), np.ceil(high))
        cdf = beta_distribution(marginals.age_beta_a, marginals.age_beta_b).cdf
        p = cdf(np.clip((ages + 1 - low) / (high - low), 0, 1)) - cdf(np.clip((ages - low) / (high - low), 0, 1))
        parts += [(c["age"] * (ages - 62.0), p), bernoulli(c["female"], marginals.female_fraction),
                  bernoulli(c["family_history"], marginals.family_history_fraction)]
    if reads_hidden:
        counts = np.arange(1, marginals.max_nodule_count + 1)
        p = poisson(marginals.extra_nodules_mean).pmf(counts - 1)
        p[-1] = poisson(marginals.extra_nodules_mean).sf(marginals.max_nodule_count - 2)
        parts += [bernoulli(c["emphysema"], marginals.emphysema_fraction), bernoulli(c["upper_lobe"], marginals.upper_lobe_fraction),
                  (c["nodule_count"] * (counts - 4.0), p)]
    values, probabilities = np.zeros(1), np.ones(1)
    for v, p in parts:
        values = (values[:, None] + v[None, :]).ravel()
        probabilities = (probabilities[:, None] * p[None, :]).ravel()
    keep = probabilities > 0
    return values[keep], probabilities[keep] / probabilities[keep].sum()


class _HiddenTerms:
    """log E[sigmoid(x + W)] and log E[1 - sigmoid(x + W)] over the hidden terms W: exact sums on a 0.1 grid of x,
    cubic splines between (error < 1e-6), exponential tails beyond +-40."""

    STEP, SPAN = 0.1, 40.0

    def __init__(self, values: np.ndarray, probabilities: np.ndarray):
        self.exact = values.size == 1 and values[0] == 0.0
        if not self.exact:
            grid = np.arange(-self.SPAN, self.SPAN + self.STEP / 2, self.STEP)
            logp = np.log(probabilities)
            self.low, self.high = grid[0], grid[-1]
            self.log1 = CubicSpline(grid, _logsumexp(logp + log_expit(grid[:, None] + values)))
            self.log0 = CubicSpline(grid, _logsumexp(logp + log_expit(-(grid[:, None] + values))))
            self.log1_low, self.log0_high = float(self.log1(self.low)), float(self.log0(self.high))

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.exact:
            return log_expit(x), log_expit(-x)
        inside = np.clip(x, self.low, self.high)
        # beyond the table the far tails are exponential: log E[sigmoid] ~ x, log E[1 - sigmoid] ~ -x
        log1 = np.where(x < self.low, self.log1_low + (x - self.low), self.log1(inside))
        log0 = np.where(x > self.high, self.log0_high - (x - self.high), self.log0(inside))
        return log1, log0


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis (-inf where every term is -inf)."""
    top = np.max(x, axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - safe), axis=-1)) + safe[..., 0]
