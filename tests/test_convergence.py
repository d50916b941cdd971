"""The plateau verdict: a still-rising curve is flagged, a flat or falling one passes; run.json and the table footnote carry it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mstnet.experiments.convergence import PLATEAU_GAIN, fold_plateau, plateau_verdict, short_of_plateau


def test_a_still_rising_curve_is_flagged_and_a_flat_one_passes():
    rising = [0.1 + 0.05 * epoch for epoch in range(9)]  # +0.15 over the last third
    verdict = plateau_verdict(rising)
    assert verdict["reached"] is False and verdict["gain"] == pytest.approx(0.40 - 0.25)
    flat = [0.1, 0.5, 0.6, 0.62, 0.615, 0.62, 0.618, 0.621, 0.619]
    verdict = plateau_verdict(flat)
    assert verdict["reached"] is True and verdict["gain"] == pytest.approx(0.621 - 0.62)
    falling = [0.5, 0.7, 0.8, 0.75, 0.7, 0.65]
    assert plateau_verdict(falling)["reached"] is True and plateau_verdict(falling)["gain"] == pytest.approx(0.7 - 0.8)


def test_the_boundary_and_short_or_undefined_curves():
    just_below = [0.5, 0.5, 0.5 + PLATEAU_GAIN * 0.99]
    just_above = [0.5, 0.5, 0.5 + PLATEAU_GAIN * 1.01]
    assert plateau_verdict(just_below)["reached"] and not plateau_verdict(just_above)["reached"]
    assert plateau_verdict([0.5, 0.6])["reached"] is False  # too short to tell
    assert plateau_verdict([math.nan, 0.5, math.nan, 0.5, 0.5])["reached"] is True  # NaN epochs are left out
    with pytest.raises(ValueError):
        plateau_verdict([0.1, 0.2, 0.3], threshold=0)


def test_fold_plateau_judges_each_stage_on_its_own_metric_and_counts_its_steps():
    history = ([{"stage": "segmentation", "epoch": e, "val_dice": 0.1 * e, "val_auc": math.nan, "val_score": -1.0,
                 "step": 24 * (e + 1)} for e in range(6)]
               + [{"stage": "classification", "epoch": e, "val_dice": 0.5, "val_auc": 0.8, "val_score": -0.5,
                   "step": 144 + 24 * (e + 1)} for e in range(6)])
    verdicts = fold_plateau(history)
    assert verdicts["segmentation"]["metric"] == "val_dice" and not verdicts["segmentation"]["reached"]
    assert verdicts["segmentation"]["steps"] == 144 and verdicts["classification"]["steps"] == 144
    assert verdicts["classification"]["metric"] == "val_auc" and verdicts["classification"]["reached"]
    assert short_of_plateau(verdicts) == f"segmentation: val_dice +{0.5 - 0.3:.3f}"


def test_run_json_records_steps_and_plateau_and_the_table_names_rows_short_of_it(tmp_path, capsys):
    from harness_cohort import write_growth_cohort
    from mstnet.cli import main

    cohort = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as done:
        main(["run", "monai-basicunet", "--data", str(cohort), "--preset", "tiny", "--folds", "0", "--epochs", "2",
              "--out", str(runs)])
    assert done.value.code == 0
    fold = runs / "monai-basicunet" / "fold0"
    run = json.loads((fold / "run.json").read_text())
    history = pd.read_csv(fold / "history.csv")
    timing = pd.read_csv(fold / "timing.csv")
    steps_per_epoch = math.ceil(12 / 4)  # tiny folds: 12 training patients, batch 4
    assert run["optimizer_steps"] == history["step"].iloc[-1] == 2 * steps_per_epoch
    assert list(timing["step"]) == list(history["step"]) and np.all(np.diff(timing["seconds"]) > 0)
    assert run["plateau_reached"] is False and "fewer than 3 epochs" in run["short_of_plateau"]
    with pytest.raises(SystemExit) as done:
        main(["report", str(runs), "--out", str(tmp_path / "report"), "--resamples", "50"])
    assert done.value.code == 0
    text = "\n".join(p.read_text() for p in (tmp_path / "report").glob("*.md"))
    assert "Short of the plateau" in text and "fold 0" in text and "optimizer steps per fold" in text
