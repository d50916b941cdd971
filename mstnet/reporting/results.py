"""Load result folders (``docs/results-format.md``) into tidy pandas frames.

Only files are read; nothing from the training code is imported. One RUNS_DIR, or several
merged (their experiments must have distinct names), becomes a :class:`Results`:

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
means over an experiment's seeds (:func:`seed_means`): each fold's metric values and threshold,
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
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstnet.errors import DataError
from mstnet.metrics.classification import classification_metrics

log = logging.getLogger(__name__)

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "brier")
PREDICTION_COLUMNS: tuple[str, ...] = ("patient_id", "fold", "label", "probability")
SEGMENTATION_COLUMNS: tuple[str, ...] = ("patient_id", "timepoint", "fold", *SEGMENTATION_METRICS)
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss")
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


def _read_json(path: Path) -> Any:
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
    metrics = _read_json(path)
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
    meta = _read_json(path)
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
        status = _read_json(run_json).get("status")
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


def _kept_seeds(fold_metrics: pd.DataFrame, experiment: str) -> list[int]:
    """The seeds of ``experiment`` that hold the folds of its seed with the most folds (see the module docstring)."""
    rows = fold_metrics[fold_metrics["experiment"] == experiment]
    folds_of = {int(seed): set(group["fold"].astype(int)) for seed, group in rows.groupby("seed")}
    full = max(folds_of.values(), key=len) if folds_of else set()
    for seed, folds in folds_of.items():
        if folds != full:
            log.warning("%s seed %d: lacks fold(s) %s that its other seeds have; this seed is left out", experiment,
                        seed, sorted(full - folds))
    return [seed for seed, folds in folds_of.items() if folds == full]


def _mean_over_seeds(frame: pd.DataFrame, key: list[str], columns: list[str], several: set[str]) -> pd.DataFrame:
    """``frame`` without its ``seed`` column, the rows of the ``several``-seed experiments replaced by their
    means over seeds (``columns`` averaged where defined, the rest the first seed's), one per ``key``."""
    if not several or frame.empty:
        return frame.drop(columns="seed").reset_index(drop=True)
    pieces = []
    for name, rows in frame.groupby("experiment", sort=False):
        rows = rows.drop(columns="seed")
        if name in several:
            grouped = rows.groupby(key, sort=False)
            mean = grouped.first()
            mean[columns] = grouped[columns].mean()
            rows = mean.reset_index()[list(rows.columns)]
        pieces.append(rows)
    return pd.concat(pieces, ignore_index=True)


def seed_means(seed_fold_metrics: pd.DataFrame, seed_predictions: pd.DataFrame,
               seed_segmentation: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The per-replicate frames without incomplete seeds (see the module docstring), then their means over seeds.

    Returns:
        (seed_fold_metrics, seed_predictions, seed_segmentation) of the seeds that count, and
        (fold_metrics, predictions, segmentation): for an experiment with one seed its rows
        as they are (without ``seed``); with several, one row per (experiment, fold), patient and
        scan in the first seed's order, metric values, thresholds and probabilities averaged over
        the seeds where they are defined, the other columns the first seed's.
    """
    kept = {name: _kept_seeds(seed_fold_metrics, name) for name in dict.fromkeys(seed_fold_metrics["experiment"])}
    several = {name for name, seeds in kept.items() if len(seeds) > 1}
    frames = [frame.loc[np.array([int(seed) in kept.get(name, ()) for name, seed in zip(frame["experiment"], frame["seed"])],
                                 dtype=bool)].reset_index(drop=True) for frame in (seed_fold_metrics, seed_predictions, seed_segmentation)]
    means = (_mean_over_seeds(frames[0], ["experiment", "fold"],
                              [*SEGMENTATION_METRICS, *CLASSIFICATION_METRICS, "threshold"], several),
             _mean_over_seeds(frames[1], ["experiment", "patient_id"], ["probability"], several),
             _mean_over_seeds(frames[2], ["experiment", "patient_id", "timepoint"], list(SEGMENTATION_METRICS), several))
    return (*frames, *means)


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
    records, fold_rows, run_rows = [], [], []
    frames: dict[str, list[pd.DataFrame]] = {"predictions": [], "segmentation": [], "histories": []}
    galleries: dict[tuple[str, int], Path] = {}
    studies: dict[str, Path] = {}
    for folder in sorted(p.parent for p in runs_dir.glob("*/experiment.json")):
        record = _experiment_record(folder, runs_dir)
        name = record["experiment"]
        complete = [(seed, k, d) for seed, k, d in _fold_folders(folder) if _fold_is_complete(d)]
        if not complete:
            log.warning("%s: no complete fold; experiment %r left out", folder, name)
            continue
        records.append(record)
        for seed, k, fold_dir in complete:
            row = _fold_metrics_row(fold_dir / "metrics.json", name, k, threshold_rule)
            row["seed"] = seed
            fold_rows.append(row)
            if (fold_dir / "run.json").exists():
                run = _read_json(fold_dir / "run.json")
                run_rows.append({"experiment": name, "seed": seed, "fold": k,
                                 **{key: value for key, value in run.items() if not isinstance(value, (dict, list))}})
            if "classification" in record["tasks"]:
                if not (fold_dir / "predictions.csv").exists():
                    raise ResultsError(f"{fold_dir / 'predictions.csv'}: file not found (experiment {name!r} declares classification)")
                frames["predictions"].append(_read_csv(fold_dir / "predictions.csv", PREDICTION_COLUMNS, name, seed))
                verify_classification(row, fold_dir / "metrics.json", frames["predictions"][-1], row["_block"])
            if "segmentation" in record["tasks"] and (fold_dir / "segmentation.csv").exists():
                frames["segmentation"].append(_read_csv(fold_dir / "segmentation.csv", SEGMENTATION_COLUMNS, name, seed))
                verify_segmentation(row, fold_dir / "metrics.json", frames["segmentation"][-1])
            if seed:
                continue  # learning curves and galleries: replicate 0
            if (fold_dir / "history.csv").exists():
                history = _read_csv(fold_dir / "history.csv", HISTORY_COLUMNS, name)
                history.insert(1, "fold", k)
                frames["histories"].append(history)
            if (fold_dir / "gallery.npz").exists():
                galleries[(name, k)] = fold_dir / "gallery.npz"
        if (folder / "tuning" / "study.db").exists():
            studies[name] = folder / "tuning" / "study.db"
    if not records:
        raise ResultsError(f"{runs_dir}: no results to report (no experiment folder with a complete fold: "
                           "<experiment>/experiment.json and <experiment>/fold<k>/run.json)")
    experiments = pd.DataFrame.from_records(records, columns=[
        "experiment", "description", "group", "table_row", "tasks", "information", "footnote", "kind", "folder",
        "runs_dir"]).set_index("experiment")
    cohort = _read_json(runs_dir / "cohort.json") if (runs_dir / "cohort.json").exists() else {}
    if (runs_dir / "splits.json").exists():
        cohort["cv_folds"] = _read_json(runs_dir / "splits.json").get("n_folds")
    oracle = _read_json(runs_dir / "oracle.json") if (runs_dir / "oracle.json").exists() else {}
    published = _read_json(runs_dir / "published.json") if (runs_dir / "published.json").exists() else None
    benchmark_files = tuple(sorted({p for pattern in BENCHMARK_PATTERNS for p in runs_dir.glob(pattern)
                                    if is_benchmark_json(p)}))
    seed_frames = seed_means(
        pd.DataFrame(fold_rows, columns=["experiment", "seed", "fold", *SEGMENTATION_METRICS, *CLASSIFICATION_METRICS,
                                         "convention", "average", "threshold"]),
        _concat(frames["predictions"], ["experiment", "seed", *PREDICTION_COLUMNS]),
        _concat(frames["segmentation"], ["experiment", "seed", *SEGMENTATION_COLUMNS]))
    return Results(
        runs_dirs=(runs_dir,), experiments=experiments,
        fold_metrics=seed_frames[3], predictions=seed_frames[4], segmentation=seed_frames[5],
        seed_fold_metrics=seed_frames[0], seed_predictions=seed_frames[1], seed_segmentation=seed_frames[2],
        histories=_concat(frames["histories"], ["experiment", "fold", *HISTORY_COLUMNS]),
        runs=pd.DataFrame(run_rows) if run_rows else pd.DataFrame(columns=["experiment", "fold"]),
        cohorts=({**cohort, "runs_dir": str(runs_dir)},), oracle={k: float(v) for k, v in oracle.items()},
        published=published, galleries=galleries, studies=studies, benchmark_files=benchmark_files,
        threshold_rule=threshold_rule,
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


def _first_row_per_experiment(experiments: pd.DataFrame) -> pd.DataFrame:
    return experiments[~experiments.index.duplicated(keep="first")]


def _splits_hash(part: Results) -> str | None:
    return next((c.get("splits_hash") for c in part.cohorts if c.get("splits_hash")), None)


def merge_results(parts: Iterable[Results]) -> Results:
    """One :class:`Results` from several RUNS_DIRs.

    An experiment may appear in several folders when they share the folds (same splits
    hash) and hold different folds of it, e.g. ``mstnet run NAME --folds k`` run on several
    machines, each into its own folder; or different training-seed replicates of the same
    folds. The same (seed, fold) twice, or one experiment on other folds, is an error.
    """
    parts = list(parts)
    if not parts:
        raise ResultsError("no results folders given")
    if len(parts) == 1:
        return parts[0]
    seen: dict[str, tuple[Path, str | None, set[tuple[int, int]]]] = {}
    for part in parts:
        part_hash = _splits_hash(part)
        for name, folder in part.experiments["folder"].items():
            rows = part.seed_fold_metrics[part.seed_fold_metrics["experiment"] == name]
            folds = set(zip(rows["seed"].astype(int), rows["fold"].astype(int)))
            if name not in seen:
                seen[name] = (folder, part_hash, folds)
                continue
            first_folder, first_hash, first_folds = seen[name]
            if part_hash is None or part_hash != first_hash:
                raise ResultsError(f"experiment {name!r} is in two results folders with different folds (splits hash "
                                   f"{str(first_hash)[:12]} in {first_folder}, {str(part_hash)[:12]} in {folder}); "
                                   "report them separately or remove one")
            if first_folds & folds:
                both = sorted(first_folds & folds)
                named = ([fold for _, fold in both] if all(seed == 0 for seed, _ in both)
                         else ", ".join(f"seed {seed} fold {fold}" for seed, fold in both))
                raise ResultsError(f"experiment {name!r} is in two results folders with fold(s) "
                                   f"{named} in both ({first_folder} and {folder}); keep one copy")
            seen[name] = (first_folder, first_hash, first_folds | folds)
    oracle: dict[str, float] = {}
    for part in parts:
        for key, value in part.oracle.items():
            if key in oracle and not math.isclose(oracle[key], value):
                log.warning("oracle.json differs between results folders (%s: %.4f vs %.4f); keeping the first",
                            key, oracle[key], value)
            oracle.setdefault(key, value)
    hashes = {c.get("splits_hash") for part in parts for c in part.cohorts if c.get("splits_hash")}
    if len(hashes) > 1:
        log.warning("the results folders use different folds (%d splits hashes); paired tests pair on patient ids",
                    len(hashes))
    seed_frames = seed_means(
        pd.concat([p.seed_fold_metrics for p in parts], ignore_index=True),
        pd.concat([p.seed_predictions for p in parts if len(p.seed_predictions)] or [parts[0].seed_predictions],
                  ignore_index=True),
        pd.concat([p.seed_segmentation for p in parts if len(p.seed_segmentation)] or [parts[0].seed_segmentation],
                  ignore_index=True))
    return Results(
        runs_dirs=tuple(d for part in parts for d in part.runs_dirs),
        experiments=_first_row_per_experiment(pd.concat([p.experiments for p in parts])),
        fold_metrics=seed_frames[3], predictions=seed_frames[4], segmentation=seed_frames[5],
        seed_fold_metrics=seed_frames[0], seed_predictions=seed_frames[1], seed_segmentation=seed_frames[2],
        histories=pd.concat([p.histories for p in parts if len(p.histories)] or [parts[0].histories], ignore_index=True),
        runs=pd.concat([p.runs for p in parts if len(p.runs)] or [parts[0].runs], ignore_index=True),
        cohorts=tuple(c for part in parts for c in part.cohorts), oracle=oracle,
        published=next((p.published for p in parts if p.published is not None), None),
        galleries={k: v for part in parts for k, v in part.galleries.items()},
        studies={k: v for part in reversed(parts) for k, v in part.studies.items()},
        benchmark_files=tuple(f for part in parts for f in part.benchmark_files),
        threshold_rule=parts[0].threshold_rule,
    )


def load_many(runs_dirs: Iterable[str | Path], threshold_rule: str = "fixed") -> Results:
    """Load and merge several RUNS_DIRs (see :func:`merge_results`)."""
    return merge_results(load_results(d, threshold_rule) for d in runs_dirs)


def check_runs_dir(runs_dir: str | Path) -> list[str]:
    """Contract problems of a RUNS_DIR, as readable lines (empty when it follows ``docs/results-format.md``).

    Beyond what :func:`load_results` enforces, checks that ``splits.json`` and ``cohort.json``
    exist, that every complete fold's test patients are the ones in ``splits.json``, and that
    segmentation experiments wrote ``segmentation.csv`` and ``gallery.npz``.
    """
    runs_dir = Path(runs_dir)
    problems = []
    for name in ("splits.json", "cohort.json"):
        if not (runs_dir / name).exists():
            problems.append(f"{runs_dir / name}: missing")
    try:
        results = load_results(runs_dir)
    except ResultsError as error:
        return [*problems, str(error)]
    test_of = {}
    if (runs_dir / "splits.json").exists():
        test_of = {f["fold"]: set(map(str, f["test"])) for f in _read_json(runs_dir / "splits.json").get("folds", [])}
    predictions = results.seed_predictions
    for name, meta in results.experiments.iterrows():
        rows = results.seed_fold_metrics[results.seed_fold_metrics["experiment"] == name]
        for seed, k in zip(rows["seed"].astype(int), rows["fold"].astype(int)):
            fold_dir = (meta["folder"] / f"seed{seed}" if seed else meta["folder"]) / f"fold{k}"
            if "segmentation" in meta["tasks"]:
                for file in ("segmentation.csv", "gallery.npz"):
                    if not (fold_dir / file).exists():
                        problems.append(f"{fold_dir / file}: missing (experiment {name!r} declares segmentation)")
            if "classification" in meta["tasks"] and k in test_of:
                patients = set(predictions.loc[(predictions["experiment"] == name) & (predictions["seed"] == seed)
                                               & (predictions["fold"] == k), "patient_id"])
                if patients != test_of[k]:
                    problems.append(f"{fold_dir / 'predictions.csv'}: patients differ from splits.json fold {k} test "
                                    f"({len(patients - test_of[k])} extra, {len(test_of[k] - patients)} missing)")
    return problems
