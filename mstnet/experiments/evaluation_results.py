"""What ``mstnet evaluate`` measured (:class:`Evaluation`) and how it is written into a results folder.

The folder follows ``docs/results-format.md``; see :mod:`mstnet.experiments.evaluation`.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import Cohort
from mstnet.errors import UsageError
from mstnet.experiments.evaluation_folds import read_splits
from mstnet.experiments.identity import CONFIG_FILE, IDENTITY_KEY, cohort_fingerprint, configuration_hash
from mstnet.experiments.splits import Splits
from mstnet.metrics import DECISION_THRESHOLD

log = logging.getLogger(__name__)

EXTERNAL_KIND = "external"
"""``experiment.json`` ``kind`` of results written by ``mstnet evaluate``."""


@dataclass
class Evaluation:
    """What :func:`mstnet.experiments.evaluation.evaluate_predictions` measured: per fold, its patients' and
    scans' rows and metrics."""

    runs_dir: Path
    name: str
    splits: Splits
    tasks: tuple[str, ...]
    patients: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    scans: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    resampled: dict[int, list[str]] = field(default_factory=dict)
    """Per fold, the masks resampled onto their image's grid (``--resample``)."""

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.name.replace("/", "__")


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def check_target(evaluation: Evaluation, overwrite: bool) -> None:
    """Refuse a results folder with other folds, or a folder ``name`` that is not an earlier ``mstnet evaluate`` result
    (or is one, without ``overwrite``)."""
    runs_dir, splits = evaluation.runs_dir, evaluation.splits
    if (runs_dir / "splits.json").exists():
        held = read_splits(runs_dir)
        if held.hash != splits.hash:
            raise UsageError(f"{runs_dir} holds other folds (splits hash {held.hash[:12]}, these {splits.hash[:12]}): "
                             f"pass --folds-from {runs_dir} to score on its folds, or use another --out")
    folder = evaluation.folder
    if (folder / "experiment.json").exists():
        try:
            kind = json.loads((folder / "experiment.json").read_text()).get("kind")
        except json.JSONDecodeError:
            kind = None
        if kind != EXTERNAL_KIND:
            raise UsageError(f"{folder} holds results of one of the suite's experiments; give your method another --name")
        if not overwrite:
            raise UsageError(f"{folder} already holds `mstnet evaluate` results named {evaluation.name!r}; "
                             "pass --overwrite to replace them, or give another --name")
    elif folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not a results folder of `mstnet evaluate`; give another --name")


def write_evaluation(evaluation: Evaluation, cohort: Cohort, cohort_dir, predictions: Path, probability_file: Path | None,
           pattern: str, timepoints: int | None, resample: bool, binarize: str | None, description: str | None,
           overwrite: bool, started: str, wall_s: float) -> None:
    from mstnet.experiments.reproduce import PreparedRuns, commit_runs

    check_target(evaluation, overwrite)  # again: nothing may have changed it while scoring
    runs_dir, splits, folder = evaluation.runs_dir, evaluation.splits, evaluation.folder
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (runs_dir / "cohort.json").exists():
        commit_runs(PreparedRuns(runs_dir, cohort, splits, Path(cohort_dir) if cohort_dir is not None else None))
    elif not (runs_dir / "splits.json").exists():
        splits.write(runs_dir / "splits.json")
    if folder.exists():
        shutil.rmtree(folder)
    source = {"predictions": str(predictions.resolve()),
              "probabilities": str(probability_file.resolve()) if probability_file else None,
              "pattern": pattern if "segmentation" in evaluation.tasks else None, "timepoints": timepoints,
              "resample": resample, "binarize_predictions": binarize}
    metadata = {"name": evaluation.name,
                "description": description or f"predictions scored by mstnet evaluate ({predictions.name})",
                "tasks": list(evaluation.tasks), "group": "extra", "table_row": None, "information": "everything",
                "footnote": "", "kind": EXTERNAL_KIND, "source": source}
    _write_json(folder / "experiment.json", metadata)
    finished = datetime.now(timezone.utc).isoformat()
    for k, metrics in evaluation.metrics.items():
        fold_dir = folder / f"fold{k}"
        fold = splits.folds[k]
        configuration = {"experiment": metadata, "fold": k, "evaluate": source,
                         "data": {"cohort_fingerprint": cohort_fingerprint(cohort), "splits_hash": splits.hash,
                                  "patients": {"train": len(fold.train), "validation": len(fold.validation),
                                               "test": len(fold.test)}}}
        configuration[IDENTITY_KEY] = configuration_hash(json.loads(json.dumps(configuration, default=str)))
        _write_json(fold_dir / CONFIG_FILE, configuration)
        if evaluation.scans[k]:
            write_text_atomic(fold_dir / "segmentation.csv", pd.DataFrame(evaluation.scans[k]).to_csv(index=False))
        if evaluation.patients[k]:
            write_text_atomic(fold_dir / "predictions.csv", pd.DataFrame(evaluation.patients[k]).to_csv(index=False))
        _write_json(fold_dir / "metrics.json", metrics)
        _write_json(fold_dir / "run.json", {
            "status": "complete", "experiment": evaluation.name, "fold": k, "splits_hash": splits.hash,
            "started": started, "finished": finished, "wall_s": wall_s, "attempts": [], "selected_epoch": None,
            "threshold": DECISION_THRESHOLD, "resumed_from_epoch": None, "evaluated_by": "mstnet evaluate",
            "resampled_masks": evaluation.resampled.get(k, []), "python": platform.python_version(),
        })
    log.info("%s: %s scored on fold(s) %s -> %s", evaluation.name, "+".join(evaluation.tasks),
             ",".join(map(str, evaluation.metrics)), folder)
