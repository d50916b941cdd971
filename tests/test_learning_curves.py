"""Learning and training curves (mstnet/reporting/curves.py) from hand-written fold files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstnet.reporting import build_report, curves, load_results

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import FakeExperiment, write_fake_runs  # noqa: E402

EXPERIMENTS = (FakeExperiment("mstnet", ("segmentation", "classification"), table_row="MST-Net"),
               FakeExperiment("unetr", ("segmentation",), table_row="UNETR", information="scans2"))

# mstnet: a segmentation stage then a classification stage, three epochs each, on two folds.
# Dice is also recorded in the classification stage (0.5, frozen) and AUC in the segmentation stage
# (0.5, untrained head): neither belongs on the learning curves.
TWO_STAGE = {
    0: {"val_dice": [0.2, 0.4, 0.5, 0.5, 0.5, 0.5], "val_auc": [0.5, 0.5, 0.5, 0.6, 0.7, 0.72],
        "step": [3, 6, 9, 12, 15, 18], "seconds": [1.0, 2.0, 3.0, 3.5, 4.0, 4.5],
        "selected_epoch": {"segmentation": 2, "classification": 1}, "plateau_reached": True},
    1: {"val_dice": [0.3, 0.6, 0.7, 0.7, 0.7, 0.7], "val_auc": [0.5, 0.5, 0.5, 0.5, 0.8, 0.9],
        "step": [4, 8, 12, 16, 20, 24], "seconds": [2.0, 4.0, 6.0, 7.0, 8.0, 9.0],
        "selected_epoch": {"segmentation": 1, "classification": 2}, "plateau_reached": False},
}
STAGES = ["segmentation"] * 3 + ["classification"] * 3
# unetr: one joint stage, Dice only, and no timing.csv
JOINT = {0: {"val_dice": [0.1, 0.3, 0.35], "step": [5, 10, 15], "selected_epoch": {"joint": 2}},
         1: {"val_dice": [0.2, 0.5, 0.45], "step": [5, 10, 15], "selected_epoch": {"joint": 1}}}


def _history(stages: list[str], values: dict) -> pd.DataFrame:
    epochs = [stages[:i].count(stage) for i, stage in enumerate(stages)]
    n = len(stages)
    return pd.DataFrame({"stage": stages, "epoch": epochs, "train_loss": np.linspace(1.0, 0.5, n),
                         "val_loss": np.linspace(1.2, 0.7, n), "val_score": -np.linspace(1.2, 0.7, n),
                         "lr": 1e-3, "val_dice": values["val_dice"], "val_auc": values.get("val_auc", [np.nan] * n),
                         "step": values["step"]})


def _rewrite_fold(fold_dir: Path, stages: list[str], values: dict, recipe: dict) -> None:
    history = _history(stages, values)
    history.to_csv(fold_dir / "history.csv", index=False)
    if "seconds" in values:
        timing = history[["stage", "epoch", "step"]].assign(seconds=values["seconds"])
        timing.to_csv(fold_dir / "timing.csv", index=False)
    run = json.loads((fold_dir / "run.json").read_text())
    run["selected_epoch"] = values["selected_epoch"]
    if "plateau_reached" in values:
        run["plateau_reached"] = values["plateau_reached"]
    (fold_dir / "run.json").write_text(json.dumps(run))
    config = json.loads((fold_dir / "config.json").read_text())
    (fold_dir / "config.json").write_text(json.dumps({**config, "recipe": recipe}))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    runs = write_fake_runs(tmp_path_factory.mktemp("curves") / "runs", experiments=EXPERIMENTS, n_patients=12,
                           n_folds=2, epochs=3)
    for fold, values in TWO_STAGE.items():
        _rewrite_fold(runs / "mstnet" / f"fold{fold}", STAGES, values,
                      {"stages": ["segmentation", "classification"], "seg_loss_weight": 0.7, "cls_loss_weight": 0.3})
    for fold, values in JOINT.items():
        _rewrite_fold(runs / "unetr" / f"fold{fold}", ["joint"] * 3, values,
                      {"stages": ["joint"], "seg_loss_weight": 0.5, "cls_loss_weight": 0.5})
    return runs


@pytest.fixture(scope="module")
def read(runs_dir):
    return curves.read_curves(load_results(runs_dir))


def _capture(monkeypatch) -> list:
    drawn = []

    def save(figure, out_dir, stem):
        drawn.append(figure)
        return [Path(out_dir) / f"{stem}.png"]

    monkeypatch.setattr(curves, "save_figure", save)
    return drawn


def _lines(axes) -> list[tuple[list[float], list[float]]]:
    return [(list(map(float, line.get_xdata())), list(map(float, line.get_ydata()))) for line in axes.lines]


def test_learning_curve_is_the_mean_over_folds_of_each_epoch(read):
    points, _ = read
    dice = curves.learning_curve_data(points, "dice").set_index("experiment")
    two_stage = dice.loc["mstnet"]
    assert list(two_stage["stage"]) == ["segmentation"] * 3  # not the frozen Dice of the classification stage
    assert two_stage["value"].tolist() == pytest.approx([0.25, 0.5, 0.6])
    assert two_stage["low"].tolist() == pytest.approx([0.2, 0.4, 0.5])
    assert two_stage["high"].tolist() == pytest.approx([0.3, 0.6, 0.7])
    assert two_stage["step"].tolist() == pytest.approx([3.5, 7.0, 10.5])
    assert two_stage["seconds"].tolist() == pytest.approx([1.5, 3.0, 4.5])
    assert two_stage["n_folds"].tolist() == [2, 2, 2]
    joint = dice.loc["unetr"]
    assert joint["value"].tolist() == pytest.approx([0.15, 0.4, 0.4])
    assert joint["seconds"].isna().all()  # no timing.csv: steps only
    auc = curves.learning_curve_data(points, "auc")
    assert set(auc["experiment"]) == {"mstnet"}
    assert list(auc["stage"]) == ["classification"] * 3
    assert auc["value"].tolist() == pytest.approx([0.55, 0.75, 0.81])
    assert auc["step"].tolist() == pytest.approx([14.0, 17.5, 21.0])  # steps run on from the segmentation stage
    assert auc["seconds"].tolist() == pytest.approx([5.25, 6.0, 6.75])


def test_seconds_are_undefined_where_a_fold_has_no_time():
    history = _history(["joint"] * 2, {"val_dice": [0.1, 0.2], "step": [1, 2]})
    timed = curves.fold_points(history, history[["stage", "epoch"]].assign(seconds=[1.0, 2.0]))
    untimed = curves.fold_points(history)
    points = pd.concat([timed.assign(experiment="a", fold=0), untimed.assign(experiment="a", fold=1)])
    curve = curves.learning_curve_data(points, "dice")
    assert curve["value"].tolist() == pytest.approx([0.1, 0.2])
    assert curve["seconds"].isna().all()


def test_stages_are_separate_segments(read):
    points, _ = read
    fold = points[(points["experiment"] == "mstnet") & (points["fold"] == 0)]
    segments = curves.stage_segments(fold, "step", "train_loss")
    assert [stage for stage, _, _ in segments] == ["segmentation", "classification"]
    assert segments[0][1].tolist() == [3, 6, 9] and segments[1][1].tolist() == [12, 15, 18]


def test_the_training_curves_join_no_two_stages_and_name_their_losses(runs_dir, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)
    curves.training_curves_figure(load_results(runs_dir), tmp_path)
    panels = {axes.get_title(): axes for axes in drawn[0].axes}
    assert set(panels) == {"MST-Net: segmentation stage", "MST-Net: classification stage", "UNETR: joint stage"}
    assert panels["MST-Net: segmentation stage"].get_ylabel() == "Dice+CE loss"
    assert panels["MST-Net: classification stage"].get_ylabel() == "cross-entropy loss"
    assert panels["UNETR: joint stage"].get_ylabel() == "Dice+CE loss"  # a segmentation-only model: no CE term
    for title in ("MST-Net: segmentation stage", "MST-Net: classification stage"):
        curves_drawn = [x for x, _ in _lines(panels[title]) if len(x) > 1]
        assert len(curves_drawn) == 4 and all(x == [1.0, 2.0, 3.0] for x in curves_drawn)  # train, validation x 2 folds
    stars = sorted(x + y for x, y in _lines(panels["MST-Net: segmentation stage"]) if len(x) == 1)
    validation = _history(STAGES, TWO_STAGE[0])["val_loss"]
    assert stars[0] == pytest.approx([2.0, validation[1]])  # fold 1 chose epoch index 1
    assert stars[1] == pytest.approx([3.0, validation[2]])  # fold 0 chose epoch index 2


def test_the_learning_curves_mark_the_chosen_epochs_and_the_rows_short_of_plateau(runs_dir, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)
    curves.learning_curves_figure(load_results(runs_dir), tmp_path)
    figure = drawn[0]
    panels = {axes.get_title(): axes for axes in figure.axes}
    assert len(panels) == 4
    dice_steps = _lines(panels["inner-validation Dice against optimizer steps"])
    assert ([3.5, 7.0, 10.5], pytest.approx([0.25, 0.5, 0.6])) in dice_steps
    assert ([9.0, 8.0], pytest.approx([0.5, 0.6])) in dice_steps  # each fold's chosen segmentation epoch
    auc_steps = _lines(panels["inner-validation AUC against optimizer steps"])
    assert ([14.0, 17.5, 21.0], pytest.approx([0.55, 0.75, 0.81])) in auc_steps
    assert ([15.0, 24.0], pytest.approx([0.7, 0.9])) in auc_steps
    for x, _ in dice_steps + auc_steps:  # no line runs from the segmentation stage into the classification stage
        assert not (set(x) & {3.5, 7.0, 10.5} and set(x) & {14.0, 17.5, 21.0})
    dice_seconds = _lines(panels["inner-validation Dice against wall seconds"])
    assert ([1.5, 3.0, 4.5], pytest.approx([0.25, 0.5, 0.6])) in dice_seconds
    assert [x for x, _ in dice_seconds if len(x) == 3] == [[1.5, 3.0, 4.5]]  # UNETR has no timing.csv
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "MST-Net (short of plateau in 1 of 2 folds)" in legend and "UNETR" in legend


def test_without_timing_only_the_steps_panels_are_drawn(runs_dir, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    for timing in copy.glob("*/fold*/timing.csv"):
        timing.unlink()
    drawn = _capture(monkeypatch)
    curves.learning_curves_figure(load_results(copy), tmp_path / "figures")
    assert sorted(axes.get_title() for axes in drawn[0].axes) == [
        "inner-validation AUC against optimizer steps", "inner-validation Dice against optimizer steps"]


def test_chosen_epochs_are_the_rows_run_json_names(read):
    points, folds = read
    chosen = curves.chosen_epochs(points, folds).set_index(["experiment", "fold", "stage"])
    assert chosen.loc[("mstnet", 0, "segmentation"), ["epoch", "step", "seconds"]].tolist() == [2, 9, 3.0]
    assert chosen.loc[("mstnet", 1, "classification"), ["epoch", "step", "seconds"]].tolist() == [2, 24, 9.0]
    assert chosen.loc[("unetr", 1, "joint"), ["epoch", "step"]].tolist() == [1, 10]
    assert len(chosen) == 6


@pytest.mark.parametrize(("stage", "tasks", "recipe", "label"), [
    ("segmentation", ("segmentation", "classification"), None, "Dice+CE loss"),
    ("classification", ("segmentation", "classification"), None, "cross-entropy loss"),
    ("joint", ("segmentation", "classification"), {"seg_loss_weight": 0.5, "cls_loss_weight": 0.5},
     "0.5 Dice+CE + 0.5 CE loss"),
    ("joint", ("segmentation", "classification"), {}, "weighted Dice+CE + CE loss"),
    ("joint", ("classification",), {"seg_loss_weight": 0.7, "cls_loss_weight": 0.3}, "CE loss"),
    ("joint", ("segmentation", "classification"), {"seg_loss_weight": 1.0, "cls_loss_weight": 0.0}, "Dice+CE loss"),
])
def test_loss_label_names_the_stage_loss(stage, tasks, recipe, label):
    assert curves.loss_label(stage, tasks, recipe) == label


def test_old_histories_without_stages_still_draw_training_curves(tmp_path):
    runs = write_fake_runs(tmp_path / "runs", experiments=EXPERIMENTS[1:], n_patients=10, n_folds=2, epochs=3)
    results = load_results(runs)
    assert [p.name for p in curves.training_curves_figure(results, tmp_path / "figures")] == [
        "training_curves.png", "training_curves.pdf"]
    assert curves.learning_curves_figure(results, tmp_path / "figures") == []  # no Dice, AUC or steps recorded


def test_the_report_writes_and_lists_the_learning_curves(runs_dir, tmp_path):
    index = build_report([runs_dir], tmp_path / "report", n_resamples=20)
    figure = tmp_path / "report" / "figures" / "learning_curves.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 1000
    assert (tmp_path / "report" / "figures" / "learning_curves.pdf").stat().st_size > 1000
    assert "figures/learning_curves.png" in index.read_text()
