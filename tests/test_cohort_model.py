"""The cohort types write the protocol's CSV format; errors carry every located problem."""

import pandas as pd

from mstnet.data.cohort import (
    MANIFEST_COLUMNS,
    ClinicalSchema,
    Cohort,
    CohortError,
    NoduleLocation,
    Patient,
    Problem,
    Scan,
)


def test_write_produces_protocol_columns_with_relative_paths(tmp_path):
    scans = (
        Scan("T0", 0.0, tmp_path / "images" / "P1_T0.nii.gz", tmp_path / "masks" / "P1_T0.nii.gz", NoduleLocation(10.5, 12.0, 3, 6)),
        Scan("T1", 371.0, tmp_path / "images" / "P1_T1.nii.gz"),
    )
    cohort = Cohort(
        patients=(Patient("P1", 1, scans, {"gender": 2, "age": 63.0}),),
        clinical_schema=ClinicalSchema(categorical=("gender",), numeric=("age",)),
    )
    cohort.write(tmp_path)
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["image"].tolist() == ["images/P1_T0.nii.gz", "images/P1_T1.nii.gz"]
    assert manifest.loc[0, "nodule_z2"] == 6 and pd.isna(manifest.loc[1, "nodule_x"])
    assert manifest["days"].tolist() == [0.0, 371.0]
    clinical = pd.read_csv(tmp_path / "clinical.csv")
    assert clinical.to_dict("records") == [{"patient_id": "P1", "gender": 2, "age": 63.0}]
    assert not list(tmp_path.glob(".*.tmp"))


def test_cohort_error_lists_every_problem_with_its_location():
    error = CohortError([Problem("label must be 0 or 1, got 2", patient_id="P7", column="label"),
                         Problem("file not found", patient_id="P9", timepoint="T1", file="/x/P9_T1.nii.gz")])
    text = str(error)
    assert "2 problems" in text
    assert "patient P7, column label: label must be 0 or 1, got 2" in text
    assert "patient P9, time point T1, file /x/P9_T1.nii.gz: file not found" in text
    assert len(error.problems) == 2
