"""p(scans | y, b): the likelihood of what the latest K rounds show, given the label and the T0 bank entry b.

- T0 among the seen rounds: exact. The entry is the patient's own, the seen volumes give
  r = ln(V_k / V_0) / t_k and p(scans | y) = p(r | y, texture), or P(r <= rho | y)
  (P(r > rho | y)) where every later volume is at the floor (ceiling), rho the rate reaching it
  at T1 (:func:`t0_growth_log_likelihood`).
- T0 not seen (``scans1``, ``scans2`` of a three-round cohort, :class:`ScanLikelihood`): the days
  S from T0 to the first seen round j (a sum of j rounded, floored Normal intervals) are taken as
  Normal with their exact mean and variance (:class:`DaysToRound`); with a_b = ln V_j - ln V0_b:

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
    integration, tested); tabulated on a 0.004 grid of a_b for ``scans1`` (:class:`_LogGrowthGrid`);
  - every seen volume clipped: P(r S <= ln(floor_b / V0_b)) or P(r S > ln(ceiling_b / V0_b)),
    E_S of the rate's distribution function.

Approximations: the Normal days (against the exact pmf of two rounded intervals the ``scans1``
posteriors differ by < 2e-4, tested), h, quadrature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from mstnet.synth.information_terms import _Atoms, _Observed
from mstnet.synth.risk import TEXTURES, GrowthModel

VOLUME_BANDWIDTH = 0.001
"""Precision (sd of log volume) to which the bank's T0 volume is matched where T0 is not seen (0.1%)."""

MIN_INTERVAL_DAYS = 30.0
"""The generator's floor on each interval between rounds (``draw_cohort_table``)."""

_NODES = 32
_LOG_FLOOR = 1e-300


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, _LOG_FLOOR))


def _log_normal_pdf(x: np.ndarray, variance: np.ndarray | float) -> np.ndarray:
    return -0.5 * x**2 / variance - 0.5 * np.log(2 * np.pi * variance)


def _mask_log(condition: np.ndarray) -> np.ndarray:
    return np.where(condition, 0.0, -np.inf)


@dataclass
class _Block:
    """Patients ``rows`` against bank entries ``atoms``: log p(what the scans show | y, entry), (rows, atoms) each."""

    rows: np.ndarray
    atoms: np.ndarray
    log_benign: np.ndarray | float = 0.0
    log_malignant: np.ndarray | float = 0.0


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


def t0_growth_log_likelihood(growth: GrowthModel, obs: _Observed) -> tuple[np.ndarray, np.ndarray]:
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
            density = _rate_log_density(growth, rate[chosen], label, name)
            below = _log(growth.cdf(floor[chosen], label, np.array([name])))
            above = _log(growth.cdf(ceiling[chosen], label, np.array([name]), upper=True))
            out[chosen] = np.where(grows[chosen], density, np.where(obs.status[chosen, 1] < 0, below, above))
    return result


@dataclass(frozen=True)
class SeenRounds:
    """The latest ``count`` rounds of every patient, T0 not among them (the first seen is round ``first``), (N, count) each."""

    first: int
    count: int
    volume: np.ndarray
    status: np.ndarray
    days: np.ndarray  # since the first seen round
    unclipped: np.ndarray  # (N,) seen rounds before the first clipped one (clipping, once reached, stays)
    smallest: np.ndarray  # (N,) of the unclipped seen volumes
    largest: np.ndarray

    @classmethod
    def of(cls, obs: _Observed, seen: int) -> SeenRounds:
        j = obs.rounds - seen
        volume, status = obs.volume[:, j:], obs.status[:, j:]
        return cls(first=j, count=seen, volume=volume, status=status, days=obs.days[:, j:] - obs.days[:, j:j + 1],
                   unclipped=np.cumprod(status == 0, axis=1).sum(axis=1),
                   smallest=np.where(status == 0, volume, np.inf).min(axis=1),
                   largest=np.where(status == 0, volume, -np.inf).max(axis=1))


@dataclass(frozen=True)
class ScanLikelihood:
    """log p(what the latest rounds show | y, bank entry) where T0 is not among them, filled into blocks of patients.

    Each case of the module docstring is one method; ``low``, ``high`` and ``log_v0`` are the
    block's entries' floors, ceilings and log T0 volumes (1, atoms), ``a`` the log growth from
    each entry's T0 volume to the first seen round and ``base`` the log of whether the entry's
    floor and ceiling allow the unclipped seen volumes, (rows, atoms) each.

    Args:
        growth: the generator's growth model.
        atoms: the eligible bank entries.
        rounds: what every patient shows of the seen rounds.
        days_to_first: the unseen days S from T0 to the first seen round.
        log_growth_grid: (label, texture) -> the tabulated log density of r S.
        volume_bandwidth: sd in log volume to which a bank entry must match where the rate is seen.
        min_volume_mm3: the generator's floor on a volume.
    """

    growth: GrowthModel
    atoms: _Atoms
    rounds: SeenRounds
    days_to_first: DaysToRound
    log_growth_grid: Callable[[int, str], _LogGrowthGrid]
    volume_bandwidth: float
    min_volume_mm3: float

    def fill(self, block: _Block, texture: str) -> None:
        """Set ``block``'s log likelihoods (its patients all of ``texture``) for y = 0 and 1."""
        rows, at, seen = block.rows, self.atoms, self.rounds
        low, high, log_v0 = at.low[block.atoms][None, :], at.high[block.atoms][None, :], at.log_volume[block.atoms][None, :]
        log_first = np.log(seen.volume[rows, 0])[:, None]
        a = log_first - log_v0
        base = _mask_log((seen.smallest[rows][:, None] > low) & (seen.largest[rows][:, None] < high))
        out = {1: np.full(a.shape, -np.inf), 0: np.full(a.shape, -np.inf)}
        m = seen.unclipped[rows]
        sel = np.flatnonzero(m >= 2)
        if sel.size:
            _put(out, sel, self._rate_seen(rows[sel], m[sel], a[sel], base[sel], low, high, texture))
        sel = np.flatnonzero(m == 1)
        if sel.size:
            _put(out, sel, self._rate_integrated(rows[sel], a[sel], base[sel], low, high, texture))
        sel = np.flatnonzero(m == 0)
        if sel.size:
            _put(out, sel, self._every_round_clipped(rows[sel], base[sel], high, log_v0, texture))
        block.log_benign, block.log_malignant = out[0], out[1]

    def _rate_seen(self, rows: np.ndarray, unclipped: np.ndarray, a: np.ndarray, base: np.ndarray, low: np.ndarray,
                   high: np.ndarray, texture: str) -> dict[int, np.ndarray]:
        """Two or more unclipped rounds: the rate r is seen, p(r | y, texture) N(a - r E[S]; h^2 + r^2 Var[S])."""
        seen, days = self.rounds, self.days_to_first
        r = np.log(seen.volume[rows, 1] / seen.volume[rows, 0]) / seen.days[rows, 1]
        term = base + _log_normal_pdf(a - r[:, None] * days.mean, self.volume_bandwidth**2 + r[:, None] ** 2 * days.variance)
        clipped = np.flatnonzero(unclipped < seen.count)
        if clipped.size:
            term[clipped] += self._clipping_agrees(rows[clipped], unclipped[clipped], r[clipped], low, high)
        return {label: term + _rate_log_density(self.growth, r, label, texture)[:, None] for label in (0, 1)}

    def _clipping_agrees(self, rows: np.ndarray, unclipped: np.ndarray, r: np.ndarray, low: np.ndarray,
                         high: np.ndarray) -> np.ndarray:
        """0 where the seen rate carries the last unclipped volume past the entry's bound where the next round is clipped, else -inf."""
        seen = self.rounds
        last = unclipped - 1
        predicted = seen.volume[rows, last] * np.exp(r * (seen.days[rows, last + 1] - seen.days[rows, last]))
        side = seen.status[rows, last + 1][:, None]
        return _mask_log(np.where(side > 0, predicted[:, None] >= high * (1 - 1e-6), predicted[:, None] <= low * (1 + 1e-6)))

    def _rate_integrated(self, rows: np.ndarray, a: np.ndarray, base: np.ndarray, low: np.ndarray, high: np.ndarray,
                         texture: str) -> dict[int, np.ndarray]:
        """One unclipped round, the first seen: the rate is integrated out, E_S[p(a / S | y) / S]."""
        seen = self.rounds
        if seen.count == 1:
            return {label: base + self.log_growth_grid(label, texture)(a) for label in (0, 1)}
        # the next seen round clipped: r = a / S beyond the rate reaching that bound, i.e. S <= a / bound
        ceiling = seen.status[rows, 1][:, None] > 0
        bound = np.log(np.where(ceiling, high, low) / seen.volume[rows, 0][:, None]) / seen.days[rows, 1][:, None]
        feasible = np.where(ceiling, a > 0, a < 0) & (base > -np.inf)
        upper = a[feasible] / bound[feasible]
        out = {}
        for label in (0, 1):
            value = np.zeros(a.shape)
            value[feasible] = self.days_to_first.growth_density(self.growth, label, texture, a[feasible], upper)
            with np.errstate(divide="ignore"):
                out[label] = base + np.log(value)
        return out

    def _every_round_clipped(self, rows: np.ndarray, base: np.ndarray, high: np.ndarray, log_v0: np.ndarray,
                             texture: str) -> dict[int, np.ndarray]:
        """Every seen round clipped: P(r S <= ln(floor / V0)) or P(r S > ln(ceiling / V0))."""
        seen, days, h = self.rounds, self.days_to_first, self.volume_bandwidth
        first = seen.volume[rows, 0][:, None]
        ceiling = seen.status[rows, 0][:, None] > 0
        log_min = np.log(self.min_volume_mm3)
        own_floor = np.log(first) < log_min - 1e-6  # a nodule below min_volume at T0 stays at its own V0
        out = {}
        for label in (0, 1):
            above = _log(days.growth_cdf(self.growth, label, texture, np.log(high) - log_v0, upper=True))
            below = _log(days.growth_cdf(self.growth, label, texture, log_min - log_v0)) + _mask_log(log_v0 > log_min)
            own = (_log_normal_pdf(np.log(first) - log_v0, h**2) + _mask_log(log_v0 <= log_min)
                   + _log(self.growth.cdf(0.0, label, np.array([texture]))))
            out[label] = base + np.where(ceiling, above, np.where(own_floor, own, below))
        return out


def _put(out: dict[int, np.ndarray], rows: np.ndarray, values: dict[int, np.ndarray]) -> None:
    """Write one case's log likelihoods into the block's (rows, atoms) arrays, per label."""
    for label in (0, 1):
        out[label][rows] = values[label]
