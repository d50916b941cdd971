"""What the tables read from :class:`~mstnet.reporting.results.Results`: the metric columns, each
experiment's pooled out-of-fold predictions and test scans, their thresholds, and the patients or
scans two experiments share (for the paired tests).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def method_name(results: Results, experiment: str) -> str:
    """The row name of an experiment in tables and figures: its Table-1 row, else its registry name."""
    row = results.experiments.at[experiment, "table_row"] if experiment in results.experiments.index else None
    return row if isinstance(row, str) and row else experiment


def fold_settings(results: Results, experiments: Sequence[str], column: str) -> list:
    values = results.fold_metrics.loc[results.fold_metrics["experiment"].isin(experiments), column].dropna()
    return sorted(set(values.tolist()), key=str)


def classification_average(results: Results, experiment: str) -> str:
    averages = sorted(set(results.fold_metrics.loc[results.fold_metrics["experiment"] == experiment, "average"]))
    if len(averages) > 1:
        log.warning("%s: folds use different averages %s; the pooled CI uses the first", experiment, averages)
    return str(averages[0])


def patient_thresholds(results: Results, experiment: str, folds: pd.Series) -> np.ndarray:
    """The classification threshold of each patient's test fold ((N,) for the (N,) ``folds``)."""
    frame = results.fold_metrics[results.fold_metrics["experiment"] == experiment]
    by_fold = dict(zip(frame["fold"].astype(int), frame["threshold"].astype(float)))
    return folds.astype(int).map(by_fold).to_numpy(dtype=np.float64)


def pooled_predictions(results: Results, experiment: str) -> pd.DataFrame:
    frame = results.predictions[results.predictions["experiment"] == experiment]
    duplicated = frame["patient_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"{experiment}: patient {frame.loc[duplicated, 'patient_id'].iloc[0]!r} has predictions in "
                         "two folds; every patient must be tested exactly once")
    return frame


def test_scans(results: Results, experiment: str) -> pd.DataFrame:
    return results.segmentation[results.segmentation["experiment"] == experiment]


def paired_predictions(results: Results, reference: str, other: str) -> pd.DataFrame:
    """Patients predicted by both: ``patient_id, label, probability_reference, probability_other,
    fold_reference, fold_other``."""
    a = pooled_predictions(results, reference)[["patient_id", "label", "probability", "fold"]]
    b = pooled_predictions(results, other)[["patient_id", "label", "probability", "fold"]]
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
    a = test_scans(results, reference)[["patient_id", "timepoint", "dice"]]
    b = test_scans(results, other)[["patient_id", "timepoint", "dice"]]
    merged = a.merge(b, on=["patient_id", "timepoint"], suffixes=("_reference", "_other"))
    if len(merged) < max(len(a), len(b)):
        log.warning("%s vs %s: %d of %d/%d scans in common; the paired test uses those", reference, other,
                    len(merged), len(a), len(b))
    return merged.sort_values(["patient_id", "timepoint"], ignore_index=True)
