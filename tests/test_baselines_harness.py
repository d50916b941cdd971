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


@pytest.mark.parametrize("name, has_seg, has_cls", [
    ("deepcad", False, True),
    ("mltn", True, True),
    ("logreg-clinical", False, True),
    ("growth-rule", False, True),
])
def test_one_fold_writes_the_metrics_of_its_tasks_only(prepared, tmp_path, name, has_seg, has_cls):
    options = RunOptions(preset=run_preset("tiny", epochs=1), device=torch.device("cpu"), cache_dir=tmp_path, progress=False)
    run_experiment(get_experiment(name), prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[0])
    fold_dir = prepared.runs_dir / name / "fold0"
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert (metrics["segmentation"] is not None) == has_seg
    assert (metrics["classification"] is not None) == has_cls
    assert (fold_dir / "segmentation.csv").exists() == has_seg
    if has_cls:
        predictions = pd.read_csv(fold_dir / "predictions.csv")
        assert set(predictions["patient_id"]) == set(prepared.splits.folds[0].test)
        assert metrics["classification"]["accuracy"] == pytest.approx(
            ((predictions["probability"] >= 0.5) == (predictions["label"] == 1)).mean())


def test_every_table_one_row_is_registered():
    rows = {spec.table_row for spec in list_experiments(group="paper-table")}
    assert rows == {"NASLung", "SCAN", "DeepCAD", "UNETR", "MLTN", "ACSNet", "MST-Net"}
