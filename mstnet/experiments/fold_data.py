"""The data of one cross-validation fold, and the loaders that batch it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import Cohort
from mstnet.data.dataset import PatientDataset, collate_patients
from mstnet.data.features import equivalent_diameter_mm
from mstnet.data.transforms import AugmentConfig, PreprocessConfig
from mstnet.experiments.distributed import in_process_group
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


class WeightedDraws(Dataset):
    """One epoch of ``dataset``'s patients drawn with replacement in proportion to ``weights``
    (``[N]``): ``N`` draws (rounded up to a multiple of ``world_size``, so every DDP rank gets as many
    batches, as :class:`~torch.utils.data.DistributedSampler` pads) from a generator seeded by
    ``seed``, the same on every rank, of which rank r takes positions r, r + world_size, ... . Item ``k`` is patient
    ``patients[k]`` augmented as its draw's position in the epoch
    (:meth:`mstnet.data.dataset.PatientDataset.item`), so a patient drawn twice gets two different
    augmentations; a dataset without ``item`` (a plain sequence) serves ``dataset[patients[k]]``."""

    def __init__(self, dataset, weights: np.ndarray, seed: int, rank: int = 0, world_size: int = 1):
        generator = torch.Generator().manual_seed(seed)
        total = -(-len(dataset) // world_size) * world_size
        draws = torch.multinomial(torch.as_tensor(weights, dtype=torch.double), total, replacement=True,
                                  generator=generator)
        self.dataset = dataset
        self.positions = list(range(rank, total, world_size))
        self.patients = [int(draws[position]) for position in self.positions]

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, k: int):
        if hasattr(self.dataset, "item"):
            return self.dataset.item(self.patients[k], self.positions[k])
        return self.dataset[self.patients[k]]


def data_loader(dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device, workers: int = 0,
                weights: np.ndarray | None = None) -> DataLoader:
    """Batches of ``dataset`` (:func:`mstnet.data.dataset.collate_patients`), shuffled by ``seed`` when
    ``shuffle`` (each rank its share under DDP), pinned for a CUDA ``device``. With ``weights``
    (``[N]``, for a shuffled loader), ``len(dataset)`` patients are drawn with replacement in
    proportion to them instead, each rank its share under DDP (:class:`WeightedDraws`).

    Raises:
        ValueError: ``weights`` for a loader that is not shuffled.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    distributed = in_process_group()
    if weights is not None:
        if not shuffle:
            raise ValueError("weighted sampling needs a shuffled loader")
        rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        dataset, shuffle = WeightedDraws(dataset, weights, seed, rank, world_size), False
    elif shuffle and distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
                      collate_fn=collate_patients, pin_memory=device.type == "cuda", num_workers=workers)
