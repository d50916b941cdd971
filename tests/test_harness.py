"""The harness end to end at tiny size: results contract, no test-fold leakage, resume, DDP."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mstnet.errors import UsageError
from mstnet.data.sources import load_cohort
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import get_experiment
from mstnet.experiments.reproduce import PreparedRuns, prepare_runs
from mstnet.experiments.runner import RunOptions, run_experiment
from tests.harness_cohort import write_growth_cohort

EPOCHS = 2


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    return write_growth_cohort(tmp_path_factory.mktemp("cohort"), n_patients=20)


def _options(tmp_path, **kwargs):
    preset = run_preset("tiny", epochs=EPOCHS, n_folds=5)
    return RunOptions(preset=preset, device=torch.device("cpu"), cache_dir=tmp_path / "cache", progress=False, **kwargs)


def _prepare(runs_dir, cohort_dir):
    return prepare_runs(runs_dir, run_preset("tiny"), data=cohort_dir)


def test_fold_writes_the_results_contract(tmp_path, cohort_dir):
    prepared = _prepare(tmp_path / "runs", cohort_dir)
    run_experiment(get_experiment("mstnet"), prepared.cohort, prepared.splits, prepared.runs_dir, _options(tmp_path), folds=[0])
    fold_dir = tmp_path / "runs" / "mstnet" / "fold0"
    for name in ("config.json", "run.json", "metrics.json", "predictions.csv", "segmentation.csv", "history.csv",
                 "best.pt", "last.pt", "gallery.npz"):
        assert (fold_dir / name).exists(), name
    test_ids = set(prepared.splits.folds[0].test)
    predictions = pd.read_csv(fold_dir / "predictions.csv")
    assert set(predictions["patient_id"]) == test_ids and predictions["probability"].between(0, 1).all()
    segmentation = pd.read_csv(fold_dir / "segmentation.csv")
    assert len(segmentation) == 2 * len(test_ids)
    for row in segmentation.itertuples():  # each scan's reference volume: the mask file's voxels x voxel volume
        mask = nib.load(str(cohort_dir / "masks" / f"{row.patient_id}_{row.timepoint}.nii.gz"))
        voxels = np.count_nonzero(np.asarray(mask.dataobj))
        assert row.reference_volume_mm3 == pytest.approx(voxels * float(np.prod(mask.header.get_zooms()[:3])))
        assert row.reference_volume_mm3 > 0 and row.predicted_volume_mm3 >= 0
    assert (segmentation["predicted_volume_mm3"] > 0).any()
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["segmentation"]["dice"] == pytest.approx(segmentation["dice"].mean())
    run = json.loads((fold_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["splits_hash"] == prepared.splits.hash
    history = pd.read_csv(fold_dir / "history.csv")
    assert list(history["stage"]) == ["segmentation"] * EPOCHS + ["classification"] * EPOCHS


def test_test_fold_labels_change_no_training_choice(tmp_path, cohort_dir):
    """Flip every label of fold 0's test patients: history, chosen epochs and threshold are unchanged."""
    spec = get_experiment("mstnet")
    original = _prepare(tmp_path / "a", cohort_dir)
    test_ids = set(original.splits.folds[0].test)
    flipped = replace(original.cohort, patients=tuple(
        replace(p, label=1 - p.label) if p.patient_id in test_ids else p for p in original.cohort.patients))
    runs = {}
    for name, cohort in (("a", original.cohort), ("b", flipped)):
        prepared = PreparedRuns(tmp_path / name, cohort, original.splits)
        run_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir, _options(tmp_path / name), folds=[0])
        fold_dir = tmp_path / name / "mstnet" / "fold0"
        runs[name] = (json.loads((fold_dir / "run.json").read_text()), pd.read_csv(fold_dir / "history.csv"))
    (run_a, history_a), (run_b, history_b) = runs["a"], runs["b"]
    assert run_a["selected_epoch"] == run_b["selected_epoch"]
    assert run_a["threshold"] == run_b["threshold"]
    pd.testing.assert_frame_equal(history_a, history_b)
    labels_a = pd.read_csv(tmp_path / "a" / "mstnet" / "fold0" / "predictions.csv")["label"]
    labels_b = pd.read_csv(tmp_path / "b" / "mstnet" / "fold0" / "predictions.csv")["label"]
    assert (labels_a != labels_b).all()  # the test labels did change, and only the evaluation saw them


class Interrupt(RuntimeError):
    pass


def test_interrupted_fold_resumes_and_finished_folds_are_not_retrained(tmp_path, cohort_dir):
    spec = get_experiment("mstnet")
    prepared = _prepare(tmp_path / "straight", cohort_dir)
    run_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir, _options(tmp_path), folds=[1])

    epochs_seen = []

    def interrupt_after_three_epochs(record):
        epochs_seen.append(record)
        if len(epochs_seen) == 3:
            raise Interrupt("injected after 3 epochs")

    broken = _prepare(tmp_path / "broken", cohort_dir)
    run_experiment(spec, broken.cohort, broken.splits, broken.runs_dir, _options(tmp_path), folds=[0])
    finished = broken.runs_dir / "mstnet" / "fold0" / "run.json"
    finished_stamp = finished.stat().st_mtime_ns
    with pytest.raises(Interrupt):
        run_experiment(spec, broken.cohort, broken.splits, broken.runs_dir,
                       _options(tmp_path, callbacks=(interrupt_after_three_epochs,)), folds=[0, 1])
    assert not (broken.runs_dir / "mstnet" / "fold1" / "run.json").exists()
    run_experiment(spec, broken.cohort, broken.splits, broken.runs_dir, _options(tmp_path), folds=[0, 1])

    assert finished.stat().st_mtime_ns == finished_stamp  # fold 0 was not retrained
    resumed = json.loads((broken.runs_dir / "mstnet" / "fold1" / "run.json").read_text())
    assert resumed["resumed_from_epoch"] == 3
    straight_metrics = json.loads((prepared.runs_dir / "mstnet" / "fold1" / "metrics.json").read_text())
    resumed_metrics = json.loads((broken.runs_dir / "mstnet" / "fold1" / "metrics.json").read_text())
    assert resumed_metrics == straight_metrics


def test_results_folder_refuses_other_folds(tmp_path, cohort_dir):
    _prepare(tmp_path / "runs", cohort_dir)
    with pytest.raises(UsageError, match="other folds"):
        prepare_runs(tmp_path / "runs", run_preset("tiny"), data=cohort_dir, seed=7)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available in this build")
def test_ddp_with_two_cpu_processes_writes_a_result(tmp_path, cohort_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               "-m", "mstnet.cli", "run", "mstnet", "--preset", "tiny", "--data", str(cohort_dir), "--folds", "0",
               "--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = json.loads((tmp_path / "runs" / "mstnet" / "fold0" / "run.json").read_text())
    assert run["status"] == "complete"
    assert len(pd.read_csv(tmp_path / "runs" / "mstnet" / "fold0" / "predictions.csv")) == 4


def test_oracle_ceilings_are_written_flat_into_the_results_folder(tmp_path, cohort_dir):
    oracle = cohort_dir / "oracle.json"
    oracle.write_text(json.dumps({"auc": {"everything": 0.9, "clinical": 0.6}, "patients": 20, "note": "synthetic"}))
    try:
        _prepare(tmp_path / "runs", cohort_dir)
    finally:
        oracle.unlink()
    assert json.loads((tmp_path / "runs" / "oracle.json").read_text()) == {"everything": 0.9, "clinical": 0.6}
