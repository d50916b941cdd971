"""The tabular truth of the synthetic cohort (``docs/cohort.md``, steps 1-4, 6 and 7), no images.

Drawn in this process, from one random stream (:func:`draw_cohort_table`):

1. a nodule from the LIDC shape bank (non-calcified, T0 diameter within the preset's range);
   its median ratings give the texture class (solid / part-solid / non-solid) and spiculation;
2. clinical variables from NLST-like marginals (:class:`mstnet.synth.risk.ClinicalMarginals`);
3. malignancy y ~ Bernoulli(sigmoid(Brock logit + offset)), the offset solved so the expected
   malignant fraction is ``malignant_fraction``;
4. a growth rate from label- and texture-dependent VDT distributions; volumes
   V(t) = V0 exp(r t) at screening days 0, ~365, ~730 (jittered), V0 the LIDC consensus volume;
6. derived NLST columns (``scr_res0`` / ``scr_iso0``: 4 = positive, nodule >= 4 mm; 2 = negative,
   minor abnormality);
7. the oracle posteriors, one per information set (:mod:`mstnet.synth.oracle`).

Step 5, the images, is :mod:`mstnet.synth.rendering`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from mstnet.synth.config import SynthConfig
from mstnet.synth.oracle import ORACLE_KEYS, oracle_scores
from mstnet.synth.risk import brock_logit, brock_terms, solve_offset, texture_class, vdt_days
from mstnet.synth.scan_likelihoods import MIN_INTERVAL_DAYS
from mstnet.synth.shape_bank import ShapeBank

SCREENING_POSITIVE_DIAMETER_MM = 4.0
"""NLST's positive screen: a nodule of at least this T0 diameter gives ``scr_res0 = scr_iso0 = 4``, else 2."""


def eligible_bank_indices(bank: ShapeBank, config: SynthConfig) -> np.ndarray:
    """Bank entries whose diameter lies in the config's T0 range."""
    diameter = bank.column("diameter_mm")
    eligible = np.flatnonzero((diameter >= config.min_initial_diameter_mm) & (diameter <= config.max_initial_diameter_mm))
    if eligible.size == 0:
        raise ValueError(f"no LIDC nodule has a diameter within {config.min_initial_diameter_mm}-{config.max_initial_diameter_mm} mm")
    return eligible


def draw_cohort_table(config: SynthConfig, bank: ShapeBank) -> pd.DataFrame:
    """Steps 1-4, 6 and 7: one row per patient with every truth column, no images.

    Cheap (the oracle columns take most of it: about 0.5 s for 150 patients, 3-4 ms a patient
    on the full bank): use it to study the generator or the oracle on many patients.
    """
    table_seed, _ = np.random.SeedSequence(config.seed).spawn(2)
    rng = np.random.default_rng(table_seed)
    n = config.n_patients
    eligible = eligible_bank_indices(bank, config)
    chosen = rng.choice(eligible, size=n, replace=n > eligible.size)
    frame = _nodule_columns(bank, chosen, config)
    clinical = config.clinical.draw(rng, n)
    for name, values in clinical.items():
        frame[name] = values
    diameter0 = bank.column("diameter_mm")[chosen]
    volume0 = bank.column("volume_mm3")[chosen]
    _draw_malignancy(frame, clinical, diameter0, config, rng)
    _draw_growth(frame, diameter0, volume0, config, rng)
    positive = diameter0 >= SCREENING_POSITIVE_DIAMETER_MM
    frame["scr_res0"] = np.where(positive, 4, 2)
    frame["scr_iso0"] = np.where(positive, 4, 2)
    scores = oracle_scores(frame, config, bank)
    frame["oracle_posterior"] = scores["everything"].to_numpy()
    for key in ORACLE_KEYS[:-1]:  # every information set (mstnet.information): oracle_scans2+clinical, ...
        frame[f"oracle_{key}"] = scores[key].to_numpy()
    return frame


def _nodule_columns(bank: ShapeBank, chosen: np.ndarray, config: SynthConfig) -> pd.DataFrame:
    """Step 1: the patients' ids, their LIDC nodules and what their ratings say (texture class, spiculated)."""
    texture_rating = bank.column("texture")[chosen]
    spiculation_rating = bank.column("spiculation")[chosen]
    return pd.DataFrame({
        "patient_id": [f"SYN{i + 1:04d}" for i in range(len(chosen))],
        "bank_index": chosen,
        "lidc_scan_id": [bank[i].scan_id for i in chosen],
        "lidc_patient_id": [bank[i].patient_id for i in chosen],
        "lidc_readers": [bank[i].n_readers for i in chosen],
        "lidc_texture": texture_rating,
        "lidc_spiculation": spiculation_rating,
        "lidc_malignancy": bank.column("malignancy")[chosen],
        "texture": texture_class(texture_rating),
        "spiculated": (spiculation_rating >= config.spiculated_rating).astype(int),
    })


def _draw_malignancy(frame: pd.DataFrame, clinical: dict[str, np.ndarray], diameter0: np.ndarray, config: SynthConfig,
                     rng: np.random.Generator) -> None:
    """Step 3: the Brock logit, the offset that gives ``malignant_fraction``, the true risk and the label."""
    terms = brock_terms(clinical["age"], clinical["female"], clinical["family_history"], clinical["emphysema"],
                        clinical["upper_lobe"], clinical["nodule_count"], diameter0, frame["texture"].to_numpy(),
                        frame["spiculated"].to_numpy(), include_spiculation=config.include_spiculation,
                        effects=config.effects)
    logit = np.asarray(brock_logit(terms), dtype=float)
    offset = solve_offset(logit, config.malignant_fraction)
    frame["brock_logit"] = logit
    frame["logit_offset"] = offset
    frame["true_risk"] = expit(logit + offset)
    frame["label"] = (rng.random(len(frame)) < frame["true_risk"].to_numpy()).astype(int)


def _draw_growth(frame: pd.DataFrame, diameter0: np.ndarray, volume0: np.ndarray, config: SynthConfig,
                 rng: np.random.Generator) -> None:
    """Step 4: the growth rate, the screening days and the volume and diameter at each round."""
    n = len(frame)
    rate = config.growth.sample_rate(rng, frame["label"].to_numpy(), frame["texture"].to_numpy())
    frame["growth_rate_per_day"] = rate
    frame["vdt_days"] = vdt_days(rate)
    intervals = np.maximum(rng.normal(config.interval_days, config.interval_jitter_days, (n, max(config.n_timepoints - 1, 0))),
                           MIN_INTERVAL_DAYS)
    days = np.concatenate([np.zeros((n, 1)), np.cumsum(np.round(intervals), axis=1)], axis=1)
    # cap growth where the longest diameter would pass max_diameter_mm (never below the T0 volume)
    max_volume = volume0 * np.maximum(config.max_diameter_mm / diameter0, 1.0) ** 3
    for k, name in enumerate(config.timepoint_names):
        volume = np.clip(volume0 * np.exp(rate * days[:, k]), np.minimum(config.min_volume_mm3, volume0), max_volume)
        volume = np.where(k == 0, volume0, volume)
        frame[f"days_{name}"] = days[:, k]
        frame[f"volume_{name}_mm3"] = volume
        frame[f"diameter_{name}_mm"] = diameter0 * (volume / volume0) ** (1.0 / 3.0)
