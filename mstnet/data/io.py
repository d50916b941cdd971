"""Read and write CT volumes and masks: NIfTI, DICOM series folders and ``.npy`` files.

Every reader returns a :class:`Volume`: a float32 ``(D, H, W)`` array, slice axis first, with
its voxel spacing ``(z, y, x)`` in mm. Images with a geometry (NIfTI, DICOM) are reoriented to
RAS+ (nibabel's canonical orientation, MONAI's default): ``W`` runs to the patient's right,
``H`` to anterior, ``D`` from inferior to superior, so a DICOM series and its NIfTI
conversion give the same array. A NIfTI file written with a positive diagonal affine (the
usual ``np.diag(spacing)``) is already canonical and reads back exactly as written: voxel
coordinates (nodule locations in a manifest) refer to the array this module returns.

- ``.nii`` / ``.nii.gz``: nibabel; spacing from the header zooms after reorientation.
- DICOM folder: pydicom; one series per folder (two series is an error naming both UIDs),
  slices sorted by ``ImagePositionPatient`` along the normal of ``ImageOrientationPatient``,
  ``RescaleSlope`` / ``RescaleIntercept`` applied (HU), slice spacing from the positions;
  uneven spacing (a missing slice) is an error naming the folder and the gap.
- ``.npy``: the array as stored; spacing from the ``spacing`` argument, else a sidecar
  ``<name>.json`` holding ``{"spacing": [z, y, x]}``, else 1 mm.

Masks (:func:`read_mask`) read the same way into ``uint8``; a mask stored slice axis last
``(H, W, D)`` (the NLST release layout) is moved to ``(D, H, W)`` when the image shape is given.
A mask must hold only 0 and 1 unless a binarisation rule (:data:`MASK_BINARIZATIONS`) is
asked for. Every reader refuses a volume that is not 3D, naming the file and its shape.
Writers write to a temporary name in the target folder and rename.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mstnet.atomic import atomic_path, write_text_atomic
from mstnet.data.cohort import CohortError, Problem
from mstnet.errors import UsageError


RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""Flips world x and y: RAS (NIfTI) <-> LPS (DICOM patient coordinates)."""

SLICE_GAP_TOLERANCE = 0.1
"""Relative deviation of one slice gap from the typical (most common) gap that counts as a missing slice."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")

MASK_BINARIZATIONS: dict[str, str] = {
    "nonzero": "every value other than 0 is foreground",
    "half": "values >= 0.5 are foreground",
}
"""Rules :func:`read_mask` accepts for masks holding values other than 0 and 1 (``None``: refuse them)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image on a regular grid.

    Attributes:
        array: ``(D, H, W)`` array, slice axis first (float32 for images, uint8 for masks).
        spacing: voxel spacing ``(z, y, x)`` in mm.
        origin: LPS position (mm) of the centre of voxel ``[0, 0, 0]``, when the format has one.
        direction: LPS unit vectors of the ``W``, ``H`` and ``D`` axes (a 3 x 3 tuple), when known.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] | None = None
    direction: tuple[tuple[float, float, float], ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)


@dataclass(frozen=True)
class VolumeInfo:
    """Shape ``(D, H, W)``, spacing ``(z, y, x)`` mm and origin of a volume, read from headers only."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] | None = None


def image_format(path: str | Path) -> str:
    """``"nifti"``, ``"dicom"`` (a folder) or ``"npy"``; raises :class:`CohortError` naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise CohortError(Problem("does not exist", file=str(path)))
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise CohortError(Problem("unknown image format: expected a .nii/.nii.gz file, a .npy file or a DICOM series folder", file=str(path)))


# ----------------------------------------------------------------------------------------------- NIfTI


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a ``(D, H, W)`` array whose voxel axes (W, H, D) = (x, y, z) map to RAS mm by ``affine``.

    Returns:
        (array ``(D', H', W')`` in RAS+ orientation, its affine).
    """
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("R", "A", "S")))
    xyz = nib.orientations.apply_orientation(array.transpose(2, 1, 0), transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape[::-1])
    return np.ascontiguousarray(xyz.transpose(2, 1, 0)), new_affine


def affine_geometry(affine: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple]:
    """(spacing (z, y, x), LPS origin, LPS directions of W, H, D) of a RAS affine."""
    columns = RAS_TO_LPS @ affine[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    spacing = (float(norms[2]), float(norms[1]), float(norms[0]))
    origin = tuple(float(v) for v in RAS_TO_LPS @ affine[:3, 3])
    direction = tuple(tuple(float(v) for v in columns[:, i] / norms[i]) for i in range(3))
    return spacing, origin, direction


def _canonical_shape(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``(D, H, W)`` and affine after :func:`reorient_to_ras`, without touching any data."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("R", "A", "S")))
    xyz = tuple(int(n) for n in shape[::-1])
    new_xyz = tuple(xyz[int(np.flatnonzero(transform[:, 0] == axis)[0])] for axis in range(3))
    return new_xyz[::-1], affine @ nib.orientations.inv_ornt_aff(transform, xyz)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for damaged files
        raise CohortError(Problem(f"cannot be read as NIfTI: {error}", file=str(path))) from error


def _read_nifti(path: Path, dtype: type) -> Volume:
    image = _load_nifti(path)
    try:
        data = np.asarray(image.dataobj)
    except Exception as error:
        raise CohortError(Problem(f"NIfTI data cannot be read: {error}", file=str(path))) from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CohortError(Problem(f"expected a 3D volume, got shape {data.shape}", file=str(path)))
    array, affine = reorient_to_ras(data.transpose(2, 1, 0), image.affine)
    spacing, origin, direction = affine_geometry(affine)
    return Volume(array.astype(dtype, copy=False), spacing, origin, direction)


def write_nifti(path: str | Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Path:
    """Write a ``(D, H, W)`` RAS+ array (spacing ``(z, y, x)`` mm, LPS ``origin`` of voxel 0) as NIfTI.

    The affine is diagonal (RAS+), so :func:`read_volume` gives the array back unchanged.

    The data type is kept (float32 images, uint8 masks); ``.nii.gz`` names are gzip-compressed.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_nifti({path}): expected a (D, H, W) array, got shape {array.shape}")
    dz, dy, dx = (float(s) for s in spacing)
    ox, oy, oz = (float(o) for o in origin)
    affine = np.array([[dx, 0, 0, -ox], [0, dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1]], dtype=float)
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    _atomic(path, suffix, lambda tmp: nib.save(image, str(tmp)))
    return path


# ----------------------------------------------------------------------------------------------- DICOM


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

    :func:`reorient_to_ras` with this affine turns an array on the stored pixel grid (e.g. a mask
    drawn on the DICOM rows and columns) into the orientation :func:`read_volume` returns.
    """
    return dicom_series_affine(_series(Path(folder)))


def _read_dicom(folder: Path, dtype: type) -> Volume:
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
    array, affine = reorient_to_ras(array, affine)
    spacing, origin, direction = affine_geometry(affine)
    return Volume(array.astype(dtype, copy=False), spacing, origin, direction)


def write_dicom_series(folder: str | Path, array_hu: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                       origin: Sequence[float] = (0.0, 0.0, 0.0), z_positions: Sequence[float] | None = None,
                       series_instance_uid: str | None = None, patient_id: str = "ANONYMOUS",
                       rescale_intercept: float = -1024.0) -> Path:
    """Write a ``(D, H, W)`` HU array as a CT Image Storage series, one file per slice.

    The array is in the orientation :func:`read_volume` returns (RAS+); it is stored the way
    axial scanners store it (``ImageOrientationPatient`` = 1\\0\\0\\0\\1\\0: rows run
    to the patient's left, columns posterior), so reading the folder gives the array back.

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
    series_instance_uid = series_instance_uid or generate_uid()
    study_instance_uid = generate_uid()
    frame_of_reference_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(depth):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = pydicom.Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.Modality = "CT"
        dataset.PatientID = patient_id
        dataset.PatientName = patient_id
        dataset.StudyInstanceUID = study_instance_uid
        dataset.SeriesInstanceUID = series_instance_uid
        dataset.FrameOfReferenceUID = frame_of_reference_uid
        dataset.SeriesNumber = 1
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [corner_x, corner_y, float(z_positions[index])]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PixelSpacing = [dy, dx]
        dataset.SliceThickness = dz
        dataset.SliceLocation = float(z_positions[index])
        dataset.Rows, dataset.Columns = rows, columns
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope = 1
        dataset.RescaleIntercept = rescale_intercept
        dataset.RescaleType = "HU"
        dataset.PixelData = np.ascontiguousarray(stored[index]).tobytes()
        _atomic(folder / f"slice_{index:04d}.dcm", ".dcm",
                lambda tmp, ds=dataset: ds.save_as(str(tmp), enforce_file_format=True))
    return folder


# ----------------------------------------------------------------------------------------------- npy


def npy_sidecar(path: str | Path) -> Path:
    """The JSON sidecar of a ``.npy`` file: ``<name>.json`` next to it, holding ``{"spacing": [z, y, x]}``."""
    path = Path(path)
    return path.with_name(path.name[: -len(".npy")] + ".json")


def _npy_spacing(path: Path, spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is not None:
        return tuple(float(s) for s in spacing)
    sidecar = npy_sidecar(path)
    if sidecar.exists():
        try:
            values = json.loads(sidecar.read_text())["spacing"]
            if len(values) != 3:
                raise ValueError(f"spacing has {len(values)} values, expected 3")
            return tuple(float(v) for v in values)
        except (ValueError, KeyError, TypeError) as error:
            raise CohortError(Problem(f"bad sidecar, expected {{\"spacing\": [z, y, x]}}: {error}", file=str(sidecar))) from error
    return (1.0, 1.0, 1.0)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(str(path), mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:  # damaged headers raise ValueError, truncated files OSError / EOFError
        raise CohortError(Problem(f"cannot be read as .npy: {error}", file=str(path))) from error
    if array.ndim != 3:
        raise CohortError(Problem(f"expected a 3D volume, got shape {array.shape}", file=str(path)))
    return array


def write_npy(path: str | Path, array: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Write ``array`` as ``.npy`` (and its spacing ``(z, y, x)`` to the JSON sidecar when given)."""
    path = Path(path)
    _atomic(path, ".npy", lambda tmp: np.save(str(tmp), np.asarray(array), allow_pickle=False))
    if spacing is not None:
        write_text_atomic(npy_sidecar(path), json.dumps({"spacing": [float(s) for s in spacing]}) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- entry points


def read_volume(path: str | Path, spacing: Sequence[float] | None = None) -> Volume:
    """Read a CT volume (NIfTI file, DICOM series folder or ``.npy``) as float32 ``(D, H, W)``.

    Args:
        path: the image.
        spacing: ``(z, y, x)`` mm for ``.npy`` files (overrides the sidecar); ignored otherwise.

    Raises:
        CohortError: the file is missing, of unknown format or unreadable (the message names it),
            or a DICOM folder holds several series or has a missing slice.
    """
    path = Path(path)
    kind = image_format(path)
    if kind == "nifti":
        return _read_nifti(path, np.float32)
    if kind == "dicom":
        return _read_dicom(path, np.float32)
    return Volume(_load_npy(path).astype(np.float32, copy=False), _npy_spacing(path, spacing))


def check_mask_binarization(binarize: str | None) -> str | None:
    """``binarize`` itself when it is ``None`` or a key of :data:`MASK_BINARIZATIONS`; raises UsageError otherwise."""
    if binarize is not None and binarize not in MASK_BINARIZATIONS:
        raise UsageError(f"--binarize-masks {binarize!r}: choose one of {', '.join(sorted(MASK_BINARIZATIONS))} "
                         "(or leave it out to refuse non-binary masks)")
    return binarize


def _format_values(values: np.ndarray, limit: int = 8) -> str:
    """``0, 0.5, 255`` for the distinct values of an array (the first ``limit``, then how many more)."""
    shown = ", ".join(f"{float(v):g}" for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} distinct values)"


def binarize_mask(array: np.ndarray, binarize: str | None = None, file: str | Path | None = None) -> np.ndarray:
    """A mask array as uint8 0/1 under the rule ``binarize`` (``None``, ``"nonzero"`` or ``"half"``).

    Raises:
        CohortError: (naming ``file``) a voxel is NaN or infinite, or, with ``binarize=None``,
            a value is neither 0 nor 1.
    """
    check_mask_binarization(binarize)
    where = str(file) if file is not None else None
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise CohortError(Problem(f"mask values must be finite, found {n_nan} NaN and {n_inf} inf voxel(s)", file=where))
    if binarize == "half":
        return np.ascontiguousarray(array >= 0.5, dtype=np.uint8)
    if binarize is None and not ((array == 0) | (array == 1)).all():
        raise CohortError(Problem(f"mask values must be 0 or 1, found {_format_values(np.unique(array))}; "
                                  "pass --binarize-masks nonzero or half to accept it", file=where))
    return np.ascontiguousarray(array != 0, dtype=np.uint8)


def read_mask(path: str | Path, image_shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
              binarize: str | None = None) -> Volume:
    """Read a mask like :func:`read_volume`, as uint8 0/1 ``(D, H, W)``.

    Args:
        path: the mask.
        image_shape: ``(D, H, W)`` of its image. A mask stored slice axis last, ``(H, W, D)``
            (the NLST release layout), is then moved to ``(D, H, W)``; the file is untouched.
        spacing: as in :func:`read_volume`.
        binarize: how values other than 0 and 1 are read. ``None`` (default, strict): they
            are an error; ``"nonzero"``: every value other than 0 is foreground; ``"half"``:
            values >= 0.5 are foreground. A :class:`~mstnet.data.cohort.Cohort` carries the
            rule of its source as ``mask_binarization``.

    Raises:
        CohortError: as :func:`read_volume`; also (naming the file) a NaN or infinite voxel,
            or, with ``binarize=None``, a value other than 0 and 1 (the message lists them).
    """
    check_mask_binarization(binarize)
    path = Path(path)
    kind = image_format(path)
    if kind == "nifti":
        volume = _read_nifti(path, np.float32)
    elif kind == "dicom":
        volume = _read_dicom(path, np.float32)
    else:
        volume = Volume(_load_npy(path), _npy_spacing(path, spacing))
    array = volume.array
    if image_shape is not None:
        image_shape = tuple(int(n) for n in image_shape)
        if array.shape != image_shape and array.shape == image_shape[1:] + image_shape[:1]:
            array = np.moveaxis(array, -1, 0)
    return Volume(binarize_mask(array, binarize, path), volume.spacing, volume.origin, volume.direction)


def read_volume_info(path: str | Path, spacing: Sequence[float] | None = None) -> VolumeInfo:
    """Shape and spacing of a volume from its header only (NIfTI header, DICOM headers, .npy header)."""
    path = Path(path)
    kind = image_format(path)
    if kind == "nifti":
        image = _load_nifti(path)
        stored = tuple(int(n) for n in image.shape)
        if len(stored) == 4 and stored[3] == 1:
            stored = stored[:3]
        if len(stored) != 3:
            raise CohortError(Problem(f"expected a 3D volume, got shape {stored}", file=str(path)))
        shape, affine = _canonical_shape(stored[::-1], image.affine)
    elif kind == "dicom":
        shape, affine = _canonical_shape(*dicom_stored_geometry(path))
    if kind in ("nifti", "dicom"):
        spacing_zyx, origin, _ = affine_geometry(affine)
        return VolumeInfo(shape, spacing_zyx, origin)
    array = _load_npy(path, mmap=True)
    return VolumeInfo(tuple(int(n) for n in array.shape), _npy_spacing(path, spacing))


def _atomic(path: Path, suffix: str, write) -> None:
    """Call ``write(temporary_path)`` in ``path``'s folder, then rename it to ``path``."""
    with atomic_path(path, suffix) as temporary:
        write(temporary)
