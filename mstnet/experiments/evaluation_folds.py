"""Which folds ``mstnet evaluate`` scores: the suite's folds of a results folder, or one fold of everyone.

Used by :func:`mstnet.experiments.evaluation.evaluate_predictions` (see its module docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from mstnet.data.cohort import Cohort, CohortError, Problem
from mstnet.errors import UsageError
from mstnet.experiments.splits import Fold, Splits

log = logging.getLogger(__name__)


def single_fold(patient_ids: Sequence[str]) -> Splits:
    """One fold (fold 0) whose test patients are ``patient_ids`` (no training or validation patients)."""
    return Splits(folds=(Fold(0, (), (), tuple(sorted(patient_ids))),), seed=0)


def read_splits(runs_dir: Path) -> Splits:
    path = Path(runs_dir) / "splits.json"
    if not path.exists():
        raise UsageError(f"--folds-from {runs_dir}: no splits.json there (a results folder of `mstnet run` holds one)")
    try:
        return Splits.read(path)
    except (ValueError, KeyError, TypeError) as error:
        raise CohortError(Problem(f"cannot be read as folds: {error}", file=str(path))) from None


def evaluation_splits(cohort: Cohort, folds_from: str | Path | None) -> Splits:
    """The folds of ``folds_from`` (checked to hold only patients of ``cohort``), else one fold of everyone."""
    splits = read_splits(Path(folds_from)) if folds_from is not None else single_fold(cohort.patient_ids)
    unknown = sorted({p for f in splits.folds for p in f.test} - set(cohort.patient_ids))
    if unknown:
        raise CohortError(Problem(f"the folds hold {len(unknown)} patient(s) that are not in cohort {cohort.name!r} "
                                  f"({', '.join(unknown[:5])}): --data is not the cohort of --folds-from",
                                  file=str(Path(folds_from) / "splits.json") if folds_from else None))
    return splits


def folds_to_score(splits: Splits, folds: Sequence[int] | None, predicted_patients: Collection[str],
                   predictions: Path) -> list[int]:
    """``folds`` (checked), or by default every fold with a prediction for one of its test patients."""
    if folds is None:
        fold_list = [f.fold for f in splits.folds if predicted_patients & set(f.test)]
        if not fold_list:
            raise CohortError(Problem("no prediction for a test patient of any fold", file=str(predictions)))
        return fold_list
    fold_list = list(dict.fromkeys(folds))
    bad = [k for k in fold_list if not 0 <= k < splits.n_folds]
    if bad:
        raise UsageError(f"--folds {','.join(map(str, bad))}: no such fold; the folds are 0-{splits.n_folds - 1}")
    return fold_list


def warn_leaks(record: dict[str, Any], splits: Splits, fold_list: Sequence[int]) -> None:
    """Log when ``mstnet predict`` output of some folds is scored on other folds of the same splits:
    those models were trained on the scored test patients."""
    folds = record.get("folds")
    if record.get("splits_hash") != splits.hash or not isinstance(folds, list):
        return
    leaking = [k for k in fold_list if folds != [k]]
    if leaking:
        log.warning("these predictions come from fold(s) %s of %s, whose models were trained on the test patients "
                    "of fold(s) %s scored here: score fold k with `mstnet predict --fold k` output (--folds k)",
                    ",".join(map(str, folds)), record.get("run_dir", "?"), ",".join(map(str, leaking)))
