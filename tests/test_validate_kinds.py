"""One test per kind of cohort problem that validation must catch before training trips on it.

Each test takes the small on-disk cohort of ``tests/conftest.py`` (four patients, two time
points, NIfTI images and masks, manifest format), breaks one thing and checks that
:func:`mstnet.data.validate.validate_cohort` / :func:`validate_source` report it with its
location (patient, time point, file, column) and a message saying what is wrong.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import ClinicalSchema, CohortError
from mstnet.data.dataset import scan_cache_key
from mstnet.data.features import patient_features
from mstnet.data.io import read_mask, read_volume, read_volume_info, write_npy, write_nifti
from mstnet.data.sources import load_cohort
from mstnet.data.transforms import PreprocessConfig
from mstnet.data.validate import CohortNeeds, validate_cohort, validate_source

FULL_NEEDS = CohortNeeds(min_timepoints=2, n_folds=2, segmentation=True, clinical=True)
"""What a two-time-point, two-fold segmentation + classification experiment needs of the tiny cohort."""


def _rewrite(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


def _lines(problems) -> list[str]:
    return [str(p) for p in problems]


def _only(problems, **where):
    """The one problem located at ``where`` (patient_id=..., timepoint=..., column=...)."""
    found = [p for p in problems if all(getattr(p, key) == value for key, value in where.items())]
    assert len(found) == 1, (where, _lines(problems))
    return found[0]


# ----------------------------------------------------------------------------------------- sound cohort


def test_a_sound_cohort_has_no_problems_with_every_check_on(tiny_cohort):
    assert validate_cohort(tiny_cohort, FULL_NEEDS, read_data=True) == []
    cohort, problems = validate_source(tiny_cohort.root, FULL_NEEDS, read_data=True)
    assert cohort is not None and len(cohort) == 4 and problems == []


def test_the_older_min_timepoints_keyword_still_works(tiny_cohort):
    assert _lines(validate_cohort(tiny_cohort, min_timepoints=2)) == []
    assert len(validate_cohort(tiny_cohort, min_timepoints=3, check_images=False)) == 4
    _, problems = validate_source(tiny_cohort.root, min_timepoints=3, check_images=False)
    assert len(problems) == 4


# ----------------------------------------------------------------------------------------- 1. non-finite voxels


@pytest.mark.parametrize(("values", "expected"), [((np.nan, np.nan), "2 NaN and 0 inf"), ((np.inf, -np.inf), "0 NaN and 2 inf"),
                                                  ((np.nan, np.inf), "1 NaN and 1 inf")])
def test_nan_and_inf_voxels_are_counted_and_located(tiny_cohort, values, expected):
    scan = tiny_cohort["P01"].scans[1]
    image = read_volume(scan.image).array.copy()
    image[0, 0, 0], image[1, 2, 3] = values
    write_nifti(scan.image, image, (2.0, 0.8, 0.8))
    problems = validate_cohort(tiny_cohort, FULL_NEEDS, read_data=True)
    problem = _only(problems)
    assert (problem.patient_id, problem.timepoint, problem.file) == ("P01", "T1", str(scan.image))
    assert problem.message == f"image has {expected} voxel(s) of {image.size}; every voxel must be finite"
    assert validate_cohort(tiny_cohort, FULL_NEEDS, read_data=False) == []  # headers cannot show it


# ----------------------------------------------------------------------------------------- 2. mask values


@pytest.mark.parametrize(("value", "found"), [(2, "0, 2"), (255, "0, 255"), (0.5, "0, 0.5")])
def test_masks_with_values_other_than_0_and_1_are_refused_unless_a_rule_is_given(tiny_cohort, value, found):
    scan = tiny_cohort["P02"].scans[0]
    mask = read_mask(scan.mask).array.astype(np.float32 if value == 0.5 else np.uint8) * value
    write_nifti(scan.mask, mask, (2.0, 0.8, 0.8))
    problem = _only(validate_cohort(tiny_cohort, FULL_NEEDS, read_data=True))
    assert str(problem) == (f"patient P02, time point T0, file {scan.mask}: mask values must be 0 or 1, found {found}; "
                            "pass --binarize-masks nonzero or half to accept it")
    for rule in ("nonzero", "half"):
        cohort, problems = validate_source(tiny_cohort.root, FULL_NEEDS, read_data=True, binarize_masks=rule)
        assert cohort.mask_binarization == rule and problems == []


@pytest.mark.parametrize(("binarize", "expected"), [
    (None, None),
    ("nonzero", [0, 1, 1, 1, 1, 1, 1]),
    ("half", [0, 1, 1, 1, 1, 0, 0]),
])
def test_read_mask_binarization_rules(tmp_path, binarize, expected):
    values = np.array([0, 0.5, 1, 2, 255, 0.25, -1], dtype=np.float32)
    path = write_npy(tmp_path / "mask.npy", values.reshape(1, 1, -1))
    if expected is None:
        with pytest.raises(CohortError) as error:
            read_mask(path, binarize=binarize)
        assert str(error.value) == (f"file {path}: mask values must be 0 or 1, found -1, 0, 0.25, 0.5, 1, 2, 255; "
                                    "pass --binarize-masks nonzero or half to accept it")
    else:
        mask = read_mask(path, binarize=binarize).array
        assert mask.dtype == np.uint8 and mask.ravel().tolist() == expected


def test_read_mask_accepts_0_1_masks_of_any_type_and_refuses_nan_and_unknown_rules(tmp_path):
    for dtype in (np.uint8, np.float32, bool):
        path = write_npy(tmp_path / f"mask_{np.dtype(dtype).name}.npy", np.array([[[0, 1, 1]]], dtype=dtype))
        assert read_mask(path).array.ravel().tolist() == [0, 1, 1]
    path = write_npy(tmp_path / "nan.npy", np.array([[[0, 1, np.nan]]], dtype=np.float32))
    for rule in (None, "nonzero", "half"):
        with pytest.raises(CohortError, match=r"nan\.npy: mask values must be finite, found 1 NaN and 0 inf voxel"):
            read_mask(path, binarize=rule)
    with pytest.raises(ValueError, match="--binarize-masks .*: choose one of half, nonzero"):
        read_mask(path, binarize="any")
    with pytest.raises(ValueError, match="--binarize-masks .*: choose one of half, nonzero"):
        load_cohort(tmp_path, binarize_masks="yes")


def test_the_cohort_carries_its_mask_rule_to_every_reader(tiny_cohort):
    scan = tiny_cohort["P00"].scans[0]
    write_nifti(scan.mask, read_mask(scan.mask).array * np.uint8(255), (2.0, 0.8, 0.8))
    cohort = load_cohort(tiny_cohort.root, binarize_masks="nonzero")
    assert cohort.mask_binarization == "nonzero"
    assert cohort.subset(["P00", "P01"]).mask_binarization == "nonzero"
    assert load_cohort(tiny_cohort.root).mask_binarization is None
    cohort.write(tiny_cohort.root / "copy")  # the rule is not written with the cohort
    assert json.loads((tiny_cohort.root / "copy" / "clinical_schema.json").read_text()) == {
        "categorical": ["gender", "cigsmok"], "numeric": ["age"]}
    features = patient_features(cohort, 2)  # features read the masks under the cohort's rule
    assert features.loc["P00", "volume_mm3_t0"] > 0
    with pytest.raises(CohortError, match="mask values must be 0 or 1, found 0, 255"):
        patient_features(load_cohort(tiny_cohort.root), 2)
    config = PreprocessConfig()
    assert scan_cache_key(scan, config) != scan_cache_key(scan, config, "nonzero") != scan_cache_key(scan, config, "half")
    assert scan_cache_key(scan, config) == scan_cache_key(scan, config, None)
    from mstnet.data.dataset import PatientDataset

    encoder = ClinicalCoder(cohort.clinical_schema).fit(cohort)
    config = PreprocessConfig(crop_size=(8, 16, 16))
    assert PatientDataset(cohort.subset(["P00"]), encoder, config)[0]["mask"][0].sum() > 0  # the dataset reads under the rule
    with pytest.raises(CohortError, match="mask values must be 0 or 1, found 0, 255"):
        PatientDataset(load_cohort(tiny_cohort.root).subset(["P00"]), encoder, config)[0]


# ----------------------------------------------------------------------------------------- 3. days


@pytest.mark.parametrize(("days", "timepoint", "message"), [
    (("-5", "365"), "T0", "days must be 0 or more (days since the first scan), got -5"),
    (("365", "365"), "T1", "days must increase strictly across time points: T1 at day 365 follows T0 at day 365"),
    (("365", "0"), "T1", "days must increase with the time point: T1 is at day 0, before T0 at day 365"),
])
def test_bad_days_are_reported_with_patient_time_point_and_column(tiny_cohort, days, timepoint, message):
    def edit(frame):
        frame.loc[(frame["patient_id"] == "P03") & (frame["timepoint"] == "T0"), "days"] = days[0]
        frame.loc[(frame["patient_id"] == "P03") & (frame["timepoint"] == "T1"), "days"] = days[1]

    _rewrite(tiny_cohort.root / "manifest.csv", edit)
    _, problems = validate_source(tiny_cohort.root, FULL_NEEDS, check_images=False)
    problem = _only(problems)
    assert (problem.patient_id, problem.timepoint, problem.column, problem.message) == ("P03", timepoint, "days", message)


def test_scans_held_out_of_order_in_memory_are_reported(tiny_cohort):
    patient = tiny_cohort["P00"]
    swapped = replace(tiny_cohort, patients=(replace(patient, scans=patient.scans[::-1]),))
    problems = validate_cohort(swapped, check_images=False)
    assert "days must increase strictly across time points: T0 at day 0 follows T1 at day 365" in _lines(problems)[0]


# ----------------------------------------------------------------------------------------- 4. time points


def test_patients_with_fewer_time_points_than_needed_are_each_named(tiny_cohort):
    problems = validate_cohort(tiny_cohort, CohortNeeds(min_timepoints=3), check_images=False)
    assert _lines(problems) == [f"patient P0{i}: has 2 time point(s) (T0, T1), at least 3 required" for i in range(4)]


# ----------------------------------------------------------------------------------------- 5. empty masks


def test_all_empty_masks_are_a_problem_for_segmentation_only(tiny_cohort):
    for patient in tiny_cohort:
        for scan in patient.scans:
            write_nifti(scan.mask, np.zeros((12, 24, 24), np.uint8), (2.0, 0.8, 0.8))
    problem = _only(validate_cohort(tiny_cohort, FULL_NEEDS, read_data=True))
    assert str(problem) == (f"column mask, file {tiny_cohort.root / 'manifest.csv'}: every mask is empty (no foreground voxel "
                            "in any of the 8 mask(s) read), and the experiment trains segmentation")
    assert validate_cohort(tiny_cohort, replace(FULL_NEEDS, segmentation=False), read_data=True) == []


def test_segmentation_without_any_mask_is_a_problem(tiny_cohort):
    _rewrite(tiny_cohort.root / "manifest.csv", lambda frame: frame.__setitem__("mask", ""))
    _, problems = validate_source(tiny_cohort.root, FULL_NEEDS)
    assert _lines(problems) == [f"column mask, file {tiny_cohort.root / 'manifest.csv'}: no scan has a mask, "
                                "and the experiment trains segmentation"]
    assert validate_source(tiny_cohort.root, replace(FULL_NEEDS, segmentation=False))[1] == []


# ----------------------------------------------------------------------------------------- 6. no patients


def test_a_header_only_manifest_is_a_cohort_without_patients(tiny_cohort):
    manifest = tiny_cohort.root / "manifest.csv"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    for source in (tiny_cohort.root, manifest):
        cohort, problems = validate_source(source, FULL_NEEDS, read_data=True)
        assert cohort is not None and len(cohort) == 0
        assert _lines(problems) == [f"file {manifest}: the cohort has no patients"]


# ----------------------------------------------------------------------------------------- 7. categories


def test_values_outside_the_schema_categories_are_unknown_categories(tiny_cohort):
    schema_file = tiny_cohort.root / "clinical_schema.json"
    schema_file.write_text(json.dumps({"categorical": ["gender", "cigsmok"], "numeric": ["age"],
                                       "categories": {"gender": ["1", "2"], "cigsmok": [0]}}))
    cohort, problems = validate_source(tiny_cohort.root, FULL_NEEDS, check_images=False)
    assert cohort.clinical_schema.categories == {"gender": ("1", "2"), "cigsmok": ("0",)}
    assert _lines(problems) == ["patient P01, column cigsmok: unknown category '1' (expected one of ['0'])"]
    # the explicit argument replaces the schema's lists
    assert [str(p) for p in validate_cohort(cohort, check_images=False, allowed_categories={"gender": ["2"]})] == [
        "patient P00, column gender: unknown category '1' (expected one of ['2'])",
        "patient P02, column gender: unknown category '1' (expected one of ['2'])"]
    cohort.write(tiny_cohort.root / "copy")  # categories are written back
    assert json.loads((tiny_cohort.root / "copy" / "clinical_schema.json").read_text())["categories"] == {
        "gender": ["1", "2"], "cigsmok": ["0"]}


def test_schema_categories_round_trip_and_bad_categories_are_named(tiny_cohort):
    schema = ClinicalSchema(("a",), ("b",), {"a": ("x", "y")})
    assert ClinicalSchema.from_json(schema.to_json()) == schema
    assert ClinicalSchema(("a",), ("b",)).to_json() == {"categorical": ["a"], "numeric": ["b"]}
    schema_file = tiny_cohort.root / "clinical_schema.json"
    schema_file.write_text(json.dumps({"categorical": ["gender", "cigsmok"], "numeric": ["age"], "categories": {"gender": "1"}}))
    _, problems = validate_source(tiny_cohort.root)
    assert _lines(problems) == [f"file {schema_file}: 'categories' of the clinical schema must map each categorical column "
                                "to a list of allowed values"]
    schema_file.write_text(json.dumps({"categorical": ["gender", "cigsmok"], "numeric": ["age"], "categories": {"age": [1]}}))
    _, problems = validate_source(tiny_cohort.root)
    assert _lines(problems) == [f"column age, file {schema_file}: the clinical schema gives categories for this column "
                                "but it is not in its categorical list"]


def test_the_synthetic_generator_declares_the_categories_of_its_categorical_columns():
    from mstnet.synth import SynthConfig
    from mstnet.synth.cohort_folder import CLINICAL_SCHEMA, clinical_categories

    categories = clinical_categories(SynthConfig())
    assert set(categories) == set(CLINICAL_SCHEMA.categorical)
    assert categories["gender"] == ("1", "2") and categories["nodule_type"] == ("solid", "part_solid", "non_solid")


# ----------------------------------------------------------------------------------------- 8. both lists


def test_a_column_both_categorical_and_numeric_is_named(tiny_cohort):
    schema_file = tiny_cohort.root / "clinical_schema.json"
    schema_file.write_text(json.dumps({"categorical": ["gender", "cigsmok", "age"], "numeric": ["age"]}))
    cohort, problems = validate_source(tiny_cohort.root)
    assert cohort is None
    assert _lines(problems) == [f"column age, file {schema_file}: listed as both categorical and numeric in the clinical "
                                "schema; a column has one type"]
    in_memory = replace(tiny_cohort, clinical_schema=ClinicalSchema(("gender", "age"), ("age",)))
    assert _only(validate_cohort(in_memory, check_images=False), column="age").message.startswith("listed as both")


# ----------------------------------------------------------------------------------------- 9. folds


def test_a_label_with_fewer_patients_than_folds_is_named(tiny_cohort):
    problems = validate_cohort(tiny_cohort, CohortNeeds(n_folds=3), check_images=False)
    manifest = tiny_cohort.root / "manifest.csv"
    assert _lines(problems) == [
        f"column label, file {manifest}: only 2 benign patient(s) (label 0), fewer than the 3 cross-validation folds: "
        "each fold needs at least one patient of each label",
        f"column label, file {manifest}: only 2 malignant patient(s) (label 1), fewer than the 3 cross-validation folds: "
        "each fold needs at least one patient of each label"]
    one_malignant = replace(tiny_cohort, patients=tuple(replace(p, label=0) if p.patient_id == "P03" else p for p in tiny_cohort))
    problems = validate_cohort(one_malignant, CohortNeeds(n_folds=2), check_images=False)
    assert len(problems) == 1 and "only 1 malignant patient(s) (label 1), fewer than the 2" in problems[0].message


# ----------------------------------------------------------------------------------------- 10. truncated files


@pytest.mark.parametrize("which", ["image", "mask"])
def test_a_truncated_nifti_is_a_located_problem_when_data_is_read(tiny_cohort, which):
    scan = tiny_cohort["P02"].scans[1]
    path = getattr(scan, which)
    data = path.read_bytes()
    path.write_bytes(data[:-24])  # the end of the compressed data and the gzip trailer
    problem = _only(validate_cohort(tiny_cohort, FULL_NEEDS, read_data=True))
    assert (problem.patient_id, problem.timepoint, problem.file) == ("P02", "T1", str(path))
    assert problem.message.startswith(f"{which}: NIfTI data cannot be read")
    validate_cohort(tiny_cohort, FULL_NEEDS, read_data=False)  # a header read does not crash either


def test_a_nifti_cut_inside_its_header_is_a_located_problem(tiny_cohort):
    scan = tiny_cohort["P00"].scans[0]
    scan.image.write_bytes(gzip.compress(gzip.decompress(scan.image.read_bytes())[:100]))
    for read_data in (False, True):
        problem = _only(validate_cohort(tiny_cohort, FULL_NEEDS, read_data=read_data))
        assert (problem.patient_id, problem.timepoint, problem.file) == ("P00", "T0", str(scan.image))
        assert problem.message.startswith("image: cannot be read as NIfTI")


# ----------------------------------------------------------------------------------------- 11. clinical rows


def test_a_patient_missing_from_the_clinical_table_is_a_problem_when_clinical_data_is_used(tiny_cohort):
    _rewrite(tiny_cohort.root / "clinical.csv", lambda frame: frame.drop(index=2, inplace=True))
    _, problems = validate_source(tiny_cohort.root, FULL_NEEDS, check_images=False)
    assert _lines(problems) == ["patient P02: no clinical row"]
    assert validate_source(tiny_cohort.root, replace(FULL_NEEDS, clinical=False), check_images=False)[1] == []
    assert _lines(validate_source(tiny_cohort.root, check_images=False)[1]) == ["patient P02: no clinical row"]


# ----------------------------------------------------------------------------------------- 12. non-3D volumes


@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_a_2d_image_is_refused_by_every_reader_and_located_by_validation(tiny_cohort, tmp_path, suffix):
    path = tmp_path / f"flat{suffix}"
    if suffix == ".npy":
        np.save(path, np.zeros((24, 24), np.float32))
        shape = "(24, 24)"
    else:
        nib.save(nib.Nifti1Image(np.zeros((24, 20), np.float32), np.eye(4)), str(path))
        shape = "(24, 20)"
    for reader in (read_volume, read_volume_info, read_mask):
        with pytest.raises(CohortError) as error:
            reader(path)
        assert str(error.value) == f"file {path}: expected a 3D volume, got shape {shape}"
    patient = tiny_cohort["P01"]
    broken = replace(patient, scans=(replace(patient.scans[0], image=path), replace(patient.scans[1], mask=path)))
    cohort = replace(tiny_cohort, patients=(broken,))
    for read_data in (False, True):
        problems = validate_cohort(cohort, read_data=read_data)
        assert _lines(problems) == [f"patient P01, time point T0, file {path}: image: expected a 3D volume, got shape {shape}",
                                    f"patient P01, time point T1, file {path}: mask: expected a 3D volume, got shape {shape}"]


def test_a_4d_nifti_with_several_volumes_is_refused_from_its_header(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(path))
    with pytest.raises(CohortError, match=r"series\.nii\.gz: expected a 3D volume, got shape \(4, 4, 3, 2\)"):
        read_volume_info(path)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 1), np.float32), np.eye(4)), str(path))
    assert read_volume_info(path).shape == (3, 5, 4) == read_volume(path).shape


# ----------------------------------------------------------------------------------------- order, all at once


def test_every_problem_comes_at_once_in_patient_then_time_point_order(tiny_cohort):
    p0, p1, p2, p3 = tiny_cohort.patients
    image = read_volume(p3.scans[1].image).array.copy()
    image[0, 0, 0] = np.nan
    write_nifti(p3.scans[1].image, image, (2.0, 0.8, 0.8))
    write_nifti(p1.scans[0].mask, read_mask(p1.scans[0].mask).array * np.uint8(2), (2.0, 0.8, 0.8))
    cohort = replace(tiny_cohort, patients=(
        p0, replace(p1, clinical={}), p2, replace(p3, scans=(replace(p3.scans[0], days=-1.0), p3.scans[1]))))
    problems = validate_cohort(cohort, CohortNeeds(min_timepoints=2, n_folds=3, segmentation=True), read_data=True)
    located = [(p.patient_id, p.timepoint, p.column) for p in problems]
    assert located == [(None, None, "label"), (None, None, "label"), ("P01", None, None), ("P01", "T0", None),
                       ("P03", "T0", "days"), ("P03", "T1", None)]
    assert problems == validate_cohort(cohort, CohortNeeds(min_timepoints=2, n_folds=3, segmentation=True), read_data=True)


# ----------------------------------------------------------------------------------------- command line


def _invoke(*args):
    from typer.testing import CliRunner

    from mstnet.cli import build_app

    return CliRunner().invoke(build_app(), ["data", "validate", *map(str, args)])


@pytest.fixture
def wide_console(monkeypatch):
    from rich.console import Console

    import mstnet.commands.data

    monkeypatch.setattr(mstnet.commands.data, "console", Console(width=400))


def test_cli_reports_mask_values_and_accepts_them_with_a_binarization_rule(tiny_cohort, wide_console):
    scan = tiny_cohort["P01"].scans[0]
    write_nifti(scan.mask, read_mask(scan.mask).array * np.uint8(255), (2.0, 0.8, 0.8))
    assert _invoke(tiny_cohort.root, "--folds", "2").exit_code == 0  # headers only: values unseen
    result = _invoke(tiny_cohort.root, "--folds", "2", "--read-data")
    assert result.exit_code == 1, result.output
    assert "1 problem(s)" in result.output and "P01" in result.output and str(scan.mask) in result.output
    assert "mask values must be 0 or 1, found 0, 255; pass --binarize-masks nonzero or half to accept it" in result.output
    accepted = _invoke(tiny_cohort.root, "--folds", "2", "--read-data", "--binarize-masks", "nonzero")
    assert accepted.exit_code == 0 and "no problems found" in accepted.output
    assert _invoke(tiny_cohort.root, "--binarize-masks", "some").exit_code == 2


def test_cli_reports_nan_voxels_and_too_few_patients_per_fold(tiny_cohort, wide_console):
    scan = tiny_cohort["P02"].scans[1]
    image = read_volume(scan.image).array.copy()
    image[:2] = np.nan
    write_nifti(scan.image, image, (2.0, 0.8, 0.8))
    result = _invoke(tiny_cohort.root, "--read-data")  # default: 5 folds
    assert result.exit_code == 1, result.output
    assert "3 problem(s)" in result.output
    assert f"image has {2 * 24 * 24} NaN and 0 inf voxel(s)" in result.output and str(scan.image) in result.output
    assert "only 2 benign patient(s) (label 0), fewer than the 5 cross-validation folds" in result.output
    assert "no problems found" in _invoke(tiny_cohort.root, "--folds", "0").output


def test_cli_segmentation_switch(tiny_cohort, wide_console):
    _rewrite(tiny_cohort.root / "manifest.csv", lambda frame: frame.__setitem__("mask", ""))
    assert _invoke(tiny_cohort.root, "--folds", "2").exit_code == 0  # no masks: segmentation is not assumed
    result = _invoke(tiny_cohort.root, "--folds", "2", "--segmentation")
    assert result.exit_code == 1 and "no scan has a mask" in result.output


def test_cohort_needs_defaults():
    assert CohortNeeds() == CohortNeeds(min_timepoints=1, n_folds=None, segmentation=False, clinical=True)
