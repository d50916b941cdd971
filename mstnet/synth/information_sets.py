"""Bayes posterior of malignancy for every information set of :mod:`mstnet.information`, under the generator's own model.

What each set sees, and the hidden Brock terms it sums out, are in
:mod:`mstnet.synth.information_terms`. Everything a set does not see is summed out under the
generator's own distributions: the hidden Brock terms under
:class:`~mstnet.synth.risk.ClinicalMarginals`, the T0 nodule as the generator draws it (uniform
over the eligible LIDC bank entries: texture, spiculation, diameter and volume jointly as the
bank has them), the growth rate under :class:`~mstnet.synth.risk.GrowthModel` and the unseen
days, with the clipping. With L = Brock logit + offset, the posterior odds are

    sum over bank entries b of  w_b * E_hidden[sigmoid(L)]     * p(scans | y = 1, b)
    ---------------------------------------------------------------------------------
    sum over bank entries b of  w_b * E_hidden[1 - sigmoid(L)] * p(scans | y = 0, b)

with w_b = 1 where entry b matches what is seen (texture and spiculation; the >= 4 mm flag
with ``clinical``), else 0. E_hidden is an exact sum over the pmf of the hidden terms
(:class:`~mstnet.synth.information_terms._HiddenTerms`). Without scans p(scans | y, b) = 1 and
the posterior is exact; p(scans | y, b) for one, two or all rounds seen is
:mod:`mstnet.synth.scan_likelihoods`.

No Monte Carlo: the posteriors are deterministic sums and quadratures, with no sampling
error. About 0.4 s for the 150 patients of the ``cpu`` cohort (all 15 sets), 3-4 ms per
patient on the full bank. Checked by brute force in ``tests/test_synth_oracle.py``: in a
30 000-patient draw of the generator's own code, the malignant fraction in every cell of a
binning of what each set sees equals the mean posterior there, within binomial error (and a
posterior off by 1 in log-odds fails the same check); without scans the posterior is one
number per exact cell of what is seen and equals the cell's counted fraction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import expit

from mstnet.information import INFORMATION_KEYS, parse_information_key
from mstnet.synth.information_terms import _atoms, _hidden_term_distribution, _HiddenTerms, _logsumexp, _Observed, _observed
from mstnet.synth.risk import BROCK_COEFFICIENTS, TEXTURES
from mstnet.synth.scan_likelihoods import (VOLUME_BANDWIDTH, DaysToRound, ScanLikelihood, SeenRounds, _Block, _interval_moments,
                                           _LogGrowthGrid, _mask_log, t0_growth_log_likelihood)

if TYPE_CHECKING:
    from mstnet.synth.config import SynthConfig
    from mstnet.synth.shape_bank import ShapeBank

log = logging.getLogger(__name__)

_MAX_PAIRS = 2_000_000


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
        return t0_growth_log_likelihood(self.growth, obs)

    def _scan_blocks(self, obs: _Observed, seen: int) -> list[_Block]:
        """log p(what the latest ``seen`` rounds show | y, bank entry), T0 not among them, per class block."""
        rounds = SeenRounds.of(obs, seen)
        likelihood = ScanLikelihood(self.growth, self.atoms, rounds, self.days_to_round(rounds.first),
                                    lambda label, texture: self.log_growth_grid(label, texture, rounds.first),
                                    self.volume_bandwidth, self.config.min_volume_mm3)
        blocks = self._class_blocks(obs)
        for block in blocks:
            if block.atoms.size:
                likelihood.fill(block, TEXTURES[int(obs.texture[block.rows[0]])])
        return blocks
