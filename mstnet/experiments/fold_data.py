"""The data of one cross-validation fold, and the loaders that batch it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import Cohort
from mstnet.data.dataset import PatientDataset, collate_patients
from mstnet.data.features import equivalent_diameter_mm
from mstnet.data.transforms import AugmentConfig, PreprocessConfig
from mstnet.experiments.registry import LARGE_NODULE_MM, ExperimentSpec, Recipe
from mstnet.experiments.splits import Fold

if TYPE_CHECKING:
    from mstnet.experiments.runner import RunOptions


class FoldData:
    """The three datasets of one fold, sharing a clinical coder fitted on ``train`` only; ``augment``
    is the training dataset's augmentation (``False``: none)."""

    def __init__(self, cohort: Cohort, fold: Fold, spec: ExperimentSpec, options: RunOptions,
                 augment: AugmentConfig | bool = True):
        self.encoder = ClinicalCoder(cohort.clinical_schema.restricted_to(spec.data_view.clinical_sources)).fit(cohort.subset(fold.train))
        preprocess = PreprocessConfig(crop_size=options.preset.crop_size, crop_mode=options.preset.crop_mode)
        timepoints = spec.data_view.timepoints

        def dataset(ids: Sequence[str], augmentation: AugmentConfig | bool) -> PatientDataset:
            return PatientDataset(cohort.subset(ids), self.encoder, preprocess, timepoints=timepoints,
                                  augment=augmentation, cache_dir=options.cache_dir)

        self.train = dataset(fold.train, augment)
        self.validation = dataset(fold.validation, False)
        self.train_plain = dataset(fold.train, False)
        """The training patients without augmentation (the cached classification stage)."""
        self.test = dataset(fold.test, False)
        self.timepoints = timepoints


def training_augmentation(recipe: Recipe) -> AugmentConfig | bool:
    """The training dataset's augmentation under ``recipe``: none without ``augment``, else the
    defaults with ``scale_augmentation`` as the zoom probability."""
    return AugmentConfig(zoom_prob=recipe.scale_augmentation) if recipe.augment else False


def largest_nodule_diameters_mm(dataset: PatientDataset) -> np.ndarray:
    """``[N]``: for each patient of ``dataset``, the largest equivalent-sphere diameter (mm) of its
    selected scans' reference masks, counted in the cached training crops (the crop plus the jitter
    margin; a nodule reaching beyond it counts only inside) at each crop's spacing; 0 for a patient
    without a mask."""
    diameters = []
    for patient, scans in dataset.items:
        volumes = [float(np.count_nonzero(mask)) * float(np.prod(spacing))
                   for _, mask, spacing, _ in (dataset.preprocessed(patient, scan) for scan in scans)]
        diameters.append(equivalent_diameter_mm(max(volumes, default=0.0)))
    return np.asarray(diameters, dtype=np.float64)


def large_nodule_weights(diameters_mm: np.ndarray, weight: float) -> np.ndarray:
    """``[N]`` sampling weights: ``weight`` for a patient whose ``diameters_mm`` exceeds
    :data:`LARGE_NODULE_MM`, 1 otherwise."""
    return np.where(np.asarray(diameters_mm) > LARGE_NODULE_MM, float(weight), 1.0)


def data_loader(dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device, workers: int = 0,
                weights: np.ndarray | None = None) -> DataLoader:
    """Batches of ``dataset`` (:func:`mstnet.data.dataset.collate_patients`), shuffled by ``seed`` when
    ``shuffle`` (each rank its share under DDP), pinned for a CUDA ``device``. With ``weights``
    (``[N]``, for a shuffled loader), ``len(dataset)`` patients are drawn with replacement in
    proportion to them instead (not under DDP)."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if weights is not None:
        if not shuffle or (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("weighted sampling needs a shuffled loader outside DDP")
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(dataset),
                                        replacement=True, generator=generator)
        shuffle = False
    elif shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
                      collate_fn=collate_patients, pin_memory=device.type == "cuda", num_workers=workers)
