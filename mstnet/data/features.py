"""Per-patient tabular features for the non-deep references (logistic regression, Brock, growth rule).

The frame (index ``patient_id``) holds the clinical record as given, plus for each of the
latest ``timepoints`` scans (oldest first, ``i = 0 .. T-1``) the nodule volume measured on
the reference mask (``volume_mm3_t{i}``), its equivalent-sphere diameter
(``diameter_mm_t{i}``) and the scan day (``days_t{i}``), and the volume doubling time
between the last two scans (``vdt_days``; ``inf`` when the nodule did not grow). The masks
are the cohort's reference segmentations (radiologist or generator ground truth), so these
rows measure what a reader with perfect segmentation would get.

``frame.attrs["clinical_schema"]`` holds the cohort's clinical schema as JSON
(:meth:`mstnet.data.cohort.ClinicalSchema.to_json`: categorical and numeric columns, categories
and ``sources``), so a method can tell categorical columns and each column's source (history,
screening, read) apart.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mstnet.data.cohort import Cohort, CohortError, Problem
from mstnet.data.io import read_mask, read_volume_info


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere with the given volume."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)) if volume_mm3 > 0 else 0.0


def volume_doubling_time(volume_start: float, volume_end: float, interval_days: float) -> float:
    """VDT = dt ln 2 / ln(V1 / V0) in days; ``inf`` without growth, negative when shrinking."""
    if volume_start <= 0 or volume_end <= 0 or interval_days <= 0:
        return math.inf
    ratio = math.log(volume_end / volume_start)
    return math.inf if ratio == 0 else interval_days * math.log(2.0) / ratio


def patient_features(cohort: Cohort, timepoints: int) -> pd.DataFrame:
    """The feature frame described in the module docstring, one row per patient.

    Raises:
        CohortError: a patient has fewer than ``timepoints`` scans, or a scan has no mask.
    """
    rows, problems = [], []
    for patient in cohort:
        if len(patient.scans) < timepoints:
            problems.append(Problem(f"has {len(patient.scans)} time points, {timepoints} asked for",
                                    patient_id=patient.patient_id))
            continue
        row: dict[str, object] = {"patient_id": patient.patient_id, **patient.clinical}
        volumes, days = [], []
        for i, scan in enumerate(patient.scans[-timepoints:]):
            if scan.mask is None:
                problems.append(Problem("no mask: size features need the nodule's reference mask",
                                        patient_id=patient.patient_id, timepoint=scan.timepoint))
                continue
            # each scan's own voxel size, from its image's header (as the dataset reads it): rounds may differ
            grid = read_volume_info(scan.image)
            mask = read_mask(scan.mask, image_shape=grid.shape, binarize=cohort.mask_binarization)
            volume = float(np.count_nonzero(mask.array)) * float(np.prod(grid.spacing))
            volumes.append(volume)
            days.append(scan.days)
            row[f"volume_mm3_t{i}"] = volume
            row[f"diameter_mm_t{i}"] = equivalent_diameter_mm(volume)
            row[f"days_t{i}"] = scan.days
        row["vdt_days"] = (volume_doubling_time(volumes[-2], volumes[-1], days[-1] - days[-2])
                           if len(volumes) >= 2 else math.nan)
        rows.append(row)
    if problems:
        raise CohortError(problems)
    frame = pd.DataFrame(rows).set_index("patient_id")
    frame.attrs["clinical_schema"] = cohort.clinical_schema.to_json()
    return frame
