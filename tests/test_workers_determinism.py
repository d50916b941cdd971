"""``--workers N`` gives the results of ``--workers 0`` bit for bit: preprocessing, items, a whole fold.

A DataLoader worker runs with ``torch.get_num_threads() == 1``, the training process with
several. A float32 torch reduction of more than 32768 elements (torch's grain size) is split
over the threads, so its last bit depends on how many there are; the z-score mean of a volume
used to be one, moving every voxel by ~1e-6 and the training losses with them. The volumes
here are 16 x 64 x 64 = 65536 voxels, above the grain size (the conftest cohorts are below it
and would not show the difference), and the tests force two threads in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import tests.harness_cohort as harness_cohort
from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import NoduleLocation
from mstnet.data.dataset import PatientDataset
from mstnet.data.sources import load_cohort
from mstnet.data.transforms import PreprocessConfig, preprocess_scan, preprocessing_transform
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import get_experiment
from mstnet.experiments.reproduce import prepare_runs
from mstnet.experiments.runner import RunOptions, run_experiment

SHAPE = (16, 64, 64)
CROP = (8, 32, 32)  # the tiny preset's crop


@pytest.fixture
def two_threads():
    """Two intra-op threads in this process (as on any multi-core machine), one in DataLoader workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness_cohort, "SHAPE", SHAPE)
        return harness_cohort.write_growth_cohort(tmp_path_factory.mktemp("cohort"), n_patients=20)


def _first(items):
    return items[0]


def _items(dataset: PatientDataset, seed: int, workers: int) -> list[dict]:
    dataset.set_augmentation_seed(seed)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_first)
    return list(loader)


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (a["patient_id"], key)
        else:
            assert a[key] == b[key], (a["patient_id"], key)


@pytest.mark.parametrize("target_spacing", [None, (1.5, 0.7, 0.7)])
def test_zscore_preprocessing_does_not_depend_on_the_thread_count(target_spacing):
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(3)
    config = PreprocessConfig(crop_size=CROP, target_spacing=target_spacing)
    nodule = NoduleLocation(x=40.0, y=30.0, z1=6, z2=9)
    before = torch.get_num_threads()
    try:
        for _ in range(4):  # with the old float32 torch mean, most such volumes differed
            image = (-850 + 40 * rng.standard_normal((16, 96, 96))).astype(np.float32)
            mask = (rng.random(image.shape) > 0.995).astype(np.uint8)
            outs = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                outs.append(preprocess_scan(preprocessing_transform(config), image, mask, (2.0, 0.8, 0.8), nodule))
            for out in outs[1:]:
                np.testing.assert_array_equal(out[0], outs[0][0])
                np.testing.assert_array_equal(out[1], outs[0][1])
        # still MONAI NormalizeIntensity's formula, to float32 rounding
        clipped = np.clip(image, -1000, 400)[None]
        no_crop = PreprocessConfig(crop_size=image.shape)
        ours, _, _ = preprocess_scan(preprocessing_transform(no_crop), image, None, (1, 1, 1), None)
        np.testing.assert_allclose(ours, np.asarray(NormalizeIntensity()(clipped))[0], rtol=0, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_items_through_workers_equal_items_in_this_process(cohort_dir, two_threads, tmp_path):
    cohort = load_cohort(cohort_dir)
    encoder = ClinicalCoder(cohort.clinical_schema).fit(cohort)

    def dataset(cache: str | None) -> PatientDataset:
        return PatientDataset(cohort, encoder, PreprocessConfig(crop_size=CROP), timepoints=2, augment=True,
                              cache_dir=tmp_path / cache if cache else None)

    in_process, in_workers, cached = dataset(None), dataset(None), dataset("cache")
    by_seed = {}
    for seed in (0, 1):  # two epochs: the first computes (and caches), the second is served from caches
        reference = _items(in_process, seed, workers=0)
        assert torch.get_num_threads() == 2
        for other in (_items(in_workers, seed, workers=2), _items(cached, seed, workers=2)):
            assert len(other) == len(reference) == 20
            for a, b in zip(reference, other):
                _assert_items_equal(a, b)
        by_seed[seed] = reference
    # the augmentation did draw something, and differently per epoch
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(by_seed[0], by_seed[1]))


def test_a_fold_trained_with_workers_equals_one_trained_without(cohort_dir, two_threads, tmp_path):
    spec = get_experiment("scan")  # cheap, and its losses did show the old ~1e-6 difference
    results = {}
    for workers in (0, 2):
        prepared = prepare_runs(tmp_path / f"runs{workers}", run_preset("tiny"), data=cohort_dir)
        options = RunOptions(preset=run_preset("tiny", epochs=1, n_folds=5), device=torch.device("cpu"),
                             cache_dir=tmp_path / f"cache{workers}", progress=False, workers=workers)
        run_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[0])
        fold_dir = prepared.runs_dir / spec.name / "fold0"
        results[workers] = {
            "history": pd.read_csv(fold_dir / "history.csv"),
            "predictions": pd.read_csv(fold_dir / "predictions.csv"),
            "metrics": json.loads((fold_dir / "metrics.json").read_text()),
            "threshold": json.loads((fold_dir / "run.json").read_text())["threshold"],
        }
    a, b = results[0], results[2]
    assert len(a["history"]) >= 1
    pd.testing.assert_frame_equal(a["history"], b["history"], check_exact=True)
    pd.testing.assert_frame_equal(a["predictions"], b["predictions"], check_exact=True)
    assert a["metrics"] == b["metrics"]
    assert a["threshold"] == b["threshold"]
