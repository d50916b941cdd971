"""The PyTorch dataset of a cohort: one item per patient, all its selected time points stacked.

An item (:class:`PatientDataset`), with T time points, C categorical and N numeric clinical columns:

- ``"image"``: float32 ``[T, 1, D, H, W]``, preprocessed (:mod:`mstnet.data.transforms`).
- ``"mask"``: float32 ``[T, 1, D, H, W]`` 0/1 (zeros for a scan without a mask).
- ``"has_mask"``: bool scalar, every selected scan has a mask; ``"mask_present"`` bool ``[T]``.
- ``"days"``: float32 ``[T]``, days since the patient's first scan (T0).
- ``"clinical_categorical"``: int64 ``[C]`` (0 = unknown); ``"clinical_numeric"``: float32
  ``[N]`` standardised; ``"clinical_numeric_missing"``: bool ``[N]``.
- ``"label"``: int64 scalar; ``"spacing"``: float32 ``[T, 3]`` (z, y, x) mm of each scan's crop
  (each time point its own: screening rounds are often reconstructed differently);
- ``"crop_start"``: int64 ``[T, 3]``, the crop's first voxel (z, y, x) in its scan's (resampled)
  grid, and ``"field_shape"``: int64 ``[T, 3]``, that grid's (D, H, W): where the crop lies in
  the scan, so a prediction can be pasted back into the whole field (:func:`~mstnet.data.transforms.paste_into_field`);
- ``"patient_id"``: str; ``"timepoints"``: list of str.

Crops are placed from each scan's nodule location (``scan.nodule``) only, never from its mask.
With augmentation, the training crop's centre is shifted from the location at random
(:attr:`~mstnet.data.transforms.AugmentConfig.shift_voxels`, a function of (epoch seed, item)):
the cached box is then enlarged by the largest shift on each side and the ``crop_size`` crop
taken inside it. Without augmentation the item is the plain ``crop_size`` crop.

Preprocessed scans (the deterministic part) are cached, keyed by a hash of the image and mask
paths, their modification times and sizes, the nodule location and the
:class:`PreprocessConfig`: in memory (``memory_cache``) and on disk (``cache_dir``, one
``.npz`` per scan, written atomically, shared between datasets and runs). Later epochs
neither re-read nor re-preprocess; augmentation runs after the cache, on every access.
:func:`collate_patients` batches items for a ``DataLoader`` (strings and lists stay lists).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mstnet.atomic import write_bytes_atomic
from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import Cohort, CohortError, Patient, Problem, Scan
from mstnet.data.io import read_mask, read_volume, read_volume_info
from mstnet.data.transforms import (
    AugmentConfig,
    PreprocessConfig,
    ResampleToSpacingd,
    augmentation_transform,
    jitter_offsets,
    preprocess_scan,
    preprocessing_transform,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""Bumped when the preprocessing code changes what it produces, so old cache entries are not reused.
2: z-score statistics in numpy float64 (:class:`~mstnet.data.transforms.ZScoreNormalised`), no
longer dependent on the thread count that computed them.
3: crops placed from the nodule location only (no mask-centroid fallback); entries hold the
crop box (first voxel and field shape); training entries are the margin-enlarged box."""

AUGMENTATION_SEED_PER_EPOCH_SEED = 1_000_003
"""Step of an item's augmentation seed per unit of the epoch's: item ``index`` of the epoch with
augmentation seed s (a patient's index, or a weighted draw's position, :meth:`PatientDataset.item`)
is augmented with seed (s x 1_000_003 + index) mod 2**32 (MONAI's random
state takes 32 bits). A prime above any cohort's patient count, so within an epoch, and across
consecutive epochs, no two (epoch, patient) pairs share a seed; a function of these two only,
so results do not depend on DataLoader workers or on resuming."""

Entry = tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]
"""A preprocessed scan: image, mask, spacing and the crop box (int64 ``[2, 3]``: first voxel, field shape)."""

Timepoints = None | int | Sequence[str]


def select_scans(patient: Patient, timepoints: Timepoints) -> tuple[Scan, ...]:
    """The scans of ``patient`` a dataset uses: all (``None``), the latest k (int) or the named ones (in time order).

    Raises:
        CohortError: the patient has fewer scans than asked, or lacks a named time point.
    """
    if timepoints is None:
        return patient.scans
    if isinstance(timepoints, int):
        if timepoints < 1:
            raise ValueError(f"timepoints must be at least 1, got {timepoints}")
        if len(patient.scans) < timepoints:
            raise CohortError(Problem(f"has {len(patient.scans)} time point(s) ({', '.join(patient.timepoints)}), "
                                      f"{timepoints} asked for", patient_id=patient.patient_id))
        return patient.scans[-timepoints:]
    wanted = list(timepoints)
    missing = [t for t in wanted if t not in patient.timepoints]
    if missing:
        raise CohortError(Problem(f"lacks time point(s) {missing} (has {list(patient.timepoints)})", patient_id=patient.patient_id))
    return tuple(s for s in patient.scans if s.timepoint in wanted)


def file_signature(path: Path | None) -> list:
    """What identifies a file's content cheaply: (path, mtime_ns, size); for a folder, the same for each file in it."""
    if path is None:
        return []
    path = Path(path)
    if path.is_dir():
        return [str(path)] + [[entry.name, entry.stat().st_mtime_ns, entry.stat().st_size]
                              for entry in sorted(os.scandir(path), key=lambda e: e.name) if entry.is_file()]
    stat = path.stat()
    return [str(path), stat.st_mtime_ns, stat.st_size]


def scan_cache_key(scan: Scan, config: PreprocessConfig, mask_binarization: str | None = None) -> str:
    """Hash of the scan's files (path, mtime, size), its nodule location, the preprocessing config
    and the rule its mask is binarised by (``Cohort.mask_binarization``; the strict default adds
    nothing, so keys made before the rule existed stay valid)."""
    payload = {
        "version": CACHE_VERSION,
        "image": file_signature(scan.image),
        "mask": file_signature(scan.mask),
        "nodule": asdict(scan.nodule) if scan.nodule is not None else None,
        "preprocess": config.to_json(),
    }
    if mask_binarization is not None:
        payload["mask_binarization"] = mask_binarization
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


class PatientDataset(Dataset):
    """One item per patient: its selected scans preprocessed and stacked, plus clinical codes and label.

    Args:
        cohort: the patients (e.g. one fold's training portion).
        encoder: a :class:`ClinicalCoder` already fitted on training patients.
        preprocess: the deterministic preprocessing. Default ``PreprocessConfig()``.
        timepoints: ``None`` (default) all scans, ``k`` the latest k, or a list of time point
            names. Items of a batch must have the same T.
        augment: ``False`` (default), ``True`` (``AugmentConfig()``) or an :class:`AugmentConfig`.
        cache_dir: folder for the on-disk cache of preprocessed scans; ``None`` (default): none.
        memory_cache: keep preprocessed scans in memory too. Default ``True``.
        seed: seed of the augmentation's random draws. Default 0.

    Raises:
        CohortError: patients with fewer scans than ``timepoints`` asks for (all named at once).

    Example:
        >>> dataset = PatientDataset(cohort, encoder, PreprocessConfig(crop_size=(16, 64, 64)), timepoints=2)
        >>> dataset[0]["image"].shape   # torch.Size([2, 1, 16, 64, 64])
    """

    def __init__(self, cohort: Cohort, encoder: ClinicalCoder, preprocess: PreprocessConfig | None = None,
                 timepoints: Timepoints = None, augment: bool | AugmentConfig = False, cache_dir: str | Path | None = None,
                 memory_cache: bool = True, seed: int = 0):
        self.cohort = cohort
        self.encoder = encoder
        self.preprocess = preprocess or PreprocessConfig()
        self.timepoints = timepoints
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory_cache: dict[str, Entry] | None = {} if memory_cache else None
        augment_config = AugmentConfig() if augment is True else (augment or None)
        shift = augment_config.shift_voxels if augment_config else (0, 0, 0)
        if self.preprocess.crop_mode == "slab":
            shift = (shift[0], 0, 0)  # the slab spans the whole field in plane: only its depth moves
        self.shift_voxels: tuple[int, int, int] = tuple(int(s) for s in shift)
        """Largest shift (z, y, x) of the training crop from the location; the cached box is enlarged by it."""
        self.cached_preprocess = replace(self.preprocess, crop_size=tuple(n + 2 * s for n, s in zip(self.preprocess.crop_size,
                                                                                                     self.shift_voxels)))
        """What is cached: ``preprocess`` with the crop enlarged by ``shift_voxels`` on each side."""
        self.transform = preprocessing_transform(self.cached_preprocess)
        self.augmentation = augmentation_transform(augment_config, self.preprocess.crop_size, seed) if augment_config else None
        self.augmentation_seed = seed
        items, problems = [], []
        for patient in cohort:
            try:
                items.append((patient, select_scans(patient, timepoints)))
            except CohortError as error:
                problems.extend(error.problems)
        if problems:
            raise CohortError(problems)
        self.items = items
        self.clinical = {patient.patient_id: encoder.encode(patient) for patient, _ in items}
        self.reads = 0
        """Scans read and preprocessed from their files (not served from a cache); for tests and benchmarks."""

    def __len__(self) -> int:
        return len(self.items)

    def set_augmentation_seed(self, seed: int) -> None:
        """Reseed the augmentation's random draws; the harness does this every epoch, so a
        resumed run draws exactly what an uninterrupted one would. Each item's draws depend
        on (seed, item index) only, so they are the same in the main process and in any
        DataLoader worker, whatever the order items are read in."""
        self.augmentation_seed = seed

    def _read_and_preprocess(self, patient: Patient, scan: Scan) -> Entry:
        volume = read_volume(scan.image)
        mask = None
        if scan.mask is not None:
            mask = read_mask(scan.mask, image_shape=volume.shape, binarize=self.cohort.mask_binarization).array
            if mask.shape != volume.shape:
                raise CohortError(Problem(f"mask shape {mask.shape} differs from image shape {volume.shape}",
                                          patient_id=patient.patient_id, timepoint=scan.timepoint, file=str(scan.mask)))
        self.reads += 1
        return preprocess_scan(self.transform, volume.array, mask, volume.spacing, scan.nodule, with_box=True)

    def preprocessed(self, patient: Patient, scan: Scan) -> Entry:
        """(image ``(D, H, W)`` float32, mask ``(D, H, W)`` uint8, spacing, crop box ``[2, 3]``) of one
        scan, from a cache when possible; the crop is ``cached_preprocess.crop_size``."""
        key = scan_cache_key(scan, self.cached_preprocess, self.cohort.mask_binarization)
        if self.memory_cache is not None and key in self.memory_cache:
            return self.memory_cache[key]
        entry = None
        path = self.cache_dir / f"{key}.npz" if self.cache_dir is not None else None
        if path is not None and path.exists():
            try:
                with np.load(path) as stored:
                    entry = (stored["image"], stored["mask"], tuple(float(s) for s in stored["spacing"]),
                             np.asarray(stored["box"], dtype=np.int64))
            except (OSError, ValueError, KeyError, EOFError):
                log.warning("damaged cache entry %s: recomputing", path)
        if entry is None:
            entry = self._read_and_preprocess(patient, scan)
            if path is not None:
                _save_npz_atomic(path, image=entry[0], mask=entry[1], spacing=np.asarray(entry[2]), box=entry[3])
        if self.memory_cache is not None:
            self.memory_cache[key] = entry
        return entry

    def reference_mask(self, scan: Scan) -> np.ndarray | None:
        """The scan's whole reference mask (boolean) on the grid its crop box refers to: the scan's
        own grid, or the resampled one with ``target_spacing`` (nearest neighbour, as the
        preprocessing); read under the cohort's mask rule. ``None`` for a scan without a mask."""
        if scan.mask is None:
            return None
        info = read_volume_info(scan.image)
        mask = read_mask(scan.mask, image_shape=info.shape, binarize=self.cohort.mask_binarization).array
        if self.preprocess.target_spacing is not None:
            resample = ResampleToSpacingd(("mask",), self.preprocess.target_spacing, modes=("nearest",))
            mask = np.asarray(resample({"mask": mask[None].astype(np.float32), "spacing": info.spacing})["mask"])[0]
        return np.asarray(mask) > 0.5

    def __getitem__(self, index: int) -> dict:
        return self.item(index, index)

    def item(self, index: int, draw: int) -> dict:
        """Patient ``index``, augmented as the epoch's item ``draw``: its crop jitter and random
        transforms are drawn from (epoch seed, ``draw``). ``dataset[i]`` is ``item(i, i)``; a sampler
        that draws one patient twice in an epoch passes each draw's position, so the two draws are
        augmented differently (:class:`mstnet.experiments.fold_data.WeightedDraws`)."""
        patient, scans = self.items[index]
        images, masks, spacings, boxes = zip(*(self.preprocessed(patient, scan) for scan in scans))
        offset = np.asarray(self.shift_voxels, dtype=np.int64)
        if self.augmentation is not None and any(self.shift_voxels):
            offset = offset + np.asarray(jitter_offsets(self.shift_voxels, self.augmentation_seed, draw), dtype=np.int64)
        if any(self.shift_voxels):
            window = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, self.preprocess.crop_size))
            images, masks = [a[window] for a in images], [a[window] for a in masks]
        image = torch.from_numpy(np.stack(images))
        mask = torch.from_numpy(np.stack(masks).astype(np.float32))
        if self.augmentation is not None:
            item_seed = (self.augmentation_seed * AUGMENTATION_SEED_PER_EPOCH_SEED + draw) % 2**32
            self.augmentation.set_random_state(seed=item_seed)
            augmented = self.augmentation({"image": image.clone(), "mask": mask.clone()})
            image, mask = _plain(augmented["image"]), (_plain(augmented["mask"]) > 0.5).float()
        present = torch.tensor([scan.mask is not None for scan in scans])
        clinical = self.clinical[patient.patient_id]
        return {
            "image": image.unsqueeze(1).contiguous(),
            "mask": mask.unsqueeze(1).contiguous(),
            "has_mask": present.all(),
            "mask_present": present,
            "days": torch.tensor([scan.days for scan in scans], dtype=torch.float32),
            "clinical_categorical": torch.from_numpy(clinical.categorical),
            "clinical_numeric": torch.from_numpy(clinical.numeric),
            "clinical_numeric_missing": torch.from_numpy(clinical.numeric_missing),
            "label": torch.tensor(patient.label, dtype=torch.long),
            "spacing": torch.tensor(np.asarray(spacings, dtype=np.float32)),
            "crop_start": torch.from_numpy(np.stack([box[0] for box in boxes]) + offset),
            "field_shape": torch.from_numpy(np.stack([box[1] for box in boxes])),
            "patient_id": patient.patient_id,
            "timepoints": [scan.timepoint for scan in scans],
        }


def collate_patients(items: Sequence[dict]) -> dict:
    """Batch items of :class:`PatientDataset`: tensors stacked (``[B, ...]``), other values kept as lists."""
    if not items:
        raise ValueError("collate_patients: empty batch")
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate_patients: {key!r} has shapes {sorted(shapes)} in one batch "
                                 f"(patients {[item['patient_id'] for item in items]}); use a fixed number of time points")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


collate = collate_patients
"""Alias of :func:`collate_patients`."""


def _plain(value) -> torch.Tensor:
    """A MONAI MetaTensor (or array) as a plain tensor, so batches carry no metadata."""
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    return torch.as_tensor(np.asarray(value))


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
