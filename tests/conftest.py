"""Shared fixtures: a tiny longitudinal NIfTI cohort written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan
from mstnet.data.io import write_nifti

TINY_SHAPE = (12, 24, 24)
TINY_SPACING = (2.0, 0.8, 0.8)


def write_tiny_cohort(folder: Path, n_patients: int = 4, n_timepoints: int = 2, shape=TINY_SHAPE, spacing=TINY_SPACING,
                      seed: int = 0) -> Cohort:
    """``n_patients`` patients (alternating labels) with a cube nodule at a known place, as NIfTI + manifest.

    Image values: -850 HU background with noise, 40 HU nodule. Clinical: gender, cigsmok
    (categorical), age (numeric).
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    patients = []
    for p in range(n_patients):
        patient_id = f"P{p:02d}"
        z, y, x = shape[0] // 2, int(rng.integers(6, shape[1] - 6)), int(rng.integers(6, shape[2] - 6))
        scans = []
        for t in range(n_timepoints):
            half = 1 + t
            mask = np.zeros(shape, np.uint8)
            mask[z - half:z + half + 1, y - half:y + half + 1, x - half:x + half + 1] = 1
            image = (-850 + 30 * rng.standard_normal(shape) + 890.0 * mask).astype(np.float32)
            image_path = write_nifti(folder / "images" / f"{patient_id}_T{t}.nii.gz", image, spacing)
            mask_path = write_nifti(folder / "masks" / f"{patient_id}_T{t}.nii.gz", mask, spacing)
            scans.append(Scan(f"T{t}", 365.0 * t, image_path, mask_path, NoduleLocation(float(x), float(y), z - half, z + half)))
        clinical = {"gender": str(1 + p % 2), "cigsmok": str(p % 3 % 2), "age": 55.0 + 3 * p}
        patients.append(Patient(patient_id, p % 2, tuple(scans), clinical))
    cohort = Cohort(tuple(patients), ClinicalSchema(("gender", "cigsmok"), ("age",)), root=folder, name="tiny")
    cohort.write(folder)
    return cohort


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Cohort:
    """Four patients, two time points each, written to ``tmp_path / "cohort"``."""
    return write_tiny_cohort(tmp_path / "cohort")
