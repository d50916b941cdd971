"""The paper-style results table, the reference table and the ablation table, and their renderings.

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
  confusion counts and ranks at once (:func:`classification_metric_samples`, tested to equal
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

Renderings: CSV (raw numbers: fractions in [0, 1], distances in mm), Markdown, LaTeX
(booktabs) and HTML; fractions are shown as percentages.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mstnet.metrics import bootstrap_mean_ci, delong_test, mean_std, wilcoxon_per_patient
from mstnet.metrics.classification import nan_weighted_average
from mstnet.reporting.published import PUBLISHED_LABEL, PUBLISHED_SOURCE, ROW_ORDER, published_rows
from mstnet.reporting.results import Results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricColumn:
    """One column of the results table.

    Attributes:
        key: metric name in ``metrics.json`` and the CSV files.
        label: column header.
        task: "segmentation" or "classification".
        unit: "%" (a fraction shown as percent) or "mm".
        higher_is_better: direction used to mark the best value.
    """

    key: str
    label: str
    task: str
    unit: str
    higher_is_better: bool = True

    def scale(self) -> float:
        return 100.0 if self.unit == "%" else 1.0


COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("dice", "Dice", "segmentation", "%"),
    MetricColumn("jaccard", "Jaccard", "segmentation", "%"),
    MetricColumn("hd95", "HD95", "segmentation", "mm", higher_is_better=False),
    MetricColumn("asd", "ASD", "segmentation", "mm", higher_is_better=False),
    MetricColumn("accuracy", "Acc", "classification", "%"),
    MetricColumn("precision", "Pre", "classification", "%"),
    MetricColumn("recall", "Rec", "classification", "%"),
    MetricColumn("specificity", "Spec", "classification", "%"),
    MetricColumn("f1", "F1", "classification", "%"),
    MetricColumn("auc", "AUC", "classification", "%"),
)
COLUMN_BY_KEY = {column.key: column for column in COLUMNS}
PAIRED_TESTS = {"auc": "auc_p_delong", "dice": "dice_p_wilcoxon"}
"""Column -> CSV column of the p-value of its paired comparison with the reference."""
ABLATION_METRICS: tuple[str, ...] = ("auc", "accuracy", "f1", "dice")
ABLATION_TESTS = {"auc": "DeLong", "accuracy": "exact McNemar", "f1": "paired bootstrap",
                  "dice": "Wilcoxon signed-rank on per-patient mean Dice"}
MISSING = "-"
ROW_MARKS = "abcdefghijklmnopqrstuvwxyz"
CONVENTION_TEXT = {
    "monai": "MONAI convention: HD95 = max of the two directed 95th percentiles, ASD = mean of the pooled "
             "symmetric surface distances",
    "medpy": "medpy convention: HD95 = 95th percentile of the pooled surface distances, ASD = mean of the two "
             "directed means",
}


def stars(p_value: float) -> str:
    """``"***"`` for p < 0.001, ``"**"`` for p < 0.01, ``"*"`` for p < 0.05, else ``""`` (also for NaN)."""
    if p_value is None or not np.isfinite(p_value):
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def patient_draws(n_patients: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, N) patient indices drawn with replacement, as :func:`mstnet.metrics.bootstrap_ci` draws them."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n_patients, size=(int(n_resamples), n_patients))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with NaN where the denominator is 0 (scikit-learn's ``zero_division=np.nan``)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
                     where=denominator > 0)


def classification_metric_samples(
    labels: np.ndarray, probabilities: np.ndarray, draws: np.ndarray, threshold: float | np.ndarray = 0.5,
    average: str = "binary",
) -> dict[str, np.ndarray]:
    """Every classification metric on every resample at once.

    Args:
        labels: (N,) 0/1 labels of the pooled patients.
        probabilities: (N,) malignancy probabilities.
        draws: (R, N) patient indices of R resamples (:func:`patient_draws`).
        threshold: a patient is malignant when its probability is >= threshold; a scalar, or
            (N,) thresholds, one per patient (each fold's own).
        average: "binary" (malignant class) or "weighted" (support-weighted over both classes),
            as in :func:`mstnet.metrics.classification_metrics`.

    Returns:
        metric name -> (R,) values, the same keys as ``classification_metrics``; undefined
        values are NaN as there (precision with no positive prediction, AUC on a resample
        holding one class, ...).
    """
    y = np.asarray(labels)[draws].astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)[draws]
    threshold = np.asarray(threshold, dtype=np.float64)
    predicted = p >= (threshold[draws] if threshold.ndim == 1 else threshold)
    n = y.shape[1]
    tp = (y & predicted).sum(axis=1)
    fp = (~y & predicted).sum(axis=1)
    tn = (~y & ~predicted).sum(axis=1)
    fn = (y & ~predicted).sum(axis=1)
    recall_1, recall_0 = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision_1, precision_0 = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    f1_1, f1_0 = _ratio(2 * tp, 2 * tp + fp + fn), _ratio(2 * tn, 2 * tn + fn + fp)
    if average == "binary":
        precision, recall, f1, specificity = precision_1, recall_1, f1_1, recall_0
    elif average == "weighted":
        weights = np.stack([tn + fp, tp + fn], axis=-1)  # support of class 0, class 1

        def weighted(value_0: np.ndarray, value_1: np.ndarray) -> np.ndarray:
            return nan_weighted_average(np.stack([value_0, value_1], axis=-1), weights)

        precision, recall, f1 = weighted(precision_0, precision_1), weighted(recall_0, recall_1), weighted(f1_0, f1_1)
        specificity = weighted(recall_1, recall_0)
    else:
        raise ValueError(f"average: expected 'binary' or 'weighted', got {average!r}")
    positives = y.sum(axis=1)
    negatives = n - positives
    ranks = stats.rankdata(p, method="average", axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2.0) / (positives * negatives)
    auc = np.where((positives > 0) & (negatives > 0), auc, np.nan)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "specificity": specificity,
            "f1": f1, "auc": auc, "brier": ((p - y) ** 2).mean(axis=1)}


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval of the finite bootstrap values; (nan, nan) when none is finite."""
    finite = np.asarray(samples, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


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


def _settings(results: Results, experiments: Sequence[str], column: str) -> list:
    values = results.fold_metrics.loc[results.fold_metrics["experiment"].isin(experiments), column].dropna()
    return sorted(set(values.tolist()), key=str)


def _classification_average(results: Results, experiment: str) -> str:
    averages = sorted(set(results.fold_metrics.loc[results.fold_metrics["experiment"] == experiment, "average"]))
    if len(averages) > 1:
        log.warning("%s: folds use different averages %s; the pooled CI uses the first", experiment, averages)
    return str(averages[0])


def patient_thresholds(results: Results, experiment: str, folds: pd.Series) -> np.ndarray:
    """The classification threshold of each patient's test fold ((N,) for the (N,) ``folds``)."""
    frame = results.fold_metrics[results.fold_metrics["experiment"] == experiment]
    by_fold = dict(zip(frame["fold"].astype(int), frame["threshold"].astype(float)))
    return folds.astype(int).map(by_fold).to_numpy(dtype=np.float64)


def _pooled(results: Results, experiment: str) -> pd.DataFrame:
    frame = results.predictions[results.predictions["experiment"] == experiment]
    duplicated = frame["patient_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"{experiment}: patient {frame.loc[duplicated, 'patient_id'].iloc[0]!r} has predictions in "
                         "two folds; every patient must be tested exactly once")
    return frame


def _scans(results: Results, experiment: str) -> pd.DataFrame:
    return results.segmentation[results.segmentation["experiment"] == experiment]


def _seed_statistics(values: np.ndarray) -> tuple[np.ndarray, float]:
    """For per-seed statistics ``values`` (seeds along axis 0): their mean over the seeds where defined (NaN
    where none is), and the sample std (ddof=1) between the seeds' first entries (the point estimates), NaN
    with fewer than two defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    counts = defined.sum(axis=0)
    mean = np.divide(np.where(defined, values, 0.0).sum(axis=0), counts, out=np.full(values.shape[1:], np.nan),
                     where=counts > 0)
    point = values[:, 0][defined[:, 0]]
    return mean, float(np.std(point, ddof=1)) if point.size > 1 else math.nan


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
        mean, spreads[key] = _seed_statistics(np.stack(values))
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
        pooled = _pooled(results, experiment)
        row["n_patients"] = len(pooled)
        draws = patient_draws(len(pooled), n_resamples, seed)
        average = _classification_average(results, experiment)
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
        scans = _scans(results, experiment)
        row["n_scans"] = len(scans)
        for column in COLUMNS:
            if column.task == "segmentation":
                _fold_summary(row, column.key, folds[column.key].to_numpy(float))
                if len(scans) and n_seeds > 1:
                    means, row[f"{column.key}_seed_sd"] = _seed_statistics(_seed_scan_means(results, experiment,
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


def paired_predictions(results: Results, reference: str, other: str) -> pd.DataFrame:
    """Patients predicted by both: ``patient_id, label, probability_reference, probability_other,
    fold_reference, fold_other``."""
    a = _pooled(results, reference)[["patient_id", "label", "probability", "fold"]]
    b = _pooled(results, other)[["patient_id", "label", "probability", "fold"]]
    merged = a.merge(b, on="patient_id", suffixes=("_reference", "_other"))
    conflict = merged["label_reference"] != merged["label_other"]
    if conflict.any():
        raise ValueError(f"patient {merged.loc[conflict, 'patient_id'].iloc[0]!r} has label "
                         f"{merged.loc[conflict, 'label_reference'].iloc[0]} in {reference!r} but "
                         f"{merged.loc[conflict, 'label_other'].iloc[0]} in {other!r}")
    if len(merged) < max(len(a), len(b)):
        log.warning("%s vs %s: %d of %d/%d patients in common; the paired test uses those", reference, other,
                    len(merged), len(a), len(b))
    return merged.rename(columns={"label_reference": "label"}).drop(columns="label_other").sort_values("patient_id",
                                                                                                       ignore_index=True)


def paired_scans(results: Results, reference: str, other: str) -> pd.DataFrame:
    """Scans segmented by both, matched on patient_id + timepoint: ``..., dice_reference, dice_other``."""
    a = _scans(results, reference)[["patient_id", "timepoint", "dice"]]
    b = _scans(results, other)[["patient_id", "timepoint", "dice"]]
    merged = a.merge(b, on=["patient_id", "timepoint"], suffixes=("_reference", "_other"))
    if len(merged) < max(len(a), len(b)):
        log.warning("%s vs %s: %d of %d/%d scans in common; the paired test uses those", reference, other,
                    len(merged), len(a), len(b))
    return merged.sort_values(["patient_id", "timepoint"], ignore_index=True)


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


def _cohort_note(results: Results) -> str:
    parts = []
    for cohort in results.cohorts:
        if not cohort.get("name"):
            parts.append(f"{cohort.get('runs_dir', '?')} (no cohort.json)")
            continue
        detail = ", ".join(str(x) for x in (cohort.get("note"), f"{cohort['patients']} patients" if "patients" in cohort
                                            else None, f"{cohort['malignant']} malignant" if "malignant" in cohort else None)
                           if x)
        parts.append(f"{cohort['name']} ({detail})" if detail else str(cohort["name"]))
    evaluated = sorted(set(results.fold_metrics["fold"].groupby(results.fold_metrics["experiment"]).size()))
    designed = {c.get("cv_folds") for c in results.cohorts} - {None}
    if len(designed) == 1 and evaluated == [next(iter(designed))]:
        design = f"{evaluated[0]}-fold cross-validation"
    elif len(designed) == 1:
        design = f"{'/'.join(map(str, evaluated))} of the {next(iter(designed))} folds of a cross-validation"
    else:
        design = f"{'/'.join(map(str, evaluated))} cross-validation fold(s) per experiment"
    return f"Measured on {'; '.join(dict.fromkeys(parts))}; {design}, out-of-fold test patients."


def table_notes(results: Results, names: list[str], reference: str, n_resamples: int, seed: int,
                marks: dict[str, str], with_published: bool, oracle_shown: bool) -> tuple[str, ...]:
    """The footnote lines of a results table (cohort, units, CIs, averaging, convention, tests, rows)."""
    classification = [n for n in names if results.has_task(n, "classification")]
    segmentation = [n for n in names if results.has_task(n, "segmentation")]
    notes = [_cohort_note(results), CELL_NOTE.format(n_resamples=n_resamples, seed=seed), BOLD_NOTE]
    if classification:
        averages = _settings(results, classification, "average")
        thresholds = _settings(results, classification, "threshold")
        average_text = " / ".join("binary (malignant class; specificity = benign recall)" if a == "binary" else
                                  "support-weighted over both classes" if a == "weighted" else str(a) for a in averages)
        if results.threshold_rule == "validation":
            threshold_text = (f"at each fold's threshold chosen on its inner validation split (Youden's J; "
                              f"{min(thresholds):.2f} to {max(thresholds):.2f})")
        else:
            threshold_text = f"at a probability threshold of {' / '.join(f'{t:g}' for t in thresholds)}"
        notes.append(f"Precision, recall, specificity and F1 are {average_text}, {threshold_text}; AUC is "
                     f"threshold-free. {UNDEFINED_NOTE}")
    if segmentation:
        conventions = _settings(results, segmentation, "convention")
        notes.append("Surface distances: " + "; ".join(CONVENTION_TEXT.get(c, f"{c} convention") for c in conventions)
                     + "; per scan, in mm, then averaged.")
    if reference in names or reference in results.experiments.index:
        notes.append(f"Paired comparison with {_method_name(results, reference)} on the same patients: DeLong test on "
                     "the pooled AUC; Wilcoxon signed-rank test on per-patient mean Dice (each patient's Dice averaged "
                     "over the scans both methods segmented, then one pair per patient, so a patient's time points "
                     "are not counted as independent pairs); * p < 0.05, ** p < 0.01, *** p < 0.001 (p-values in the "
                     "CSV).")
    replicated = {n: len(results.seeds(n)) for n in names if len(results.seeds(n)) > 1}
    if replicated:
        notes.append(SEEDS_NOTE.format(rows=", ".join(f"{_method_name(results, n)} {k}" for n, k in replicated.items())))
    if oracle_shown:
        notes.append("Oracle ceiling: AUC of the known generating risk given everything (all scans, the clinical "
                     "record and the radiologist's reads).")
    ceilings = {n: results.experiments.at[n, "information"] for n in classification
                if results.experiments.at[n, "information"] in results.oracle}
    if ceilings:
        keys = ", ".join(f"{_method_name(results, n)} {k}" for n, k in ceilings.items())
        notes.append("'ceiling' after an AUC: the Bayes-optimal AUC of the inputs that row sees, on the same patients "
                     f"(oracle.json, the generator's own posterior; information sets: {keys}).")
    if with_published:
        notes.append(f"Rows '{PUBLISHED_LABEL}': {PUBLISHED_SOURCE}; another cohort, shown for reference only.")
    notes += training_notes(results, names)
    for name, mark in marks.items():
        notes.append(f"[{mark}] {_method_name(results, name)}: {results.experiments.at[name, 'footnote']}")
    return tuple(notes)


def training_notes(results: Results, names: list[str]) -> list[str]:
    """Footnotes on training: the recipe each deep row used (run.json ``recipe_summary``, with its
    optimizer steps per fold) and every row whose folds fell short of their plateau."""
    runs = results.runs
    if runs.empty or "recipe_summary" not in runs.columns:
        return []
    recipes, short = [], []
    for name in names:
        rows = runs[runs["experiment"] == name]
        summaries = sorted(set(rows["recipe_summary"].dropna()))
        if not summaries:
            continue
        steps = rows["optimizer_steps"].dropna() if "optimizer_steps" in rows else pd.Series(dtype=float)
        step_text = f", {int(steps.median())} optimizer steps per fold" if len(steps) else ""
        recipes.append(f"{_method_name(results, name)}: {' | '.join(summaries)}{step_text}")
        if "plateau_reached" in rows:
            flagged = rows[rows["plateau_reached"] == False]  # noqa: E712 - a column of booleans and NaN
            if len(flagged):
                gains = "; ".join(f"fold {int(r.fold)}{f' seed {int(r.seed)}' if getattr(r, 'seed', 0) else ''} "
                                  f"{r.short_of_plateau}" for r in flagged.itertuples())
                short.append(f"{_method_name(results, name)} ({len(flagged)} of {len(rows)} folds: {gains})")
    notes = [f"Training recipes: {'; '.join(recipes)}."] if recipes else []
    if short:
        notes.append("Short of the plateau (inner-validation Dice or AUC still gained at least 1 point over the last "
                     f"third of a stage): {'; '.join(short)}. Their numbers measure the training budget as much as "
                     "the method.")
    return notes


CELL_NOTE = ("Cells: the pooled value (all out-of-fold test patients together for Acc, Pre, Rec, Spec, F1 and AUC, "
             "each at its fold's threshold; the mean over all test scans for Dice, Jaccard, HD95 and ASD), then in "
             "brackets the 95% percentile bootstrap CI of that pooled value ({n_resamples} resamples over patients, "
             "a patient's scans drawn together, seed {seed}); after the semicolon, mean ± std over folds, with "
             "'(k of n folds)' when the metric is undefined in the other folds. Percent, except HD95 and ASD in mm. "
             "'-': the method does not do that task.")
"""The footnote saying what each number of a cell is (formatted with ``n_resamples`` and ``seed``)."""
SEEDS_NOTE = ("Trained with several training seeds on the same folds ({rows} seeds): the cell value is the mean over "
              "seeds of each seed's pooled value, '± x sd over n seeds' the sample standard deviation (ddof=1) between "
              "the seeds' pooled values, the bracketed CI the bootstrap of that mean (each resample's patients scored "
              "in every seed), the fold mean ± std over the folds' values averaged over seeds; the paired tests use "
              "each patient's mean probability and each scan's mean Dice over seeds.")
"""The footnote of tables with rows of several training seeds (formatted with ``rows``: "name n, ...")."""
BOLD_NOTE = ("Bold: the best pooled value per column, the statistic whose interval is printed (lower is better for "
             "HD95 and ASD); the ROC figure shows the same pooled AUCs, so both rank the methods alike.")
UNDEFINED_NOTE = ("A ratio with a zero denominator is undefined and left out, not counted as 0: precision with no "
                  "positive prediction, recall with no malignant patient, specificity with no benign one; F1 is "
                  "undefined only with neither a malignant patient nor a positive prediction (with malignant "
                  "patients and no positive prediction it is 0).")


def _method_name(results: Results, experiment: str) -> str:
    row = results.experiments.at[experiment, "table_row"] if experiment in results.experiments.index else None
    return row if isinstance(row, str) and row else experiment


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
    frame.insert(1, "method", [_method_name(results, n) for n in names])
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


# ---------------------------------------------------------------------------------------------
# rendering of results tables


def _cell_parts(row: pd.Series, column: MetricColumn) -> tuple[str, str, str] | None:
    """(pooled value, "[low, high]" of its bootstrap CI, "mean ± std" over folds [+ "(k of n folds)"] [+ "; ± sd
    over n seeds"]); None when the experiment has no value at all for the column (it does not do that task)."""
    key, scale = column.key, column.scale()
    pooled, mean, n_defined = row[f"{key}_pooled"], row[f"{key}_mean"], int(row[f"{key}_folds"])
    if not np.isfinite(pooled) and not np.isfinite(mean):
        if n_defined == 0 and int(row["n_folds"]) > 0 and _does_task(row, column):
            return MISSING, "", f"undefined in all {int(row['n_folds'])} folds"
        return None
    main = f"{scale * pooled:.2f}" if np.isfinite(pooled) else MISSING
    low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    ci = f"[{scale * low:.1f}, {scale * high:.1f}]" if np.isfinite(low) and np.isfinite(high) else ""
    std = row[f"{key}_std"]
    folds = f"{scale * mean:.2f} ± {scale * std:.2f}" if np.isfinite(std) else f"{scale * mean:.2f}"
    if n_defined < int(row["n_folds"]):
        folds += f" ({n_defined} of {int(row['n_folds'])} folds)"
    spread = row.get(f"{key}_seed_sd", math.nan)
    if np.isfinite(spread):
        folds += f"; ± {scale * spread:.2f} sd over {int(row['n_seeds'])} seeds"
    return main, ci, folds


def _does_task(row: pd.Series, column: MetricColumn) -> bool:
    """Whether the row has values for some metric of ``column``'s task (its metric is then undefined, not absent)."""
    return any(np.isfinite(row[f"{c.key}_pooled"]) or np.isfinite(row[f"{c.key}_mean"]) for c in COLUMNS
               if c.task == column.task)


def _row_stars(row: pd.Series, column: MetricColumn) -> str:
    test = PAIRED_TESTS.get(column.key)
    return stars(row[test]) if test and test in row.index else ""


def _published_value(value: float | None) -> str:
    return MISSING if value is None or not np.isfinite(value) else f"{value:.2f}"


@dataclass(frozen=True)
class _DisplayRow:
    """A rendered row: method name, footnote mark, kind and per column (main, ci, folds, stars, bold).

    ``main`` is the pooled value (the one ``bold`` marks), ``ci`` its bootstrap interval and
    ``folds`` the mean ± std over folds; published and oracle rows have only ``main``.
    """

    method: str
    mark: str
    kind: str  # "measured", "published", "oracle"
    cells: tuple[tuple[str, str, str, str, bool], ...] = field(default_factory=tuple)


def _display_rows(table: ResultsTable) -> list[_DisplayRow]:
    measured: dict[str, _DisplayRow] = {}
    order: list[str] = []
    for _, row in table.frame.iterrows():
        cells = []
        for column in COLUMNS:
            parts = _cell_parts(row, column)
            if parts is None:
                cells.append((MISSING, "", "", "", False))
            else:
                if column.key == "auc" and np.isfinite(row.get("ceiling_auc", math.nan)):
                    parts = (*parts[:2], f"{parts[2]}; ceiling {100 * row['ceiling_auc']:.1f}")
                cells.append((*parts, _row_stars(row, column), bool(row[f"{column.key}_best"])))
        measured[row["method"]] = _DisplayRow(row["method"], row["mark"], "measured", tuple(cells))
        order.append(row["method"])
    rows: list[_DisplayRow] = []
    if table.published is not None:
        published_names = list(table.published)
        for name in [*published_names, *[m for m in order if m not in published_names]]:
            if name in measured:
                rows.append(measured[name])
            if name in table.published:
                values = table.published[name]
                rows.append(_DisplayRow(f"{name}, {PUBLISHED_LABEL}", "", "published", tuple(
                    (_published_value(values.get(c.key)), "", "", "", False) for c in COLUMNS)))
    else:
        rows = [measured[name] for name in order]
    if table.oracle_auc is not None:
        rows.append(_DisplayRow("Oracle ceiling (known risk)", "", "oracle", tuple(
            (f"{100 * table.oracle_auc:.2f}", "", "", "", False) if c.key == "auc" else (MISSING, "", "", "", False)
            for c in COLUMNS)))
    return rows


def _header_label(column: MetricColumn) -> str:
    return f"{column.label} ({column.unit})"


def _markdown_stars(star: str) -> str:
    """Significance stars escaped, so they never merge with the ``**`` of bold text."""
    return star.replace("*", "\\*")


def results_table_markdown(table: ResultsTable) -> str:
    """GitHub Markdown: pooled value (bold when best), escaped stars (``\\*``), its CI in brackets, then
    "; mean ± std" over folds; notes below."""
    lines = [f"**{table.title}**", "", "| Method | " + " | ".join(_header_label(c) for c in COLUMNS) + " |",
             "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in _display_rows(table):
        name = f"{row.method} [{row.mark}]" if row.mark else row.method
        if row.kind != "measured":
            name = f"*{name}*"
        cells = []
        for main, ci, folds, star, bold in row.cells:
            text = (f"**{main}**" if bold else main) + _markdown_stars(star)
            text = f"{text} {ci}" if ci else text
            cells.append(f"{text}; {folds}" if folds else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "—": "---", "−": "$-$", "×": r"$\times$",
                  "Δ": r"$\Delta$", "≈": r"$\approx$", "µ": r"$\mu$", "μ": r"$\mu$", "→": r"$\rightarrow$",
                  "<": "$<$", ">": "$>$", "|": "$|$", "’": "'", "‘": "`", "“": "``", "”": "''"}
LATEX_PAIRS = {">=": r"$\geq$", "<=": r"$\leq$", "+/-": r"$\pm$"}
LATEX_WIDTH_GUARD = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
"""Opens a box that keeps a tabular at its natural size, shrunk only if it is wider than the text
(graphicx's ``\width`` is the box's natural width); close it with ``}``."""
LATEX_PREAMBLE = r"% requires \usepackage{booktabs,graphicx}"


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped: ±, ≥ (or ``>=``), ≤, <, > as math, straight
    quotes as LaTeX quotes (``"a"`` -> ````a''``, ``'a'`` -> ```a'``; an apostrophe stays ``'``)."""
    text = str(text)
    out = []
    i = 0
    while i < len(text):
        pair = text[i:i + 3] if text[i:i + 3] in LATEX_PAIRS else text[i:i + 2]
        if pair in LATEX_PAIRS:
            out.append(LATEX_PAIRS[pair])
            i += len(pair)
            continue
        ch = text[i]
        opening = i == 0 or text[i - 1].isspace() or text[i - 1] in "([{/"
        if ch == '"':
            out.append("``" if opening else "''")
        elif ch == "'":
            out.append("`" if opening else "'")
        else:
            out.append(LATEX_SPECIALS.get(ch, ch))
        i += 1
    return "".join(out)


def _latex_stack(first: str, *lines: str) -> str:
    """A cell of several centred lines (a nested tabular, top-aligned with the row's first line); the lines
    after the first in tiny type."""
    rest = [line for line in lines if line]
    if not rest:
        return first
    return (r"\begin{tabular}[t]{@{}c@{}}" + first + "".join(r"\\{\tiny " + line + "}" for line in rest)
            + r"\end{tabular}")


LATEX_TASK_TITLES = {"segmentation": "segmentation", "classification": "malignancy prediction"}
LATEX_NAME_CHARACTERS = 16
"""Method names longer than this are set on two lines, at ", " or before a bracket ("MST-Net," / "published (NLST)")."""


def _latex_method(name: str, mark: str, italic: bool) -> str:
    """The method cell: the escaped name with its footnote mark, on two left-aligned lines when long."""
    lines = [name]
    if len(name) > LATEX_NAME_CHARACTERS:
        if ", " in name:
            head, tail = name.split(", ", 1)
            lines = [head + ",", tail]
        elif " (" in name:
            head, tail = name.rsplit(" (", 1)
            lines = [head, "(" + tail]
    lines = [latex_escape(line) for line in lines]
    lines[0] += f"$^{{{mark}}}$" if mark else ""
    text = lines[0] if len(lines) == 1 else r"\begin{tabular}[t]{@{}l@{}}" + r"\\".join(lines) + r"\end{tabular}"
    return rf"{{\itshape {text}}}" if italic else text


def results_table_latex(table: ResultsTable) -> str:
    """Booktabs tables that fit an article's text width: one ``table`` per task (segmentation columns, then
    classification columns), each row only where it has values. A cell is the pooled value (best bold, stars
    as superscripts), under it in tiny type its 95% CI followed by a semicolon, then the mean ± std over folds,
    as the notes (under the last table) describe; a table still wider than the text is shrunk to fit."""
    rows = _display_rows(table)
    tasks = [task for task in ("segmentation", "classification")
             if any(row.kind != "oracle" and any(cell[0] != MISSING or cell[2]
                                                 for cell, column in zip(row.cells, COLUMNS) if column.task == task)
                    for row in rows)]
    if not tasks:
        tasks = ["segmentation", "classification"]
    notes = " ".join(latex_escape(note) for note in table.notes)
    blocks = [LATEX_PREAMBLE]
    for index, task in enumerate(tasks):
        indices = [i for i, column in enumerate(COLUMNS) if column.task == task]
        header = "Method & " + " & ".join(latex_escape(_header_label(COLUMNS[i])) for i in indices) + r" \\"
        body = []
        previous_kind = "measured"
        for row in rows:
            cells = [row.cells[i] for i in indices]
            if all(main == MISSING and not folds for main, _, folds, _, _ in cells):
                continue
            if row.kind == "oracle" and previous_kind != "oracle":
                body.append(r"\midrule")
            previous_kind = row.kind
            name = _latex_method(row.method, row.mark, italic=row.kind != "measured")
            texts = []
            for main, ci, folds, star, bold in cells:
                text = r"\textbf{" + latex_escape(main) + "}" if bold else latex_escape(main)
                text += f"$^{{{star}}}$" if star else ""
                ci_line = latex_escape(ci) + (";" if ci and folds else "")
                texts.append(_latex_stack(text, ci_line, *(latex_escape(part) for part in folds.split("; "))))
            body.append(name + " & " + " & ".join(texts) + r" \\")
        last = index == len(tasks) - 1
        caption = latex_escape(table.title) + (f": {LATEX_TASK_TITLES[task]}" if len(tasks) > 1 else "")
        footer = (r"\par\smallskip\parbox{\linewidth}{\tiny " + notes + "}" if last else
                  r"\par\smallskip\parbox{\linewidth}{\tiny Cells, statistics and footnotes: see the notes under the "
                  + LATEX_TASK_TITLES[tasks[-1]] + " table.}")
        blocks += [r"\begin{table}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{3pt}",
                   rf"\caption{{{caption}}}", LATEX_WIDTH_GUARD,
                   rf"\begin{{tabular}}{{l{'c' * len(indices)}}}", r"\toprule", header, r"\midrule", *body,
                   r"\bottomrule", r"\end{tabular}}", footer, r"\end{table}"]
    return "\n".join(blocks) + "\n"


def results_table_html(table: ResultsTable) -> str:
    """An HTML ``<table>`` (class ``results``): pooled value, its CI on a second line, the mean ± std over folds
    on a third; the notes below."""
    head = "".join(f"<th>{html.escape(_header_label(c))}</th>" for c in COLUMNS)
    body = []
    for row in _display_rows(table):
        name = html.escape(row.method) + (f"<sup>{row.mark}</sup>" if row.mark else "")
        cells = []
        for main, ci, folds, star, bold in row.cells:
            text = html.escape(main)
            text = f"<strong>{text}</strong>" if bold else text
            text += f"<sup class=\"stars\">{star}</sup>" if star else ""
            text += f"<br><span class=\"ci\">{html.escape(ci)}</span>" if ci else ""
            text += f"<br><span class=\"ci folds\">{html.escape(folds)}</span>" if folds else ""
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr class=\"{row.kind}\"><th scope=\"row\">{name}</th>{''.join(cells)}</tr>")
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in table.notes)
    return (f"<table class=\"results\"><caption>{html.escape(table.title)}</caption>"
            f"<thead><tr><th>Method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ul class=\"notes\">{notes}</ul>")


def results_table_csv(table: ResultsTable) -> str:
    """The measured rows with raw numbers (fractions, mm): pooled values, CIs, fold means, p-values, best flags;
    plus published/oracle rows (their values in ``<key>_mean``, as published). When some row has several
    training seeds, also ``n_seeds`` and ``<key>_seed_sd`` (``<key>_pooled`` is then the mean over seeds)."""
    frame = table.frame.copy()
    if "n_seeds" in frame and (frame["n_seeds"] == 1).all():  # one seed everywhere: the columns of a run without --seeds
        frame = frame.drop(columns=["n_seeds", *[f"{c.key}_seed_sd" for c in COLUMNS]])
    frame.insert(0, "source", "measured")
    extra = []
    if table.published is not None:
        for name, values in table.published.items():
            record = {"source": PUBLISHED_LABEL, "method": name}
            for column in COLUMNS:
                value = values.get(column.key)
                record[f"{column.key}_mean"] = math.nan if value is None else value / column.scale()
            extra.append(record)
    if table.oracle_auc is not None:
        extra.append({"source": "oracle", "method": "Oracle ceiling (known risk)", "auc_pooled": table.oracle_auc,
                      "auc_mean": table.oracle_auc})
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    for count in ("n_folds", "n_patients", "n_scans", "n_seeds"):
        if count in frame:
            frame[count] = frame[count].astype("Int64")
    return frame.to_csv(index=False)


# ---------------------------------------------------------------------------------------------
# the ablation table


@dataclass(frozen=True)
class AblationTable:
    """Ablation variants against the reference.

    Attributes:
        frame: one row per variant: ``experiment``, ``description``, ``information``,
            ``oracle_auc``, ``n_patients``, ``n_scans``; per metric of :data:`ABLATION_METRICS`:
            ``<m>_reference``, ``<m>_variant``, ``<m>_diff`` (variant - reference, pooled, on
            the paired patients/scans), ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_p``; when the
            reference or a variant has several training seeds, ``n_seeds_reference`` and
            ``n_seeds_variant`` (the values then come from per-patient / per-scan means over seeds).
        reference: the reference experiment.
        notes: footnote lines.
    """

    frame: pd.DataFrame
    reference: str
    notes: tuple[str, ...] = ()


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired correct/incorrect outcomes (binomial on discordant pairs)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value of H0: difference = 0, ``min(1, 2 min(P(d <= 0), P(d >= 0)))``."""
    finite = np.asarray(differences, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan
    return float(min(1.0, 2.0 * min((finite <= 0).mean(), (finite >= 0).mean())))


def ablation_row(results: Results, reference: str, variant: str, n_resamples: int, seed: int,
                 confidence: float = 0.95) -> dict:
    """Paired differences variant - reference for AUC, accuracy, F1 (patients) and Dice (scans)."""
    meta = results.experiments.loc[variant]
    row: dict = {"experiment": variant, "description": meta["description"], "information": meta["information"],
                 "oracle_auc": results.oracle.get(meta["information"], math.nan), "n_patients": 0, "n_scans": 0}
    for metric in ABLATION_METRICS:
        row.update({f"{metric}_{part}": math.nan for part in ("reference", "variant", "diff", "ci_low", "ci_high", "p")})
    if results.has_task(variant, "classification") and results.has_task(reference, "classification"):
        paired = paired_predictions(results, reference, variant)
        average = _classification_average(results, reference)
        threshold_ref = patient_thresholds(results, reference, paired["fold_reference"])
        threshold_var = patient_thresholds(results, variant, paired["fold_other"])
        labels = paired["label"].to_numpy()
        reference_prob, variant_prob = paired["probability_reference"].to_numpy(), paired["probability_other"].to_numpy()
        identity = np.arange(len(paired))[None, :]
        draws = patient_draws(len(paired), n_resamples, seed)
        point_ref = classification_metric_samples(labels, reference_prob, identity, threshold_ref, average)
        point_var = classification_metric_samples(labels, variant_prob, identity, threshold_var, average)
        samples_ref = classification_metric_samples(labels, reference_prob, draws, threshold_ref, average)
        samples_var = classification_metric_samples(labels, variant_prob, draws, threshold_var, average)
        row["n_patients"] = len(paired)
        for metric in ("auc", "accuracy", "f1"):
            row[f"{metric}_reference"], row[f"{metric}_variant"] = float(point_ref[metric][0]), float(point_var[metric][0])
            row[f"{metric}_diff"] = row[f"{metric}_variant"] - row[f"{metric}_reference"]
            differences = samples_var[metric] - samples_ref[metric]
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(differences, confidence)
            if metric == "auc":
                row["auc_p"] = delong_test(labels, reference_prob, variant_prob)["p_value"]
            elif metric == "accuracy":
                row["accuracy_p"] = mcnemar_exact((reference_prob >= threshold_ref) == labels.astype(bool),
                                                  (variant_prob >= threshold_var) == labels.astype(bool))
            else:
                row["f1_p"] = bootstrap_p_value(differences)
    if results.has_task(variant, "segmentation") and results.has_task(reference, "segmentation"):
        paired = paired_scans(results, reference, variant)
        if len(paired):
            row["n_scans"] = len(paired)
            row["dice_reference"], row["dice_variant"] = float(paired["dice_reference"].mean()), float(paired["dice_other"].mean())
            row["dice_diff"] = row["dice_variant"] - row["dice_reference"]
            group_codes, _ = pd.factorize(paired["patient_id"])
            differences = (paired["dice_other"] - paired["dice_reference"]).to_numpy(float)
            sums = np.bincount(group_codes, weights=differences)
            counts = np.bincount(group_codes).astype(float)
            draws = patient_draws(sums.size, n_resamples, seed)
            row["dice_ci_low"], row["dice_ci_high"] = percentile_interval(
                sums[draws].sum(axis=1) / counts[draws].sum(axis=1), confidence)
            row["dice_p"] = wilcoxon_per_patient(paired["dice_reference"], paired["dice_other"], paired["patient_id"])
    return row


def ablation_table(results: Results, reference: str = "mstnet", n_resamples: int = 1000,
                   seed: int = 0, confidence: float = 0.95) -> AblationTable | None:
    """Every ``group == "ablation"`` experiment against ``reference``; None without ablations or reference."""
    variants = results.names(group="ablation")
    if not variants:
        return None
    if reference not in results.experiments.index:
        log.warning("ablations found but the reference experiment %r is not in the results; no ablation table",
                    reference)
        return None
    rows = [ablation_row(results, reference, v, n_resamples, seed, confidence) for v in variants]
    seeds = {name: len(results.seeds(name)) for name in [reference, *variants]}
    if any(count > 1 for count in seeds.values()):
        for row in rows:
            row["n_seeds_reference"], row["n_seeds_variant"] = seeds[reference], seeds[row["experiment"]]
    oracle_reference = results.oracle.get(results.experiments.at[reference, "information"])
    notes = (
        f"Differences are variant minus {_method_name(results, reference)} in percentage points, pooled over the "
        "out-of-fold test patients both have (Dice: over the scans both segmented), with 95% paired bootstrap "
        f"intervals ({n_resamples} resamples over patients, seed {seed}).",
        "Paired p-values: " + ", ".join(f"{COLUMN_BY_KEY[m].label} {t}" for m, t in ABLATION_TESTS.items())
        + "; * p < 0.05, ** p < 0.01, *** p < 0.001.",
        "Oracle AUC: the ceiling of the information the variant sees (oracle.json key in brackets)"
        + (f"; the full model's information: {100 * oracle_reference:.1f}." if oracle_reference is not None else "."),
    )
    if any(count > 1 for count in seeds.values()):
        notes += ("Training seeds: " + ", ".join(f"{name} {count}" for name, count in seeds.items())
                  + "; each patient's probability and each scan's Dice are averaged over an experiment's seeds "
                  "before the differences, intervals and tests.",)
    return AblationTable(pd.DataFrame(rows), reference, notes)


def _difference_cell(row: pd.Series, metric: str) -> tuple[str, str, str] | None:
    diff = row[f"{metric}_diff"]
    if not np.isfinite(diff):
        return None
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    ci = f"[{100 * low:+.1f}, {100 * high:+.1f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{100 * diff:+.2f}", ci, stars(row[f"{metric}_p"])


def _oracle_text(row: pd.Series) -> str:
    value = row["oracle_auc"]
    return f"{100 * value:.1f} ({row['information']})" if np.isfinite(value) else f"{MISSING} ({row['information']})"


def ablation_markdown(table: AblationTable) -> str:
    """The ablation table as GitHub Markdown."""
    header = ["Variant", *[f"Δ{COLUMN_BY_KEY[m].label} (pp)" for m in ABLATION_METRICS], "Oracle AUC"]
    lines = [f"**Ablations against {table.reference}**", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            cells.append(MISSING if parts is None else f"{parts[0]}{_markdown_stars(parts[2])} {parts[1]}".strip())
        lines.append(f"| {row['experiment']} | " + " | ".join(cells) + f" | {_oracle_text(row)} |")
    lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


def ablation_latex(table: AblationTable) -> str:
    """The ablation table as a booktabs LaTeX ``table`` that fits the text width (differences with their CI
    under them; shrunk only if still wider than the text)."""
    n_columns = 2 + len(ABLATION_METRICS)
    header = "Variant & " + " & ".join(f"$\\Delta${COLUMN_BY_KEY[m].label} (pp)" for m in ABLATION_METRICS) + r" & Oracle AUC \\"
    body = []
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            cells.append(MISSING if parts is None else _latex_stack(
                latex_escape(parts[0]) + (f"$^{{{parts[2]}}}$" if parts[2] else ""), latex_escape(parts[1])))
        oracle, _, information = _oracle_text(row).partition(" ")
        body.append(latex_escape(row["experiment"]) + " & " + " & ".join(cells) + " & "
                    + _latex_stack(latex_escape(oracle), latex_escape(information)) + r" \\")
    return "\n".join([
        LATEX_PREAMBLE, r"\begin{table}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{Ablations against {latex_escape(table.reference)}}}", LATEX_WIDTH_GUARD,
        rf"\begin{{tabular}}{{l{'c' * (n_columns - 1)}}}",
        r"\toprule", header, r"\midrule", *body, r"\bottomrule", r"\end{tabular}}",
        r"\par\smallskip\parbox{\linewidth}{\tiny " + " ".join(latex_escape(n) for n in table.notes) + "}",
        r"\end{table}", ""])


def ablation_html(table: AblationTable) -> str:
    """The ablation table as HTML (class ``results``)."""
    head = "".join(f"<th>&Delta;{html.escape(COLUMN_BY_KEY[m].label)} (pp)</th>" for m in ABLATION_METRICS)
    body = []
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            if parts is None:
                cells.append(f"<td>{MISSING}</td>")
                continue
            star = f"<sup class=\"stars\">{parts[2]}</sup>" if parts[2] else ""
            ci = f"<br><span class=\"ci\">{html.escape(parts[1])}</span>" if parts[1] else ""
            cells.append(f"<td>{html.escape(parts[0])}{star}{ci}</td>")
        body.append(f"<tr><th scope=\"row\" title=\"{html.escape(str(row['description']))}\">"
                    f"{html.escape(row['experiment'])}</th>{''.join(cells)}<td>{html.escape(_oracle_text(row))}</td></tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (f"<table class=\"results\"><caption>Ablations against {html.escape(table.reference)}</caption>"
            f"<thead><tr><th>Variant</th>{head}<th>Oracle AUC</th></tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table><ul class=\"notes\">{notes}</ul>")


def ablation_csv(table: AblationTable) -> str:
    """The ablation frame with raw numbers (fractions) and p-values."""
    return table.frame.to_csv(index=False)

