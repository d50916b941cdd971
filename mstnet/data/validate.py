"""Check a cohort and report every problem at once, each located by patient, time point, file and column.

:func:`validate_cohort` checks an in-memory :class:`Cohort` against what an experiment needs
of it (:class:`CohortNeeds`), and is the one check shared by ``mstnet data validate`` and the
start of ``mstnet run``:

- the cohort: no patients at all; a clinical schema listing a column as both categorical and
  numeric; fewer patients of a label than cross-validation folds; with ``segmentation``, no
  mask at all or (``read_data``) every mask empty;
- each patient: duplicates, too few time points, a label other than 0/1, duplicate time
  points, negative days, days not strictly increasing across its time points (in the order
  of its scans, and in the order of numbered time point names such as T0, T1, T2);
- clinical records (when the experiment uses them): a missing row, NaN numerics, missing
  categories, categories outside the allowed values (the schema's ``categories`` by default);
- with ``check_images``, every image and mask: missing, unreadable (truncated included), not
  3D, DICOM folders with two series or a missing slice, mask shape differing from its image,
  nodule location outside the image. Images are checked from their headers (NIfTI header,
  DICOM headers, .npy header) unless ``read_data`` asks for a full read, which also finds
  NaN / inf voxels, mask values other than 0 and 1 (under the cohort's
  ``mask_binarization``) and empty masks; every file is then read once.

Problems come in a fixed order: cohort-wide ones first, then by patient (the cohort's
order), within a patient its own problems before those of its time points (in scan order).

:func:`validate_source` also reports the structural problems a loader raises (labels that
differ between rows of one patient, duplicate rows, bad columns), for ``mstnet data validate``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mstnet.data.clinical import normalise_category, to_float
from mstnet.data.cohort import Cohort, CohortError, Patient, Problem, Scan
from mstnet.data.io import read_mask, read_volume, read_volume_info
from mstnet.data.sources import load_cohort


NO_PATIENTS = "the cohort has no patients"


@dataclass(frozen=True)
class CohortNeeds:
    """What an experiment needs of a cohort.

    Attributes:
        min_timepoints: every patient needs at least this many time points.
        n_folds: each label (benign, malignant) needs at least this many patients; ``None``: no check.
        segmentation: masks are used: some scan must have a mask and, when data is read, at
            least one mask of the cohort must hold foreground.
        clinical: the clinical record is used: every patient needs a clinical row (when the
            schema has columns) with its values present and allowed.
    """

    min_timepoints: int = 1
    n_folds: int | None = None
    segmentation: bool = False
    clinical: bool = True


@dataclass
class _ScanFindings:
    """What a full read of one scan learnt beyond its problems."""

    mask_read: bool = False
    mask_foreground: bool = False


def _located(error: CohortError, patient: Patient, scan: Scan, what: str) -> list[Problem]:
    """The problems of a reader's error, located at the scan; ``what`` (image / mask) prefixes each message."""
    return [Problem(p.message if p.message.startswith(what) else f"{what}: {p.message}", patient_id=patient.patient_id,
                    timepoint=scan.timepoint, file=p.file, column=p.column)
            for p in error.problems]


def _finite_problem(patient: Patient, scan: Scan, array: np.ndarray) -> list[Problem]:
    if np.isfinite(array).all():
        return []
    n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    return [Problem(f"image has {n_nan} NaN and {n_inf} inf voxel(s) of {array.size}; every voxel must be finite",
                    patient_id=patient.patient_id, timepoint=scan.timepoint, file=str(scan.image))]


def _check_scan(patient: Patient, scan: Scan, read_data: bool, binarize: str | None,
                findings: _ScanFindings) -> list[Problem]:
    problems: list[Problem] = []
    try:
        if read_data:
            image = read_volume(scan.image)
            problems += _finite_problem(patient, scan, image.array)
        else:
            image = read_volume_info(scan.image)
        image_shape = image.shape
    except CohortError as error:
        return _located(error, patient, scan, "image")
    if scan.mask is not None:
        try:
            if read_data:
                mask = read_mask(scan.mask, image_shape=image_shape, binarize=binarize)
                findings.mask_read = True
                findings.mask_foreground = bool(mask.array.any())
                mask_shape = mask.shape
            else:
                mask_shape = read_volume_info(scan.mask).shape
        except CohortError as error:
            problems += _located(error, patient, scan, "mask")
        else:
            slice_last = tuple(image_shape[1:]) + tuple(image_shape[:1])
            if tuple(mask_shape) not in (tuple(image_shape), slice_last):
                problems.append(Problem(f"mask shape {tuple(mask_shape)} differs from image shape {tuple(image_shape)}",
                                        patient_id=patient.patient_id, timepoint=scan.timepoint, file=str(scan.mask)))
    if scan.nodule is not None:
        depth, height, width = image_shape
        loc = scan.nodule
        if not (0 <= loc.z1 <= loc.z2 < depth and 0 <= loc.x < width and 0 <= loc.y < height):
            problems.append(Problem(f"nodule location (x={loc.x}, y={loc.y}, z={loc.z1}..{loc.z2}) lies outside the "
                                    f"image of shape (D, H, W) = {tuple(image_shape)}",
                                    patient_id=patient.patient_id, timepoint=scan.timepoint, file=str(scan.image)))
    return problems


def _check_clinical(cohort: Cohort, patient: Patient, allowed_categories: Mapping[str, Collection] | None) -> list[Problem]:
    schema = cohort.clinical_schema
    if not schema.columns:
        return []
    if not patient.clinical:
        return [Problem("no clinical row", patient_id=patient.patient_id)]
    problems = []
    for column in schema.categorical:
        value = normalise_category(patient.clinical.get(column))
        if value is None:
            problems.append(Problem("missing or unknown category", patient_id=patient.patient_id, column=column))
        elif allowed_categories and column in allowed_categories:
            allowed = {normalise_category(v) for v in allowed_categories[column]} - {None}
            if value not in allowed:
                problems.append(Problem(f"unknown category {value!r} (expected one of {sorted(allowed)})",
                                        patient_id=patient.patient_id, column=column))
    for column in schema.numeric:
        try:
            value = to_float(patient.clinical.get(column))
        except (TypeError, ValueError):
            problems.append(Problem(f"not a number: {patient.clinical.get(column)!r}", patient_id=patient.patient_id, column=column))
            continue
        if math.isnan(value):
            problems.append(Problem("missing value (NaN)", patient_id=patient.patient_id, column=column))
    return problems


_NUMBERED_TIMEPOINT = re.compile(r"^(.*?)(\d+)$")


def _check_days(patient: Patient) -> list[Problem]:
    """Negative days; days not strictly increasing along the scans, or along numbered time point names."""
    pid = patient.patient_id
    problems = []
    for scan in patient.scans:
        if scan.days < 0:
            problems.append(Problem(f"days must be 0 or more (days since the first scan), got {scan.days:g}",
                                    patient_id=pid, timepoint=scan.timepoint, column="days"))
    for previous, scan in zip(patient.scans, patient.scans[1:]):
        if not scan.days > previous.days:
            problems.append(Problem(f"days must increase strictly across time points: {scan.timepoint} at day {scan.days:g} "
                                    f"follows {previous.timepoint} at day {previous.days:g}",
                                    patient_id=pid, timepoint=scan.timepoint, column="days"))
    numbered = [_NUMBERED_TIMEPOINT.match(str(scan.timepoint)) for scan in patient.scans]
    if len(numbered) > 1 and all(numbered) and len({m.group(1) for m in numbered}) == 1:
        by_name = sorted(zip((int(m.group(2)) for m in numbered), patient.scans), key=lambda item: item[0])
        for (_, previous), (_, scan) in zip(by_name, by_name[1:]):
            if scan.days < previous.days:
                problems.append(Problem(f"days must increase with the time point: {scan.timepoint} is at day {scan.days:g}, "
                                        f"before {previous.timepoint} at day {previous.days:g}",
                                        patient_id=pid, timepoint=scan.timepoint, column="days"))
    return problems


def _cohort_file(cohort: Cohort) -> str | None:
    """Where the cohort was read from: its ``manifest.csv`` when there is one, else its folder."""
    if cohort.root is None:
        return None
    manifest = Path(cohort.root) / "manifest.csv"
    return str(manifest if manifest.exists() else cohort.root)


def _schema_file(cohort: Cohort) -> str | None:
    if cohort.root is None:
        return None
    path = Path(cohort.root) / "clinical_schema.json"
    return str(path) if path.exists() else None


def _check_folds(cohort: Cohort, n_folds: int) -> list[Problem]:
    counts = Counter(p.label for p in cohort if p.label in (0, 1) and not isinstance(p.label, bool))
    return [Problem(f"only {counts.get(label, 0)} {name} patient(s) (label {label}), fewer than the {n_folds} "
                    f"cross-validation folds: each fold needs at least one patient of each label",
                    column="label", file=_cohort_file(cohort))
            for label, name in ((0, "benign"), (1, "malignant")) if counts.get(label, 0) < n_folds]


def _order(cohort: Cohort, problems: list[Problem]) -> list[Problem]:
    """Cohort-wide problems first, then by patient (cohort order) and time point (scan order); stable otherwise."""
    patient_rank: dict[str, int] = {}
    timepoint_rank: dict[tuple[str, str], int] = {}
    for index, patient in enumerate(cohort):
        patient_rank.setdefault(patient.patient_id, index)
        for position, scan in enumerate(patient.scans):
            timepoint_rank.setdefault((patient.patient_id, scan.timepoint), position)

    def key(problem: Problem) -> tuple:
        if problem.patient_id is None:
            return (0, 0, 0, 0)
        rank = patient_rank.get(problem.patient_id, len(patient_rank))
        if problem.timepoint is None:
            return (1, rank, 0, 0)
        return (1, rank, 1, timepoint_rank.get((problem.patient_id, problem.timepoint), len(timepoint_rank)))

    return sorted(problems, key=key)


def _cohort_wide_problems(cohort: Cohort, needs: CohortNeeds) -> list[Problem]:
    """No patient, a bad clinical schema, too few patients of a label for the folds, no mask for a segmentation
    experiment, a patient id twice."""
    problems: list[Problem] = []
    if len(cohort) == 0:
        problems.append(Problem(NO_PATIENTS, file=_cohort_file(cohort)))
    problems += cohort.clinical_schema.problems(_schema_file(cohort))
    if needs.n_folds is not None and len(cohort):
        problems += _check_folds(cohort, needs.n_folds)
    if needs.segmentation and len(cohort) and not any(scan.mask is not None for patient in cohort for scan in patient.scans):
        problems.append(Problem("no scan has a mask, and the experiment trains segmentation", column="mask",
                                file=_cohort_file(cohort)))
    for patient_id, count in Counter(cohort.patient_ids).items():
        if count > 1:
            problems.append(Problem(f"appears {count} times in the cohort", patient_id=patient_id))
    return problems


def _check_patient_record(patient: Patient, min_timepoints: int) -> list[Problem]:
    """Too few time points, a label other than 0/1, a time point twice."""
    problems: list[Problem] = []
    pid = patient.patient_id
    if len(patient.scans) < min_timepoints:
        problems.append(Problem(f"has {len(patient.scans)} time point(s) ({', '.join(patient.timepoints) or 'none'}), "
                                f"at least {min_timepoints} required", patient_id=pid))
    if patient.label not in (0, 1) or isinstance(patient.label, bool):
        problems.append(Problem(f"label must be 0 (benign) or 1 (malignant), got {patient.label!r}", patient_id=pid, column="label"))
    for timepoint, count in Counter(patient.timepoints).items():
        if count > 1:
            problems.append(Problem(f"time point appears {count} times", patient_id=pid, timepoint=timepoint))
    return problems


def validate_cohort(cohort: Cohort, needs: CohortNeeds = CohortNeeds(), check_images: bool = True, read_data: bool = False,
                    allowed_categories: Mapping[str, Collection] | None = None, *,
                    min_timepoints: int | None = None) -> list[Problem]:
    """Every problem of ``cohort`` for an experiment with ``needs``; an empty list means it is fit for use.

    Args:
        cohort: the cohort.
        needs: what the experiment needs (default ``CohortNeeds()``: one time point, no fold
            or segmentation requirement, clinical records checked). An int is read as
            ``CohortNeeds(min_timepoints=...)`` (the older signature).
        check_images: open every image and mask (headers, or all data with ``read_data``).
        read_data: read every image and mask in full, once (slower): finds truncated files,
            NaN / inf voxels, mask values other than 0 and 1 (under ``cohort.mask_binarization``)
            and, with ``needs.segmentation``, a cohort whose masks are all empty.
        allowed_categories: per categorical column, the values it may take; others are
            reported. Default: the clinical schema's ``categories``.
        min_timepoints: kept for older callers; overrides ``needs.min_timepoints``.

    Returns:
        The problems, cohort-wide ones first, then by patient and time point.
    """
    if isinstance(needs, int):
        needs = CohortNeeds(min_timepoints=needs)
    if min_timepoints is not None:
        needs = CohortNeeds(min_timepoints, needs.n_folds, needs.segmentation, needs.clinical)
    if allowed_categories is None:
        allowed_categories = cohort.clinical_schema.categories
    problems = _cohort_wide_problems(cohort, needs)
    masks_read, masks_with_foreground = 0, 0
    for patient in cohort:
        problems += _check_patient_record(patient, needs.min_timepoints)
        problems += _check_days(patient)
        if needs.clinical:
            problems += _check_clinical(cohort, patient, allowed_categories)
        if check_images:
            for scan in patient.scans:
                findings = _ScanFindings()
                problems += _check_scan(patient, scan, read_data, cohort.mask_binarization, findings)
                masks_read += findings.mask_read
                masks_with_foreground += findings.mask_foreground
    if needs.segmentation and read_data and masks_read and not masks_with_foreground:
        problems.append(Problem(f"every mask is empty (no foreground voxel in any of the {masks_read} mask(s) read), "
                                "and the experiment trains segmentation", column="mask", file=_cohort_file(cohort)))
    return _order(cohort, problems)


def validate_source(source: str | Path, needs: CohortNeeds | Callable[[Cohort], CohortNeeds] = CohortNeeds(),
                    check_images: bool = True, read_data: bool = False, *, min_timepoints: int | None = None,
                    **loader_options) -> tuple[Cohort | None, list[Problem]]:
    """Load ``source`` with :func:`mstnet.data.sources.load_cohort` and validate it (:func:`validate_cohort`).

    Args:
        source: the cohort folder or its CSV file.
        needs: what the experiment needs (default ``CohortNeeds()``), or a function of the
            loaded cohort returning them (e.g. segmentation only when some scan has a mask).
        check_images, read_data: as in :func:`validate_cohort`.
        min_timepoints: kept for older callers; overrides ``needs.min_timepoints``.
        loader_options: go to :func:`load_cohort` (e.g. ``binarize_masks="nonzero"``, ``kind=``).

    Returns:
        (cohort, problems): the cohort is ``None`` when loading failed; the problems are then
        the loader's structural ones (images are not checked before the tables are sound).
    """
    try:
        cohort = load_cohort(source, **loader_options)
    except CohortError as error:
        return None, list(error.problems)
    if callable(needs):
        needs = needs(cohort)
    problems = validate_cohort(cohort, needs, check_images=check_images, read_data=read_data, min_timepoints=min_timepoints)
    if Path(source).is_file():  # a manifest given as a file: name it rather than its folder
        problems = [replace(p, file=str(source)) if p.message == NO_PATIENTS else p for p in problems]
    return cohort, problems
