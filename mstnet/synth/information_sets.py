"""Bayes posterior of malignancy for every information set of :mod:`mstnet.information`, under the generator's own model.

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

Everything else is summed out under the generator's own distributions: the hidden Brock
terms under :class:`~mstnet.synth.risk.ClinicalMarginals` (exact pmfs: the floored Beta age,
Bernoulli sex, family history, emphysema and upper lobe, the capped 1 + Poisson nodule count),
the T0 nodule as the generator draws it (uniform over the eligible LIDC bank entries: texture,
spiculation, diameter and volume jointly as the bank has them), the growth rate under
:class:`~mstnet.synth.risk.GrowthModel` and the unseen days, with the clipping. With
L = Brock logit + offset, the posterior odds are

    sum over bank entries b of  w_b * E_hidden[sigmoid(L)]     * p(scans | y = 1, b)
    ---------------------------------------------------------------------------------
    sum over bank entries b of  w_b * E_hidden[1 - sigmoid(L)] * p(scans | y = 0, b)

with w_b = 1 where entry b matches what is seen (texture and spiculation; the >= 4 mm flag
with ``clinical``), else 0. E_hidden is an exact sum over the pmf of the hidden terms,
tabulated on a 0.1 grid of the logit with cubic splines (error < 1e-6).

- No scans, or T0 among the seen rounds: exact. With T0 seen the entry is the patient's own,
  the seen volumes give r = ln(V_k / V_0) / t_k and p(scans | y) = p(r | y, texture), or
  P(r <= rho | y) (P(r > rho | y)) where every later volume is at the floor (ceiling), rho the
  rate reaching it at T1.
- T0 not seen (``scans1``, ``scans2`` of a three-round cohort): the days S from T0 to the
  first seen round j (a sum of j rounded, floored Normal intervals) are taken as Normal with
  their exact mean and variance; with a_b = ln V_j - ln V0_b:

  - two or more unclipped seen volumes: r = ln(V_j+1 / V_j) / (t_j+1 - t_j) is seen and
    p(scans | y, b) = p(r | y, texture) N(a_b - r E[S]; h^2 + r^2 Var[S]) in closed form
    (times 0 where b's floor or ceiling contradicts a clipped later round). h =
    :data:`VOLUME_BANDWIDTH` (0.1%) is the precision to which a bank volume has to match:
    with h = 0 an exactly known rate and volume would single out one entry and one integer
    day count, a coincidence of real numbers that no model can use (any h in 0.0005-0.05
    moves no AUC by more than 2e-4 on 3000 ``cpu`` patients);
  - one unclipped seen volume: p(scans | y, b) = E_S[p(a_b / S | y, texture) / S; S <= a_b / rho_b]
    where the next seen round is clipped at rate rho_b (no bound otherwise), Gauss-Legendre
    with :data:`_NODES` nodes over E[S] +- 8 sd (relative error < 1e-4 against fine
    integration, tested); tabulated on a 0.004 grid of a_b for ``scans1``;
  - every seen volume clipped: P(r S <= ln(floor_b / V0_b)) or P(r S > ln(ceiling_b / V0_b)),
    E_S of the rate's distribution function.

No Monte Carlo: the posteriors are deterministic sums and quadratures, with no sampling
error. Approximations: the Normal days (against the exact pmf of two rounded intervals the
``scans1`` posteriors differ by < 2e-4, tested), h, quadrature. About 0.4 s for the 150
patients of the ``cpu`` cohort (all 15 sets), 3-4 ms per patient on the full bank.
Checked by brute force in ``tests/test_synth_oracle.py``: in a 30 000-patient draw of the
generator's own code, the malignant fraction in every cell of a binning of what each set
sees equals the mean posterior there, within binomial error (and a posterior off by 1 in
log-odds fails the same check); without scans the posterior is one number per exact cell of
what is seen and equals the cell's counted fraction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.special import expit, log_expit, ndtr
from scipy.stats import beta as beta_distribution
from scipy.stats import poisson

from mstnet.information import INFORMATION_KEYS, parse_information_key
from mstnet.synth.risk import BROCK_COEFFICIENTS, TEXTURES, GrowthModel, brock_terms, texture_class

if TYPE_CHECKING:
    from mstnet.synth.config import SynthConfig
    from mstnet.synth.shape_bank import ShapeBank

log = logging.getLogger(__name__)

VOLUME_BANDWIDTH = 0.001
"""Precision (sd of log volume) to which the bank's T0 volume is matched where T0 is not seen (0.1%)."""

MIN_INTERVAL_DAYS = 30.0
"""The generator's floor on each interval between rounds (``draw_cohort_table``)."""

_NODES = 32
_RELATIVE = 1e-9
_MAX_PAIRS = 2_000_000
_LOG_FLOOR = 1e-300


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, _LOG_FLOOR))


def _log_normal_pdf(x: np.ndarray, variance: np.ndarray | float) -> np.ndarray:
    return -0.5 * x**2 / variance - 0.5 * np.log(2 * np.pi * variance)


def _mask_log(condition: np.ndarray) -> np.ndarray:
    return np.where(condition, 0.0, -np.inf)


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


def _interval_moments(mean: float, sd: float) -> tuple[float, float]:
    """Mean and variance of round(max(Normal(mean, sd), 30)) (one interval between rounds)."""
    if sd <= 0:
        return float(np.round(max(mean, MIN_INTERVAL_DAYS))), 0.0
    days = np.arange(max(MIN_INTERVAL_DAYS, np.floor(mean - 12 * sd)), np.ceil(mean + 12 * sd) + 1)
    upper = ndtr((days + 0.5 - mean) / sd)
    lower = np.where(days == MIN_INTERVAL_DAYS, 0.0, ndtr((days - 0.5 - mean) / sd))
    p = (upper - lower) / (upper - lower).sum()
    m = float((p * days).sum())
    return m, float((p * (days - m) ** 2).sum())


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


def _rate_log_density(growth: GrowthModel, rate: np.ndarray, label: int, texture: str) -> np.ndarray:
    return _log(growth.density(rate, label, np.array([texture])))


class DaysToRound:
    """The unseen days S from T0 to the first seen round, Normal with the exact moments of the rounded intervals.

    Expectations over S are Gauss-Legendre sums (:data:`_NODES` nodes) over mean +- 8 sd
    (renormalised; S kept above mean / 4), so every growth likelihood is a smooth integral.
    """

    def __init__(self, mean: float, variance: float):
        self.mean, self.variance = mean, variance
        sd = np.sqrt(variance)
        self.low, self.high = max(mean - 8 * sd, mean / 4), mean + 8 * sd
        self.mass = float(ndtr((self.high - mean) / sd) - ndtr((self.low - mean) / sd)) if sd > 0 else 1.0

    def _nodes(self, upper: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(nodes, weights) with weights summing to P(S <= upper) (all of S when ``upper`` is None), shape (..., nodes)."""
        if self.variance <= 0:
            nodes = np.full((1,), self.mean) if upper is None else np.full(np.shape(upper) + (1,), self.mean)
            weights = np.ones_like(nodes) if upper is None else (self.mean <= np.asarray(upper))[..., None].astype(float)
            return nodes, weights
        x, w = np.polynomial.legendre.leggauss(_NODES)
        high = self.high if upper is None else np.clip(upper, self.low, self.high)
        half = 0.5 * (np.asarray(high) - self.low)[..., None]
        nodes = self.low + half * (x + 1.0)
        density = np.exp(-0.5 * (nodes - self.mean) ** 2 / self.variance) / np.sqrt(2 * np.pi * self.variance)
        return nodes, w * half * density / self.mass

    def growth_density(self, growth: GrowthModel, label: int, texture: str, a: np.ndarray,
                       upper: np.ndarray | None = None) -> np.ndarray:
        """Density of u = r S (the log growth from T0 to the round) at ``a``, with S <= ``upper`` where given:
        E[p(a / S | label, texture) / S; S <= upper]."""
        a = np.asarray(a, float)
        nodes, weights = self._nodes(upper)
        values = growth.density(a[..., None] / nodes, label, np.array([texture])) / nodes
        return (values * weights).sum(axis=-1)

    def growth_cdf(self, growth: GrowthModel, label: int, texture: str, c: np.ndarray, upper: bool = False) -> np.ndarray:
        """P(r S <= c) (``upper``: P(r S > c)) = E[F(c / S | label, texture)]."""
        c = np.asarray(c, float)
        nodes, weights = self._nodes(None)
        return (growth.cdf(c[..., None] / nodes, label, np.array([texture]), upper=upper) * weights).sum(axis=-1)


class _LogGrowthGrid:
    """log density of u = r S (the log growth from T0 to a round) on a 0.004 grid, linear interpolation between."""

    STEP, LOW, HIGH = 0.004, -12.0, 12.0

    def __init__(self, growth: GrowthModel, label: int, texture: str, days: DaysToRound):
        self.grid = np.arange(self.LOW, self.HIGH + self.STEP / 2, self.STEP)
        self.log_density = _log(days.growth_density(growth, label, texture, self.grid))

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return np.interp(u, self.grid, self.log_density)


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


def information_method(key: str, rounds: int, volume_bandwidth: float = VOLUME_BANDWIDTH) -> str:
    """How the posterior of information set ``key`` is computed on a cohort of ``rounds`` rounds (for ``oracle.json``)."""
    scans, _, _ = parse_information_key(key)
    if scans == 0:
        return "exact: sum over the eligible LIDC bank entries and the exact pmf of the hidden Brock terms"
    if scans >= rounds:
        return "exact: T0 entry seen; growth density p(r | y, texture) (censoring probability where clipped); hidden terms summed exactly"
    return (f"near-exact: sum over the LIDC bank entries of the seen texture and spiculation (T0 volume matched to sd "
            f"{volume_bandwidth} in log), growth density and the unseen days to the first seen round (Normal with the "
            "exact moments) integrated by Gauss-Legendre quadrature; no Monte Carlo")


@dataclass
class _Block:
    """Patients ``rows`` against bank entries ``atoms``: log p(what the scans show | y, entry), (rows, atoms) each."""

    rows: np.ndarray
    atoms: np.ndarray
    log_benign: np.ndarray | float = 0.0
    log_malignant: np.ndarray | float = 0.0


class InformationOracle:
    """The generator's Bayes posterior p(y = 1 | what an information set sees), for a cohort's truth table.

    Args:
        config: the cohort's parameters (the distributions summed out).
        bank: the LIDC shape bank the cohort was drawn from.
        volume_bandwidth: sd in log volume to which a bank entry must match where the rate is seen but T0 is not.
    """

    def __init__(self, config: SynthConfig, bank: ShapeBank, volume_bandwidth: float = VOLUME_BANDWIDTH):
        self.config, self.growth = config, config.growth
        self.atoms = _atoms(config, bank)
        self.volume_bandwidth = volume_bandwidth
        self.interval = _interval_moments(config.interval_days, config.interval_jitter_days)
        self._hidden: dict[tuple[bool, bool], _HiddenTerms] = {}
        self._grids: dict[tuple[int, str, int], _LogGrowthGrid] = {}
        self._days: dict[int, DaysToRound] = {}

    # ------------------------------------------------------------------ public

    def posteriors(self, truth: pd.DataFrame, keys: tuple[str, ...] = INFORMATION_KEYS) -> pd.DataFrame:
        """One column of p(y = 1 | seen) per information key, indexed like ``truth``."""
        observed = _observed(truth, self.config)
        scan_cache: dict[int, list[_Block]] = {}
        columns = {}
        for key in keys:
            scans, clinical, reads = parse_information_key(key)
            columns[key] = self._posterior(observed, scans, clinical, reads, scan_cache)
        return pd.DataFrame(columns, index=truth.index)

    def method(self, key: str, rounds: int) -> str:
        """How :meth:`posteriors` computes ``key`` on a cohort of ``rounds`` rounds (for ``oracle.json``)."""
        return information_method(key, rounds, self.volume_bandwidth)

    # ------------------------------------------------------------------ pieces

    def hidden_terms(self, clinical_hidden: bool, reads_hidden: bool) -> _HiddenTerms:
        key = (clinical_hidden, reads_hidden)
        if key not in self._hidden:
            self._hidden[key] = _HiddenTerms(*_hidden_term_distribution(self.config, clinical_hidden, reads_hidden))
        return self._hidden[key]

    def days_to_round(self, round_index: int) -> DaysToRound:
        """The distribution of the days from T0 to round ``round_index`` (a sum of that many intervals)."""
        if round_index not in self._days:
            self._days[round_index] = DaysToRound(*(round_index * m for m in self.interval))
        return self._days[round_index]

    def log_growth_grid(self, label: int, texture: str, round_index: int) -> _LogGrowthGrid:
        """The log growth density from T0 to round ``round_index`` (texture matters for cancers only)."""
        key = (label, texture if label == 1 else "", round_index)
        if key not in self._grids:
            self._grids[key] = _LogGrowthGrid(self.growth, label, texture, self.days_to_round(round_index))
        return self._grids[key]

    def _posterior(self, obs: _Observed, scans: int, clinical: bool, reads: bool, scan_cache: dict[int, list[_Block]]) -> np.ndarray:
        known = (np.full(len(obs.days), BROCK_COEFFICIENTS["intercept"] + obs.offset) + (obs.clinical if clinical else 0.0)
                 + (obs.reads if reads else 0.0))
        hidden = self.hidden_terms(not clinical, not reads)
        seen = min(scans, obs.rounds)
        if seen == obs.rounds:  # T0 seen: the bank entry is the patient's own
            log1, log0 = hidden(known + obs.nodule)
            growth1, growth0 = self.t0_growth_log_likelihood(obs)
            return expit(log1 + growth1 - log0 - growth0)
        if seen == 0:
            blocks = self._class_blocks(obs, by_class=reads)
        else:
            if seen not in scan_cache:
                scan_cache[seen] = self._scan_blocks(obs, seen)
            blocks = scan_cache[seen]
        posterior = np.full(len(obs.days), np.nan)
        for block in blocks:
            rows, atoms = block.rows, block.atoms
            if atoms.size == 0:
                continue
            log1, log0 = hidden(known[rows][:, None] + self.atoms.brock[atoms][None, :])
            mask = 0.0 if not clinical else _mask_log(obs.positive[rows][:, None] == self.atoms.positive[atoms][None, :])
            with np.errstate(invalid="ignore"):
                posterior[rows] = expit(_logsumexp(log1 + block.log_malignant + mask) - _logsumexp(log0 + block.log_benign + mask))
        missing = ~np.isfinite(posterior)
        if missing.any():
            log.warning("oracle: %d patients match no bank entry (another shape bank?); their posterior is the prior",
                        int(missing.sum()))
            posterior[missing] = self.config.malignant_fraction
        return posterior

    def _class_blocks(self, obs: _Observed, by_class: bool = True) -> list[_Block]:
        """Patients against the bank entries of their texture and spiculation class (all entries unless ``by_class``), in chunks."""
        groups = [(np.arange(len(obs.days)), np.arange(len(self.atoms.texture)))]
        if by_class:
            groups = [(np.flatnonzero((obs.texture == code) & (obs.spiculated == spiculated)),
                       np.flatnonzero((self.atoms.texture == code) & (self.atoms.spiculated == spiculated)))
                      for code in range(len(TEXTURES)) for spiculated in (0, 1)]
        return [_Block(part, atoms) for rows, atoms in groups
                for part in np.array_split(rows, rows.size * max(atoms.size, 1) // _MAX_PAIRS + 1) if part.size]

    def t0_growth_log_likelihood(self, obs: _Observed) -> tuple[np.ndarray, np.ndarray]:
        """log p(later volumes | y, texture) for y = 1, 0 when T0 is seen (zeros for a single round)."""
        n = len(obs.days)
        result = (np.zeros(n), np.zeros(n))
        if obs.rounds == 1:
            return result
        later = obs.status[:, 1:] == 0
        first = np.argmax(later, axis=1) + 1
        grows = later.any(axis=1)
        pick = lambda a: a[np.arange(n), first]  # noqa: E731
        rate = np.log(pick(obs.volume) / obs.volume[:, 0]) / np.maximum(pick(obs.days), 1.0)
        floor = np.log(obs.low / obs.volume[:, 0]) / obs.days[:, 1]
        ceiling = np.log(obs.high / obs.volume[:, 0]) / obs.days[:, 1]
        for code, name in enumerate(TEXTURES):
            chosen = obs.texture == code
            for label, out in ((1, result[0]), (0, result[1])):
                density = _rate_log_density(self.growth, rate[chosen], label, name)
                below = _log(self.growth.cdf(floor[chosen], label, np.array([name])))
                above = _log(self.growth.cdf(ceiling[chosen], label, np.array([name]), upper=True))
                out[chosen] = np.where(grows[chosen], density, np.where(obs.status[chosen, 1] < 0, below, above))
        return result

    def _scan_blocks(self, obs: _Observed, seen: int) -> list[_Block]:
        """log p(what the latest ``seen`` rounds show | y, bank entry), T0 not among them, per class block."""
        j = obs.rounds - seen
        days_to_first = self.days_to_round(j)
        mean, variance = days_to_first.mean, days_to_first.variance
        h, at = self.volume_bandwidth, self.atoms
        volume, status = obs.volume[:, j:], obs.status[:, j:]
        days = obs.days[:, j:] - obs.days[:, j:j + 1]
        unclipped = np.cumprod(status == 0, axis=1).sum(axis=1)  # clipping, once reached, stays
        smallest = np.where(status == 0, volume, np.inf).min(axis=1)  # of the unclipped seen volumes
        largest = np.where(status == 0, volume, -np.inf).max(axis=1)
        blocks = self._class_blocks(obs)
        for block in blocks:
            rows, atoms = block.rows, block.atoms
            if atoms.size == 0:
                continue
            texture = TEXTURES[int(obs.texture[rows[0]])]
            low, high, log_v0 = at.low[atoms][None, :], at.high[atoms][None, :], at.log_volume[atoms][None, :]
            log_first = np.log(volume[rows, 0])[:, None]
            a = log_first - log_v0
            base = _mask_log((smallest[rows][:, None] > low) & (largest[rows][:, None] < high))
            out = {1: np.full(a.shape, -np.inf), 0: np.full(a.shape, -np.inf)}
            m = unclipped[rows]
            # two or more unclipped rounds: the rate is seen
            sel = np.flatnonzero(m >= 2)
            if sel.size:
                r = np.log(volume[rows[sel], 1] / volume[rows[sel], 0]) / days[rows[sel], 1]
                term = base[sel] + _log_normal_pdf(a[sel] - r[:, None] * mean, h**2 + r[:, None] ** 2 * variance)
                clipped = np.flatnonzero(m[sel] < seen)
                if clipped.size:
                    rr = rows[sel[clipped]]
                    last = m[sel[clipped]] - 1
                    predicted = volume[rr, last] * np.exp(r[clipped] * (days[rr, last + 1] - days[rr, last]))
                    side = status[rr, last + 1][:, None]
                    term[clipped] += _mask_log(np.where(side > 0, predicted[:, None] >= high * (1 - 1e-6),
                                                        predicted[:, None] <= low * (1 + 1e-6)))
                for label in (0, 1):
                    out[label][sel] = term + _rate_log_density(self.growth, r, label, texture)[:, None]
            # one unclipped round, the first seen: the rate is integrated out, E_S[p(a / S | y) / S]
            sel = np.flatnonzero(m == 1)
            if sel.size and seen == 1:
                for label in (0, 1):
                    out[label][sel] = base[sel] + self.log_growth_grid(label, texture, j)(a[sel])
            elif sel.size:
                # the next seen round clipped: r = a / S beyond the rate reaching that bound, i.e. S <= a / bound
                rr, a_sel = rows[sel], a[sel]
                ceiling = status[rr, 1][:, None] > 0
                bound = np.log(np.where(ceiling, high, low) / volume[rr, 0][:, None]) / days[rr, 1][:, None]
                feasible = np.where(ceiling, a_sel > 0, a_sel < 0) & (base[sel] > -np.inf)
                upper = a_sel[feasible] / bound[feasible]
                for label in (0, 1):
                    value = np.zeros(a_sel.shape)
                    value[feasible] = days_to_first.growth_density(self.growth, label, texture, a_sel[feasible], upper)
                    with np.errstate(divide="ignore"):
                        out[label][sel] = base[sel] + np.log(value)
            # every seen round clipped: P(r S <= ln(floor / V0)) or P(r S > ln(ceiling / V0))
            sel = np.flatnonzero(m == 0)
            if sel.size:
                rr = rows[sel]
                first = volume[rr, 0][:, None]
                ceiling = status[rr, 0][:, None] > 0
                log_min = np.log(self.config.min_volume_mm3)
                own_floor = np.log(first) < log_min - 1e-6  # a nodule below min_volume at T0 stays at its own V0
                for label in (0, 1):
                    above = _log(days_to_first.growth_cdf(self.growth, label, texture, np.log(high) - log_v0, upper=True))
                    below = _log(days_to_first.growth_cdf(self.growth, label, texture, log_min - log_v0)) + _mask_log(log_v0 > log_min)
                    own = (_log_normal_pdf(np.log(first) - log_v0, h**2) + _mask_log(log_v0 <= log_min)
                           + _log(self.growth.cdf(0.0, label, np.array([texture]))))
                    out[label][sel] = base[sel] + np.where(ceiling, above, np.where(own_floor, own, below))
            block.log_benign, block.log_malignant = out[0], out[1]
        return blocks
