"""The project's own cohort format: ``manifest.csv`` + ``clinical.csv`` + ``clinical_schema.json``.

This is what :meth:`mstnet.data.cohort.Cohort.write` writes (the embedded synthetic cohort
included) and what every other source can be converted to. Structural problems of the CSV
files (missing columns, unparseable numbers, labels other than 0/1 or differing within a
patient, duplicate (patient, time point) rows, duplicate clinical rows) raise one
:class:`CohortError` listing all of them; image files are not opened here (see
:func:`mstnet.data.validate.validate_cohort`).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pandas as pd

from mstnet.data.clinical import normalise_category, to_float
from mstnet.data.cohort import MANIFEST_COLUMNS, ClinicalSchema, Cohort, CohortError, NoduleLocation, Patient, Problem, Scan

log = logging.getLogger(__name__)

REQUIRED_MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "timepoint", "days", "image", "label")
"""Columns a manifest must have; ``mask`` and the ``nodule_*`` columns may be absent."""

NODULE_COLUMNS: tuple[str, ...] = ("nodule_x", "nodule_y", "nodule_z1", "nodule_z2")

UNLABELLED = -1
"""The label of a patient without one, read with ``require_labels=False`` (cases to predict): a
placeholder that nothing reads; scoring such a patient is refused."""


def read_csv_text(path: Path) -> pd.DataFrame:
    """A CSV with every cell as a stripped string (empty for missing), so we parse values ourselves."""
    if not path.exists():
        raise CohortError(Problem("does not exist", file=str(path)))
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise CohortError(Problem(f"cannot be read as CSV: {error}", file=str(path))) from error
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def parse_float(text: str) -> float:
    """``""`` -> NaN; otherwise ``float(text)`` (raises ValueError)."""
    return math.nan if text == "" else float(text)


def parse_label(text: str) -> int:
    """``"0"`` / ``"1"`` (also ``"1.0"``) -> int; anything else raises ValueError."""
    value = float(text)
    if value not in (0.0, 1.0):
        raise ValueError(f"label must be 0 (benign) or 1 (malignant), got {text!r}")
    return int(value)


def resolve_schema(schema: ClinicalSchema | Mapping | str | Path | None, folder: Path,
                   clinical: pd.DataFrame | None, id_column: str) -> ClinicalSchema:
    """The clinical schema: as given (object, dict or JSON path), else ``clinical_schema.json``, else inferred.

    Inference (logged): a column whose non-empty cells all parse as numbers is numeric, else categorical.
    """
    if isinstance(schema, ClinicalSchema):
        return schema
    if isinstance(schema, Mapping):
        return ClinicalSchema.from_json(dict(schema))
    path = Path(schema) if schema is not None else folder / "clinical_schema.json"
    if path.exists():
        try:
            return ClinicalSchema.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise CohortError(Problem(f"not valid JSON: {error}", file=str(path))) from error
        except CohortError as error:
            raise CohortError([replace(p, file=p.file or str(path)) for p in error.problems]) from error
    if schema is not None:
        raise CohortError(Problem("clinical schema file does not exist", file=str(path)))
    if clinical is None:
        return ClinicalSchema()
    categorical, numeric = [], []
    for column in clinical.columns:
        if column == id_column:
            continue
        cells = [c for c in clinical[column] if c != ""]
        try:
            [float(c) for c in cells]
            numeric.append(column)
        except ValueError:
            categorical.append(column)
    log.info("no clinical schema in %s: inferred categorical %s, numeric %s", folder, categorical, numeric)
    return ClinicalSchema(tuple(categorical), tuple(numeric))


def read_clinical_records(frame: pd.DataFrame, id_column: str, schema: ClinicalSchema, file: Path) -> dict[str, dict[str, object]]:
    """Clinical rows keyed by patient id: categorical values normalised (None = missing), numerics as float.

    Raises:
        CohortError: the id column or a schema column is missing, a patient has two rows, or a
            numeric cell is not a number (each problem names the patient and column).
    """
    problems = [Problem("column is missing from the clinical table", column=c, file=str(file))
                for c in (id_column, *schema.columns) if c not in frame.columns]
    if problems:
        raise CohortError(problems)
    records: dict[str, dict[str, object]] = {}
    for _, row in frame.iterrows():
        patient_id = row[id_column]
        if patient_id == "":
            problems.append(Problem("row without a patient id", column=id_column, file=str(file)))
            continue
        if patient_id in records:
            problems.append(Problem("two rows in the clinical table", patient_id=patient_id, file=str(file)))
            continue
        record: dict[str, object] = {c: normalise_category(row[c]) for c in schema.categorical}
        for column in schema.numeric:
            try:
                record[column] = to_float(row[column])
            except ValueError:
                problems.append(Problem(f"not a number: {row[column]!r}", patient_id=patient_id, column=column, file=str(file)))
        records[patient_id] = record
    if problems:
        raise CohortError(problems)
    return records


def manifest_path(source: str | Path) -> Path:
    """``source`` itself when it is a CSV file, else ``source/manifest.csv``."""
    source = Path(source)
    return source if source.suffix.lower() == ".csv" else source / "manifest.csv"


def _scan_of_row(row: pd.Series, columns: pd.Index, folder: Path, require_labels: bool,
                 problem: Callable[..., None]) -> tuple[Scan, int | None] | None:
    """The scan and label of one manifest row (time point and patient already checked); None when it has no
    image. Each problem is reported through ``problem(message, column)``."""
    try:
        days = float(row["days"])
        if math.isnan(days):
            raise ValueError
    except ValueError:
        problem(f"days is not a number: {row['days']!r}", "days")
        days = math.nan
    label: int | None = None
    try:
        if require_labels or row.get("label", "") != "":
            label = parse_label(row["label"])
    except ValueError:
        problem(f"label must be 0 (benign) or 1 (malignant), got {row['label']!r}", "label")
    if row["image"] == "":
        problem("no image path", "image")
        return None
    image = (folder / row["image"]).resolve()
    mask_text = row.get("mask", "")
    mask = (folder / mask_text).resolve() if mask_text else None
    nodule = None
    present = [c for c in NODULE_COLUMNS if c in columns and row[c] != ""]
    if present and len(present) < len(NODULE_COLUMNS):
        problem(f"nodule location partly given ({', '.join(present)}); give all of {', '.join(NODULE_COLUMNS)} or none",
                present[0])
    elif present:
        try:
            x, y, z1, z2 = (parse_float(row[c]) for c in NODULE_COLUMNS)
            nodule = NoduleLocation(x, y, int(z1), int(z2))
        except ValueError:
            problem("nodule location is not numeric", "nodule_x")
    return Scan(timepoint=row["timepoint"], days=days, image=image, mask=mask, nodule=nodule), label


def _scans_by_patient(frame: pd.DataFrame, path: Path, folder: Path, require_labels: bool,
                      problems: list[Problem]) -> dict[str, list[tuple[Scan, int | None]]]:
    """Each patient's (scan, label) rows of the manifest, in file order; the problems found appended to ``problems``."""
    rows_by_patient: dict[str, list[tuple[Scan, int | None]]] = defaultdict(list)
    seen: dict[tuple[str, str], int] = {}
    for index, row in frame.iterrows():
        line = index + 2  # header is line 1
        patient_id, timepoint = row["patient_id"], row["timepoint"]

        def problem(message: str, column: str | None = None) -> None:
            problems.append(Problem(f"line {line}: {message}", patient_id=patient_id or None, timepoint=timepoint or None,
                                    column=column, file=str(path)))

        if patient_id == "":
            problem("empty patient id", "patient_id")
            continue
        if timepoint == "":
            problem("empty time point", "timepoint")
            continue
        if (patient_id, timepoint) in seen:
            problem(f"duplicate (patient, time point): also on line {seen[patient_id, timepoint]}")
            continue
        seen[patient_id, timepoint] = line
        scan = _scan_of_row(row, frame.columns, folder, require_labels, problem)
        if scan is not None:
            rows_by_patient[patient_id].append(scan)
    return rows_by_patient


def _clinical_of(folder: Path, clinical_schema: ClinicalSchema | Mapping | str | Path | None,
                 problems: list[Problem]) -> tuple[ClinicalSchema, dict[str, dict[str, object]]]:
    """The clinical schema and records beside a manifest (``clinical.csv``, ``clinical_schema.json``); the
    problems found appended to ``problems``."""
    clinical_file = folder / "clinical.csv"
    clinical_frame = read_csv_text(clinical_file) if clinical_file.exists() else None
    schema = resolve_schema(clinical_schema, folder, clinical_frame, "patient_id")
    schema_file = (Path(clinical_schema) if isinstance(clinical_schema, (str, Path))
                   else folder / "clinical_schema.json" if clinical_schema is None else None)
    problems.extend(schema.problems(schema_file if schema_file is not None and schema_file.exists() else None))
    records: dict[str, dict[str, object]] = {}
    if clinical_frame is not None:
        try:
            records = read_clinical_records(clinical_frame, "patient_id", schema, clinical_file)
        except CohortError as error:
            problems.extend(error.problems)
    elif schema.columns:
        problems.append(Problem(f"clinical schema names columns {list(schema.columns)} but there is no clinical.csv",
                                file=str(clinical_file)))
    return schema, records


def load_manifest_cohort(source: str | Path, clinical_schema: ClinicalSchema | Mapping | str | Path | None = None,
                         name: str | None = None, require_labels: bool = True) -> Cohort:
    """Read a cohort from a folder holding ``manifest.csv`` (or from the manifest file itself).

    Args:
        source: the cohort folder or its ``manifest.csv``. ``clinical.csv`` and
            ``clinical_schema.json`` are looked for beside the manifest (both optional).
        clinical_schema: overrides ``clinical_schema.json``: a :class:`ClinicalSchema`, its JSON
            dict or a path to a JSON file.
        name: the cohort's name; default: the folder's name.
        require_labels: ``False`` (new cases to predict, ``mstnet predict``): the ``label``
            column may be absent or empty; a patient without a label gets :data:`UNLABELLED`.

    Returns:
        A :class:`Cohort` with absolute paths (relative ones resolved against the manifest's
        folder) and each patient's scans ordered by ``days``.

    Raises:
        CohortError: every structural problem of the CSV files at once.
    """
    path = manifest_path(source)
    folder = path.parent.resolve()
    frame = read_csv_text(path)
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in frame.columns and (require_labels or c != "label")]
    if missing:
        raise CohortError([Problem(f"column is missing (expected columns {', '.join(MANIFEST_COLUMNS)})", column=c, file=str(path))
                           for c in missing])
    problems: list[Problem] = []
    patients_rows = {}
    for patient_id, rows in _scans_by_patient(frame, path, folder, require_labels, problems).items():
        labels = {label for _, label in rows if label is not None}
        if len(labels) > 1:
            problems.append(Problem(f"label differs between time points ({', '.join(f'{s.timepoint}={lab}' for s, lab in rows)})",
                                    patient_id=patient_id, column="label", file=str(path)))
        patients_rows[patient_id] = (sorted((s for s, _ in rows), key=lambda s: s.days), labels)
    schema, records = _clinical_of(folder, clinical_schema, problems)
    if problems:
        raise CohortError(problems)

    patients = tuple(
        Patient(patient_id, next(iter(labels)) if labels else UNLABELLED, tuple(scans), records.get(patient_id, {}))
        for patient_id, (scans, labels) in patients_rows.items()
    )
    return Cohort(patients, schema, root=folder, name=name or folder.name)
