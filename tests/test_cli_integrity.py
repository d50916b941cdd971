"""Bad input and misuse through the command line: one line, the right exit code, nothing written.

Every test calls :func:`mstnet.cli.main` as a user's shell would and checks three things:
the exit code (2 for usage errors, 1 for data errors), a single ``error: ...`` line on stderr
that names the culprit (patient, time point, file, column, setting or folder), and that no
result file was written. The cohort is the 20-patient growth cohort of the harness tests,
copied and broken in one place per test.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from harness_cohort import write_growth_cohort
from mstnet.cli import main
from mstnet.commands.experiments import build_options, reproduce_plan
from mstnet.experiments.fold_configuration import fold_configuration
from mstnet.experiments.registry import get_experiment
from mstnet.experiments.reproduce import prepare_runs


@pytest.fixture(scope="module")
def base_cohort(tmp_path_factory) -> Path:
    return write_growth_cohort(tmp_path_factory.mktemp("growth") / "cohort", n_patients=20)


@pytest.fixture()
def cohort(base_cohort, tmp_path) -> Path:
    """A private copy of the growth cohort, free to break."""
    return Path(shutil.copytree(base_cohort, tmp_path / "cohort"))


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of ``mstnet ARGS``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code, capsys.readouterr().err


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _manifest(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)


def _row(cohort: Path, patient: str, timepoint: str) -> pd.Series:
    frame = _manifest(cohort)
    return frame[(frame.patient_id == patient) & (frame.timepoint == timepoint)].iloc[0]


def _file(cohort: Path, patient: str, timepoint: str, column: str) -> Path:
    value = Path(_row(cohort, patient, timepoint)[column])
    return value if value.is_absolute() else cohort / value


def _edit_nifti(path: Path, edit) -> None:
    image = nib.load(str(path))
    array = np.asarray(image.dataobj).astype(np.float32)
    edit(array)
    nib.save(nib.Nifti1Image(array, image.affine), str(path))


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = edit(frame)
    frame.to_csv(path, index=False)


# Each kind: (how to break the cohort, words the one error line must contain).


def _nan_voxels(cohort):
    _edit_nifti(_file(cohort, "G003", "T1", "image"), lambda a: a.__setitem__((0, 0, 0), np.nan))
    return ["G003", "T1", "NaN"]


def _inf_voxels(cohort):
    _edit_nifti(_file(cohort, "G004", "T0", "image"), lambda a: a.__setitem__((1, 1, 1), np.inf))
    return ["G004", "T0", "inf"]


def _mask_value(value):
    def breaker(cohort):
        _edit_nifti(_file(cohort, "G005", "T0", "mask"), lambda a: np.multiply(a, value, out=a))
        return ["G005", "T0", "mask values must be 0 or 1", "--binarize-masks"]
    return breaker


def _negative_days(cohort):
    _edit_csv(cohort / "manifest.csv", lambda f: f.assign(days=np.where((f.patient_id == "G006") & (f.timepoint == "T0"),
                                                                         "-5", f.days)))
    return ["G006", "T0", "days"]


def _days_not_increasing(cohort):
    def edit(frame):
        first = frame[(frame.patient_id == "G007") & (frame.timepoint == "T0")].days.iloc[0]
        frame.loc[(frame.patient_id == "G007") & (frame.timepoint == "T1"), "days"] = first
        return frame
    _edit_csv(cohort / "manifest.csv", edit)
    return ["G007", "days", "increase"]


def _one_time_point(cohort):
    _edit_csv(cohort / "manifest.csv", lambda f: f[~((f.patient_id == "G008") & (f.timepoint == "T1"))])
    return ["G008", "1 time point", "at least 2"]


def _all_masks_empty(cohort):
    for mask in _manifest(cohort)["mask"]:
        _edit_nifti(cohort / mask if not Path(mask).is_absolute() else Path(mask), lambda a: a.fill(0))
    return ["every mask is empty", "segmentation"]


def _header_only_manifest(cohort):
    _edit_csv(cohort / "manifest.csv", lambda f: f.iloc[0:0])
    return ["no patients", "manifest.csv"]


def _unknown_category(cohort):
    schema = json.loads((cohort / "clinical_schema.json").read_text())
    schema["categories"] = {"gender": ["1", "2"], "cigsmok": ["0", "1"]}
    (cohort / "clinical_schema.json").write_text(json.dumps(schema))
    _edit_csv(cohort / "clinical.csv", lambda f: f.assign(gender=np.where(f.patient_id == "G009", "7", f.gender)))
    return ["G009", "gender", "unknown category '7'"]


def _column_in_both_lists(cohort):
    schema = json.loads((cohort / "clinical_schema.json").read_text())
    schema["numeric"] = [*schema["numeric"], "gender"]
    (cohort / "clinical_schema.json").write_text(json.dumps(schema))
    return ["gender", "both categorical and numeric"]


def _too_few_of_a_label(cohort):
    malignant = [f"G{i:03d}" for i in range(20) if i % 5 < 2]
    keep = set(malignant[:3]) | {f"G{i:03d}" for i in range(20) if i % 5 >= 2}
    _edit_csv(cohort / "manifest.csv", lambda f: f[f.patient_id.isin(keep)])
    _edit_csv(cohort / "clinical.csv", lambda f: f[f.patient_id.isin(keep)])
    return ["malignant", "fewer than the 5", "folds"]


def _truncated_nifti(cohort):
    path = _file(cohort, "G010", "T1", "image")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["G010", "T1", str(path)]


def _missing_clinical_row(cohort):
    _edit_csv(cohort / "clinical.csv", lambda f: f[f.patient_id != "G011"])
    return ["G011", "no clinical row"]


def _two_dimensional_image(cohort):
    path = _file(cohort, "G012", "T0", "image")
    nib.save(nib.Nifti1Image(np.zeros((40, 40), dtype=np.float32), np.eye(4)), str(path))
    return ["G012", "T0", "3D volume"]


DATA_KINDS = {
    "nan voxels": _nan_voxels,
    "inf voxels": _inf_voxels,
    "mask value 2": _mask_value(2),
    "mask value 255": _mask_value(255),
    "mask value 0.5": _mask_value(0.5),
    "negative days": _negative_days,
    "days not increasing": _days_not_increasing,
    "one time point": _one_time_point,
    "all masks empty": _all_masks_empty,
    "header-only manifest": _header_only_manifest,
    "unknown category": _unknown_category,
    "column in both schema lists": _column_in_both_lists,
    "fewer patients of a label than folds": _too_few_of_a_label,
    "truncated nii.gz": _truncated_nifti,
    "patient missing from clinical.csv": _missing_clinical_row,
    "2D image": _two_dimensional_image,
}


@pytest.mark.parametrize("kind", list(DATA_KINDS))
def test_bad_cohort_is_refused_by_run_in_one_line_before_anything_is_written(capsys, cohort, tmp_path, kind):
    words = DATA_KINDS[kind](cohort)
    out = tmp_path / "runs"
    code, stderr = _run_cli(capsys, "run", "mstnet", "--data", str(cohort), "--preset", "tiny", "--folds", "0",
                            "--out", str(out))
    line = _one_error_line(stderr)
    assert code == 1, stderr
    for word in words:
        assert word in line, (kind, word, line)
    assert _files_under(out) == []


def test_the_same_check_runs_in_data_validate(capsys, cohort):
    _nan_voxels(cohort)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["data", "validate", str(cohort), "--read-data"])
    assert done.value.code == 1
    assert "NaN" in capsys.readouterr().out


def test_a_gzip_stream_cut_short_is_named_even_when_its_header_reads(capsys, cohort, tmp_path):
    path = _file(cohort, "G013", "T0", "mask")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[:-40])
    code, stderr = _run_cli(capsys, "run", "mstnet", "--data", str(cohort), "--preset", "tiny", "--folds", "0",
                            "--out", str(tmp_path / "runs"))
    assert code == 1 and str(path) in _one_error_line(stderr)
    assert _files_under(tmp_path / "runs") == []


# ----------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("args", "words"), [
    (["--folds", "7"], ["--folds 7", "no such fold", "0-4"]),
    (["--folds", "-1"], ["--folds -1", "no such fold"]),
    (["--folds", "0,0"], ["names a fold twice"]),
    (["--folds", "a"], ["--folds", "comma-separated integers"]),
    (["--epochs", "0"], ["--epochs", "greater than or equal to 1"]),
    (["--set", "learning_rate=abc"], ["learning_rate='abc'", "not a number"]),
    (["--set", "epochs=2.5"], ["epochs=2.5", "not an integer"]),
    (["--set", "learning_rate=-1"], ["learning_rate must be positive"]),
    (["--set", "stages=[\"warmup\"]"], ["stages", "joint, segmentation or classification"]),
    (["--set", "stage_epochs=[3,3,3]"], ["stage_epochs [3, 3, 3]", "3 lengths for 2 stages"]),
    (["--set", "segmentation_epochs=-1"], ["segmentation_epochs must be 0", "got -1"]),
    (["--set", "segmentation_epochs=2.5"], ["segmentation_epochs=2.5", "not an integer"]),
    (["--set", "embed_dimm=8"], ["mstnet", "unknown setting 'embed_dimm'"]),
    (["--set", "large_nodule_weight=0.5"], ["large_nodule_weight must be at least 1", "got 0.5"]),
    (["--set", "large_nodule_weight=abc"], ["large_nodule_weight='abc'", "not a number"]),
    (["--set", "large_nodule_weight=3", "--set", "frozen_stage_cache=false"],
     ["mstnet: large_nodule_weight would shift the malignancy mix its classification stage"]),
    (["--preset", "huge"], ["unknown preset 'huge'", "cpu, paper, tiny"]),
    (["--binarize-masks", "sometimes"], ["sometimes", "nonzero", "half"]),
])
def test_bad_run_options_exit_2_in_one_line_and_write_nothing(capsys, base_cohort, tmp_path, args, words):
    out = tmp_path / "runs"
    code, stderr = _run_cli(capsys, "run", "mstnet", "--data", str(base_cohort), "--preset", "tiny", "--out", str(out),
                            *args)
    line = _one_error_line(stderr)
    assert code == 2, stderr
    for word in words:
        assert word in line, (word, line)
    assert _files_under(out) == []


@pytest.mark.parametrize(("experiment", "setting"), [("unetr", "hiden_size=8"), ("acsnet", "widht=3"),
                                                     ("monai-basicunet", "feature=[8,8,8,8,8,8]"),
                                                     ("logreg-clinical", "c=2.0"), ("image-only", "embed_dimm=8")])
def test_an_unknown_set_key_is_refused_for_every_kind_of_experiment(capsys, base_cohort, tmp_path, experiment, setting):
    out = tmp_path / "runs"
    code, stderr = _run_cli(capsys, "run", experiment, "--data", str(base_cohort), "--preset", "tiny", "--folds", "0",
                            "--out", str(out), "--set", setting)
    line = _one_error_line(stderr)
    key = setting.split("=")[0]
    assert code == 2 and f"unknown setting '{key}'" in line and experiment.split("/")[-1] in line, line
    assert _files_under(out) == []


def test_recipe_fields_do_not_apply_to_a_tabular_experiment(capsys, base_cohort, tmp_path):
    code, stderr = _run_cli(capsys, "run", "brock", "--data", str(base_cohort), "--preset", "tiny", "--folds", "0",
                            "--out", str(tmp_path / "runs"), "--set", "learning_rate=0.01")
    assert code == 2 and "does not apply" in _one_error_line(stderr)


def test_unknown_names_exit_2_with_the_valid_choices(capsys, tmp_path):
    code, stderr = _run_cli(capsys, "run", "nosuch")
    assert code == 2 and "no experiment named 'nosuch'" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "list", "--group", "bogus")
    assert code == 2 and "paper-table, reference, ablation, extra" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "reproduce", "everything", "--out", str(tmp_path / "runs"))
    assert code == 2 and "ablations, claims, paper-table, references" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "ablate", "no-such-ablation", "--out", str(tmp_path / "runs"))
    assert code == 2 and "no-such-ablation" in _one_error_line(stderr)
    assert not (tmp_path / "runs").exists()


def test_report_on_a_folder_without_results_is_an_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, stderr = _run_cli(capsys, "report", str(tmp_path / "empty"), "--out", str(tmp_path / "report"))
    assert code == 1 and "no results to report" in _one_error_line(stderr) and str(tmp_path / "empty") in stderr
    assert _files_under(tmp_path / "report") == []


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(KeyError, match="nosuch"):
        main(["run", "nosuch", "--debug"])


# ----------------------------------------------------------------------------------------- run identity


RUN = ("run", "monai-basicunet", "--preset", "tiny", "--folds", "0", "--epochs", "1")


def _result_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in _files_under(out) if ".cache" not in p.parts}


def test_a_rerun_with_a_changed_setting_is_refused_naming_the_field_then_overwrite_replaces(capsys, base_cohort, tmp_path):
    out = tmp_path / "runs"
    code, _ = _run_cli(capsys, *RUN, "--data", str(base_cohort), "--out", str(out))
    assert code == 0
    before = _result_files(out)
    config = json.loads((out / "monai-basicunet" / "fold0" / "config.json").read_text())
    assert config["recipe"]["epochs"] == 1 and len(config["identity"]) == 64
    assert "large_nodule_weight" not in config["recipe"]  # at its neutral value: identities of older results hold

    code, stderr = _run_cli(capsys, *RUN, "--data", str(base_cohort), "--out", str(out))
    assert code == 0 and _result_files(out) == before  # the same configuration: the finished fold is reused

    for change, field in ((("--epochs", "2"), "recipe.epochs: 1 -> 2"),
                          (("--set", "learning_rate=0.01"), "recipe.learning_rate"),
                          (("--set", "large_nodule_weight=3"), "recipe.large_nodule_weight: '<absent>' -> 3"),
                          (("--set", "features=[4,4,8,8,16,8]"), "model.settings.features")):
        code, stderr = _run_cli(capsys, *RUN[:-2], "--epochs", "1", *change, "--data", str(base_cohort), "--out", str(out))
        line = _one_error_line(stderr)
        assert code == 2, stderr
        assert "holds another configuration" in line and field in line and "--overwrite" in line, line
        assert _result_files(out) == before

    code, _ = _run_cli(capsys, *RUN[:-2], "--epochs", "1", "--set", "learning_rate=0.01", "--overwrite",
                       "--data", str(base_cohort), "--out", str(out))
    assert code == 0
    config = json.loads((out / "monai-basicunet" / "fold0" / "config.json").read_text())
    assert config["recipe"]["learning_rate"] == 0.01


def test_a_resume_with_a_changed_setting_is_refused(capsys, base_cohort, tmp_path):
    out = tmp_path / "runs"
    code, _ = _run_cli(capsys, *RUN[:-1], "2", "--data", str(base_cohort), "--out", str(out))
    assert code == 0
    fold = out / "monai-basicunet" / "fold0"
    for name in ("run.json", "metrics.json", "segmentation.csv", "gallery.npz"):
        (fold / name).unlink()  # as if killed after its last epoch: last.pt and config.json stay
    before = _result_files(out)
    code, stderr = _run_cli(capsys, *RUN[:-1], "2", "--set", "learning_rate=0.01", "--data", str(base_cohort),
                            "--out", str(out))
    assert code == 2 and "recipe.learning_rate" in _one_error_line(stderr)
    assert _result_files(out) == before
    code, _ = _run_cli(capsys, *RUN[:-1], "2", "--data", str(base_cohort), "--out", str(out))
    assert code == 0
    run = json.loads((fold / "run.json").read_text())
    assert len(run["attempts"]) == 2 and run["resumed_from_epoch"] == 2
    assert run["wall_s"] == pytest.approx(sum(a["wall_s"] for a in run["attempts"]))
    assert run["attempts"][0]["wall_s"] > 0


def test_every_fold_writes_train_log_and_its_complete_model_configuration(capsys, base_cohort, tmp_path):
    out = tmp_path / "runs"
    assert _run_cli(capsys, "run", "mstnet", "--preset", "tiny", "--folds", "0", "--epochs", "1",
                    "--data", str(base_cohort), "--out", str(out))[0] == 0
    assert _run_cli(capsys, "run", "logreg-clinical", "--preset", "tiny", "--folds", "0",
                    "--data", str(base_cohort), "--out", str(out), "--set", "C=0.5")[0] == 0
    mstnet_fold = out / "mstnet" / "fold0"
    config = json.loads((mstnet_fold / "config.json").read_text())
    assert config["model"]["class"] == "mstnet.models.mstnet.MSTNet"
    assert config["model"]["settings"]["image_size"] == [8, 32, 32] and "hidden_size" in config["model"]["settings"]
    assert config["model"]["parameters"] > 0
    log = (mstnet_fold / "train.log").read_text()
    assert "segmentation epoch 1/1" in log and "classification epoch 1/1" in log
    tabular = json.loads((out / "logreg-clinical" / "fold0" / "config.json").read_text())
    assert tabular["model"]["settings"] == {"C": 0.5, "seed": 0} and tabular["recipe"] is None
    assert "fitting" in (out / "logreg-clinical" / "fold0" / "train.log").read_text()


def test_claims_inputs_that_contradict_or_do_not_parse_exit_2_before_anything_is_written(capsys, tmp_path):
    code, stderr = _run_cli(capsys, "reproduce", "claims", "--data", str(tmp_path / "cohort"), "--synthetic", "cpu",
                            "--out", str(tmp_path / "runs"))
    assert code == 2 and "--data and --synthetic name two cohorts" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "data", "power", "--sizes", "150,abc", "--out", str(tmp_path / "power.csv"))
    assert code == 2 and "abc" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "data", "power", "--preset", "nosuch", "--out", str(tmp_path / "power.csv"))
    assert code == 2 and "unknown synthetic-cohort preset 'nosuch'" in _one_error_line(stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "power.csv").exists()


def test_run_takes_synthetic_as_the_cohort_and_refuses_it_beside_data(capsys, tmp_path):
    code, stderr = _run_cli(capsys, "run", "logreg-clinical", "--data", str(tmp_path / "cohort"), "--synthetic", "tiny",
                            "--out", str(tmp_path / "runs"))
    assert code == 2 and "--data and --synthetic name two cohorts" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "run", "logreg-clinical", "--preset", "tiny", "--synthetic", "nosuch",
                            "--out", str(tmp_path / "runs"))
    assert code == 2 and "nosuch" in _one_error_line(stderr)
    assert not (tmp_path / "runs").exists()


def test_segmentation_epochs_sets_the_segmentation_stage_beside_epochs(capsys, base_cohort, tmp_path):
    out = tmp_path / "runs"
    code, _ = _run_cli(capsys, "run", "mstnet", "--preset", "tiny", "--folds", "0", "--epochs", "1",
                       "--set", "segmentation_epochs=2", "--data", str(base_cohort), "--out", str(out))
    assert code == 0
    log = (out / "mstnet" / "fold0" / "train.log").read_text()
    assert "segmentation epoch 2/2" in log and "classification epoch 1/1" in log and "segmentation epoch 3/" not in log
    assert json.loads((out / "mstnet" / "fold0" / "config.json").read_text())["recipe"]["segmentation_epochs"] == 2
    assert json.loads((out / "mstnet" / "fold0" / "run.json").read_text())["recipe_summary"].startswith(
        "segmentation+classification, Adam lr 0.001, cosine per epoch, 2/1 epochs")
    code, _ = _run_cli(capsys, "run", "clinical-only", "--preset", "tiny", "--folds", "0", "--epochs", "1",
                       "--set", "segmentation_epochs=2", "--data", str(base_cohort), "--out", str(out))
    summary = json.loads((out / "clinical-only" / "fold0" / "run.json").read_text())["recipe_summary"]
    assert code == 0 and summary.startswith("classification, ") and "1 epochs" in summary and "2/" not in summary


def test_reproduce_set_takes_recipe_fields_for_every_trained_experiment_only(capsys, base_cohort, tmp_path):
    code, stderr = _run_cli(capsys, "reproduce", "claims", "--preset", "tiny", "--set", "hidden_size=8",
                            "--out", str(tmp_path / "runs"))
    assert code == 2 and "hidden_size is a model setting" in _one_error_line(stderr)
    code, stderr = _run_cli(capsys, "reproduce", "paper-table", "--preset", "tiny", "--data", str(base_cohort),
                            "--set", "segmentation_epochs=-1", "--out", str(tmp_path / "runs"))
    assert code == 2 and "segmentation_epochs must be 0" in _one_error_line(stderr)
    assert not (tmp_path / "runs").exists()
    table_recipe = {"segmentation_epochs": 5}
    assert reproduce_plan("claims", "cpu", None, None, None, table_recipe)[1] == Path(
        "runs/claims-cpu-claims-segmentation_epochs5")
    options = build_options("tiny", "cpu", None, {}, tmp_path / "runs", table_recipe=table_recipe)
    prepared = prepare_runs(tmp_path / "runs", options.preset, data=base_cohort, write=False)
    configs = {name: fold_configuration(get_experiment(name), prepared.cohort, prepared.splits, 0, options)
               for name in ("mstnet", "image-only", "brock")}
    assert configs["mstnet"]["recipe"]["segmentation_epochs"] == 5
    assert configs["image-only"]["recipe"]["segmentation_epochs"] == 5
    assert configs["brock"]["recipe"] is None
    plain = fold_configuration(get_experiment("mstnet"), prepared.cohort, prepared.splits, 0,
                               build_options("tiny", "cpu", None, {}, tmp_path / "runs"))
    assert plain["identity"] != configs["mstnet"]["identity"]
