"""DICOM series folders: one CT series per folder, read into HU with its geometry, and written back.

The readers of :mod:`mstnet.data.io` read a series through :func:`read_dicom_pixels` and
reorient it to RAS+ like every other format; :func:`dicom_stored_geometry` gives the stored grid
from the headers alone. Slices are sorted by ``ImagePositionPatient`` along the normal of
``ImageOrientationPatient``, ``RescaleSlope`` / ``RescaleIntercept`` applied (HU), slice spacing
from the positions; uneven spacing (a missing slice) is an error naming the folder and the gap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mstnet.atomic import atomic_path
from mstnet.data.cohort import CohortError, Problem

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""Flips world x and y: RAS (NIfTI) <-> LPS (DICOM patient coordinates)."""

SLICE_GAP_TOLERANCE = 0.1
"""Relative deviation of one slice gap from the typical (most common) gap that counts as a missing slice."""


def _dicom_files(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Every DICOM image file directly in ``folder`` with its header (pixels not read); other files skipped."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in header and "PixelSpacing" in header:
            found.append((path, header))
    return found


def typical_gap(positions: np.ndarray) -> float:
    """The most common gap between sorted slice positions (to 0.01 mm; the smallest on ties), the slice spacing."""
    gaps = np.round(np.diff(positions), 2)
    values, counts = np.unique(gaps, return_counts=True)
    return float(values[counts == counts.max()].min())


def _series(folder: Path) -> list[tuple[Path, pydicom.Dataset, float]]:
    """The one series of ``folder``: (file, header, position along the slice normal), sorted by position.

    Raises:
        CohortError: no DICOM image, more than one series, or unevenly spaced slices.
    """
    files = _dicom_files(folder)
    if not files:
        raise CohortError(Problem("no DICOM image files (with ImagePositionPatient and PixelSpacing) in this folder", file=str(folder)))
    by_series: dict[str, list] = defaultdict(list)
    for path, header in files:
        by_series[str(header.get("SeriesInstanceUID", ""))].append((path, header))
    if len(by_series) > 1:
        uids = ", ".join(f"{uid or '<empty>'} ({len(items)} files)" for uid, items in sorted(by_series.items()))
        raise CohortError(Problem(f"holds {len(by_series)} DICOM series, expected one per folder: {uids}", file=str(folder)))
    first = files[0][1]
    orientation = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices = sorted(((path, header, float(np.dot(normal, np.asarray(header.ImagePositionPatient, dtype=float))))
                     for path, header in files), key=lambda item: item[2])
    positions = np.array([s[2] for s in slices])
    if len(positions) > 1:
        gaps = np.diff(positions)
        expected = typical_gap(positions)
        if expected <= 0:
            raise CohortError(Problem("several slices share one position along the slice normal", file=str(folder)))
        bad = np.flatnonzero(np.abs(gaps - expected) > SLICE_GAP_TOLERANCE * expected)
        if len(bad):
            details = "; ".join(f"{gaps[i]:.3g} mm between slices at {positions[i]:.2f} and {positions[i + 1]:.2f} mm"
                                for i in bad[:5])
            raise CohortError(Problem(f"uneven slice spacing (missing or duplicate slice): expected {expected:.3g} mm, "
                                      f"found {details}", file=str(folder)))
    return slices


def dicom_series_affine(slices: list[tuple[Path, pydicom.Dataset, float]]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Stored shape ``(slices, Rows, Columns)`` and the RAS affine of the voxel axes (column, row, slice)."""
    first = slices[0][1]
    orientation = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if len(slices) > 1:
        slice_spacing = typical_gap(np.array([s[2] for s in slices]))
    else:
        slice_spacing = float(first.get("SliceThickness", 1.0) or 1.0)
    normal = np.cross(orientation[:3], orientation[3:])
    affine = np.eye(4)
    affine[:3, 0] = RAS_TO_LPS @ orientation[:3] * column_spacing
    affine[:3, 1] = RAS_TO_LPS @ orientation[3:] * row_spacing
    affine[:3, 2] = RAS_TO_LPS @ normal * slice_spacing
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(first.ImagePositionPatient, dtype=float)
    return (len(slices), int(first.Rows), int(first.Columns)), affine


def dicom_stored_geometry(folder: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Stored shape (slices sorted along the normal, Rows, Columns) and RAS affine of a series, from headers.

    :func:`mstnet.data.io.reorient_to_ras` with this affine turns an array on the stored pixel grid (e.g. a mask
    drawn on the DICOM rows and columns) into the orientation :func:`read_volume` returns.
    """
    return dicom_series_affine(_series(Path(folder)))


def read_dicom_pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The series of ``folder`` in HU as stored, float32 ``(slices, Rows, Columns)``, and the RAS affine of
    its voxel axes (column, row, slice); :func:`mstnet.data.io.read_volume` reorients it to RAS+."""
    slices = _series(folder)
    shape, affine = dicom_series_affine(slices)
    array = np.empty(shape, dtype=np.float32)
    for index, (path, _, _) in enumerate(slices):
        try:
            dataset = pydicom.dcmread(str(path))
            pixels = dataset.pixel_array.astype(np.float32)
        except Exception as error:  # decoders raise many types (missing codec, truncated data)
            raise CohortError(Problem(f"DICOM pixel data cannot be read: {error}", file=str(path))) from error
        if pixels.shape != shape[1:]:
            raise CohortError(Problem(f"slice of shape {pixels.shape}, the series has {shape[1:]}", file=str(path)))
        slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
        array[index] = pixels * slope + intercept
    return array, affine


def _ct_slice(series: dict[str, Any], index: int, position: list[float], pixels: np.ndarray) -> pydicom.Dataset:
    """Slice ``index`` of a CT Image Storage series: the ``series`` attributes (patient, UIDs, spacing, rescale),
    its ``ImagePositionPatient`` and its uint16 ``pixels`` (rows to the patient's left, columns posterior)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PatientID = series["PatientID"]
    dataset.PatientName = series["PatientName"]
    dataset.StudyInstanceUID = series["StudyInstanceUID"]
    dataset.SeriesInstanceUID = series["SeriesInstanceUID"]
    dataset.FrameOfReferenceUID = series["FrameOfReferenceUID"]
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = index + 1
    dataset.ImagePositionPatient = position
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = series["PixelSpacing"]
    dataset.SliceThickness = series["SliceThickness"]
    dataset.SliceLocation = position[2]
    dataset.Rows, dataset.Columns = (int(n) for n in pixels.shape)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = series["RescaleIntercept"]
    dataset.RescaleType = "HU"
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    return dataset


def write_dicom_series(folder: str | Path, array_hu: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                       origin: Sequence[float] = (0.0, 0.0, 0.0), z_positions: Sequence[float] | None = None,
                       series_instance_uid: str | None = None, patient_id: str = "ANONYMOUS",
                       rescale_intercept: float = -1024.0) -> Path:
    """Write a ``(D, H, W)`` HU array as a CT Image Storage series, one file per slice.

    The array is in the orientation :func:`mstnet.data.io.read_volume` returns (RAS+); it is
    stored the way axial scanners store it (``ImageOrientationPatient`` = 1\\0\\0\\0\\1\\0:
    rows run to the patient's left, columns posterior), so reading the folder gives the array back.

    Args:
        folder: created if missing; files ``slice_0000.dcm`` ...
        array_hu: ``(D, H, W)`` values in HU, rounded to integers on write.
        spacing: ``(z, y, x)`` mm; z sets the slice positions unless ``z_positions`` is given.
        origin: LPS position (mm) of voxel ``[0, 0, 0]`` of ``array_hu``.
        z_positions: the z (mm) of every slice, overriding ``origin[2] + i * spacing[0]``.
        series_instance_uid: default: a fresh UID.
        patient_id: written to ``PatientID``.
        rescale_intercept: stored values are ``round(HU) - intercept`` as uint16 (slope 1).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    array_hu = np.asarray(array_hu)
    if array_hu.ndim != 3:
        raise ValueError(f"write_dicom_series({folder}): expected a (D, H, W) array, got shape {array_hu.shape}")
    depth, rows, columns = array_hu.shape
    dz, dy, dx = (float(s) for s in spacing)
    if z_positions is None:
        z_positions = [float(origin[2]) + i * dz for i in range(depth)]
    if len(z_positions) != depth:
        raise ValueError(f"write_dicom_series({folder}): {len(z_positions)} z positions for {depth} slices")
    # RAS+ array -> LPS-ordered pixels: flip rows and columns; the first stored pixel is the array's last.
    array_hu = array_hu[:, ::-1, ::-1]
    corner_x = float(origin[0]) - (columns - 1) * dx
    corner_y = float(origin[1]) - (rows - 1) * dy
    stored = np.clip(np.rint(array_hu - rescale_intercept), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    series = {"PatientID": patient_id, "PatientName": patient_id, "StudyInstanceUID": generate_uid(),
              "SeriesInstanceUID": series_instance_uid or generate_uid(), "FrameOfReferenceUID": generate_uid(),
              "PixelSpacing": [dy, dx], "SliceThickness": dz, "RescaleIntercept": rescale_intercept}
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(depth):
        dataset = _ct_slice(series, index, [corner_x, corner_y, float(z_positions[index])], stored[index])
        with atomic_path(folder / f"slice_{index:04d}.dcm", ".dcm") as temporary:
            dataset.save_as(str(temporary), enforce_file_format=True)
    return folder
