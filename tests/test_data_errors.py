"""Bad input: every error names the patient, time point, file or column, and all problems come at once."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mstnet.data.cohort import CohortError
from mstnet.data.dicom import write_dicom_series
from mstnet.data.io import read_volume, write_nifti
from mstnet.data.sources import load_cohort, load_manifest_cohort, load_nlst_cohort, write_nlst_layout
from mstnet.data.validate import validate_cohort, validate_source

# ------------------------------------------------------------------------------------------- files


def test_missing_unknown_and_damaged_files_are_named(tmp_path):
    with pytest.raises(CohortError, match=r"nowhere\.nii\.gz.*does not exist"):
        read_volume(tmp_path / "nowhere.nii.gz")
    (tmp_path / "scan.mha").write_text("x")
    with pytest.raises(CohortError, match=r"scan\.mha.*unknown image format"):
        read_volume(tmp_path / "scan.mha")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(CohortError, match=r"broken\.nii\.gz.*cannot be read as NIfTI"):
        read_volume(tmp_path / "broken.nii.gz")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CohortError, match=r"broken\.npy.*cannot be read as \.npy"):
        read_volume(tmp_path / "broken.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match=r"empty.*no DICOM image files"):
        read_volume(tmp_path / "empty")


def test_dicom_folder_with_two_series_names_the_folder_and_both_uids(tmp_path):
    write_dicom_series(tmp_path / "a", np.zeros((2, 4, 4)), series_instance_uid="1.2.3.4")
    write_dicom_series(tmp_path / "b", np.zeros((2, 4, 4)), series_instance_uid="1.2.3.5")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a", "b"):
        for file in (tmp_path / name).iterdir():
            shutil.copy(file, mixed / f"{name}_{file.name}")
    with pytest.raises(CohortError) as error:
        read_volume(mixed)
    message = str(error.value)
    assert str(mixed) in message and "1.2.3.4" in message and "1.2.3.5" in message and "2 DICOM series" in message


def test_dicom_folder_with_a_missing_slice_names_the_folder_and_the_gap(tmp_path):
    write_dicom_series(tmp_path / "series", np.zeros((5, 4, 4)), spacing=(2.5, 1.0, 1.0), origin=(0.0, 0.0, 10.0))
    (tmp_path / "series" / "slice_0002.dcm").unlink()  # z = 15 mm
    with pytest.raises(CohortError) as error:
        read_volume(tmp_path / "series")
    message = str(error.value)
    assert str(tmp_path / "series") in message
    assert "expected 2.5 mm" in message and "5 mm between slices at 12.50 and 17.50 mm" in message


# ------------------------------------------------------------------------------------------- loaders


def _rewrite(path, edit):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


def test_manifest_structural_problems_are_reported_together_and_located(tiny_cohort):
    manifest = tiny_cohort.root / "manifest.csv"

    def edit(frame):
        frame.loc[0, "label"] = "2"  # P00 T0
        frame.loc[2, "days"] = "soon"  # P01 T0
        frame.loc[3, "label"] = "0"  # P01 T1, label 1 at T0
        frame.loc[5, "timepoint"] = "T0"  # P02 T0 twice
        frame.loc[6, "nodule_x"] = ""  # P03 T0 partial location

    _rewrite(manifest, edit)
    with pytest.raises(CohortError) as error:
        load_manifest_cohort(tiny_cohort.root)
    problems = {(p.patient_id, p.timepoint, p.column): p.message for p in error.value.problems}
    assert "label must be 0" in problems["P00", "T0", "label"] and "'2'" in problems["P00", "T0", "label"]
    assert "days is not a number: 'soon'" in problems["P01", "T0", "days"]
    assert "label differs between time points (T0=1, T1=0)" in problems["P01", None, "label"]
    assert "duplicate (patient, time point)" in problems["P02", "T0", None]
    assert "partly given" in problems["P03", "T0", "nodule_y"]
    assert all(p.file == str(manifest) for p in error.value.problems)


def test_manifest_missing_column_and_bad_clinical_cells_are_named(tiny_cohort):
    _rewrite(tiny_cohort.root / "manifest.csv", lambda frame: frame.drop(columns=["days"], inplace=True))
    with pytest.raises(CohortError, match=r"column days.*column is missing"):
        load_manifest_cohort(tiny_cohort.root)


def test_clinical_table_problems_name_patient_and_column(tiny_cohort):
    def edit(frame):
        frame.loc[1, "age"] = "old"
        frame.loc[3, "patient_id"] = "P02"

    _rewrite(tiny_cohort.root / "clinical.csv", edit)
    with pytest.raises(CohortError) as error:
        load_manifest_cohort(tiny_cohort.root)
    text = str(error.value)
    assert "patient P01, column age" in text and "not a number: 'old'" in text
    assert "patient P02" in text and "two rows in the clinical table" in text
    (tiny_cohort.root / "clinical_schema.json").write_text(json.dumps({"categorical": ["smoker"], "numeric": []}))
    with pytest.raises(CohortError, match=r"column smoker.*missing from the clinical table"):
        load_manifest_cohort(tiny_cohort.root)


def test_nlst_loader_names_bad_study_year_and_missing_columns(tiny_cohort, tmp_path):
    folder = write_nlst_layout(tiny_cohort, tmp_path / "nlst")
    _rewrite(folder / "nodules.csv", lambda frame: frame.__setitem__("study_yr", frame["study_yr"].replace({"T1": "T5"})))
    with pytest.raises(CohortError) as error:
        load_nlst_cohort(folder)
    assert len(error.value.problems) == 4
    assert "patient P00, time point T5, column study_yr" in str(error.value) and "'T5' is not one of" in str(error.value)
    _rewrite(folder / "nodules.csv", lambda frame: frame.drop(columns=["z2"], inplace=True))
    with pytest.raises(CohortError, match=r"column z2.*missing from the NLST annotation CSV"):
        load_nlst_cohort(folder)


def test_a_folder_that_is_no_cohort_is_named(tmp_path):
    with pytest.raises(CohortError, match=r"not a cohort"):
        load_cohort(tmp_path)


# ------------------------------------------------------------------------------------------- validation


def test_validate_cohort_reports_every_problem_with_its_location(tiny_cohort, tmp_path):
    patients = {p.patient_id: p for p in tiny_cohort}
    p0 = patients["P00"]
    p0.scans[0].image.unlink()  # missing image
    p1 = patients["P01"]
    write_nifti(p1.scans[1].mask, np.zeros((3, 3, 3), np.uint8))  # mask shape differs
    p2 = replace(patients["P02"], scans=patients["P02"].scans[:1], label=None,
                 clinical={**patients["P02"].clinical, "age": float("nan"), "gender": "unknown"})
    write_dicom_series(tmp_path / "gap", np.zeros((4, 4, 4)))
    (tmp_path / "gap" / "slice_0001.dcm").unlink()
    p3 = replace(patients["P03"], clinical={}, scans=(replace(patients["P03"].scans[0], image=tmp_path / "gap"),
                                                     replace(patients["P03"].scans[1], timepoint="T0")))
    cohort = replace(tiny_cohort, patients=(p0, p1, p2, p3))
    problems = validate_cohort(cohort, min_timepoints=2)
    located = {}
    for p in problems:
        located.setdefault((p.patient_id, p.timepoint, p.column), []).append((p.message, p.file))
    located = {key: (" | ".join(m for m, _ in values), values[0][1]) for key, values in located.items()}
    assert "does not exist" in located["P00", "T0", None][0] and located["P00", "T0", None][1] == str(p0.scans[0].image)
    assert "mask shape (3, 3, 3) differs from image shape (12, 24, 24)" in located["P01", "T1", None][0]
    assert "has 1 time point(s) (T0), at least 2 required" in located["P02", None, None][0]
    assert "label must be 0 (benign) or 1 (malignant), got None" in located["P02", None, "label"][0]
    assert "missing value (NaN)" in located["P02", None, "age"][0]
    assert "missing or unknown category" in located["P02", None, "gender"][0]
    assert "no clinical row" in located["P03", None, None][0]
    assert "time point appears 2 times" in located["P03", "T0", None][0]
    assert any("uneven slice spacing (missing or duplicate slice): expected 1 mm, found 2 mm between slices at 0.00 and 2.00 mm"
               in p.message and p.file == str(tmp_path / "gap") and p.patient_id == "P03" for p in problems)


def test_validate_unknown_category_against_allowed_values(tiny_cohort):
    problems = validate_cohort(tiny_cohort, check_images=False, allowed_categories={"gender": ["1"]})
    assert [(p.patient_id, p.column) for p in problems] == [("P01", "gender"), ("P03", "gender")]
    assert "unknown category '2'" in problems[0].message


def test_validate_source_returns_loader_problems_and_passes_a_sound_cohort(tiny_cohort):
    cohort, problems = validate_source(tiny_cohort.root, min_timepoints=2)
    assert cohort is not None and problems == []
    _rewrite(tiny_cohort.root / "manifest.csv", lambda frame: frame.__setitem__("label", "7"))
    cohort, problems = validate_source(tiny_cohort.root)
    assert cohort is None and len(problems) == 8


# ------------------------------------------------------------------------------------------- command line


def test_cli_validate_exits_1_with_a_table_of_problems_and_summary_describes_the_cohort(tiny_cohort, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    import mstnet.commands.data
    from mstnet.cli import build_app

    monkeypatch.setattr(mstnet.commands.data, "console", Console(width=400))

    runner = CliRunner()
    app = build_app()
    sound = runner.invoke(app, ["data", "validate", str(tiny_cohort.root), "--min-timepoints", "2", "--folds", "2"])
    assert sound.exit_code == 0 and "no problems found" in sound.output
    summary = runner.invoke(app, ["data", "summary", str(tiny_cohort.root)])
    assert summary.exit_code == 0
    assert "patients" in summary.output and "0.8 - 0.8" in summary.output and "12 - 12" in summary.output
    tiny_cohort["P01"].scans[1].image.unlink()
    broken = runner.invoke(app, ["data", "validate", str(tiny_cohort.root), "--min-timepoints", "3", "--folds", "2"])
    assert broken.exit_code == 1
    assert "5 problem(s)" in broken.output and "P01" in broken.output and "does not exist" in broken.output
