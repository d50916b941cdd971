"""The oracle: the Bayes posterior of malignancy given the generator's own truth, and its AUC ceilings.

The generator draws y ~ Bernoulli(sigmoid(Brock logit + offset)) and then a growth rate r from
p(r | y, texture) (:class:`mstnet.synth.risk.GrowthModel`). Knowing the clinical record, the
nodule at T0 and the true volumes (hence r), the posterior log-odds are exactly

    Brock logit + offset + log p(r | malignant, texture) - log p(r | benign, texture),

the ceiling no model can beat on average. AUCs for information subsets (keys of
:data:`ORACLE_KEYS`):

- ``everything``: the posterior above (clinical + every time point).
- ``clinical_only``: the Brock clinical terms alone (age, sex, family history, emphysema,
  upper lobe, nodule count). The Bayes posterior given only these is a monotone function of
  their sum, so its AUC is this ranking's AUC.
- ``single_timepoint``: the static Brock risk with the size observed at the latest scan
  (all Brock terms, no growth).
- ``imaging_only``: size, type and spiculation at T0 plus growth, no clinical record: the
  Bayes posterior with the clinical terms marginalised over the cohort's clinical records.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logsumexp
from sklearn.metrics import roc_auc_score

from mstnet.atomic import write_text_atomic
from mstnet.synth.risk import CLINICAL_TERMS, IMAGING_TERMS, GrowthModel, brock_logit, brock_terms

ORACLE_KEYS: tuple[str, ...] = ("everything", "clinical_only", "single_timepoint", "imaging_only")


def _terms(truth: pd.DataFrame, diameter_column: str, include_spiculation: bool) -> dict[str, np.ndarray]:
    return brock_terms(
        age=truth["age"], female=truth["female"], family_history=truth["family_history"], emphysema=truth["emphysema"],
        upper_lobe=truth["upper_lobe"], nodule_count=truth["nodule_count"], diameter_mm=truth[diameter_column],
        texture=truth["texture"].to_numpy(), spiculated=truth["spiculated"], include_spiculation=include_spiculation,
    )


def oracle_scores(truth: pd.DataFrame, growth: GrowthModel, include_spiculation: bool = True,
                  max_marginal_samples: int = 2000) -> pd.DataFrame:
    """Posterior probability of malignancy per patient under each information subset.

    Args:
        truth: one row per patient with the generator's truth columns (age, female,
            family_history, emphysema, upper_lobe, nodule_count, diameter_T0_mm, the latest
            ``diameter_T{k}_mm``, texture, spiculated, growth_rate_per_day, logit_offset).
        growth: the generator's growth model (its densities give the likelihood ratio).
        include_spiculation: whether the generator's logit had the spiculation term.
        max_marginal_samples: clinical records used to marginalise the clinical terms out.

    Returns:
        DataFrame indexed like ``truth`` with one probability column per key of :data:`ORACLE_KEYS`.
    """
    offset = float(truth["logit_offset"].iloc[0])
    latest = max((c for c in truth.columns if c.startswith("diameter_T") and c.endswith("_mm")), key=lambda c: int(c[10:-3]))
    terms0 = _terms(truth, "diameter_T0_mm", include_spiculation)
    intercept = brock_logit({}, ())
    clinical = np.asarray(brock_logit(terms0, CLINICAL_TERMS) - intercept, dtype=float)
    imaging = np.asarray(brock_logit(terms0, IMAGING_TERMS), dtype=float)
    log_ratio = growth.log_likelihood_ratio(truth["growth_rate_per_day"].to_numpy(), truth["texture"].to_numpy())
    everything = expit(clinical + imaging + offset + log_ratio)
    single = expit(np.asarray(brock_logit(_terms(truth, latest, include_spiculation)), dtype=float) + offset)
    clinical_only = expit(clinical + intercept + offset)
    # marginalise the clinical terms over the cohort's own records: p(y=1 | imaging)
    sample = clinical[:max_marginal_samples]
    prior_logits = (imaging + offset)[:, None] + sample[None, :]
    log_p1 = logsumexp(-np.logaddexp(0, -prior_logits), axis=1)  # log mean sigmoid (up to log n)
    log_p0 = logsumexp(-np.logaddexp(0, prior_logits), axis=1)
    imaging_only = expit(log_p1 - log_p0 + log_ratio)
    return pd.DataFrame(
        {"everything": everything, "clinical_only": clinical_only, "single_timepoint": single, "imaging_only": imaging_only},
        index=truth.index,
    )


def oracle_aucs(truth: pd.DataFrame, scores: pd.DataFrame) -> dict[str, float | None]:
    """ROC AUC (scikit-learn) of each oracle score against the labels; None when only one class is present."""
    labels = truth["label"].to_numpy()
    if len(np.unique(labels)) < 2:
        return {key: None for key in ORACLE_KEYS}
    return {key: float(roc_auc_score(labels, scores[key])) for key in ORACLE_KEYS}


def oracle_report(truth: pd.DataFrame, growth: GrowthModel, include_spiculation: bool = True) -> dict:
    """The ``oracle.json`` content: AUCs per information subset, the cohort's size and a note."""
    scores = oracle_scores(truth, growth, include_spiculation)
    return {
        "auc": oracle_aucs(truth, scores),
        "patients": int(len(truth)),
        "malignant": int(truth["label"].sum()),
        "note": (
            "Bayes posterior of the synthetic generator given its own truth: the ceiling no model can beat on "
            "average on this cohort. 'everything' = clinical + all time points; 'clinical_only' = Brock clinical "
            "terms; 'single_timepoint' = Brock risk with the latest size, no growth; 'imaging_only' = size, type, "
            "spiculation and growth with the clinical terms marginalised out. Not NLST results."
        ),
    }


def write_oracle(folder: str | Path, report: dict) -> Path:
    """Write ``oracle.json`` into a cohort folder, atomically."""
    path = Path(folder) / "oracle.json"
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    return path
