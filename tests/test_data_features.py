"""Patient feature table: sizes from reference masks, VDT, and located errors."""

import math
from dataclasses import replace

import pytest

from mstnet.data.cohort import CohortError
from mstnet.data.features import patient_features, volume_doubling_time
from mstnet.data.sources import load_cohort
from tests.harness_cohort import SPACING, write_growth_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return load_cohort(write_growth_cohort(tmp_path_factory.mktemp("cohort"), n_patients=5))


def test_volumes_are_voxel_counts_times_voxel_volume_and_vdt_follows(cohort):
    import nibabel as nib
    import numpy as np

    features = patient_features(cohort, timepoints=2)
    patient = cohort.patients[0]
    voxels = int(np.count_nonzero(nib.load(str(patient.scans[1].mask)).get_fdata()))
    assert features.loc[patient.patient_id, "volume_mm3_t1"] == pytest.approx(voxels * math.prod(SPACING))
    row = features.loc[patient.patient_id]
    assert row["vdt_days"] == pytest.approx(volume_doubling_time(row["volume_mm3_t0"], row["volume_mm3_t1"], row["days_t1"]))
    assert volume_doubling_time(100.0, 200.0, 365.0) == pytest.approx(365.0)
    assert volume_doubling_time(100.0, 100.0, 365.0) == math.inf


def test_missing_mask_and_too_few_timepoints_name_the_patient(cohort):
    first = cohort.patients[0]
    broken = replace(cohort, patients=(replace(first, scans=(replace(first.scans[0], mask=None), first.scans[1])),
                                       *cohort.patients[1:]))
    with pytest.raises(CohortError, match=f"patient {first.patient_id}, time point T0: no mask"):
        patient_features(broken, timepoints=2)
    with pytest.raises(CohortError, match=f"patient {first.patient_id}: has 2 time points, 3 asked for"):
        patient_features(cohort, timepoints=3)
