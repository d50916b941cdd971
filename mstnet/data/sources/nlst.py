"""The seed release's NLST layout.

- an annotation CSV with columns ``Subject ID, study_yr, x, y, z1, z2, label`` (one row per
  (patient, screening round); ``study_yr`` is ``T0`` / ``T1`` / ``T2``; x, y the nodule
  centre in voxels, z1..z2 its slice range);
- volumes ``{Subject ID}_{study_yr}.npy`` of shape 16 x 512 x 512 (slice axis first);
- masks with the same names in a mask folder, stored 512 x 512 x 16 (slice axis last): the
  files are left as they are, :func:`mstnet.data.io.read_mask` moves the axis on load;
- a clinical CSV keyed by ``pid`` with race, cigsmok, gender, age, scr_res0, scr_iso0.

Default file names inside a folder (what :func:`write_nlst_layout` writes): ``nodules.csv``,
``images/``, ``masks/``, ``clinical.csv``; each can be given explicitly. ``days`` are
T0 = 0, T1 = 365, T2 = 730 unless given. A patient's label is that of its latest round (the
release's rule); the loader logs patients whose label changes between rounds.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mstnet.data.cohort import (
    NLST_CLINICAL_CATEGORICAL,
    NLST_CLINICAL_NUMERIC,
    ClinicalSchema,
    Cohort,
    CohortError,
    NoduleLocation,
    Patient,
    Problem,
    Scan,
    write_text_atomic,
)
from mstnet.data.io import read_mask, read_volume, write_npy
from mstnet.data.sources.manifest import parse_float, parse_label, read_clinical_records, read_csv_text

log = logging.getLogger(__name__)

NLST_ANNOTATION_COLUMNS: tuple[str, ...] = ("Subject ID", "study_yr", "x", "y", "z1", "z2", "label")
"""Columns of the seed's annotation CSV."""

NLST_DEFAULT_DAYS: dict[str, float] = {"T0": 0.0, "T1": 365.0, "T2": 730.0}
"""Days since T0 of each screening round when no better dates are known."""

NLST_CLINICAL_ID = "pid"

NLST_CLINICAL_SOURCES: dict[str, str] = {"scr_res0": "screening", "scr_iso0": "screening"}
"""Sources of the NLST clinical columns that are not ``history`` (the two T0 screening-result
columns); race, cigsmok, gender and age are ``history``."""


def find_annotation_csv(folder: Path) -> Path | None:
    """The CSV in ``folder`` whose header has ``Subject ID`` and ``study_yr`` (``nodules.csv`` first)."""
    candidates = sorted(folder.glob("*.csv"), key=lambda p: (p.name != "nodules.csv", p.name))
    for path in candidates:
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if {"Subject ID", "study_yr"} <= {str(c).strip() for c in header}:
            return path
    return None


def _annotated_scans(frame: pd.DataFrame, annotations_path: Path, days: Mapping[str, float], image_dir: Path,
                     mask_dir: Path | None, problems: list[Problem]) -> dict[str, list[tuple[Scan, int]]]:
    """Each patient's (scan, label) rows of the annotation CSV; the problems found appended to ``problems``."""
    scans: dict[str, list[tuple[Scan, int]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for index, row in frame.iterrows():
        patient_id, study_yr = row["Subject ID"], row["study_yr"]
        where = {"patient_id": patient_id or None, "timepoint": study_yr or None, "file": f"{annotations_path} line {index + 2}"}
        if patient_id == "":
            problems.append(Problem("empty Subject ID", column="Subject ID", **where))
            continue
        if study_yr not in days:
            problems.append(Problem(f"study_yr {study_yr!r} is not one of {sorted(days)}", column="study_yr", **where))
            continue
        if (patient_id, study_yr) in seen:
            problems.append(Problem("duplicate (Subject ID, study_yr) row", **where))
            continue
        seen.add((patient_id, study_yr))
        try:
            label = parse_label(row["label"])
        except ValueError:
            problems.append(Problem(f"label must be 0 or 1, got {row['label']!r}", column="label", **where))
            continue
        nodule = None
        try:
            x, y, z1, z2 = (parse_float(row[c]) for c in ("x", "y", "z1", "z2"))
            if not any(math.isnan(v) for v in (x, y, z1, z2)):
                nodule = NoduleLocation(x, y, int(z1), int(z2))
        except ValueError:
            problems.append(Problem("nodule location (x, y, z1, z2) is not numeric", column="x", **where))
            continue
        stem = f"{patient_id}_{study_yr}.npy"
        mask = mask_dir / stem if mask_dir is not None and (mask_dir / stem).exists() else None
        scans[patient_id].append((Scan(study_yr, days[study_yr], (image_dir / stem).resolve(),
                                       mask.resolve() if mask else None, nodule), label))
    return scans


def _nlst_clinical(folder: Path, clinical_csv: str | Path | None, clinical_schema: ClinicalSchema | None,
                   problems: list[Problem]) -> tuple[ClinicalSchema, dict[str, dict[str, object]]]:
    """The clinical schema and records of the NLST clinical CSV (keyed by ``pid``); problems appended to ``problems``."""
    clinical_path = Path(clinical_csv) if clinical_csv is not None else folder / "clinical.csv"
    records: dict[str, dict[str, object]] = {}
    schema = clinical_schema or ClinicalSchema()
    if clinical_path.exists():
        clinical_frame = read_csv_text(clinical_path)
        if clinical_schema is None:
            schema = ClinicalSchema(tuple(c for c in NLST_CLINICAL_CATEGORICAL if c in clinical_frame.columns),
                                    tuple(c for c in NLST_CLINICAL_NUMERIC if c in clinical_frame.columns),
                                    sources={c: source for c, source in NLST_CLINICAL_SOURCES.items() if c in clinical_frame.columns})
        try:
            records = read_clinical_records(clinical_frame, NLST_CLINICAL_ID, schema, clinical_path)
        except CohortError as error:
            problems.extend(error.problems)
    elif clinical_csv is not None:
        problems.append(Problem("clinical CSV does not exist", file=str(clinical_path)))
    return schema, records


def _latest_label_patients(scans: dict[str, list[tuple[Scan, int]]],
                           records: dict[str, dict[str, object]]) -> tuple[Patient, ...]:
    """Patients with their scans by ``days`` and the label of their latest round (changes logged)."""
    patients = []
    for patient_id, items in scans.items():
        items.sort(key=lambda item: item[0].days)
        labels = [label for _, label in items]
        if len(set(labels)) > 1:
            log.info("NLST patient %s: label changes between rounds %s; using the latest (%d)",
                     patient_id, dict(zip((s.timepoint for s, _ in items), labels)), labels[-1])
        patients.append(Patient(patient_id, labels[-1], tuple(s for s, _ in items), records.get(patient_id, {})))
    return tuple(patients)


def load_nlst_cohort(folder: str | Path, annotations_csv: str | Path | None = None, image_dir: str | Path | None = None,
                     mask_dir: str | Path | None = None, clinical_csv: str | Path | None = None,
                     days: Mapping[str, float] | None = None, clinical_schema: ClinicalSchema | None = None,
                     name: str | None = None) -> Cohort:
    """Read the seed's NLST layout as a :class:`Cohort`.

    Args:
        folder: the data folder; the defaults below are relative to it.
        annotations_csv: default: the CSV in ``folder`` with ``Subject ID`` and ``study_yr`` columns.
        image_dir: folder of ``{Subject ID}_{study_yr}.npy`` volumes; default ``folder/images``
            if it exists, else ``folder``.
        mask_dir: folder of the masks (same names); default ``folder/masks`` if it exists, else none.
        clinical_csv: default ``folder/clinical.csv`` if it exists (keyed by ``pid``).
        days: days since T0 per ``study_yr``; default :data:`NLST_DEFAULT_DAYS`.
        clinical_schema: default: the NLST columns of :mod:`mstnet.data.cohort` present in the CSV,
            ``scr_res0`` and ``scr_iso0`` of source ``screening`` (:data:`NLST_CLINICAL_SOURCES`).
        name: default: the folder's name.

    Raises:
        CohortError: every structural problem of the CSV files at once (missing columns,
            unknown study_yr, non-numeric locations, labels other than 0/1, duplicate rows).
    """
    folder = Path(folder).resolve()
    annotations_path = Path(annotations_csv) if annotations_csv is not None else find_annotation_csv(folder)
    if annotations_path is None:
        raise CohortError(Problem("no NLST annotation CSV (with 'Subject ID' and 'study_yr' columns) in this folder", file=str(folder)))
    image_dir = Path(image_dir) if image_dir is not None else (folder / "images" if (folder / "images").is_dir() else folder)
    if mask_dir is None and (folder / "masks").is_dir():
        mask_dir = folder / "masks"
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    days = dict(days or NLST_DEFAULT_DAYS)

    frame = read_csv_text(annotations_path)
    missing = [c for c in NLST_ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise CohortError([Problem("column is missing from the NLST annotation CSV", column=c, file=str(annotations_path))
                           for c in missing])
    problems: list[Problem] = []
    scans = _annotated_scans(frame, annotations_path, days, image_dir, mask_dir, problems)
    schema, records = _nlst_clinical(folder, clinical_csv, clinical_schema, problems)
    problems.extend(schema.problems())
    if problems:
        raise CohortError(problems)
    return Cohort(_latest_label_patients(scans, records), schema, root=folder, name=name or folder.name)


def write_nlst_layout(cohort: Cohort, folder: str | Path, write_spacing: bool = True) -> Path:
    """Write ``cohort`` in the seed's NLST layout (``nodules.csv``, ``images/``, ``masks/``, ``clinical.csv``).

    Volumes are written as float32 ``(D, H, W)`` ``.npy`` files, masks as uint8 ``(H, W, D)``
    (slice axis last, as the release stores them). ``write_spacing`` adds the JSON sidecars
    holding each volume's spacing (the release has none; its loader then assumes 1 mm).
    Time point names must be ``study_yr`` values (``T0``...). Used for round-trip tests and to
    hand a cohort to code written for the release.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in cohort:
        for scan in patient.scans:
            stem = f"{patient.patient_id}_{scan.timepoint}.npy"
            volume = read_volume(scan.image)
            write_npy(folder / "images" / stem, volume.array.astype(np.float32), volume.spacing if write_spacing else None)
            if scan.mask is not None:
                mask = read_mask(scan.mask, image_shape=volume.shape, binarize=cohort.mask_binarization)
                write_npy(folder / "masks" / stem, np.moveaxis(mask.array, 0, -1), mask.spacing if write_spacing else None)
            loc = scan.nodule
            rows.append({"Subject ID": patient.patient_id, "study_yr": scan.timepoint,
                         "x": loc.x if loc else "", "y": loc.y if loc else "",
                         "z1": loc.z1 if loc else "", "z2": loc.z2 if loc else "", "label": patient.label})
    write_text_atomic(folder / "nodules.csv", pd.DataFrame(rows, columns=list(NLST_ANNOTATION_COLUMNS)).to_csv(index=False))
    clinical = cohort.clinical_frame().rename(columns={"patient_id": NLST_CLINICAL_ID})
    write_text_atomic(folder / "clinical.csv", clinical.to_csv(index=False))
    return folder

