"""Baselines run through the harness: one tiny fold writes the columns their tasks call for."""

import json

import pandas as pd
import pytest
import torch

from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import get_experiment, list_experiments
from mstnet.experiments.reproduce import prepare_runs
from mstnet.experiments.runner import RunOptions, run_experiment
from tests.harness_cohort import write_growth_cohort


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cohort_dir = write_growth_cohort(tmp_path_factory.mktemp("cohort"), n_patients=20)
    return prepare_runs(tmp_path_factory.mktemp("runs"), run_preset("tiny"), data=cohort_dir)


# What each baseline must write, stated here independently of its registration.
EXPECTED_TASKS = {
    "unetr": (True, False),
    "acsnet": (True, True),
    "naslung": (False, True),
    "scan": (False, True),
    "deepcad": (False, True),
    "mltn": (True, True),
    "smp2d-unet": (True, False),
    "smp2d-unetplusplus": (True, False),
    "smp2d-deeplabv3plus": (True, False),
    "monai-swinunetr": (True, False),
    "monai-segresnet": (True, False),
    "monai-basicunet": (True, False),
    "monai-resnet3d": (False, True),
    "monai-densenet3d": (False, True),
    "logreg-clinical": (False, True),
    "brock": (False, True),
    "growth-rule": (False, True),
    "logreg-growth": (False, True),
}


def test_every_registered_baseline_has_a_one_fold_test():
    registered = {spec.name for spec in list_experiments() if spec.group in ("paper-table", "reference")}
    assert registered - {"mstnet"} == set(EXPECTED_TASKS)


@pytest.mark.parametrize("name, has_seg, has_cls", [(name, *tasks) for name, tasks in EXPECTED_TASKS.items()])
def test_one_fold_writes_the_metrics_of_its_tasks_only(prepared, tmp_path, name, has_seg, has_cls):
    # The test cohort has no Brock history columns (family history, emphysema): Brock uses reference values.
    params = {"brock_allow_missing": True} if name == "brock" else {}
    options = RunOptions(preset=run_preset("tiny", epochs=1), device=torch.device("cpu"), cache_dir=tmp_path,
                         progress=False, params=params)
    run_experiment(get_experiment(name), prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[0])
    fold_dir = prepared.runs_dir / name / "fold0"
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert (metrics["segmentation"] is not None) == has_seg
    assert (metrics["classification"] is not None) == has_cls
    assert (fold_dir / "segmentation.csv").exists() == has_seg
    run = json.loads((fold_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["splits_hash"] == prepared.splits.hash
    if has_seg:
        segmentation = pd.read_csv(fold_dir / "segmentation.csv")
        assert {"patient_id", "timepoint", "dice", "jaccard", "hd95", "asd"} <= set(segmentation.columns)
        assert set(segmentation["patient_id"]) <= set(prepared.splits.folds[0].test)
        assert metrics["segmentation"]["dice"] == pytest.approx(segmentation["dice"].mean())
    if has_cls:
        predictions = pd.read_csv(fold_dir / "predictions.csv")
        assert set(predictions["patient_id"]) == set(prepared.splits.folds[0].test)
        assert metrics["classification"]["accuracy"] == pytest.approx(
            ((predictions["probability"] >= 0.5) == (predictions["label"] == 1)).mean())


def test_every_table_one_row_is_registered():
    rows = {spec.table_row for spec in list_experiments(group="paper-table")}
    assert rows == {"NASLung", "SCAN", "DeepCAD", "UNETR", "MLTN", "ACSNet", "MST-Net"}
