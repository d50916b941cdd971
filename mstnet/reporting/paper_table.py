"""The paper-style results table and the reference table: what each cell measures.

Statistics (``shared/design/protocol.md``, "Aggregation and statistics"):

- cell value (the primary number, bold when best): the pooled statistic, i.e. the metric of
  all out-of-fold test patients together (classification, each at its fold's threshold) or
  the mean over all test scans (segmentation); the 95% CI printed with it is the bootstrap
  interval of that same statistic, so the bold, the interval and the pooled ROC curves agree;
- secondary: mean +/- sample std (ddof=1) over folds of the fold values in ``metrics.json``
  (:func:`mstnet.metrics.mean_std`), over the folds where the metric is defined, saying
  "(k of n folds)" when some are not (precision with no positive prediction is undefined,
  NaN, never 0);
- 95% CI, classification: percentile bootstrap over patients of the pooled out-of-fold
  predictions, each at its fold's threshold (``metrics.json``: 0.5, or the inner-validation
  threshold when the results were loaded with ``threshold_rule="validation"``) and with the
  recorded averaging; the resamples are
  drawn exactly as :func:`mstnet.metrics.bootstrap_ci` draws them (``default_rng(seed)``,
  one ``integers(0, N, (R, N))`` call), and every metric of a resample is computed from its
  confusion counts and ranks at once (:func:`mstnet.metrics.classification_metric_samples`, tested to equal
  :func:`mstnet.metrics.classification_metrics` per resample), because calling the
  scikit-learn metrics R times per metric and method takes minutes;
- 95% CI, segmentation: :func:`mstnet.metrics.bootstrap_mean_ci` of the per-scan values
  with scans grouped by patient;
- paired comparison with the reference method on the patients (and time points) both have:
  DeLong for AUC (:func:`mstnet.metrics.delong_test`), Wilcoxon signed-rank on per-patient
  mean Dice (each patient's scans averaged first, then paired by patient;
  :func:`mstnet.metrics.wilcoxon_per_patient`);
- ablation differences (variant minus reference) with a paired bootstrap over patients, and
  paired p-values: DeLong (AUC), exact McNemar (accuracy), paired bootstrap (F1), Wilcoxon
  on per-patient mean Dice.

Training seeds (``--seeds N``; :mod:`mstnet.reporting.results` reads every replicate): a row
trained with several seeds shows, as its cell value, the mean over seeds of each seed's pooled
statistic, with the sample std (ddof=1) between the seeds' pooled values ("± sd over n seeds");
its interval is the percentile bootstrap of that mean, each resample's patients drawn once and
scored in every seed (for the segmentation means this equals the bootstrap of each scan's mean
over seeds). The fold mean ± std is over the folds' values averaged over seeds, and the paired
tests and ablation differences use each patient's mean probability and each scan's mean Dice over
seeds (thresholds: the mean over seeds of each fold's threshold). With one seed nothing changes.

The statistics themselves are :mod:`mstnet.metrics.statistics`; the ablation table is
:mod:`mstnet.reporting.ablation_table`, the renderings :mod:`mstnet.reporting.paper_formats`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mstnet.metrics import (bootstrap_mean_ci, classification_metric_samples, delong_test, mean_std, patient_draws,
                            percentile_interval, seed_statistics, wilcoxon_per_patient)
from mstnet.reporting.published import ROW_ORDER, published_rows
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import (COLUMNS, classification_average, method_name, paired_predictions,
                                         paired_scans, patient_thresholds, pooled_predictions, test_scans)
from mstnet.reporting.table_notes import table_notes

log = logging.getLogger(__name__)


PAIRED_TESTS = {"auc": "auc_p_delong", "dice": "dice_p_wilcoxon"}
"""Column -> CSV column of the p-value of its paired comparison with the reference."""
ROW_MARKS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ResultsTable:
    """A measured results table and everything its renderings need.

    Attributes:
        title: caption.
        frame: one row per method: ``experiment``, ``method``, ``group``, ``mark`` (footnote
            letter or ""), ``is_reference``, ``n_folds``, ``n_patients``, ``n_scans``; per metric
            ``<key>_pooled`` (the pooled statistic: all out-of-fold patients / scans together),
            ``<key>_ci_low``, ``<key>_ci_high`` (its bootstrap interval), ``<key>_best`` (best
            ``<key>_pooled`` of the column), ``<key>_mean``, ``<key>_std`` (over the folds where
            the metric is defined) and ``<key>_folds`` (how many those are); ``auc_p_delong``
            and ``dice_p_wilcoxon`` (per-patient mean Dice; NaN for the reference and where
            untested); ``n_seeds`` (training seeds of the row) and ``<key>_seed_sd`` (the std between
            the seeds' pooled values; NaN with one seed), ``<key>_pooled`` being then the mean over
            seeds of the seeds' pooled values.
        notes: footnote lines.
        oracle_auc: the oracle ceiling AUC ("everything"), or None.
        published: published row name -> {metric: value in percent / paper unit or None}, when
            shown beside the measured rows.
        reference: name of the reference experiment.
    """

    title: str
    frame: pd.DataFrame
    notes: tuple[str, ...] = ()
    oracle_auc: float | None = None
    published: dict[str, dict[str, float | None]] | None = None
    reference: str = "mstnet"


def _seed_classification(results: Results, experiment: str, pooled: pd.DataFrame, draws: np.ndarray,
                         average: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """(point, samples, seed sd) of every classification metric over the seeds of ``experiment``: each seed's
    pooled metric on the patients of ``pooled`` (in its order) and on each resample of ``draws``, at that seed's
    fold thresholds; point and samples are the means over seeds, sd the std between the seeds' pooled values."""
    predictions, fold_metrics = results.seed_predictions, results.seed_fold_metrics
    labels = pooled["label"].to_numpy()
    draws = np.concatenate([np.arange(len(pooled))[None, :], draws])  # row 0: the pooled statistic itself
    per_seed: dict[str, list[np.ndarray]] = {}
    for seed_index in results.seeds(experiment):
        frame = predictions[(predictions["experiment"] == experiment) & (predictions["seed"] == seed_index)]
        frame = frame.set_index("patient_id").loc[pooled["patient_id"]]
        folds = fold_metrics[(fold_metrics["experiment"] == experiment) & (fold_metrics["seed"] == seed_index)]
        threshold_of = dict(zip(folds["fold"].astype(int), folds["threshold"].astype(float)))
        thresholds = frame["fold"].astype(int).map(threshold_of).to_numpy(np.float64)
        for key, values in classification_metric_samples(labels, frame["probability"].to_numpy(), draws, thresholds,
                                                         average).items():
            per_seed.setdefault(key, []).append(values)
    points, samples, spreads = {}, {}, {}
    for key, values in per_seed.items():
        mean, spreads[key] = seed_statistics(np.stack(values))
        points[key], samples[key] = mean[:1], mean[1:]
    return points, samples, spreads


def _seed_scan_means(results: Results, experiment: str, key: str) -> np.ndarray:
    """Each seed's mean of ``key`` over its test scans, (S, 1) in the order of :meth:`Results.seeds`."""
    frame = results.seed_segmentation[results.seed_segmentation["experiment"] == experiment]
    return np.array([[np.mean(frame.loc[frame["seed"] == s, key].to_numpy(float))] for s in results.seeds(experiment)])


def measure_row(results: Results, experiment: str, reference: str | None, n_resamples: int, seed: int,
                confidence: float = 0.95) -> dict:
    """One table row: pooled statistics and their bootstrap CIs, per-fold mean/std, paired p-values against
    ``reference``; with several training seeds the pooled statistics are means over seeds and
    ``<key>_seed_sd`` their spread (see the module docstring)."""
    folds = results.fold_metrics[results.fold_metrics["experiment"] == experiment]
    n_seeds = len(results.seeds(experiment))
    row: dict = {"experiment": experiment, "n_folds": len(folds), "n_patients": 0, "n_scans": 0, "n_seeds": n_seeds}
    for column in COLUMNS:
        row.update({f"{column.key}_{part}": math.nan for part in ("pooled", "ci_low", "ci_high", "mean", "std")})
        row[f"{column.key}_folds"] = 0
        row[f"{column.key}_seed_sd"] = math.nan
    if results.has_task(experiment, "classification"):
        pooled = pooled_predictions(results, experiment)
        row["n_patients"] = len(pooled)
        draws = patient_draws(len(pooled), n_resamples, seed)
        average = classification_average(results, experiment)
        if n_seeds > 1:
            point, samples, spreads = _seed_classification(results, experiment, pooled, draws, average)
        else:
            arguments = (pooled["label"].to_numpy(), pooled["probability"].to_numpy())
            setting = (patient_thresholds(results, experiment, pooled["fold"]), average)
            point = classification_metric_samples(*arguments, np.arange(len(pooled))[None, :], *setting)
            samples = classification_metric_samples(*arguments, draws, *setting)
            spreads = {}
        for column in COLUMNS:
            if column.task == "classification":
                row[f"{column.key}_pooled"] = float(point[column.key][0])
                row[f"{column.key}_seed_sd"] = spreads.get(column.key, math.nan)
                row[f"{column.key}_ci_low"], row[f"{column.key}_ci_high"] = percentile_interval(samples[column.key], confidence)
                _fold_summary(row, column.key, folds[column.key].to_numpy(float))
    if results.has_task(experiment, "segmentation"):
        scans = test_scans(results, experiment)
        row["n_scans"] = len(scans)
        for column in COLUMNS:
            if column.task == "segmentation":
                _fold_summary(row, column.key, folds[column.key].to_numpy(float))
                if len(scans) and n_seeds > 1:
                    means, row[f"{column.key}_seed_sd"] = seed_statistics(_seed_scan_means(results, experiment,
                                                                                            column.key))
                    row[f"{column.key}_pooled"] = float(means[0])
                elif len(scans):
                    row[f"{column.key}_pooled"] = float(np.mean(scans[column.key].to_numpy(float)))
                if len(scans):
                    row[f"{column.key}_ci_low"], row[f"{column.key}_ci_high"] = bootstrap_mean_ci(
                        scans[column.key].to_numpy(float), groups=scans["patient_id"].to_numpy(),
                        n_resamples=n_resamples, seed=seed, confidence=confidence)
    row["auc_p_delong"] = row["dice_p_wilcoxon"] = math.nan
    if reference is not None and experiment != reference and reference in results.experiments.index:
        if results.has_task(experiment, "classification") and results.has_task(reference, "classification"):
            paired = paired_predictions(results, reference, experiment)
            if len(paired) >= 2:
                row["auc_p_delong"] = delong_test(paired["label"], paired["probability_reference"],
                                                  paired["probability_other"])["p_value"]
        if results.has_task(experiment, "segmentation") and results.has_task(reference, "segmentation"):
            paired = paired_scans(results, reference, experiment)
            if len(paired) >= 2:
                row["dice_p_wilcoxon"] = wilcoxon_per_patient(paired["dice_reference"], paired["dice_other"],
                                                              paired["patient_id"])
    return row


def _fold_summary(row: dict, key: str, values: np.ndarray) -> None:
    """``<key>_mean``, ``<key>_std`` over the folds where the metric is defined, and ``<key>_folds`` (their number)."""
    row[f"{key}_folds"] = int(np.isfinite(values).sum())
    if row[f"{key}_folds"] < values.size:
        log.info("%s: %s is undefined in %d of %d folds; the fold mean is over the other %d", row["experiment"], key,
                 values.size - row[f"{key}_folds"], values.size, row[f"{key}_folds"])
    row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values[np.isfinite(values)]) if row[f"{key}_folds"] else (
        math.nan, math.nan)


def _mark_best(frame: pd.DataFrame) -> None:
    """``<key>_best``: the best pooled value of each column (the statistic whose interval is printed)."""
    for column in COLUMNS:
        pooled = frame[f"{column.key}_pooled"].astype(float)
        finite = pooled[np.isfinite(pooled)]
        best = finite.max() if column.higher_is_better else finite.min()
        frame[f"{column.key}_best"] = np.isfinite(pooled) & np.isclose(pooled, best) if len(finite) else False


def _paper_order(results: Results, names: list[str]) -> list[str]:
    def key(name: str) -> tuple[int, int]:
        row = results.experiments.at[name, "table_row"]
        return (ROW_ORDER.index(row), 0) if row in ROW_ORDER else (len(ROW_ORDER), names.index(name))

    return sorted(names, key=key)


def build_results_table(results: Results, names: Sequence[str], title: str, reference: str = "mstnet",
                        n_resamples: int = 1000, seed: int = 0, with_published: bool = False,
                        with_oracle: bool = True, confidence: float = 0.95) -> ResultsTable:
    """Measure ``names`` (experiment names) into a :class:`ResultsTable` (see the module docstring)."""
    names = list(names)
    if reference not in results.experiments.index:
        log.warning("reference experiment %r is not in the results; no paired comparisons", reference)
    rows = [measure_row(results, name, reference if reference in results.experiments.index else None,
                        n_resamples, seed, confidence) for name in names]
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["experiment"])
    marks: dict[str, str] = {}
    for name in names:
        if results.experiments.at[name, "footnote"]:
            marks[name] = ROW_MARKS[len(marks) % len(ROW_MARKS)]
    frame.insert(1, "method", [method_name(results, n) for n in names])
    frame.insert(2, "group", [results.experiments.at[n, "group"] for n in names])
    frame.insert(3, "mark", [marks.get(n, "") for n in names])
    frame.insert(4, "is_reference", [n == reference for n in names])
    frame["information"] = [results.experiments.at[n, "information"] for n in names]
    frame["ceiling_auc"] = [float(results.oracle.get(info, math.nan)) if results.has_task(n, "classification") else math.nan
                            for n, info in zip(names, frame["information"])]
    _mark_best(frame)
    oracle_auc = results.oracle.get("everything") if with_oracle else None
    published = published_rows(results.published) if with_published else None
    notes = table_notes(results, names, reference, n_resamples, seed, marks, with_published, oracle_auc is not None)
    return ResultsTable(title, frame, notes, oracle_auc, published, reference)


def paper_table(results: Results, reference: str = "mstnet", n_resamples: int = 1000, seed: int = 0,
                with_published: bool = False) -> ResultsTable | None:
    """Table 1: every experiment with a ``table_row``, in the paper's row order; None when there is none."""
    names = [n for n in results.experiments.index if results.experiments.at[n, "table_row"]]
    if not names and not with_published:
        return None
    return build_results_table(results, _paper_order(results, names), "Segmentation and malignancy prediction "
                               "(Table 1 rows)", reference, n_resamples, seed, with_published)


def reference_table(results: Results, reference: str = "mstnet", n_resamples: int = 1000,
                    seed: int = 0) -> ResultsTable | None:
    """The reference rows: experiments outside Table 1 and the ablations; None when there is none."""
    names = [n for n in results.experiments.index
             if not results.experiments.at[n, "table_row"] and results.experiments.at[n, "group"] != "ablation"]
    if not names:
        return None
    if reference in results.experiments.index and reference not in names:
        names = [reference, *names]
    return build_results_table(results, names, "Reference methods", reference, n_resamples, seed, with_oracle=False)
