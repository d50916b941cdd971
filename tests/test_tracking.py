"""``--log tensorboard`` and ``--log mlflow``: what a fold logs, read back with each tool's own reader.

One real fold (tiny preset, the growth cohort of the harness tests, one epoch per stage)
runs with both trackers; its TensorBoard events (EventAccumulator) and its MLflow run
(``mlflow.search_runs`` on a local store, no server) must carry the epoch scalars of
``history.csv``, the test metrics of ``metrics.json`` and, for MLflow, the fold's resolved
configuration as parameters and its files as artifacts. The trackers must leave the fold's
configuration identity alone. The rest (bad ``--log`` values, a missing package, a resumed
fold, a file store) is checked on :class:`FoldTracking` directly, without training.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness_cohort import write_growth_cohort
from mstnet.cli import main
from mstnet.experiments.tracking import FoldTracking, TrackerSpec, case_panel, flatten, fold_tracking, tracker_specs
from mstnet.experiments.training import EpochRecord


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code, capsys.readouterr().err


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _mlflow_runs(uri: str, experiment: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tracked_fold(tmp_path_factory):
    """One MST-Net fold trained with ``--log tensorboard --log mlflow``; (results folder, MLflow URI)."""
    root = tmp_path_factory.mktemp("tracking")
    cohort = write_growth_cohort(root / "cohort", n_patients=20)
    out = root / "runs"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.raises(SystemExit) as done:
        main(["run", "mstnet", "--preset", "tiny", "--folds", "0", "--epochs", "1", "--data", str(cohort),
              "--out", str(out), "--log", "tensorboard", "--log", "mlflow", "--mlflow-uri", uri])
    assert done.value.code == 0
    return out, uri, cohort


def test_tensorboard_events_carry_the_epoch_scalars_test_metrics_and_images(tracked_fold):
    out, _, _ = tracked_fold
    fold = out / "mstnet" / "fold0"
    events = _events(fold / "tensorboard")
    history = pd.read_csv(fold / "history.csv")
    assert set(history["stage"]) == {"segmentation", "classification"}
    scalars = set(events.Tags()["scalars"])
    for _, row in history.iterrows():
        for key in ("train_loss", "val_loss", "val_auc", "lr"):
            tag = f"{key}/{row['stage']}"
            assert tag in scalars, (tag, sorted(scalars))
            logged = {event.step: event.value for event in events.Scalars(tag)}
            assert logged[int(row["epoch"])] == pytest.approx(row[key], rel=1e-5, abs=1e-7), tag
    metrics = json.loads((fold / "metrics.json").read_text())
    assert events.Scalars("test/dice")[-1].value == pytest.approx(metrics["segmentation"]["dice"], rel=1e-5)
    assert events.Scalars("test/auc")[-1].value == pytest.approx(metrics["classification"]["auc"], rel=1e-5, abs=1e-7)
    images = events.Tags()["images"]
    assert "validation_cases/segmentation" in images
    image = events.Images("validation_cases/segmentation")[0]
    assert image.height >= 128 and image.width >= image.height  # T slices side by side, enlarged


def test_an_mlflow_run_holds_the_configuration_the_metrics_and_the_fold_files(tracked_fold):
    from mlflow import MlflowClient

    out, uri, _ = tracked_fold
    fold = out / "mstnet" / "fold0"
    runs = _mlflow_runs(uri, "mstnet")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "mstnet fold0"
    config = json.loads((fold / "config.json").read_text())
    assert run["params.identity"] == config["identity"]
    assert float(run["params.recipe.learning_rate"]) == config["recipe"]["learning_rate"]
    assert run["params.model.class"] == config["model"]["class"]
    assert int(run["params.fold"]) == 0
    history = pd.read_csv(fold / "history.csv")
    for stage, rows in history.groupby("stage"):
        last = rows.iloc[-1]
        assert run[f"metrics.train_loss/{stage}"] == pytest.approx(last["train_loss"], rel=1e-6)
        assert run[f"metrics.val_loss/{stage}"] == pytest.approx(last["val_loss"], rel=1e-6)
    metrics = json.loads((fold / "metrics.json").read_text())
    assert run["metrics.test/dice"] == pytest.approx(metrics["segmentation"]["dice"], rel=1e-9)
    database = Path(uri.removeprefix("sqlite:///"))
    assert run["artifact_uri"].startswith((database.parent / "mlruns").as_uri())  # beside the database, not in ./mlruns
    artifacts = {entry.path for entry in MlflowClient(tracking_uri=uri).list_artifacts(run["run_id"])}
    assert {"config.json", "metrics.json", "history.csv", "train.log", "run.json"} <= artifacts
    assert "last.pt" not in artifacts and "tensorboard" not in artifacts


def test_tracking_is_not_part_of_the_configuration_identity(capsys, tracked_fold):
    out, _, cohort = tracked_fold
    fold = out / "mstnet" / "fold0"
    before = {p.name: p.read_bytes() for p in fold.iterdir() if p.is_file()}
    code, stderr = _run_cli(capsys, "run", "mstnet", "--preset", "tiny", "--folds", "0", "--epochs", "1",
                            "--data", str(cohort), "--out", str(out))
    assert code == 0, stderr  # the same identity without --log: the finished fold is reused, not refused
    assert {p.name: p.read_bytes() for p in fold.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("args, words", [
    (["--log", "wandb"], ["'wandb'", "tensorboard", "mlflow"]),
    (["--mlflow-uri", "sqlite:///x.db"], ["--mlflow-uri", "--log mlflow"]),
])
def test_bad_log_options_exit_2_in_one_line_before_anything_is_written(capsys, tmp_path, args, words):
    out = tmp_path / "runs"
    code, stderr = _run_cli(capsys, "run", "mstnet", "--preset", "tiny", "--out", str(out), *args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_a_missing_package_names_the_extra_to_install(capsys, monkeypatch, tmp_path, kind):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind else real_find_spec(name, *a))
    code, stderr = _run_cli(capsys, "ablate", "no-stdm", "--preset", "tiny", "--out", str(tmp_path / "runs"),
                            "--log", kind)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert kind in lines[0] and '.[tracking]' in lines[0], lines[0]


def test_tracker_specs_accept_repeats_and_commas():
    assert [s.kind for s in tracker_specs(["tensorboard,mlflow", "tensorboard"], "sqlite:///a.db")] == ["tensorboard",
                                                                                                       "mlflow"]
    assert tracker_specs([], None) == ()


def test_flatten_makes_dotted_keys():
    assert flatten({"recipe": {"lr": 0.1, "stages": ["a", "b"]}, "fold": 0, "empty": {}}) == {
        "recipe.lr": 0.1, "recipe.stages": ["a", "b"], "fold": 0, "empty": "{}"}


def test_case_panel_outlines_truth_and_prediction():
    image = np.zeros((2, 3, 8, 8), np.float32)
    truth = np.zeros((2, 3, 8, 8), bool)
    truth[:, 1, 2:6, 2:6] = True
    panel = case_panel(image, truth, truth)
    assert panel.shape[1] == 2 * panel.shape[0] and panel.shape[2] == 3
    assert panel.min() >= 0.0 and panel.max() <= 1.0
    assert np.isclose(panel[..., 1], 0.1).any()  # the prediction's magenta outline lies over the truth's


def _record(stage: str, epoch: int, loss: float) -> EpochRecord:
    return EpochRecord(stage, epoch, loss, loss + 0.1, -loss - 0.1, 1e-3, math.nan, 0.5)


def test_a_resumed_fold_continues_its_mlflow_run_in_a_file_store(tmp_path, monkeypatch):
    """``--mlflow-uri FOLDER``: MLflow's file store; an unfinished run of the same fold and identity is
    reopened (one run, both attempts' epochs), a failed attempt is marked FAILED, a finished fold logs its files."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = tmp_path / "mlruns"
    fold_dir = tmp_path / "runs" / "exp" / "fold1"
    fold_dir.mkdir(parents=True)
    configuration = {"identity": "abc", "fold": 1, "recipe": {"learning_rate": 0.01}}
    (fold_dir / "config.json").write_text(json.dumps(configuration))
    specs = (TrackerSpec("mlflow", uri=str(store)),)
    with pytest.raises(KeyboardInterrupt):
        with fold_tracking(specs, "exp", 1, fold_dir, configuration) as tracking:
            tracking.epoch(_record("joint", 0, 0.9))
            raise KeyboardInterrupt
    runs = _mlflow_runs(str(store), "exp")
    assert list(runs["status"]) == ["KILLED"]
    with fold_tracking(specs, "exp", 1, fold_dir, configuration) as tracking:
        tracking.epoch(_record("joint", 1, 0.7))
        (fold_dir / "metrics.json").write_text(json.dumps({"segmentation": None, "classification": {"auc": 0.8}}))
    runs = _mlflow_runs(str(store), "exp")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["params.recipe.learning_rate"] == "0.01"
    assert runs.iloc[0]["metrics.test/auc"] == pytest.approx(0.8)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=str(store))
    history = client.get_metric_history(runs.iloc[0]["run_id"], "train_loss/joint")
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.9), (1, 0.7)]
    assert {"config.json", "metrics.json"} <= {a.path for a in client.list_artifacts(runs.iloc[0]["run_id"])}


def test_no_trackers_do_nothing(tmp_path):
    tracking = FoldTracking((), "exp", 0, tmp_path, {})
    assert not tracking and tracking.callbacks == ()
    tracking.epoch(_record("joint", 0, 1.0))
    tracking.close()
    assert list(tmp_path.iterdir()) == []
