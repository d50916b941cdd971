"""The table measures what it says: the bold, undefined ratios, per-patient Wilcoxon, metrics.json checked.

Each test writes a small results folder with tests/fake_runs.py and then overwrites some
predictions / per-scan values (recomputing metrics.json from them, as the harness does).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import f1_score, precision_score, roc_auc_score

from mstnet.cli import main
from mstnet.metrics import classification_metric_samples, classification_metrics, patient_draws
from mstnet.reporting import build_report, check_runs_dir, load_results
from mstnet.reporting import figures as report_figures
from mstnet.reporting.results import ResultsError
from mstnet.reporting.ablation_table import ablation_table
from mstnet.reporting.paper_formats import results_table_markdown
from mstnet.reporting.paper_table import paper_table
from mstnet.reporting.table_data import COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import FakeExperiment, write_fake_runs  # noqa: E402

N_RESAMPLES = 200
KEYS = [c.key for c in COLUMNS]


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else v for k, v in metrics.items()}


def rewrite_predictions(runs_dir: Path, experiment: str,
                        probability_of: Callable[[int, np.ndarray], np.ndarray]) -> None:
    """New probabilities ``probability_of(fold, labels)`` for every fold, with metrics.json recomputed from them."""
    for fold_dir in sorted((runs_dir / experiment.replace("/", "__")).glob("fold*")):
        k = int(fold_dir.name.removeprefix("fold"))
        frame = pd.read_csv(fold_dir / "predictions.csv", dtype={"patient_id": str})
        frame["probability"] = probability_of(k, frame["label"].to_numpy())
        frame.to_csv(fold_dir / "predictions.csv", index=False)
        frame = pd.read_csv(fold_dir / "predictions.csv", dtype={"patient_id": str})  # what the report reads
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        labels, probabilities = frame["label"].to_numpy(), frame["probability"].to_numpy()
        metrics["classification"] = _clean(classification_metrics(labels, probabilities, metrics["threshold"]))
        metrics["classification_at_validation_threshold"] = _clean(
            classification_metrics(labels, probabilities, metrics["validation_threshold"]))
        (fold_dir / "metrics.json").write_text(json.dumps(metrics, allow_nan=False))


def rewrite_dice(runs_dir: Path, experiment: str, dice_of: dict[tuple[str, str], float]) -> None:
    """New per-scan Dice (and Jaccard) for every (patient, time point), with metrics.json's means recomputed."""
    for fold_dir in sorted((runs_dir / experiment.replace("/", "__")).glob("fold*")):
        scans = pd.read_csv(fold_dir / "segmentation.csv", dtype={"patient_id": str, "timepoint": str})
        scans["dice"] = [dice_of[(p, t)] for p, t in zip(scans["patient_id"], scans["timepoint"])]
        scans["jaccard"] = scans["dice"] / (2.0 - scans["dice"])
        scans.to_csv(fold_dir / "segmentation.csv", index=False)
        scans = pd.read_csv(fold_dir / "segmentation.csv")
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        metrics["segmentation"] = {key: float(scans[key].mean()) for key in ("dice", "jaccard", "hd95", "asd")}
        (fold_dir / "metrics.json").write_text(json.dumps(metrics))


def markdown_cells(markdown: str) -> dict[str, list[str]]:
    """Method -> its cells, from a results table in Markdown."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and "---" not in line}


def pooled_predictions(runs_dir: Path, experiment: str) -> pd.DataFrame:
    folder = runs_dir / experiment.replace("/", "__")
    return pd.concat(pd.read_csv(d / "predictions.csv") for d in sorted(folder.glob("fold*")))


# --- 1. the bold marks the best value of the statistic whose interval is printed -------------------------


@pytest.fixture(scope="module")
def miscalibrated_runs(tmp_path_factory) -> Path:
    """MST-Net ranks every fold perfectly but each fold on its own scale (fold-mean AUC 1, pooled AUC low);
    SCAN is well calibrated but noisier (fold-mean AUC below 1, pooled AUC higher than MST-Net's)."""
    runs = write_fake_runs(tmp_path_factory.mktemp("bold") / "runs", experiments=(
        FakeExperiment("mstnet", ("classification",), table_row="MST-Net"),
        FakeExperiment("scan", ("classification",), table_row="SCAN")), epochs=3)
    rng = np.random.default_rng(1)
    rewrite_predictions(runs, "mstnet", lambda k, y: 0.04 + 0.18 * k + 0.1 * y + 0.01 * rng.random(y.size))
    rewrite_predictions(runs, "scan", lambda k, y: np.clip(0.35 * y + rng.uniform(0.0, 0.65, y.size), 0.0, 1.0))
    return runs


def test_bold_goes_to_the_best_pooled_value_not_the_best_fold_mean(miscalibrated_runs, monkeypatch, tmp_path):
    results = load_results(miscalibrated_runs)
    table = paper_table(results, n_resamples=N_RESAMPLES)
    frame = table.frame.set_index("experiment")
    # the premise: fold means and pooled values rank the two methods in opposite orders
    assert frame.at["mstnet", "auc_mean"] == pytest.approx(1.0)
    assert frame.at["scan", "auc_mean"] < 0.99
    for name in ("mstnet", "scan"):
        pooled = pooled_predictions(miscalibrated_runs, name)
        assert frame.at[name, "auc_pooled"] == pytest.approx(roc_auc_score(pooled["label"], pooled["probability"]))
    assert frame.at["mstnet", "auc_pooled"] < frame.at["scan", "auc_pooled"]
    # the printed interval is the pooled value's, and the bold goes to the best pooled value
    for name in ("mstnet", "scan"):
        assert frame.at[name, "auc_ci_low"] <= frame.at[name, "auc_pooled"] <= frame.at[name, "auc_ci_high"]
    assert bool(frame.at["scan", "auc_best"]) and not bool(frame.at["mstnet", "auc_best"])
    cells = {method: [cell.replace("\\*", "") for cell in row]  # without the significance stars
             for method, row in markdown_cells(results_table_markdown(table)).items()}
    auc = KEYS.index("auc")
    scan, mstnet = frame.loc["scan"], frame.loc["mstnet"]
    assert cells["SCAN"][auc].startswith(f"**{100 * scan['auc_pooled']:.2f}** [{100 * scan['auc_ci_low']:.1f}, "
                                         f"{100 * scan['auc_ci_high']:.1f}]; {100 * scan['auc_mean']:.2f} ± ")
    assert cells["MST-Net"][auc].startswith(f"{100 * mstnet['auc_pooled']:.2f} [")
    assert "**" not in cells["MST-Net"][auc] and "100.00 ± 0.00" in cells["MST-Net"][auc]
    # the footnote names the bold statistic and what the interval belongs to
    assert any(note.startswith("Bold: the best pooled value per column, the statistic whose interval is printed")
               for note in table.notes)
    assert any("then in brackets the 95% percentile bootstrap CI of that pooled value" in note
               and "after the semicolon, mean ± std over folds" in note for note in table.notes)
    # the ROC figure's legend ranks the methods as the table does, with the same AUCs
    legends: list[str] = []

    def keep_legend(figure, out_dir, stem):
        legends.extend(text.get_text() for text in figure.axes[0].get_legend().get_texts())
        return []

    monkeypatch.setattr(report_figures, "save_figure", keep_legend)
    report_figures.roc_figure(results, tmp_path, n_resamples=20)
    shown = {re.match(r"(.+?)  AUC", text).group(1): float(re.search(r"AUC (\d\.\d+)", text).group(1))
             for text in legends}
    assert shown == {"MST-Net": pytest.approx(mstnet["auc_pooled"], abs=5e-4),
                     "SCAN": pytest.approx(scan["auc_pooled"], abs=5e-4)}
    assert max(shown, key=shown.get) == frame.loc[frame["auc_best"], "method"].item()


# --- 2. undefined precision is undefined, and a mean says over how many folds ----------------------------


@pytest.fixture()
def silent_fold_runs(tmp_path) -> Path:
    """MST-Net whose fold 2 predicts nobody malignant (every probability below 0.5)."""
    runs = write_fake_runs(tmp_path / "runs", experiments=(
        FakeExperiment("mstnet", ("classification",), table_row="MST-Net", separation=2.2),), epochs=3)
    rng = np.random.default_rng(4)

    def probability(k: int, y: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(2.2 * (y - 0.5) + rng.normal(0.0, 1.0, y.size))))
        return 0.45 * p if k == 2 else p

    rewrite_predictions(runs, "mstnet", probability)
    return runs


def test_a_fold_without_positive_prediction_has_undefined_precision(silent_fold_runs):
    results = load_results(silent_fold_runs)
    folds = results.fold_metrics.set_index("fold")
    for k in range(5):
        predictions = pd.read_csv(silent_fold_runs / "mstnet" / f"fold{k}" / "predictions.csv")
        predicted = (predictions["probability"] >= 0.5).astype(int)
        expected = precision_score(predictions["label"], predicted, zero_division=np.nan)
        assert folds.at[k, "precision"] == pytest.approx(expected, nan_ok=True), k
        assert folds.at[k, "f1"] == pytest.approx(f1_score(predictions["label"], predicted, zero_division=np.nan))
    assert math.isnan(folds.at[2, "precision"])
    assert folds.at[2, "f1"] == 0.0 and folds.at[2, "recall"] == 0.0  # malignant patients, none found
    assert json.loads((silent_fold_runs / "mstnet" / "fold2" / "metrics.json").read_text())["classification"][
        "precision"] is None

    table = paper_table(results, n_resamples=N_RESAMPLES)
    row = table.frame.set_index("experiment").loc["mstnet"]
    defined = folds["precision"].drop(index=2)
    assert row["precision_mean"] == pytest.approx(defined.mean()) and row["precision_folds"] == 4
    assert row["precision_std"] == pytest.approx(defined.std(ddof=1))
    assert row["precision_ci_low"] <= row["precision_pooled"] <= row["precision_ci_high"]
    assert row["f1_folds"] == row["accuracy_folds"] == 5
    cell = markdown_cells(results_table_markdown(table))["MST-Net"][KEYS.index("precision")]
    assert cell.endswith(f"; {100 * defined.mean():.2f} ± {100 * defined.std(ddof=1):.2f} (4 of 5 folds)"), cell
    assert "of 5 folds" not in markdown_cells(results_table_markdown(table))["MST-Net"][KEYS.index("f1")]
    assert any("precision with no positive prediction" in note and "not counted as 0" in note for note in table.notes)


def test_precision_written_as_zero_by_the_old_convention_is_read_as_undefined(silent_fold_runs, caplog):
    path = silent_fold_runs / "mstnet" / "fold2" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["classification"]["precision"] = 0.0
    path.write_text(json.dumps(metrics))
    with caplog.at_level(logging.WARNING, logger="mstnet.reporting.results"):
        results = load_results(silent_fold_runs)
    assert math.isnan(results.fold_metrics.set_index("fold").at[2, "precision"])
    assert "classification.precision is 0, written counting an undefined ratio as 0" in caplog.text


@pytest.mark.parametrize("average", ["binary", "weighted"])
def test_vectorised_bootstrap_leaves_undefined_ratios_undefined(average):
    rng = np.random.default_rng(2)
    labels, probabilities = rng.integers(0, 2, 5), np.round(rng.random(5), 1)
    draws = patient_draws(5, 300, seed=3)  # small resamples: many without a positive prediction or a class
    samples = classification_metric_samples(labels, probabilities, draws, threshold=0.6, average=average)
    if average == "binary":  # the undefined cases do occur
        assert np.isnan(samples["precision"]).any() and np.isnan(samples["recall"]).any()
    assert np.isnan(samples["auc"]).any()
    for r, drawn in enumerate(draws):
        expected = classification_metrics(labels[drawn], probabilities[drawn], threshold=0.6, average=average)
        for key, value in expected.items():
            np.testing.assert_allclose(samples[key][r], value, rtol=1e-12, atol=1e-12, err_msg=f"{key} resample {r}")


# --- 3. Wilcoxon on per-patient mean Dice ------------------------------------------------------------------

MSTNET_MEANS = [0.82, 0.72, 0.88, 0.63, 0.77, 0.83, 0.68, 0.80, 0.90, 0.70]
UNETR_MEANS = [0.79, 0.665, 0.87, 0.556, 0.795, 0.74, 0.618, 0.762, 0.819, 0.655]


def test_wilcoxon_pairs_patients_on_their_mean_dice(tmp_path):
    runs = write_fake_runs(tmp_path / "runs", n_patients=10, epochs=3, experiments=(
        FakeExperiment("mstnet", ("segmentation",), table_row="MST-Net"),
        FakeExperiment("unetr", ("segmentation",), table_row="UNETR"),
        FakeExperiment("ablation/single-timepoint", ("segmentation",), group="ablation")))
    patients = [f"P{i:03d}" for i in range(10)]
    # two scans per patient around the patient's mean: T0 and T1 differ, the mean is the hand-computed one
    rewrite_dice(runs, "mstnet", {(p, t): m + s for p, m in zip(patients, MSTNET_MEANS)
                                  for t, s in (("T0", 0.02), ("T1", -0.02))})
    for name in ("unetr", "ablation/single-timepoint"):
        rewrite_dice(runs, name, {(p, t): m + s for p, m in zip(patients, UNETR_MEANS)
                                  for t, s in (("T0", -0.03), ("T1", 0.03))})
    expected = stats.wilcoxon(MSTNET_MEANS, UNETR_MEANS).pvalue
    per_scan = stats.wilcoxon(np.repeat(MSTNET_MEANS, 2) + np.tile([0.02, -0.02], 10),
                              np.repeat(UNETR_MEANS, 2) + np.tile([-0.03, 0.03], 10)).pvalue
    assert not math.isclose(expected, per_scan, rel_tol=1e-3)  # the example tells the two tests apart
    results = load_results(runs)
    table = paper_table(results, n_resamples=20)
    assert table.frame.set_index("experiment").at["unetr", "dice_p_wilcoxon"] == pytest.approx(expected, rel=1e-12)
    ablation = ablation_table(results, n_resamples=20).frame.set_index("experiment")
    assert ablation.at["ablation/single-timepoint", "dice_p"] == pytest.approx(expected, rel=1e-12)
    assert any("Wilcoxon signed-rank test on per-patient mean Dice" in note for note in table.notes)


# --- 4. the report recomputes metrics.json and refuses an edited one ------------------------------------


@pytest.fixture()
def edited_runs(tmp_path) -> tuple[Path, float]:
    """A results folder whose mstnet fold 2 claims AUC 0.99; returns it and the AUC of its predictions."""
    runs = write_fake_runs(tmp_path / "runs", epochs=3)
    path = runs / "mstnet" / "fold2" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["classification"]["auc"] = 0.99
    path.write_text(json.dumps(metrics))
    predictions = pd.read_csv(runs / "mstnet" / "fold2" / "predictions.csv")
    return runs, roc_auc_score(predictions["label"], predictions["probability"])


def test_build_report_refuses_an_edited_fold_auc(edited_runs, tmp_path):
    runs, actual = edited_runs
    assert not math.isclose(actual, 0.99)
    message = re.escape(f"{runs / 'mstnet' / 'fold2' / 'metrics.json'}: classification.auc is 0.99 but "
                        f"predictions.csv gives {actual:.6g}")
    with pytest.raises(ResultsError, match=message):
        build_report([runs], tmp_path / "report", n_resamples=10)
    assert any("classification.auc is 0.99" in problem for problem in check_runs_dir(runs))


def test_cli_report_refuses_an_edited_fold_auc_in_one_line(edited_runs, tmp_path, capsys):
    runs, actual = edited_runs
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["report", str(runs), "--out", str(tmp_path / "report")])
    assert done.value.code == 1
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert f"mstnet/fold2/metrics.json: classification.auc is 0.99 but predictions.csv gives {actual:.6g}" in lines[0]
    assert not (tmp_path / "report" / "index.html").exists()


def test_edited_values_of_the_validation_block_and_of_segmentation_are_refused(tmp_path):
    runs = write_fake_runs(tmp_path / "runs", epochs=3)
    path = runs / "mstnet" / "fold1" / "metrics.json"
    original = path.read_text()
    metrics = json.loads(original)
    metrics["classification_at_validation_threshold"]["accuracy"] += 0.125
    path.write_text(json.dumps(metrics))
    load_results(runs)  # the fixed threshold's block is the one reported, and it is intact
    with pytest.raises(ResultsError, match=r"mstnet/fold1/metrics.json: classification_at_validation_threshold"
                                           r"\.accuracy is [\d.]+ but predictions.csv gives [\d.]+"):
        load_results(runs, threshold_rule="validation")
    metrics = json.loads(original)
    metrics["segmentation"]["dice"] = 0.95
    path.write_text(json.dumps(metrics))
    with pytest.raises(ResultsError, match=r"mstnet/fold1/metrics.json: segmentation\.dice is 0\.95 but the mean of "
                                           r"segmentation.csv's per-scan values is 0\.\d+"):
        load_results(runs)
