"""Check a cohort and report every problem at once, each located by patient, time point, file and column.

:func:`validate_cohort` checks an in-memory :class:`Cohort`: time points per patient,
labels, duplicate patients and time points, clinical records (missing rows, NaN numerics,
missing or unknown categories) and, with ``check_images``, every image and mask (missing,
unreadable, DICOM folders with two series or a missing slice, mask shape differing from
its image, nodule location outside the image). Images are checked from their headers
(NIfTI header, DICOM headers, .npy header) unless ``read_data`` asks for a full read.

:func:`validate_source` also reports the structural problems a loader raises (labels that
differ between rows of one patient, duplicate rows, bad columns), for ``mstnet data validate``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path

from mstnet.data.clinical import normalise_category, to_float
from mstnet.data.cohort import Cohort, CohortError, Patient, Problem, Scan
from mstnet.data.io import read_mask, read_volume, read_volume_info
from mstnet.data.sources import load_cohort


def _located(error: CohortError, patient: Patient, scan: Scan, what: str) -> list[Problem]:
    return [Problem(f"{what}: {p.message}", patient_id=patient.patient_id, timepoint=scan.timepoint, file=p.file, column=p.column)
            for p in error.problems]


def _check_scan(patient: Patient, scan: Scan, read_data: bool) -> list[Problem]:
    problems: list[Problem] = []
    try:
        image = read_volume(scan.image) if read_data else read_volume_info(scan.image)
        image_shape = image.shape
    except CohortError as error:
        return _located(error, patient, scan, "image")
    if scan.mask is not None:
        try:
            mask_shape = read_mask(scan.mask, image_shape=image_shape).shape if read_data else read_volume_info(scan.mask).shape
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
            allowed = {normalise_category(v) for v in allowed_categories[column]}
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


def validate_cohort(cohort: Cohort, min_timepoints: int = 1, check_images: bool = True, read_data: bool = False,
                    allowed_categories: Mapping[str, Collection] | None = None) -> list[Problem]:
    """Every problem of ``cohort``; an empty list means it is fit for use.

    Args:
        cohort: the cohort.
        min_timepoints: patients with fewer scans are reported.
        check_images: open every image and mask (headers, or all data with ``read_data``).
        read_data: read the full image data (slower; finds truncated files).
        allowed_categories: per categorical column, the values it may take; others are reported.
    """
    problems: list[Problem] = []
    for patient_id, count in Counter(cohort.patient_ids).items():
        if count > 1:
            problems.append(Problem(f"appears {count} times in the cohort", patient_id=patient_id))
    for patient in cohort:
        pid = patient.patient_id
        if len(patient.scans) < min_timepoints:
            problems.append(Problem(f"has {len(patient.scans)} time point(s) ({', '.join(patient.timepoints) or 'none'}), "
                                    f"at least {min_timepoints} required", patient_id=pid))
        if patient.label not in (0, 1) or isinstance(patient.label, bool):
            problems.append(Problem(f"label must be 0 (benign) or 1 (malignant), got {patient.label!r}", patient_id=pid, column="label"))
        for timepoint, count in Counter(patient.timepoints).items():
            if count > 1:
                problems.append(Problem(f"time point appears {count} times", patient_id=pid, timepoint=timepoint))
        problems += _check_clinical(cohort, patient, allowed_categories)
        if check_images:
            for scan in patient.scans:
                problems += _check_scan(patient, scan, read_data)
    return problems


def validate_source(source: str | Path, min_timepoints: int = 1, check_images: bool = True, read_data: bool = False,
                    **loader_options) -> tuple[Cohort | None, list[Problem]]:
    """Load ``source`` with :func:`mstnet.data.sources.load_cohort` and validate it.

    Returns:
        (cohort, problems): the cohort is ``None`` when loading failed; the problems are then
        the loader's structural ones (images are not checked before the tables are sound).
    """
    try:
        cohort = load_cohort(source, **loader_options)
    except CohortError as error:
        return None, list(error.problems)
    return cohort, validate_cohort(cohort, min_timepoints=min_timepoints, check_images=check_images, read_data=read_data)
