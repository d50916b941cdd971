"""Data loading throughput: volumes per second for an uncached and a cached epoch of a NIfTI cohort.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_data.py --benchmark-enable -q``

The cohort is 12 patients x 2 time points of 48 x 128 x 128 float32 NIfTI (.nii.gz), cropped
to 16 x 64 x 64. The uncached epoch reads, clips, z-scores and crops every scan; the cached
epoch serves the preprocessed crops from memory. The cached one must be at least 5x faster.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks._measure import run_measured
from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan
from mstnet.data.dataset import PatientDataset
from mstnet.data.io import write_nifti
from mstnet.data.transforms import PreprocessConfig

N_PATIENTS, N_TIMEPOINTS, SHAPE, SPACING = 12, 2, (48, 128, 128), (2.0, 0.7, 0.7)
PREPROCESS = PreprocessConfig(crop_size=(16, 64, 64))
MIN_SPEEDUP = 5.0


@pytest.fixture(scope="module")
def bench_cohort(tmp_path_factory) -> Cohort:
    folder: Path = tmp_path_factory.mktemp("bench_cohort")
    rng = np.random.default_rng(0)
    patients = []
    for p in range(N_PATIENTS):
        scans = []
        for t in range(N_TIMEPOINTS):
            image = (-850 + 40 * rng.standard_normal(SHAPE)).astype(np.float32)
            path = write_nifti(folder / f"B{p:02d}_T{t}.nii.gz", image, SPACING)
            scans.append(Scan(f"T{t}", 365.0 * t, path, None, NoduleLocation(64.0, 64.0, 20, 26)))
        patients.append(Patient(f"B{p:02d}", p % 2, tuple(scans), {"gender": str(p % 2)}))
    return Cohort(tuple(patients), ClinicalSchema(("gender",), ()))


def _epoch(dataset: PatientDataset) -> int:
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) * N_TIMEPOINTS


def _volumes_per_second(dataset: PatientDataset, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        volumes = _epoch(dataset)
        best = min(best, time.perf_counter() - start)
    return volumes / best


def test_uncached_epoch(bench_cohort, benchmark):
    benchmark.group = "data loading"
    encoder = ClinicalCoder(bench_cohort.clinical_schema).fit(bench_cohort)
    uncached = PatientDataset(bench_cohort, encoder, PREPROCESS, memory_cache=False)
    run_measured(benchmark, lambda: _epoch(uncached), rounds=2, items_per_call=N_PATIENTS * N_TIMEPOINTS, item="volume")


def test_cached_epoch(bench_cohort, benchmark):
    benchmark.group = "data loading"
    encoder = ClinicalCoder(bench_cohort.clinical_schema).fit(bench_cohort)
    cached = PatientDataset(bench_cohort, encoder, PREPROCESS)
    run_measured(benchmark, lambda: _epoch(cached), rounds=5, items_per_call=N_PATIENTS * N_TIMEPOINTS, item="volume",
                 baselines=["test_uncached_epoch"])
    assert cached.reads == N_PATIENTS * N_TIMEPOINTS


def test_cached_epoch_is_at_least_five_times_faster_than_uncached(bench_cohort):
    encoder = ClinicalCoder(bench_cohort.clinical_schema).fit(bench_cohort)
    uncached = PatientDataset(bench_cohort, encoder, PREPROCESS, memory_cache=False)
    uncached_rate = _volumes_per_second(uncached, rounds=2)
    cached = PatientDataset(bench_cohort, encoder, PREPROCESS)
    _epoch(cached)  # fills the cache
    cached_rate = _volumes_per_second(cached, rounds=3)
    assert cached.reads == N_PATIENTS * N_TIMEPOINTS
    print(f"\nuncached epoch: {uncached_rate:.1f} volumes/s; cached epoch: {cached_rate:.1f} volumes/s; "
          f"speedup {cached_rate / uncached_rate:.1f}x")
    assert cached_rate >= MIN_SPEEDUP * uncached_rate
