"""The claims table: does each claim of the paper hold where its signal is known to be present?

One row per claim of :data:`mstnet.claims.CLAIMS` and metric (AUC; Dice where the claim is about
segmentation), on the patients both experiments predicted (Dice: the scans both segmented):

- the ceiling gap: the AUC of the better experiment's information set minus the worse one's,
  both from the oracle posteriors of those very patients (``oracle_posteriors.csv``), with a
  paired bootstrap interval and DeLong's p; its verdict by :func:`mstnet.metrics.claims.claim_verdict`;
- the measured gap: better minus worse, with a paired bootstrap interval and the paired p
  (DeLong on AUC, Wilcoxon signed-rank on per-patient mean Dice), and its verdict by the same rule;
- whether the two verdicts agree. Dice has no ceiling (the oracle knows outcomes, not masks),
  so its rows have no ceiling verdict.

Where the paper's design makes a comparison vacuous, or both experiments see the same
information, the row says so. The ranking check is Kendall's tau between every claim
experiment's measured AUC and its ceiling (:func:`ranking`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mstnet.claims import CLAIMS, Claim
from mstnet.metrics import (bootstrap_mean_ci, classification_metric_samples, delong_test, patient_draws, roc_auc,
                            percentile_interval, wilcoxon_per_patient)
from mstnet.metrics.claims import NOT_TESTABLE, SIGNIFICANCE, SUPPORTED, claim_verdict
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import paired_predictions, paired_scans, pooled_predictions
from mstnet.reporting.table_notes import training_notes
from mstnet.results_files import ORACLE_POSTERIORS_FILE

log = logging.getLogger(__name__)

NO_CEILING = "no ceiling"
"""Ceiling verdict of a Dice row: the oracle bounds AUC only."""

CLAIM_COLUMNS: tuple[str, ...] = (
    "claim", "comparison", "lacks", "metric", "n", "better_information", "worse_information",
    "ceiling_better", "ceiling_worse", "ceiling_gap", "ceiling_ci_low", "ceiling_ci_high", "ceiling_p", "ceiling_verdict",
    "measured_better", "measured_worse", "measured_gap", "measured_ci_low", "measured_ci_high", "measured_p",
    "verdict", "agreement", "note")
"""Columns of :attr:`ClaimsTable.frame` (gaps better - worse, as fractions; ``n`` patients or scans)."""


@dataclass(frozen=True)
class ClaimsTable:
    """The claims table with its ranking check.

    Attributes:
        frame: one row per claim and metric, columns :data:`CLAIM_COLUMNS`.
        ranking: one row per claim experiment with AUC: ``experiment``, ``information``,
            ``ceiling`` (oracle AUC of its set on the patients it predicted), ``auc`` (measured).
        kendall_tau: Kendall's tau-b between ``auc`` and ``ceiling`` over ``ranking`` (NaN with
            fewer than three experiments).
        kendall_p: its two-sided p-value.
        notes: footnote lines.
    """

    frame: pd.DataFrame
    ranking: pd.DataFrame
    kendall_tau: float
    kendall_p: float
    notes: tuple[str, ...] = ()


def read_oracle_posteriors(results: Results) -> pd.DataFrame | None:
    """Per-patient oracle posteriors of the RUNS_DIRs (``patient_id``, ``label``, ``oracle_<key>``); None where absent."""
    frames = [pd.read_csv(folder / ORACLE_POSTERIORS_FILE, dtype={"patient_id": str})
              for folder in map(Path, results.runs_dirs) if (folder / ORACLE_POSTERIORS_FILE).exists()]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates("patient_id")


def _empty_row(claim: Claim, metric: str) -> dict:
    row = {column: math.nan for column in CLAIM_COLUMNS}
    row.update(claim=claim.name, comparison=claim.comparison, lacks=claim.lacks, metric=metric,
               better_information=claim.ceiling[0], worse_information=claim.ceiling[1], n=0,
               ceiling_verdict=NOT_TESTABLE, verdict=NOT_TESTABLE, agreement="n/a", note=claim.vacuous.get(metric, ""))
    return row


def _paired_auc_gap(labels: np.ndarray, better: np.ndarray, worse: np.ndarray, draws: np.ndarray,
                    confidence: float) -> tuple[float, float, float, float, float, float]:
    """(AUC better, AUC worse, gap, interval low, interval high, DeLong p) on the same patients."""
    test = delong_test(labels, better, worse)
    samples = (classification_metric_samples(labels, better, draws)["auc"]
               - classification_metric_samples(labels, worse, draws)["auc"])
    low, high = percentile_interval(samples, confidence)
    return test["auc_a"], test["auc_b"], test["auc_a"] - test["auc_b"], low, high, test["p_value"]


def _auc_row(results: Results, claim: Claim, posteriors: pd.DataFrame | None, n_resamples: int, seed: int,
             confidence: float) -> dict:
    row = _empty_row(claim, "auc")
    paired = paired_predictions(results, claim.better, claim.worse)
    if len(paired) < 2 or paired["label"].nunique() < 2:
        return row
    labels = paired["label"].to_numpy(int)
    draws = patient_draws(len(paired), n_resamples, seed)
    measured = _paired_auc_gap(labels, paired["probability_reference"].to_numpy(float),
                               paired["probability_other"].to_numpy(float), draws, confidence)
    row.update(n=len(paired), **dict(zip(("measured_better", "measured_worse", "measured_gap", "measured_ci_low",
                                          "measured_ci_high", "measured_p"), measured)))
    row["verdict"] = claim_verdict(row["measured_gap"], row["measured_p"])
    columns = [f"oracle_{key}" for key in claim.ceiling]
    if posteriors is None or not set(columns) <= set(posteriors.columns):
        row["note"] = row["note"] or "no oracle posteriors for these information sets (not a synthetic cohort)"
        return row
    ceiling = paired[["patient_id"]].merge(posteriors, on="patient_id", how="left")
    if ceiling[columns].isna().any().any():
        missing = ceiling.loc[ceiling[columns].isna().any(axis=1), "patient_id"].iloc[0]
        raise ValueError(f"patient {missing!r} has no oracle posterior in {ORACLE_POSTERIORS_FILE}")
    if claim.ceiling[0] == claim.ceiling[1]:
        auc = roc_auc(labels, ceiling[columns[0]])
        row.update(ceiling_better=auc, ceiling_worse=auc, ceiling_gap=0.0, ceiling_ci_low=0.0, ceiling_ci_high=0.0,
                   ceiling_p=1.0, note=row["note"] or "same information set: the ceilings are equal by construction; "
                                                       "a gap reflects the processing, not the information")
    else:
        ceilings = _paired_auc_gap(labels, ceiling[columns[0]].to_numpy(float), ceiling[columns[1]].to_numpy(float),
                                   draws, confidence)
        row.update(dict(zip(("ceiling_better", "ceiling_worse", "ceiling_gap", "ceiling_ci_low", "ceiling_ci_high",
                             "ceiling_p"), ceilings)))
    row["ceiling_verdict"] = claim_verdict(row["ceiling_gap"], row["ceiling_p"])
    if row["ceiling_verdict"] != SUPPORTED and not row["note"]:
        row["note"] = (f"the ceilings show no detectable gap on these {len(paired)} patients: this cohort cannot "
                       "test the claim; a measured gap could only be noise or a model's shortfall")
    row["agreement"] = "yes" if row["ceiling_verdict"] == row["verdict"] else "no"
    return row


def _dice_row(results: Results, claim: Claim, n_resamples: int, seed: int, confidence: float) -> dict:
    row = _empty_row(claim, "dice")
    row["ceiling_verdict"] = NO_CEILING
    paired = paired_scans(results, claim.better, claim.worse)
    if paired.empty:
        return row
    differences = (paired["dice_reference"] - paired["dice_other"]).to_numpy(float)
    low, high = bootstrap_mean_ci(differences, groups=paired["patient_id"].to_numpy(), n_resamples=n_resamples,
                                  seed=seed, confidence=confidence)
    row.update(n=len(paired), measured_better=float(paired["dice_reference"].mean()),
               measured_worse=float(paired["dice_other"].mean()), measured_gap=float(differences.mean()),
               measured_ci_low=low, measured_ci_high=high,
               measured_p=wilcoxon_per_patient(paired["dice_reference"], paired["dice_other"], paired["patient_id"]))
    row["verdict"] = claim_verdict(row["measured_gap"], row["measured_p"])
    return row


def ranking(results: Results, posteriors: pd.DataFrame | None, experiments: list[str]) -> pd.DataFrame:
    """Each experiment's measured AUC beside the oracle AUC of its information set on the patients it predicted."""
    rows = []
    for name in experiments:
        if not results.has_task(name, "classification"):
            continue
        predicted = pooled_predictions(results, name)
        information = str(results.experiments.at[name, "information"])
        column = f"oracle_{information}"
        ceiling = math.nan
        if posteriors is not None and column in posteriors:
            merged = predicted[["patient_id", "label"]].merge(posteriors[["patient_id", column]], on="patient_id")
            ceiling = roc_auc(merged["label"], merged[column])
        auc = roc_auc(predicted["label"], predicted["probability"])
        rows.append({"experiment": name, "information": information, "ceiling": ceiling, "auc": auc})
    return pd.DataFrame(rows, columns=["experiment", "information", "ceiling", "auc"])


def claims_table(results: Results, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> ClaimsTable | None:
    """Every claim whose two experiments are in ``results``; None when no claim can be tested."""
    present = set(results.experiments.index)
    claims = [claim for claim in CLAIMS if {claim.better, claim.worse} <= present]
    if not claims:
        return None
    posteriors = read_oracle_posteriors(results)
    rows = []
    for claim in claims:
        for metric in claim.metrics:
            tasks = "classification" if metric == "auc" else "segmentation"
            if not (results.has_task(claim.better, tasks) and results.has_task(claim.worse, tasks)):
                continue
            rows.append(_auc_row(results, claim, posteriors, n_resamples, seed, confidence) if metric == "auc"
                        else _dice_row(results, claim, n_resamples, seed, confidence))
    experiments = list(dict.fromkeys(name for claim in claims for name in (claim.better, claim.worse)))
    ranks = ranking(results, posteriors, experiments)
    usable = ranks.dropna()
    tau, p_value = (stats.kendalltau(usable["auc"], usable["ceiling"]) if len(usable) >= 3 else (math.nan, math.nan))
    notes = (
        "Gaps are better minus worse in percentage points, on the patients both experiments predicted (Dice: the scans "
        f"both segmented), with {int(100 * confidence)}% paired bootstrap intervals ({n_resamples} resamples over "
        f"patients, seed {seed}).",
        "Ceiling: the oracle AUC of each experiment's information set (the Bayes posterior of the generator given what "
        "that set sees) on the same patients; its gap is tested with DeLong's paired test like the measured one.",
        f"Verdict: supported = gap > 0 and p < {SIGNIFICANCE}; contradicted = gap < 0 and p < {SIGNIFICANCE}; "
        "otherwise not detected. Paired p: DeLong on AUC; Wilcoxon signed-rank on per-patient mean Dice. Dice has no "
        "ceiling. Agreement: the measured verdict equals the ceilings' verdict.",
        (f"Ranking check: Kendall's tau between measured AUC and ceiling over {len(usable)} experiments = "
         f"{tau:.2f} (p = {p_value:.2g})." if not math.isnan(tau) else
         "Ranking check: fewer than three experiments with both a measured AUC and a ceiling; no Kendall's tau."),
        *training_notes(results, experiments),
    )
    return ClaimsTable(pd.DataFrame(rows, columns=list(CLAIM_COLUMNS)), ranks, float(tau), float(p_value), notes)
