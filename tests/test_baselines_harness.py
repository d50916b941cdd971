"""Baselines run through the harness: one tiny fold writes the columns their tasks call for."""

import json
import re
from pathlib import Path

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


BASELINE_GROUPS = ("paper-table", "reference")
BASELINES = [spec.name for spec in list_experiments() if spec.group in BASELINE_GROUPS and spec.name != "mstnet"]
"""Every registered baseline and reference (MST-Net has its own tests): a new baseline file is tested here as it is
registered, with nothing to add to this file."""
README = Path(__file__).parents[1] / "baselines" / "README.md"


def readme_methods() -> dict[str, str]:
    """name -> the row's "row / group" cell, for every name in backticks in the first cell of the Methods table of
    baselines/README.md (a row may name several experiments)."""
    section = README.read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return {name: group for names, group in rows for name in re.findall(r"`([^`]+)`", names)}


def test_baselines_readme_has_one_row_per_registered_baseline():
    documented = readme_methods()
    missing = [name for name in BASELINES if name not in documented]
    stale = sorted(set(documented) - set(BASELINES))
    assert not missing, f"baselines/README.md: add a Methods row (source, what is faithful, what deviates) for {missing}"
    assert not stale, f"baselines/README.md: Methods rows name experiments no longer registered: {stale}"
    for name in BASELINES:
        spec = get_experiment(name)
        assert spec.group in documented[name], f"baselines/README.md row of {name}: group {spec.group!r} not stated"
        if spec.table_row:
            assert spec.table_row in documented[name], f"baselines/README.md row of {name}: Table-1 row not stated"


@pytest.mark.parametrize("name", BASELINES)
def test_one_fold_writes_the_metrics_of_its_tasks_only(prepared, tmp_path, name):
    # The registered tasks say what the fold must write: metrics of a task the spec lacks fail, as do missing ones.
    spec = get_experiment(name)
    has_seg, has_cls = "segmentation" in spec.tasks, "classification" in spec.tasks
    # The test cohort has no Brock history columns (family history, emphysema): Brock uses reference values.
    params = {"brock_allow_missing": True} if name == "brock" else {}
    options = RunOptions(preset=run_preset("tiny", epochs=1), device=torch.device("cpu"), cache_dir=tmp_path,
                         progress=False, params=params)
    run_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[0])
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
