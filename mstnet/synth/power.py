"""Power of the claims' paired tests between ceilings, simulated on the generator's own distribution.

For each claim of :data:`mstnet.claims.CLAIMS` with two different information sets, the
question is: in a cohort of N patients drawn by this generator, how often does DeLong's paired
test find the better set's oracle posterior ahead of the worse set's (gap > 0, p < 0.05)? If it
rarely does, no model can be expected to show the claim at that size, whatever it learns.

How it is simulated (:func:`ceiling_power`):

1. one large population of patients is drawn with the generator's own code
   (:func:`~mstnet.synth.truth_table.draw_cohort_table`: the truth table and every oracle
   posterior, no images), with a seed apart from the cohort's (default 20 000 patients);
2. for each cohort size N, many cohorts (default 1000) of N patients are drawn from it without
   replacement (:func:`mstnet.metrics.claims.paired_auc_power`), and the paired test is run on
   each, between the two sets' posteriors of the same patients;
3. the power is the share of cohorts where the claim is found, with its Monte Carlo standard
   error.

Drawing cohorts from a 20 000-patient population rather than from the generator each time
changes nothing that matters here (N is at most a few percent of the population) and takes a
minute instead of an hour. ``mstnet data power --preset claims`` prints and writes the table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from mstnet.claims import CLAIMS
from mstnet.metrics.claims import SIGNIFICANCE, paired_auc_power
from mstnet.synth.config import SynthConfig, with_overrides
from mstnet.synth.shape_bank import ShapeBank, load_shape_bank
from mstnet.synth.truth_table import draw_cohort_table

log = logging.getLogger(__name__)

POPULATION_SEED = 1_000_003
"""Seed of the simulated population: apart from every cohort seed a user would pick (0, 1, 2, ...)."""

POWER_COLUMNS: tuple[str, ...] = ("claim", "comparison", "better_information", "worse_information",
                                  "required_gap", "population_gap", "n_patients", "mean_gap", "power",
                                  "standard_error", "n_cohorts")


def oracle_column(key: str) -> str:
    """The truth table's column of an information set's posterior (``everything``: ``oracle_posterior``)."""
    return "oracle_posterior" if key == "everything" else f"oracle_{key}"


def ceiling_power(config: SynthConfig, sizes: Sequence[int], population: int = 20_000, cohorts: int = 1000,
                  seed: int = POPULATION_SEED, bank: ShapeBank | None = None, alpha: float = SIGNIFICANCE,
                  progress: bool = True) -> pd.DataFrame:
    """Simulated power of each claim's paired ceiling test at each cohort size (rows of :data:`POWER_COLUMNS`).

    Args:
        config: the cohort's generator settings (its ``n_patients`` and ``seed`` are replaced).
        sizes: cohort sizes N to evaluate.
        population: patients of the simulated population (well above every N).
        cohorts: cohorts drawn per size.
        seed: seed of the population and of the cohort draws.
        bank: the LIDC shape bank (default: the cached one).
        alpha: level of the two-sided paired test.
        progress: show a progress bar.
    """
    if not sizes or min(sizes) < 2 or max(sizes) >= population:
        raise ValueError(f"cohort sizes must lie in [2, {population}); got {list(sizes)}")
    bank = bank if bank is not None else load_shape_bank(config.bank_spacing_mm)
    log.info("drawing a population of %d patients (preset %s) for the power simulation", population, config.name)
    table = draw_cohort_table(with_overrides(config, {"n_patients": population, "seed": seed}), bank)
    labels = table["label"].to_numpy()
    claims = [claim for claim in CLAIMS if claim.ceiling[0] != claim.ceiling[1]]
    rows = []
    steps = [(claim, n) for claim in claims for n in sizes]
    for index, (claim, n) in enumerate(tqdm(steps, desc="power", disable=not progress)):
        better, worse = (table[oracle_column(key)].to_numpy() for key in claim.ceiling)
        estimate = paired_auc_power(labels, better, worse, n, n_cohorts=cohorts, seed=seed + index, alpha=alpha)
        rows.append({"claim": claim.name, "comparison": claim.comparison, "better_information": claim.ceiling[0],
                     "worse_information": claim.ceiling[1], "required_gap": claim.required_ceiling_gap,
                     "population_gap": estimate.population_gap, "n_patients": n, "mean_gap": estimate.mean_gap,
                     "power": estimate.power, "standard_error": estimate.standard_error, "n_cohorts": cohorts})
    return pd.DataFrame(rows, columns=list(POWER_COLUMNS))


def smallest_powered_size(power: pd.DataFrame, target: float = 0.8) -> int | None:
    """The smallest N at which every claim with a required ceiling gap reaches ``target`` power (None: none does)."""
    required = power[power["required_gap"].notna()]
    if required.empty:
        return None
    passing = required.groupby("n_patients")["power"].min()
    passing = passing[passing >= target]
    return int(passing.index.min()) if len(passing) else None
