"""`mstnet evaluate`, `mstnet predict` and `mstnet run --export-masks` on the growth cohort (tiny preset, 1 epoch).

- Round trip: a fold's test masks exported by the run, or predicted again from its checkpoint,
  score through `mstnet evaluate --folds-from` exactly as the run's own segmentation.csv.
- Masks written by SimpleITK in LPS order score as MONAI's metrics on arrays aligned by hand.
- A mask on another grid (spacing, flipped axis, shape) is refused in one line; `--resample`
  accepts the other spacing.
- The ensemble probability is the mean of the folds'; a probabilities CSV scores as sklearn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from harness_cohort import SPACING, write_growth_cohort
from mstnet.cli import main
from mstnet.data.dicom import write_dicom_series
from mstnet.data.io import read_mask, read_volume, read_volume_info, write_nifti, write_npy
from mstnet.data.sources import load_cohort
from mstnet.data.sources.manifest import UNLABELLED, load_manifest_cohort
from mstnet.experiments.mask_geometry import volume_geometry
from mstnet.reporting import build_report, load_results

METRICS = ["dice", "jaccard", "hd95", "asd"]


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def _ok(capsys, *args) -> str:
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    return out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run(*args) -> None:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert done.value.code == 0


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["patient_id", "timepoint"]).reset_index(drop=True)[["patient_id", "timepoint", *METRICS]]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return write_growth_cohort(tmp_path_factory.mktemp("growth") / "cohort", n_patients=20)


@pytest.fixture(scope="module")
def seg_runs(cohort_dir, tmp_path_factory) -> Path:
    """monai-basicunet, fold 0, one epoch, test-time mirroring, test predictions exported."""
    runs = tmp_path_factory.mktemp("seg") / "runs"
    _run("run", "monai-basicunet", "--data", cohort_dir, "--preset", "tiny", "--folds", "0", "--epochs", "1",
         "--out", runs, "--export-masks", "--set", "test_time_mirroring=true")
    return runs


@pytest.fixture(scope="module")
def cls_runs(cohort_dir, tmp_path_factory) -> Path:
    """monai-densenet3d (classification), folds 0 and 1, one epoch."""
    runs = tmp_path_factory.mktemp("cls") / "runs"
    _run("run", "monai-densenet3d", "--data", cohort_dir, "--preset", "tiny", "--folds", "0,1", "--epochs", "1",
         "--out", runs)
    return runs


def _fold0_test(runs: Path) -> list[str]:
    return json.loads((runs / "splits.json").read_text())["folds"][0]["test"]


# ----------------------------------------------------------------------------------------------- round trip


def test_exported_masks_score_as_the_run(capsys, seg_runs, cohort_dir):
    masks = seg_runs / "monai-basicunet" / "fold0" / "masks"
    test = _fold0_test(seg_runs)
    assert sorted(p.name for p in masks.glob("*.nii.gz")) == sorted(f"{p}_T{t}.nii.gz" for p in test for t in (0, 1))
    image = nib.load(str(cohort_dir / "images" / f"{test[0]}_T0.nii.gz"))
    exported = nib.load(str(masks / f"{test[0]}_T0.nii.gz"))
    np.testing.assert_allclose(exported.affine, image.affine)
    assert exported.shape == image.shape and set(np.unique(np.asarray(exported.dataobj))) <= {0, 1}

    _ok(capsys, "evaluate", masks, "--folds-from", seg_runs, "--name", "exported", "--out", seg_runs)
    run = pd.read_csv(seg_runs / "monai-basicunet" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    scored = pd.read_csv(seg_runs / "exported" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    pd.testing.assert_frame_equal(_sorted(scored), _sorted(run))
    assert not (seg_runs / "exported" / "fold1").exists()  # only fold 0 had predictions
    experiment = json.loads((seg_runs / "exported" / "experiment.json").read_text())
    assert experiment["kind"] == "external" and experiment["tasks"] == ["segmentation"]

    results = load_results(seg_runs)  # recomputes metrics.json from segmentation.csv: consistent
    assert {"exported", "monai-basicunet"} <= set(results.experiments.index)
    index = build_report([seg_runs], seg_runs.parent / "report", reference="monai-basicunet", n_resamples=20)
    assert index.exists()
    table = pd.read_csv(seg_runs.parent / "report" / "reference_table.csv").set_index("experiment")
    assert table.loc["exported", "dice_p_wilcoxon"] == pytest.approx(1.0)  # paired with the reference: identical


def test_predicted_fold_masks_score_as_the_run(capsys, caplog, seg_runs, cohort_dir, tmp_path):
    """The fold was evaluated with test-time mirroring; mstnet predict mirrors as its recipe says."""
    recipe = json.loads((seg_runs / "monai-basicunet" / "fold0" / "config.json").read_text())["recipe"]
    assert recipe["test_time_mirroring"] is True
    out = tmp_path / "pred"
    _ok(capsys, "predict", seg_runs, "--data", cohort_dir, "--out", out, "--fold", "0")
    assert len(list(out.glob("*.nii.gz"))) == 40  # every patient, both scans
    assert json.loads((out / "prediction.json").read_text())["timepoints"] == 2
    runs = tmp_path / "runs"
    _ok(capsys, "evaluate", out, "--folds-from", seg_runs, "--folds", "0", "--name", "predicted", "--out", runs)
    run = pd.read_csv(seg_runs / "monai-basicunet" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    scored = pd.read_csv(runs / "predicted" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    pd.testing.assert_frame_equal(_sorted(scored), _sorted(run), rtol=1e-9)
    assert json.loads((runs / "splits.json").read_text())["hash"] == json.loads((seg_runs / "splits.json").read_text())["hash"]
    load_results(runs)
    caplog.clear()
    _ok(capsys, "evaluate", out, "--folds-from", seg_runs, "--name", "leaky", "--out", runs)  # every fold: warned
    assert any("trained on the test patients" in r.getMessage() and "1,2,3,4" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (runs / "leaky").glob("fold*")) == [f"fold{k}" for k in range(5)]


@pytest.mark.parametrize("kind, pattern", [("dicom", "{patient_id}_{timepoint}"), ("npy", "{patient_id}/{timepoint}.npy")])
def test_dicom_and_npy_masks_score_as_nifti(capsys, seg_runs, tmp_path, kind, pattern):
    masks = seg_runs / "monai-basicunet" / "fold0" / "masks"
    folder = tmp_path / kind
    for path in masks.glob("*.nii.gz"):
        volume = read_mask(path)
        patient_id, timepoint = path.name[: -len(".nii.gz")].split("_")
        if kind == "dicom":
            write_dicom_series(folder / f"{patient_id}_{timepoint}", volume.array.astype(float), volume.spacing,
                               origin=volume.origin)
        else:
            (folder / patient_id).mkdir(parents=True, exist_ok=True)
            write_npy(folder / patient_id / f"{timepoint}.npy", volume.array, spacing=volume.spacing)
    _ok(capsys, "evaluate", folder, "--pattern", pattern, "--folds-from", seg_runs, "--name", kind,
        "--out", tmp_path / "runs", "--timepoints", "2")
    run = pd.read_csv(seg_runs / "monai-basicunet" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    scored = pd.read_csv(tmp_path / "runs" / kind / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    pd.testing.assert_frame_equal(_sorted(scored), _sorted(run))


# ----------------------------------------------------------------------------------------------- another tool's masks


def _lps_masks(cohort_dir: Path, folder: Path) -> dict[tuple[str, str], np.ndarray]:
    """Predicted masks for every scan, written with SimpleITK in LPS order; returns them in RAS (D, H, W), by hand."""
    import SimpleITK as sitk
    from scipy.ndimage import binary_dilation

    folder.mkdir(parents=True)
    aligned = {}
    for index, path in enumerate(sorted((cohort_dir / "masks").glob("*.nii.gz"))):
        patient_id, timepoint = path.name[: -len(".nii.gz")].split("_")
        truth = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
        array = sitk.GetArrayFromImage(truth).astype(bool)
        predicted = np.roll(array, 2, axis=2) if index % 2 else binary_dilation(array, iterations=1)
        predicted[0, 0, 0] = index % 3 == 0  # a stray voxel in the LPS corner: only a correct flip puts it right
        written = sitk.GetImageFromArray(predicted.astype(np.uint8))
        written.CopyInformation(truth)
        sitk.WriteImage(written, str(folder / path.name))
        aligned[patient_id, timepoint] = predicted[:, ::-1, ::-1]  # LPS -> RAS: flip rows and columns
    return aligned


def test_lps_masks_score_as_monai(capsys, cohort_dir, tmp_path):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    aligned = _lps_masks(cohort_dir, tmp_path / "lps")
    assert nib.aff2axcodes(nib.load(str(next((tmp_path / "lps").glob("*.nii.gz")))).affine) == ("L", "P", "S")
    _ok(capsys, "evaluate", tmp_path / "lps", "--data", cohort_dir, "--name", "itk-tool", "--out", tmp_path / "runs")
    scored = pd.read_csv(tmp_path / "runs" / "itk-tool" / "fold0" / "segmentation.csv", dtype={"timepoint": str})
    assert len(scored) == 40  # one fold holding everyone
    for row in scored.itertuples():
        image = nib.load(str(cohort_dir / "masks" / f"{row.patient_id}_{row.timepoint}.nii.gz"))
        truth = np.asarray(image.dataobj).transpose(2, 1, 0) > 0  # stored RAS: (x, y, z) -> (D, H, W)
        spacing = [float(z) for z in image.header.get_zooms()[::-1]]
        y_pred = torch.from_numpy(aligned[row.patient_id, row.timepoint].copy())[None, None].float()
        y = torch.from_numpy(truth)[None, None].float()
        dice = DiceMetric(include_background=True, reduction="none")(y_pred, y).item()
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            y_pred, y, spacing=spacing).item()
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(
            y_pred, y, spacing=spacing).item()
        assert row.dice == pytest.approx(dice, rel=1e-6)
        assert row.hd95 == pytest.approx(hd95, rel=1e-6)
        assert row.asd == pytest.approx(asd, rel=1e-6)
    load_results(tmp_path / "runs")


def _misaligned(cohort_dir: Path, tmp_path: Path, kind: str) -> tuple[Path, Path, np.ndarray]:
    """A copy of the reference masks as predictions, one of them (G000 T0) on another grid."""
    folder = tmp_path / f"pred-{kind}"
    shutil.copytree(cohort_dir / "masks", folder)
    target = folder / "G000_T0.nii.gz"
    mask = read_mask(target).array
    if kind == "spacing":  # every voxel split in two in plane: 0.4 mm, the same field
        write_nifti(target, np.repeat(np.repeat(mask, 2, axis=1), 2, axis=2), spacing=(SPACING[0], SPACING[1] / 2,
                                                                                          SPACING[2] / 2))
    elif kind == "flip":  # the array as stored, the x axis declared flipped: another grid, mirrored
        affine = np.diag([-SPACING[2], SPACING[1], SPACING[0], 1.0])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), affine), str(target))
    else:
        write_nifti(target, mask[:, :, 1:], spacing=SPACING)
    return folder, target, mask


@pytest.mark.parametrize("kind, named", [("spacing", "spacing"), ("flip", "orientation"), ("shape", "shape")])
def test_misaligned_mask_is_refused(capsys, cohort_dir, tmp_path, kind, named):
    folder, target, _ = _misaligned(cohort_dir, tmp_path, kind)
    code, _, err = _cli(capsys, "evaluate", folder, "--data", cohort_dir, "--name", "tool", "--out", tmp_path / "runs")
    line = _one_error_line(err)
    assert code == 1
    assert str(target) in line and named in line and "--resample" in line
    assert "mask shape" in line and "image shape 12x40x40" in line
    assert not (tmp_path / "runs").exists()


def test_other_spacing_is_resampled_with_resample(capsys, cohort_dir, tmp_path):
    folder, _, _ = _misaligned(cohort_dir, tmp_path, "spacing")
    out = _ok(capsys, "evaluate", folder, "--data", cohort_dir, "--name", "tool", "--out", tmp_path / "runs", "--resample")
    assert "1 mask(s) resampled" in out
    scored = pd.read_csv(tmp_path / "runs" / "tool" / "fold0" / "segmentation.csv")
    assert (scored["dice"] == 1.0).all() and (scored["hd95"] == 0.0).all()  # nearest neighbour recovers the grid exactly
    assert json.loads((tmp_path / "runs" / "tool" / "fold0" / "run.json").read_text())["resampled_masks"] == [
        str(folder / "G000_T0.nii.gz")]


def test_missing_prediction_and_bad_names_are_refused(capsys, cohort_dir, seg_runs, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(cohort_dir / "masks", folder)
    (folder / "G003_T1.nii.gz").unlink()
    code, _, err = _cli(capsys, "evaluate", folder, "--data", cohort_dir, "--name", "tool", "--out", tmp_path / "runs")
    assert code == 1 and "G003 T1" in _one_error_line(err)
    code, _, err = _cli(capsys, "evaluate", cohort_dir / "masks", "--data", cohort_dir, "--name", "monai-basicunet",
                        "--out", tmp_path / "runs")
    assert code == 2 and "registered experiment" in _one_error_line(err)
    code, _, err = _cli(capsys, "evaluate", cohort_dir / "masks", "--data", cohort_dir, "--name", "tool", "--out", seg_runs)
    assert code == 2 and "--folds-from" in _one_error_line(err)  # one fold of everyone is not the run's folds
    assert not (tmp_path / "runs").exists() and not (seg_runs / "tool").exists()


# ----------------------------------------------------------------------------------------------- probabilities


def test_ensemble_probability_is_the_mean_of_the_folds(capsys, cls_runs, cohort_dir, tmp_path):
    probabilities = {}
    for name, args in (("fold0", ["--fold", "0"]), ("fold1", ["--fold", "1"]), ("ensemble", [])):
        _ok(capsys, "predict", cls_runs, "--data", cohort_dir, "--out", tmp_path / name, *args)
        frame = pd.read_csv(tmp_path / name / "probabilities.csv", dtype={"patient_id": str})
        probabilities[name] = frame.set_index("patient_id")["probability"]
        assert not list((tmp_path / name).glob("*.nii.gz"))  # a classifier writes no masks
    assert len(probabilities["ensemble"]) == 20
    mean = (probabilities["fold0"] + probabilities["fold1"]) / 2
    np.testing.assert_allclose(probabilities["ensemble"].loc[mean.index], mean, rtol=1e-12)
    assert json.loads((tmp_path / "ensemble" / "prediction.json").read_text())["folds"] == [0, 1]
    # One fold's checkpoint predicts its test patients as the run did.
    run = pd.read_csv(cls_runs / "monai-densenet3d" / "fold0" / "predictions.csv", dtype={"patient_id": str})
    np.testing.assert_allclose(probabilities["fold0"].loc[run["patient_id"]], run["probability"], rtol=1e-5)


def test_probabilities_csv_scores_as_sklearn(capsys, cls_runs, cohort_dir, tmp_path):
    from sklearn.metrics import roc_auc_score

    cohort = load_cohort(cohort_dir)
    rng = np.random.default_rng(3)
    labels = np.array(cohort.labels)
    scores = np.clip(0.3 * labels + rng.uniform(0, 0.7, len(labels)), 0, 1)
    csv = tmp_path / "probabilities.csv"
    pd.DataFrame({"patient_id": cohort.patient_ids, "probability": scores}).to_csv(csv, index=False)
    _ok(capsys, "evaluate", csv, "--data", cohort_dir, "--name", "tool", "--out", tmp_path / "all")
    metrics = json.loads((tmp_path / "all" / "tool" / "fold0" / "metrics.json").read_text())
    assert metrics["classification"]["auc"] == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert metrics["segmentation"] is None
    load_results(tmp_path / "all", threshold_rule="validation")

    _ok(capsys, "evaluate", csv, "--folds-from", cls_runs, "--name", "tool", "--out", cls_runs)  # --data from cohort.json
    splits = json.loads((cls_runs / "splits.json").read_text())
    for fold in splits["folds"]:
        test = fold["test"]
        metrics = json.loads((cls_runs / "tool" / f"fold{fold['fold']}" / "metrics.json").read_text())
        index = [cohort.patient_ids.index(p) for p in test]
        assert metrics["classification"]["auc"] == pytest.approx(roc_auc_score(labels[index], scores[index]), rel=1e-12)
    results = load_results(cls_runs)
    assert sorted(results.fold_metrics.loc[results.fold_metrics["experiment"] == "tool", "fold"]) == [0, 1, 2, 3, 4]
    build_report([cls_runs], tmp_path / "report", reference="monai-densenet3d", n_resamples=20)
    table = pd.read_csv(tmp_path / "report" / "reference_table.csv").set_index("experiment")
    assert 0.0 <= table.loc["tool", "auc_p_delong"] <= 1.0  # DeLong test against the reference on folds 0 and 1
    code, _, err = _cli(capsys, "evaluate", csv, "--folds-from", cls_runs, "--name", "tool", "--out", cls_runs)
    assert code == 2 and "--overwrite" in _one_error_line(err)


# ----------------------------------------------------------------------------------------------- new cases


def test_predict_new_unlabelled_cases_in_their_own_geometry(capsys, seg_runs, cohort_dir, tmp_path):
    """A cohort without labels or masks, one image stored LPS: masks come back with each source's affine."""
    new = tmp_path / "new"
    shutil.copytree(cohort_dir, new)
    manifest = pd.read_csv(new / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest.drop(columns=["label"]).assign(mask="")
    manifest.to_csv(new / "manifest.csv", index=False)
    with pytest.raises(Exception, match="label"):
        load_manifest_cohort(new)
    cohort = load_manifest_cohort(new, require_labels=False)
    assert set(cohort.labels) == {UNLABELLED}
    # G001 T1 re-stored in LPS order: the same image on the same grid.
    path = new / "images" / "G001_T1.nii.gz"
    image = nib.load(str(path))
    flipped = np.flip(np.asarray(image.dataobj), axis=(0, 1))
    affine = image.affine @ nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]), image.shape)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), affine), str(path))
    assert nib.aff2axcodes(nib.load(str(path)).affine) == ("L", "P", "S")
    geometry, info, volume = volume_geometry(path), read_volume_info(path), read_volume(path)  # headers agree with io
    assert (geometry.shape, geometry.spacing, geometry.origin) == (info.shape, info.spacing, info.origin)
    np.testing.assert_allclose(geometry.direction, volume.direction)
    original = volume_geometry(cohort_dir / "images" / "G001_T1.nii.gz")
    assert (geometry.orientation, original.orientation) == ("LPS", "RAS")
    assert geometry.shape == original.shape and np.allclose(geometry.spacing, original.spacing)
    np.testing.assert_allclose(geometry.origin, original.origin, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, original.direction, atol=1e-6)

    _ok(capsys, "predict", seg_runs, "--data", new, "--out", tmp_path / "new-pred", "--fold", "0")
    _ok(capsys, "predict", seg_runs, "--data", cohort_dir, "--out", tmp_path / "old-pred", "--fold", "0")
    lps = nib.load(str(tmp_path / "new-pred" / "G001_T1.nii.gz"))
    np.testing.assert_allclose(lps.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(read_mask(tmp_path / "new-pred" / "G001_T1.nii.gz").array,
                                  read_mask(tmp_path / "old-pred" / "G001_T1.nii.gz").array)
    code, _, err = _cli(capsys, "predict", seg_runs, "--data", new, "--out", tmp_path / "new-pred")
    assert code == 2 and "--overwrite" in _one_error_line(err)
