"""The grid a mask or image lies on, read from its headers, compared and resampled.

``mstnet evaluate`` (:mod:`mstnet.experiments.evaluation`) scores a predicted mask only on its
image's grid: :func:`volume_geometry` reads both grids after the readers' reorientation to RAS+
(:mod:`mstnet.data.io`), :func:`geometry_differences` names what differs, and :func:`resample_to`
moves a mask onto its image's grid (``--resample``). ``mstnet predict``
(:mod:`mstnet.experiments.prediction`) writes masks back in the stored geometry of
:func:`stored_affine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mstnet.data.cohort import CohortError, Problem
from mstnet.data.dicom import dicom_stored_geometry
from mstnet.data.io import affine_geometry, image_format, npy_sidecar, read_volume_info

SPACING_RTOL = 1e-4
"""Relative tolerance on spacings (headers store float32)."""
ORIGIN_TOL_VOXELS = 0.01
"""Origins within this fraction of the smallest voxel size count as equal."""
DIRECTION_TOL = 1e-4



@dataclass(frozen=True)
class Geometry:
    """The grid a volume's array lies on, as :mod:`mstnet.data.io` returns it (RAS+, ``(D, H, W)``).

    ``origin`` (LPS mm of voxel ``[0, 0, 0]``), ``direction`` (LPS unit vectors of the W, H, D
    axes) and ``orientation`` (the axis codes the file stores, e.g. ``RAS`` or ``LPS``) are None
    for ``.npy`` files, which carry no position; ``spacing`` is None for a ``.npy`` file
    without a sidecar.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None = None
    direction: tuple[tuple[float, float, float], ...] | None = None
    orientation: str | None = None

    def describe(self) -> str:
        parts = ["shape " + "x".join(str(n) for n in self.shape)]
        parts.append("spacing " + ("x".join(f"{s:.4g}" for s in self.spacing) + " mm" if self.spacing else "unknown"))
        if self.origin is not None:
            parts.append("origin (" + ", ".join(f"{v:.4g}" for v in self.origin) + ") mm")
        if self.direction is not None:
            parts.append(f"axes {axis_codes(self.direction)}" + (f" (stored {self.orientation})" if self.orientation else ""))
        return ", ".join(parts)


def axis_codes(direction: Sequence[Sequence[float]]) -> str:
    """``RAS`` etc.: where each of the W, H, D axes points (LPS direction vectors in, RAS codes out)."""
    codes = []
    for vector in direction:
        ras = np.asarray(vector, dtype=float) * np.array([-1.0, -1.0, 1.0])
        axis = int(np.argmax(np.abs(ras)))
        codes.append(("R", "A", "S")[axis] if ras[axis] > 0 else ("L", "P", "I")[axis])
    return "".join(codes)


def _canonical(shape_xyz: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxel shape ``(x, y, z)`` and RAS affine after reorientation to RAS+ (as :func:`mstnet.data.io.reorient_to_ras`)."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("R", "A", "S")))
    xyz = tuple(int(n) for n in shape_xyz)
    new_xyz = [0, 0, 0]
    for axis in range(3):
        new_xyz[int(transform[axis, 0])] = xyz[axis]
    return tuple(new_xyz), affine @ nib.orientations.inv_ornt_aff(transform, xyz)


def stored_affine(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """``(x, y, z)`` shape and RAS affine of a NIfTI file or DICOM series as stored; None for ``.npy``."""
    kind = image_format(path)
    if kind == "nifti":
        try:
            image = nib.load(str(path))
        except Exception as error:  # nibabel raises several unrelated types for damaged files
            raise CohortError(Problem(f"cannot be read as NIfTI: {error}", file=str(path))) from error
        shape = tuple(int(n) for n in image.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise CohortError(Problem(f"expected a 3D volume, got shape {shape}", file=str(path)))
        return shape, np.asarray(image.affine, dtype=float)
    if kind == "dicom":
        (slices, rows, columns), affine = dicom_stored_geometry(path)
        return (columns, rows, slices), affine
    return None


def volume_geometry(path: str | Path, image_shape: Sequence[int] | None = None) -> Geometry:
    """The :class:`Geometry` of a volume from its headers (no voxel data read)."""
    path = Path(path)
    stored = stored_affine(path)
    if stored is None:
        info = read_volume_info(path)
        shape = info.shape
        if image_shape is not None and shape != tuple(image_shape) and shape == tuple(image_shape)[1:] + tuple(image_shape)[:1]:
            shape = tuple(image_shape)  # stored slice axis last (the NLST layout); read_mask moves it
        return Geometry(shape, info.spacing if npy_sidecar(path).exists() else None)
    shape_xyz, affine = stored
    canonical_xyz, canonical_affine = _canonical(shape_xyz, affine)
    spacing, origin, direction = affine_geometry(canonical_affine)
    return Geometry(tuple(canonical_xyz[::-1]), spacing, origin, direction, "".join(nib.aff2axcodes(affine)))


def geometry_differences(mask: Geometry, image: Geometry) -> list[str]:
    """What differs between two grids: ``shape``, ``spacing``, ``origin``, ``orientation`` (unknown parts skipped).

    The grids are compared after reorientation to RAS+, so a mask stored in another axis order
    on the same grid (LPS, as ITK writes) differs in nothing; when the grids differ, a different
    stored axis order is named too.
    """
    found = []
    if mask.shape != image.shape:
        found.append("shape")
    if mask.spacing is not None and image.spacing is not None and not np.allclose(
            mask.spacing, image.spacing, rtol=SPACING_RTOL, atol=0.0):
        found.append("spacing")
    if mask.direction is not None and image.direction is not None and not np.allclose(
            mask.direction, image.direction, atol=DIRECTION_TOL, rtol=0.0):
        found.append("orientation")
    if mask.origin is not None and image.origin is not None:
        tolerance = ORIGIN_TOL_VOXELS * min(image.spacing or (1.0,))
        if not np.allclose(mask.origin, image.origin, atol=tolerance, rtol=0.0):
            found.append("origin")
    if found and "orientation" not in found and mask.orientation and image.orientation \
            and mask.orientation != image.orientation:
        found.append("orientation")  # stored axis order differs too (e.g. a flip written without its affine)
    return found


def resample_to(mask: np.ndarray, source: Geometry, target: Geometry, file: str | Path) -> np.ndarray:
    """``mask`` (on ``source``'s grid) resampled onto ``target``'s grid, nearest neighbour (SimpleITK).

    A side without a position (``.npy``) takes the other's origin and axes: both grids then start
    at the same voxel centre. A side without spacing cannot be resampled.
    """
    import SimpleITK as sitk

    if source.spacing is None:
        raise CohortError(Problem(f"cannot resample: a .npy mask without a sidecar {npy_sidecar(Path(file)).name} "
                                  "has no spacing", file=str(file)))
    canonical_axes = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))  # RAS+ axes in LPS
    origins = source.origin or target.origin or (0.0, 0.0, 0.0), target.origin or source.origin or (0.0, 0.0, 0.0)
    directions = (source.direction or target.direction or canonical_axes,
                  target.direction or source.direction or canonical_axes)

    def image(array: np.ndarray | None, geometry: Geometry, origin, direction) -> "sitk.Image":
        if array is None:
            result = sitk.Image([int(n) for n in geometry.shape[::-1]], sitk.sitkUInt8)
        else:
            result = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
        result.SetSpacing([float(s) for s in (geometry.spacing or source.spacing)[::-1]])
        result.SetOrigin([float(v) for v in origin])
        result.SetDirection([float(v) for v in np.asarray(direction, dtype=float).T.ravel()])
        return result

    moving = image(mask, source, origins[0], directions[0])
    reference = image(None, target, origins[1], directions[1])
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(bool)
