"""The layout of a folder of predictions: mask file names, ``probabilities.csv`` and ``prediction.json``.

``mstnet predict`` and ``mstnet run --export-masks`` write this layout
(:class:`mstnet.experiments.prediction.PredictionWriter`); ``mstnet evaluate``
(:func:`mstnet.experiments.evaluation.evaluate_predictions`) reads it with the functions here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mstnet.data.cohort import Cohort, CohortError, Problem
from mstnet.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "{patient_id}_{timepoint}.nii.gz"
"""How predicted masks are named inside ``PRED``: ``{patient_id}`` and ``{timepoint}`` are
replaced by each scan's values (``/`` allowed, for sub-folders; a DICOM series is a folder, e.g.
``{patient_id}_{timepoint}``)."""

PROBABILITIES_FILE = "probabilities.csv"
"""The probabilities CSV looked for inside ``PRED`` (and written by ``mstnet predict``)."""

PREDICTION_RECORD = "prediction.json"
"""Written by ``mstnet predict`` and ``mstnet run --export-masks`` beside their masks."""


def pattern_regex(pattern: str) -> re.Pattern:
    """A regular expression matching the names ``pattern`` produces (for spotting files that name no scan)."""
    if "{patient_id}" not in pattern or "{timepoint}" not in pattern:
        raise UsageError(f"--pattern {pattern!r} must contain {{patient_id}} and {{timepoint}}, "
                         f"e.g. {DEFAULT_PATTERN!r}")
    parts = re.split(r"(\{patient_id\}|\{timepoint\})", pattern)
    regex = "".join("[^/]+" if part in ("{patient_id}", "{timepoint}") else re.escape(part) for part in parts)
    return re.compile(f"^{regex}$")


def mask_name(pattern: str, patient_id: str, timepoint: str) -> str:
    try:
        return pattern.format(patient_id=patient_id, timepoint=timepoint)
    except (KeyError, IndexError, ValueError) as error:
        raise UsageError(f"--pattern {pattern!r}: only {{patient_id}} and {{timepoint}} may be named ({error})") from None


def find_mask_files(folder: Path, pattern: str, cohort: Cohort) -> dict[tuple[str, str], Path]:
    """The predicted mask of every cohort scan that has one in ``folder``, keyed by (patient, time point).

    Files that match the pattern but name no scan of the cohort are logged and ignored (a
    naming mistake then shows as missing predictions, which :func:`mstnet.experiments.evaluation.evaluate_predictions` refuses).
    """
    regex = pattern_regex(pattern)
    found = {}
    expected = set()
    for patient in cohort:
        for scan in patient.scans:
            name = mask_name(pattern, patient.patient_id, scan.timepoint)
            expected.add(name)
            if (folder / name).exists():
                found[patient.patient_id, scan.timepoint] = folder / name
    depth = pattern.count("/")
    candidates = folder.glob("/".join(["*"] * (depth + 1)))
    strays = sorted(str(p.relative_to(folder)) for p in candidates
                    if regex.match(str(p.relative_to(folder))) and str(p.relative_to(folder)) not in expected)
    if strays:
        log.warning("%s: %d file(s) match the pattern %r but name no scan of cohort %r, ignored: %s%s", folder,
                    len(strays), pattern, cohort.name, ", ".join(strays[:5]), " ..." if len(strays) > 5 else "")
    return found


def read_probabilities(path: Path, cohort: Cohort) -> dict[str, float]:
    """``patient_id -> probability`` from a CSV with columns ``patient_id`` and ``probability``.

    Patients that are not in the cohort are logged and ignored.

    Raises:
        CohortError: a missing column, a duplicate patient, a probability that is not a number
            in [0, 1] (named with its line).
    """
    if not path.exists():
        raise CohortError(Problem("does not exist", file=str(path)))
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(Problem(f"cannot be read as CSV: {error}", file=str(path))) from None
    missing = [c for c in ("patient_id", "probability") if c not in frame.columns]
    if missing:
        raise CohortError(Problem(f"column(s) {missing} missing (expected patient_id,probability; found "
                                  f"{list(frame.columns)})", file=str(path)))
    known = set(cohort.patient_ids)
    problems, probabilities, strays = [], {}, []
    for index, (patient_id, value) in enumerate(zip(frame["patient_id"].astype(str).str.strip(), frame["probability"])):
        line = index + 2
        try:
            probability = float(value)
        except (TypeError, ValueError):
            probability = math.nan
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            problems.append(Problem(f"line {line}: probability must be a number in [0, 1], got {value!r}",
                                    patient_id=patient_id, file=str(path)))
        elif patient_id not in known:
            strays.append(patient_id)
        elif patient_id in probabilities:
            problems.append(Problem(f"line {line}: second probability for this patient", patient_id=patient_id,
                                    file=str(path)))
        else:
            probabilities[patient_id] = probability
    if problems:
        raise CohortError(problems[0] if len(problems) == 1 else Problem(
            f"{problems[0]} (and {len(problems) - 1} more problem(s) in this file)"))
    if strays:
        log.warning("%s: %d patient(s) not in cohort %r, ignored: %s%s", path, len(strays), cohort.name,
                    ", ".join(strays[:5]), " ..." if len(strays) > 5 else "")
    return probabilities


def prediction_record(folder: Path) -> dict[str, Any]:
    """``prediction.json`` of a folder written by ``mstnet predict`` / ``--export-masks`` ({} when absent or unreadable)."""
    record = folder / PREDICTION_RECORD
    try:
        data = json.loads(record.read_text()) if record.exists() else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
