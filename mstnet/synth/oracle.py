"""The oracle: the Bayes posterior of malignancy given what each information set sees, and its AUC ceilings.

The generator draws y ~ Bernoulli(sigmoid(Brock logit + offset)) and then a growth rate r from
p(r | y, texture) (:class:`mstnet.synth.risk.GrowthModel`). Knowing the clinical record, the
reads, the nodule at T0 and the true volumes (hence r), the posterior log-odds are exactly

    Brock logit + offset + log p(r | malignant, texture) - log p(r | benign, texture),

(where every later volume was clipped, at the floor or where the diameter reached ``max_diameter_mm``, the density
ratio becomes the ratio of the probabilities of being clipped), the ceiling no model can beat
on average: key ``everything`` (:func:`everything_posterior`, closed form from the drawn rate).

Every information set of :mod:`mstnet.information` (``scans2+clinical``, ``scans1``,
``clinical``, ``clinical+reads``, ``scans3+clinical+reads``, ...; :data:`ORACLE_KEYS`) has its
own Bayes posterior p(y = 1 | what the set sees), everything else summed out under the
generator's own distributions (:class:`mstnet.synth.information_sets.InformationOracle`, whose
docstring gives the observation model, the formulas and the approximation error):

- ``scansK``: the volumes (hence sizes) at the latest K rounds, the days between them,
  texture and spiculation; the T0 size only where T0 is among them;
- ``clinical``: race, cigsmok, gender, age, pack_years, family_history, scr_res0, scr_iso0;
- ``reads``: emphysema, upper_lobe, nodule_count, nodule_type, spiculated.

Sets without scans and sets that see T0 are exact; where T0 is not seen the unseen days are
Normal with their exact moments and the rate integrated by quadrature. There is no Monte
Carlo: every posterior is a deterministic sum over the bank's entries with exact pmfs and
quadrature, checked against brute-force simulation in ``tests/test_synth_oracle.py``.
``scans3+clinical+reads`` equals ``everything`` on a three-round cohort (computed by the other
path; tested). ``oracle.json``: :func:`oracle_report`; per-patient columns
``oracle_posterior`` (``everything``) and ``oracle_<key>``: :func:`stored_scores`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from mstnet.atomic import write_text_atomic
from mstnet.information import INFORMATION_KEYS
from mstnet.synth.information_sets import InformationOracle, information_method
from mstnet.synth.risk import brock_logit, brock_terms

if TYPE_CHECKING:
    from mstnet.synth.config import SynthConfig
    from mstnet.synth.shape_bank import ShapeBank

ORACLE_KEYS: tuple[str, ...] = (*INFORMATION_KEYS, "everything")
"""Keys of ``oracle.json``'s ``auc``: every information set, then ``everything`` (all rounds + clinical + reads)."""


def _rounds(truth: pd.DataFrame) -> list[int]:
    return sorted(int(c[8:-4]) for c in truth.columns if c.startswith("volume_T") and c.endswith("_mm3"))


def everything_posterior(truth: pd.DataFrame, config: SynthConfig) -> np.ndarray:
    """p(y = 1 | everything) per patient, in closed form from the drawn growth rate.

    Brock logit (T0 diameter) + offset + log p(r | 1, texture) - log p(r | 0); where every
    later volume is clipped, r is not seen and the ratio is that of P(r <= rho) (floor) or
    P(r >= rho) (ceiling), rho the rate reaching the bound at the first later round.
    """
    growth = config.growth
    texture = truth["texture"].astype(str).to_numpy()
    diameter0 = truth["diameter_T0_mm"].to_numpy(float)
    terms = brock_terms(truth["age"], truth["female"], truth["family_history"], truth["emphysema"], truth["upper_lobe"],
                        truth["nodule_count"], diameter0, texture, truth["spiculated"], include_spiculation=config.include_spiculation,
                        effects=config.effects)
    logit = np.asarray(brock_logit(terms), float) + float(truth["logit_offset"].iloc[0])
    rounds = _rounds(truth)
    if len(rounds) == 1:
        return expit(logit)
    volume0 = truth["volume_T0_mm3"].to_numpy(float)
    low = np.minimum(config.min_volume_mm3, volume0)
    high = volume0 * np.maximum(config.max_diameter_mm / diameter0, 1.0) ** 3
    later = np.stack([truth[f"volume_T{k}_mm3"].to_numpy(float) for k in rounds[1:]], axis=1)
    free = ((later > low[:, None] * (1 + 1e-9)) & (later < high[:, None] * (1 - 1e-9))).any(axis=1)
    floor = later[:, 0] <= low * (1 + 1e-9)
    days1 = truth[f"days_T{rounds[1]}"].to_numpy(float)
    rho = np.log(np.where(floor, low, high) / volume0) / days1
    rate = truth["growth_rate_per_day"].to_numpy(float)
    tiny = 1e-300
    ratio = np.log(growth.density(rate, 1, texture) + tiny) - np.log(growth.density(rate, 0, texture) + tiny)
    censored = np.where(floor, np.log(growth.cdf(rho, 1, texture) + tiny) - np.log(growth.cdf(rho, 0, texture) + tiny),
                        np.log(growth.cdf(rho, 1, texture, upper=True) + tiny) - np.log(growth.cdf(rho, 0, texture, upper=True) + tiny))
    return expit(logit + np.where(free, ratio, censored))


def oracle_scores(truth: pd.DataFrame, config: SynthConfig, bank: ShapeBank | None = None,
                  keys: tuple[str, ...] = ORACLE_KEYS, oracle: InformationOracle | None = None) -> pd.DataFrame:
    """Posterior probability of malignancy per patient under each information set.

    Args:
        truth: one row per patient with the generator's truth columns (clinical variables,
            texture, spiculated, ``days_Tk``, ``volume_Tk_mm3``, ``diameter_Tk_mm``,
            ``growth_rate_per_day``, ``logit_offset``, ``scr_res0``).
        config: the cohort's parameters.
        bank: the shape bank it was drawn from (default: the cached one at ``config.bank_spacing_mm``).
        keys: the keys wanted (default :data:`ORACLE_KEYS`).
        oracle: a prepared :class:`InformationOracle` (reused across calls).

    Returns:
        DataFrame indexed like ``truth``, one probability column per key.
    """
    wanted = [k for k in keys if k != "everything"]
    if wanted and oracle is None:
        if bank is None:
            from mstnet.synth.shape_bank import load_shape_bank

            bank = load_shape_bank(config.bank_spacing_mm, progress=False)
        oracle = InformationOracle(config, bank)
    scores = oracle.posteriors(truth, tuple(wanted)) if wanted else pd.DataFrame(index=truth.index)
    if "everything" in keys:
        scores["everything"] = everything_posterior(truth, config)
    return scores[list(keys)]


def stored_scores(truth: pd.DataFrame) -> pd.DataFrame | None:
    """The posteriors :func:`~mstnet.synth.truth_table.draw_cohort_table` wrote into ``truth`` (``oracle_posterior`` is
    ``everything``, ``oracle_<key>`` the others), as :func:`oracle_scores` returns them; None if any is missing."""
    names = {key: "oracle_posterior" if key == "everything" else f"oracle_{key}" for key in ORACLE_KEYS}
    if any(name not in truth for name in names.values()):
        return None
    return pd.DataFrame({key: truth[name].to_numpy() for key, name in names.items()}, index=truth.index)


def oracle_aucs(truth: pd.DataFrame, scores: pd.DataFrame) -> dict[str, float | None]:
    """ROC AUC (scikit-learn) of each score column against the labels; None when only one class is present."""
    labels = truth["label"].to_numpy()
    if len(np.unique(labels)) < 2:
        return {key: None for key in scores.columns}
    return {key: float(roc_auc_score(labels, scores[key])) for key in scores.columns}


def oracle_report(truth: pd.DataFrame, config: SynthConfig, bank: ShapeBank | None = None,
                  scores: pd.DataFrame | None = None) -> dict[str, Any]:
    """The ``oracle.json`` content: AUC per information set and ``everything``, the cohort's size, a note and the method."""
    if scores is None:
        scores = oracle_scores(truth, config, bank)
    rounds = len(_rounds(truth))
    method = {key: information_method(key, rounds) for key in INFORMATION_KEYS}
    method["everything"] = "closed form: Brock logit + offset + growth log-likelihood ratio at the drawn rate (censoring where clipped)"
    return {
        "auc": oracle_aucs(truth, scores[list(ORACLE_KEYS)]),
        "patients": int(len(truth)),
        "malignant": int(truth["label"].sum()),
        "note": (
            "Bayes posterior of the synthetic generator given what each information set sees, everything else summed out "
            "under the generator's own distributions: the ceiling no model with those inputs can beat on average. "
            "scansK = volumes (hence diameters), days between them, texture and spiculation at the latest K rounds (the T0 "
            "size only if T0 is among them); clinical = demographics, history and screening result (race, cigsmok, gender, "
            "age, pack_years, family_history, scr_res0, scr_iso0); reads = emphysema, upper_lobe, nodule_count, nodule_type, "
            "spiculated; 'everything' = all rounds + clinical + reads. Not NLST results."
        ),
        "method": method,
    }


def write_oracle(folder: str | Path, report: dict) -> Path:
    """Write ``oracle.json`` into a cohort folder, atomically."""
    path = Path(folder) / "oracle.json"
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    return path


def synth_config_from_json(stored: dict[str, Any]) -> SynthConfig:
    """The :class:`~mstnet.synth.config.SynthConfig` recorded in a cohort's ``cohort.json`` (its ``"config"``)."""
    from mstnet.synth.config import SynthConfig, with_overrides

    flat: dict[str, Any] = {}
    for key, value in stored.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return with_overrides(SynthConfig(), flat)
