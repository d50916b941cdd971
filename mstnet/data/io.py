"""Read and write CT volumes and masks: NIfTI, DICOM series folders and ``.npy`` files.

Every reader returns a :class:`Volume`: a float32 ``(D, H, W)`` array, slice axis first, with
its voxel spacing ``(z, y, x)`` in mm. Images with a geometry (NIfTI, DICOM) are reoriented to
RAS+ (nibabel's canonical orientation, MONAI's default): ``W`` runs to the patient's right,
``H`` to anterior, ``D`` from inferior to superior, so a DICOM series and its NIfTI
conversion give the same array. A NIfTI file written with a positive diagonal affine (the
usual ``np.diag(spacing)``) is already canonical and reads back exactly as written: voxel
coordinates (nodule locations in a manifest) refer to the array this module returns.

- ``.nii`` / ``.nii.gz``: nibabel; spacing from the header zooms after reorientation.
- DICOM folder: pydicom (:mod:`mstnet.data.dicom`, which also writes series); one series per
  folder (two series is an error naming both UIDs), slices sorted by ``ImagePositionPatient``
  along the normal of ``ImageOrientationPatient``, ``RescaleSlope`` / ``RescaleIntercept``
  applied (HU), slice spacing from the positions; uneven spacing (a missing slice) is an error
  naming the folder and the gap.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mstnet.atomic import atomic_path, write_text_atomic
from mstnet.data.cohort import CohortError, Problem
from mstnet.data.dicom import RAS_TO_LPS, dicom_stored_geometry, read_dicom_pixels
from mstnet.errors import UsageError


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


def _read_dicom(folder: Path, dtype: type) -> Volume:
    array, affine = reorient_to_ras(*read_dicom_pixels(folder))
    spacing, origin, direction = affine_geometry(affine)
    return Volume(array.astype(dtype, copy=False), spacing, origin, direction)


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
