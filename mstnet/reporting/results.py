"""Load result folders (``docs/results-format.md``) into tidy pandas frames.

Only files are read; nothing from the training code is imported. One RUNS_DIR, or several
merged (:func:`~mstnet.reporting.results_merge.load_many`; their experiments must have distinct names), becomes a :class:`Results`:

==================  ==========================================================================
frame               columns (one row per ...)
==================  ==========================================================================
``experiments``     index ``experiment``; description, group, table_row, tasks (tuple),
                    information, footnote, kind, folder, runs_dir (... experiment)
``fold_metrics``    experiment, fold, dice, jaccard, hd95, asd, accuracy, precision, recall,
                    specificity, f1, auc, brier, convention, average, threshold (... fold)
``predictions``     experiment, patient_id, fold, label, probability (... test patient)
``segmentation``    experiment, patient_id, timepoint, fold, dice, jaccard, hd95, asd (... scan)
``histories``       experiment, fold, epoch, train_loss, val_loss, val_score, lr (... epoch)
``runs``            experiment, seed, fold and the scalar fields of ``run.json`` (... fold)
==================  ==========================================================================

Training-seed replicates (``--seeds N``): replicate 0 of a fold is ``<experiment>/fold<k>/``,
replicate s >= 1 is ``<experiment>/seed<s>/fold<k>/``. ``seed_fold_metrics``,
``seed_predictions`` and ``seed_segmentation`` hold every replicate's rows, with a ``seed``
column after ``experiment``; ``fold_metrics``, ``predictions`` and ``segmentation`` hold their
means over an experiment's seeds (:func:`~mstnet.reporting.seed_means.seed_means`): each fold's metric values and threshold,
each patient's probability and each scan's metrics averaged over the seeds, so an experiment
with one seed reads exactly as before and paired tests pair per-patient means over seeds. An
experiment's seeds count when they hold the same folds: the folds of its seed with the most
folds (the lowest such seed); a seed lacking some of them is left out with a logged warning.
``histories`` and ``galleries`` are those of replicate 0 (``fold<k>/``).

A fold counts when its ``metrics.json`` exists and its ``run.json`` (when present) says
``"status": "complete"``; other folds are left out with a logged warning. A file that breaks
the contract raises :class:`ResultsError` naming the file and what is wrong.

``metrics.json`` is not taken on trust: each fold's classification metrics are recomputed
from its ``predictions.csv`` (at the fold's recorded threshold and averaging, with
:func:`mstnet.metrics.classification_metrics`) and its segmentation metrics from the mean of
``segmentation.csv``'s per-scan values; a value that disagrees beyond float tolerance
(:data:`TOLERANCE`) raises :class:`ResultsError` naming the file, the metric and both values.
The one disagreement accepted (with a logged warning, the recomputed value used) is a ratio
written by the old convention of counting an undefined ratio as 0 (precision with no positive
prediction, ...), which is now NaN.

The means over seeds are :mod:`mstnet.reporting.seed_means`; several RUNS_DIRs are merged by
:mod:`mstnet.reporting.results_merge`; :mod:`mstnet.reporting.results_check` lists a RUNS_DIR's
contract problems.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mstnet.errors import DataError
from mstnet.metrics.classification import classification_metrics
from mstnet.reporting.seed_means import seed_means
from mstnet.results_files import (
    CLASSIFICATION_METRICS,
    HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    SEGMENTATION_COLUMNS,
    SEGMENTATION_METRICS,
    VOLUME_COLUMNS,
)

log = logging.getLogger(__name__)

EXPERIMENT_FIELDS: tuple[str, ...] = ("name", "tasks", "group")
FOLD_FOLDER = re.compile(r"^fold(\d+)$")
SEED_FOLDER = re.compile(r"^seed([1-9]\d*)$")
"""Training-seed replicate s >= 1 of ``--seeds``; replicate 0 is the experiment folder itself."""
BENCHMARK_PATTERNS: tuple[str, ...] = ("benchmark*.json", "benchmarks/**/*.json", ".benchmarks/**/*.json")


class ResultsError(DataError):
    """A result file is missing, unreadable or breaks ``docs/results-format.md``."""


TOLERANCE = {"rel_tol": 1e-9, "abs_tol": 1e-9}
"""How far a ``metrics.json`` value may be from the value recomputed from the fold's CSV files."""
RATIO_METRICS: tuple[str, ...] = ("precision", "recall", "specificity", "f1")
"""Classification metrics that are undefined (NaN) on a zero denominator."""


def _agree(recorded: float, recomputed: float) -> bool:
    if math.isnan(recorded) or math.isnan(recomputed):
        return math.isnan(recorded) and math.isnan(recomputed)
    return math.isclose(recorded, recomputed, **TOLERANCE)


def _shown(value: float) -> str:
    return "undefined (null)" if math.isnan(value) else f"{value:.6g}"


def verify_classification(row: dict[str, Any], metrics_path: Path, predictions: pd.DataFrame,
                          block: str = "classification") -> None:
    """Check a fold's classification metrics (``row``, read from ``metrics_path``) against its predictions.

    Recomputes them from ``predictions`` (that fold's ``predictions.csv``) at ``row["threshold"]``
    with ``row["average"]``. A value written with the old zero-for-undefined convention is
    replaced by the recomputed one (logged); any other disagreement raises
    :class:`ResultsError` naming ``metrics_path``, ``block.metric`` and both values. A missing
    Brier score (older files) is not checked.
    """
    csv_path = metrics_path.parent / "predictions.csv"
    labels, probabilities = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    try:
        recomputed = classification_metrics(labels, probabilities, threshold=row["threshold"], average=row["average"])
    except ValueError as error:
        raise ResultsError(f"{csv_path}: cannot recompute the metrics of {metrics_path.name} ({error})") from None
    legacy: dict[str, float] | None = None
    for key in CLASSIFICATION_METRICS:
        recorded = row[key]
        if _agree(recorded, recomputed[key]) or (key == "brier" and math.isnan(recorded)):
            continue
        if key in RATIO_METRICS:
            legacy = legacy or classification_metrics(labels, probabilities, threshold=row["threshold"],
                                                      average=row["average"], zero_division=0)
            if _agree(recorded, legacy[key]):
                log.warning("%s: %s.%s is %s, written counting an undefined ratio as 0; using %s recomputed from "
                            "predictions.csv", metrics_path, block, key, _shown(recorded), _shown(recomputed[key]))
                row[key] = recomputed[key]
                continue
        raise ResultsError(f"{metrics_path}: {block}.{key} is {_shown(recorded)} but predictions.csv gives "
                           f"{_shown(recomputed[key])}")


def verify_segmentation(row: dict[str, Any], metrics_path: Path, scans: pd.DataFrame) -> None:
    """Check a fold's segmentation metrics (``row``) against the mean of its per-scan values (``segmentation.csv``).

    Raises :class:`ResultsError` naming ``metrics_path``, the metric and both values when one
    disagrees beyond :data:`TOLERANCE`.
    """
    for key in SEGMENTATION_METRICS:
        recomputed = float(pd.to_numeric(scans[key], errors="coerce").mean())
        if not _agree(row[key], recomputed):
            raise ResultsError(f"{metrics_path}: segmentation.{key} is {_shown(row[key])} but the mean of "
                               f"segmentation.csv's per-scan values is {_shown(recomputed)}")


def check_volumes(path: Path, scans: pd.DataFrame) -> None:
    """The optional volume columns of a ``segmentation.csv`` (:data:`VOLUME_COLUMNS`), where present:
    numbers >= 0 (empty is allowed); raises :class:`ResultsError` naming the file, column and patient."""
    for column in (c for c in VOLUME_COLUMNS if c in scans.columns):
        values = pd.to_numeric(scans[column], errors="coerce")
        bad = (values.isna() & scans[column].notna()) | (values < 0)
        if bad.any():
            first = scans.loc[bad].iloc[0]
            raise ResultsError(f"{path}: {column} of {first['patient_id']} {first['timepoint']} is "
                               f"{first[column]!r}; expected a volume in mm^3 >= 0")


@dataclass(frozen=True)
class Results:
    """Everything the reports need from one or several RUNS_DIRs (see the module docstring)."""

    runs_dirs: tuple[Path, ...]
    experiments: pd.DataFrame
    fold_metrics: pd.DataFrame
    predictions: pd.DataFrame
    segmentation: pd.DataFrame
    histories: pd.DataFrame
    runs: pd.DataFrame
    cohorts: tuple[dict[str, Any], ...] = ()
    oracle: dict[str, float] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    galleries: dict[tuple[str, int], Path] = field(default_factory=dict)
    studies: dict[str, Path] = field(default_factory=dict)
    benchmark_files: tuple[Path, ...] = ()
    threshold_rule: str = "fixed"
    seed_fold_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    seed_predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    seed_segmentation: pd.DataFrame = field(default_factory=pd.DataFrame)

    def seeds(self, experiment: str) -> list[int]:
        """The training-seed replicates of ``experiment`` that count (``[0]`` for a run without ``--seeds``)."""
        frame = self.seed_fold_metrics
        if frame.empty:
            return [0]
        return sorted(set(frame.loc[frame["experiment"] == experiment, "seed"].astype(int))) or [0]

    def names(self, group: str | None = None) -> list[str]:
        """Experiment names (in loading order), optionally only those of ``group``."""
        frame = self.experiments
        if group is not None:
            frame = frame[frame["group"] == group]
        return list(frame.index)

    def has_task(self, experiment: str, task: str) -> bool:
        """Whether ``experiment`` declares ``task`` and has per-fold values for it."""
        if task not in self.experiments.at[experiment, "tasks"]:
            return False
        keys = SEGMENTATION_METRICS if task == "segmentation" else CLASSIFICATION_METRICS
        values = self.fold_metrics.loc[self.fold_metrics["experiment"] == experiment, list(keys)]
        return bool(values.notna().to_numpy().any())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not valid JSON ({error})") from None


def _read_csv(path: Path, required: Sequence[str], experiment: str, seed: int | None = None) -> pd.DataFrame:
    """The CSV at ``path`` with its ``required`` columns checked, ``experiment`` (and ``seed``, when given) in front."""
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "timepoint": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsError(f"{path}: not a readable CSV ({error})") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    frame.insert(0, "experiment", experiment)
    if seed is not None:
        frame.insert(1, "seed", seed)
    return frame


def _number(value: Any, path: Path, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsError(f"{path}: {key} must be a number or null, got {value!r}")
    return float(value)


THRESHOLD_RULES = ("fixed", "validation")
"""``fixed``: the threshold-dependent metrics at the threshold recorded in ``metrics.json``
(0.5 by default); ``validation``: at each fold's threshold chosen on its inner validation
split (``classification_at_validation_threshold`` and ``validation_threshold``)."""


def _fold_metrics_row(path: Path, experiment: str, fold: int, threshold_rule: str = "fixed") -> dict[str, Any]:
    metrics = read_json(path)
    if not isinstance(metrics, dict) or "segmentation" not in metrics or "classification" not in metrics:
        raise ResultsError(f"{path}: expected an object with keys 'segmentation' and 'classification' (null or object)")
    row: dict[str, Any] = {"experiment": experiment, "fold": fold}
    at_validation = threshold_rule == "validation" and metrics["classification"] is not None
    if at_validation and ("classification_at_validation_threshold" not in metrics or "validation_threshold" not in metrics):
        raise ResultsError(f"{path}: no 'classification_at_validation_threshold' / 'validation_threshold' to report "
                           "metrics at the inner-validation threshold; report it with the fixed threshold")
    for task, keys in (("segmentation", SEGMENTATION_METRICS), ("classification", CLASSIFICATION_METRICS)):
        block = metrics["classification_at_validation_threshold"] if task == "classification" and at_validation \
            else metrics[task]
        if block is not None and not isinstance(block, dict):
            raise ResultsError(f"{path}: {task!r} must be null or an object of metric values, got {block!r}")
        for key in keys:
            row[key] = _number(block.get(key), path, f"{task}.{key}") if block else math.nan
        if block:
            absent = [key for key in keys if key not in block and key != "brier"]
            if absent:
                raise ResultsError(f"{path}: {task} lacks metric(s) {absent}")
    row["convention"] = metrics.get("convention", "monai")
    row["average"] = metrics.get("average", "binary")
    row["threshold"] = float(metrics["validation_threshold"] if at_validation else metrics.get("threshold", 0.5))
    row["_block"] = "classification_at_validation_threshold" if at_validation else "classification"  # not a column
    return row


def _experiment_record(folder: Path, runs_dir: Path) -> dict[str, Any]:
    path = folder / "experiment.json"
    meta = read_json(path)
    missing = [key for key in EXPERIMENT_FIELDS if key not in meta]
    if missing:
        raise ResultsError(f"{path}: missing field(s) {missing}")
    tasks = tuple(meta["tasks"])
    unknown = set(tasks) - {"segmentation", "classification"}
    if unknown:
        raise ResultsError(f"{path}: tasks {sorted(unknown)} are not 'segmentation' or 'classification'")
    return {"experiment": str(meta["name"]), "description": meta.get("description", ""), "group": meta["group"],
            "table_row": str(meta.get("table_row") or ""), "tasks": tasks,
            "information": meta.get("information", "everything"), "footnote": meta.get("footnote", "") or "",
            "kind": meta.get("kind", "torch"), "folder": folder, "runs_dir": runs_dir}


def _fold_is_complete(fold_dir: Path) -> bool:
    if not (fold_dir / "metrics.json").exists():
        log.warning("%s: no metrics.json (fold not finished); left out", fold_dir)
        return False
    run_json = fold_dir / "run.json"
    if run_json.exists():
        status = read_json(run_json).get("status")
        if status != "complete":
            log.warning("%s: run.json status is %r, not 'complete'; left out", run_json, status)
            return False
    return True


def _fold_folders(folder: Path) -> list[tuple[int, int, Path]]:
    """(seed, fold, folder) of every fold folder of an experiment: ``fold<k>/`` (seed 0) and ``seed<s>/fold<k>/``."""
    folds = []
    for seed, parent in [(0, folder), *[(int(match.group(1)), child) for child in folder.iterdir()
                                        if (match := SEED_FOLDER.match(child.name)) and child.is_dir()]]:
        for child in parent.iterdir():
            match = FOLD_FOLDER.match(child.name)
            if match and child.is_dir():
                folds.append((seed, int(match.group(1)), child))
    return sorted(folds)


@dataclass
class _Collected:
    """What :func:`load_results` gathers from the experiment folders of one RUNS_DIR."""

    records: list[dict[str, Any]] = field(default_factory=list)
    fold_rows: list[dict[str, Any]] = field(default_factory=list)
    run_rows: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[str, list[pd.DataFrame]] = field(
        default_factory=lambda: {"predictions": [], "segmentation": [], "histories": []})
    galleries: dict[tuple[str, int], Path] = field(default_factory=dict)
    studies: dict[str, Path] = field(default_factory=dict)


def _load_fold(collected: _Collected, record: dict[str, Any], seed: int, k: int, fold_dir: Path,
               threshold_rule: str) -> None:
    """One complete fold folder: its metrics (checked against its CSV files), run record, rows and files."""
    name, frames = record["experiment"], collected.frames
    row = _fold_metrics_row(fold_dir / "metrics.json", name, k, threshold_rule)
    row["seed"] = seed
    collected.fold_rows.append(row)
    if (fold_dir / "run.json").exists():
        run = read_json(fold_dir / "run.json")
        collected.run_rows.append({"experiment": name, "seed": seed, "fold": k,
                                   **{key: value for key, value in run.items() if not isinstance(value, (dict, list))}})
    if "classification" in record["tasks"]:
        if not (fold_dir / "predictions.csv").exists():
            raise ResultsError(f"{fold_dir / 'predictions.csv'}: file not found (experiment {name!r} declares classification)")
        frames["predictions"].append(_read_csv(fold_dir / "predictions.csv", PREDICTION_COLUMNS, name, seed))
        verify_classification(row, fold_dir / "metrics.json", frames["predictions"][-1], row["_block"])
    if "segmentation" in record["tasks"] and (fold_dir / "segmentation.csv").exists():
        frames["segmentation"].append(_read_csv(fold_dir / "segmentation.csv", SEGMENTATION_COLUMNS, name, seed))
        verify_segmentation(row, fold_dir / "metrics.json", frames["segmentation"][-1])
        check_volumes(fold_dir / "segmentation.csv", frames["segmentation"][-1])
    if seed:
        return  # learning curves and galleries: replicate 0
    if (fold_dir / "history.csv").exists():
        history = _read_csv(fold_dir / "history.csv", HISTORY_COLUMNS, name)
        history.insert(1, "fold", k)
        frames["histories"].append(history)
    if (fold_dir / "gallery.npz").exists():
        collected.galleries[(name, k)] = fold_dir / "gallery.npz"


def _runs_dir_records(runs_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, tuple[Path, ...]]:
    """(cohort record with ``cv_folds``, oracle values, published table, benchmark files) of a RUNS_DIR."""
    cohort = read_json(runs_dir / "cohort.json") if (runs_dir / "cohort.json").exists() else {}
    if (runs_dir / "splits.json").exists():
        cohort["cv_folds"] = read_json(runs_dir / "splits.json").get("n_folds")
    oracle = read_json(runs_dir / "oracle.json") if (runs_dir / "oracle.json").exists() else {}
    published = read_json(runs_dir / "published.json") if (runs_dir / "published.json").exists() else None
    benchmark_files = tuple(sorted({p for pattern in BENCHMARK_PATTERNS for p in runs_dir.glob(pattern)
                                    if is_benchmark_json(p)}))
    return cohort, oracle, published, benchmark_files


def load_results(runs_dir: str | Path, threshold_rule: str = "fixed") -> Results:
    """Read one RUNS_DIR (``splits.json``, ``cohort.json``, ``oracle.json`` and every experiment folder).

    ``threshold_rule`` picks which threshold-dependent classification metrics are read (see
    :data:`THRESHOLD_RULES`).
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule: expected one of {THRESHOLD_RULES}, got {threshold_rule!r}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResultsError(f"{runs_dir}: not a folder of results")
    collected = _Collected()
    for folder in sorted(p.parent for p in runs_dir.glob("*/experiment.json")):
        record = _experiment_record(folder, runs_dir)
        complete = [(seed, k, d) for seed, k, d in _fold_folders(folder) if _fold_is_complete(d)]
        if not complete:
            log.warning("%s: no complete fold; experiment %r left out", folder, record["experiment"])
            continue
        collected.records.append(record)
        for seed, k, fold_dir in complete:
            _load_fold(collected, record, seed, k, fold_dir, threshold_rule)
        if (folder / "tuning" / "study.db").exists():
            collected.studies[record["experiment"]] = folder / "tuning" / "study.db"
    if not collected.records:
        raise ResultsError(f"{runs_dir}: no results to report (no experiment folder with a complete fold: "
                           "<experiment>/experiment.json and <experiment>/fold<k>/run.json)")
    experiments = pd.DataFrame.from_records(collected.records, columns=[
        "experiment", "description", "group", "table_row", "tasks", "information", "footnote", "kind", "folder",
        "runs_dir"]).set_index("experiment")
    cohort, oracle, published, benchmark_files = _runs_dir_records(runs_dir)
    seed_frames = seed_means(
        pd.DataFrame(collected.fold_rows, columns=["experiment", "seed", "fold", *SEGMENTATION_METRICS,
                                                   *CLASSIFICATION_METRICS, "convention", "average", "threshold"]),
        _concat(collected.frames["predictions"], ["experiment", "seed", *PREDICTION_COLUMNS]),
        _concat(collected.frames["segmentation"], ["experiment", "seed", *SEGMENTATION_COLUMNS]))
    return Results(
        runs_dirs=(runs_dir,), experiments=experiments,
        fold_metrics=seed_frames[3], predictions=seed_frames[4], segmentation=seed_frames[5],
        seed_fold_metrics=seed_frames[0], seed_predictions=seed_frames[1], seed_segmentation=seed_frames[2],
        histories=_concat(collected.frames["histories"], ["experiment", "fold", *HISTORY_COLUMNS]),
        runs=pd.DataFrame(collected.run_rows) if collected.run_rows else pd.DataFrame(columns=["experiment", "fold"]),
        cohorts=({**cohort, "runs_dir": str(runs_dir)},), oracle={k: float(v) for k, v in oracle.items()},
        published=published, galleries=collected.galleries, studies=collected.studies,
        benchmark_files=benchmark_files, threshold_rule=threshold_rule,
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(frames, ignore_index=True)
    if "patient_id" in frame.columns:
        frame["patient_id"] = frame["patient_id"].astype(str)
    return frame


def is_benchmark_json(path: Path) -> bool:
    """Whether ``path`` is a pytest-benchmark JSON (``{"machine_info": ..., "benchmarks": [...]}``)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and "machine_info" in payload and isinstance(payload.get("benchmarks"), list)
