"""A small longitudinal cohort written to disk for harness tests: spheres that grow when malignant."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan

SHAPE = (12, 40, 40)
SPACING = (2.0, 0.8, 0.8)


def _write_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> Path:
    """Write a (D, H, W) array as NIfTI with the voxel axes (x=W, y=H, z=D)."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), str(path))
    return path


def write_growth_cohort(folder: Path, n_patients: int = 20, seed: int = 0) -> Path:
    """``n_patients`` patients (40% malignant), scans at day 0 and ~365, a sphere nodule per scan.

    Malignant nodules double in volume within the year, benign ones stay; images are a
    lung-like background (-850 HU) with noise and the nodule at 0 HU.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    patients = []
    for index in range(n_patients):
        patient_id = f"G{index:03d}"
        label = int(index % 5 < 2)
        centre = np.array([SHAPE[0] / 2, SHAPE[1] / 2 + rng.integers(-4, 5), SHAPE[2] / 2 + rng.integers(-4, 5)]) * SPACING
        radius0 = rng.uniform(3.0, 5.0)
        scans = []
        for t, days in enumerate((0.0, float(365 + rng.integers(-20, 21)))):
            radius = radius0 * (2 ** (days / 365 / 3) if label else 1.0)
            mask = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
            image = -850 + 40 * rng.standard_normal(SHAPE) + 850 * mask
            name = f"{patient_id}_T{t}.nii.gz"
            scans.append(Scan(f"T{t}", days, _write_nifti(folder / "images" / name, image.astype(np.float32)),
                              _write_nifti(folder / "masks" / name, mask.astype(np.uint8)),
                              NoduleLocation(centre[2] / SPACING[2], centre[1] / SPACING[1], 3, 8)))
        clinical = {"gender": int(rng.integers(1, 3)), "cigsmok": int(rng.integers(0, 2)), "age": float(rng.integers(55, 75))}
        patients.append(Patient(patient_id, label, tuple(scans), clinical))
    Cohort(tuple(patients), ClinicalSchema(categorical=("gender", "cigsmok"), numeric=("age",))).write(folder)
    return folder
