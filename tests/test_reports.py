"""Reports from a synthetic RUNS_DIR (tests/fake_runs.py): files, LaTeX structure, links, numbers, stars."""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mstnet.metrics import (bootstrap_ci, classification_metric_samples, classification_metrics, patient_draws,
                            percentile_interval)
from mstnet.reporting import build_report, check_runs_dir, load_many, load_results
from mstnet.reporting.results import ResultsError
from mstnet.reporting.ablation_table import ablation_table
from mstnet.reporting.formats import stars
from mstnet.reporting.paper_formats import results_table_csv, results_table_markdown
from mstnet.reporting.paper_table import paper_table
from mstnet.reporting.table_data import COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import DEFAULT_EXPERIMENTS, ORACLE, write_fake_runs  # noqa: E402

N_RESAMPLES = 60
PAPER_ROWS = [e for e in DEFAULT_EXPERIMENTS if e.table_row]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return write_fake_runs(tmp_path_factory.mktemp("runs") / "fake", with_study=True, with_benchmark=True)


@pytest.fixture(scope="module")
def report(runs_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "fake"
    build_report([runs_dir], out, n_resamples=N_RESAMPLES, seed=0)
    return out


def fold_values(runs_dir: Path, experiment: str, task: str, key: str) -> np.ndarray:
    """The metric of every fold, read straight from the metrics.json files."""
    folder = runs_dir / experiment.replace("/", "__")
    return np.array([json.loads((folder / f"fold{k}" / "metrics.json").read_text())[task][key] for k in range(5)])


def test_fake_runs_follow_the_contract(runs_dir):
    assert check_runs_dir(runs_dir) == []


def test_every_table_and_figure_file_is_written(report):
    for stem in ("paper_table", "reference_table", "ablation_table"):
        for extension in ("md", "csv", "tex", "html"):
            assert (report / f"{stem}.{extension}").stat().st_size > 0, f"{stem}.{extension}"
    for name in ("performance.md", "performance.csv", "experiments.csv", "index.html"):
        assert (report / name).is_file(), name
    figures = ["roc_curves", "calibration", "fold_dice_hd95", "ablation_differences", "training_curves",
               "gallery_mstnet", "gallery_unetr", "gallery_ablation__single-timepoint", "optuna_history_mstnet",
               "optuna_importances_mstnet"]
    for stem in figures:
        for extension in ("png", "pdf"):
            path = report / "figures" / f"{stem}.{extension}"
            assert path.stat().st_size > 1000, path
    assert (report / "figures" / "roc_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "figures" / "roc_curves.pdf").read_bytes()[:5] == b"%PDF-"


def _latex_tables(tex: str) -> list[tuple[str, list[str]]]:
    """(column spec, the lines between \\toprule and \\bottomrule that are not rules) of every ``table``;
    cells stacked on several lines are one-column nested tabulars inside their row."""
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") >= 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}")
    tables = []
    for block in tex.split(r"\begin{table}")[1:]:
        spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", block).group(1)
        body = block[block.index(r"\toprule"):block.index(r"\bottomrule")]
        assert r"\midrule" in body
        assert block.index(r"\toprule") < block.index(r"\midrule") < block.index(r"\bottomrule") < block.index(r"\end{table}")
        rows = [line for line in body.splitlines() if line.strip() and not line.strip().startswith(("\\toprule", "\\midrule"))]
        tables.append((spec, rows))
    return tables


@pytest.mark.parametrize("stem", ["paper_table", "reference_table", "ablation_table"])
def test_latex_tables_are_structurally_sound(report, stem):
    tex = (report / f"{stem}.tex").read_text()
    tables = _latex_tables(tex)
    for spec, rows in tables:
        for row in rows:
            assert len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
            assert row.rstrip().endswith(r"\\"), row
            assert row.count("{") == row.count("}"), row
    if stem == "paper_table":
        # one table per task (segmentation, then classification) that together hold every column
        assert len(tables) == 2 and sum(len(spec) - 1 for spec, _ in tables) == len(COLUMNS)
        for (spec, rows), task in zip(tables, ("segmentation", "classification")):
            assert rows[0].startswith("Method &")
            methods = [row.split("&")[0] for row in rows[1:]]
            for experiment in PAPER_ROWS:  # once in each table of a task it does
                assert sum(m.startswith(experiment.table_row) for m in methods) == (task in experiment.tasks), experiment
        body = tables[-1][1]
        assert "Oracle ceiling" in body[-1] and "93.00" in body[-1]
        assert r"\textbf{" in tex


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value and not value.startswith("#"):
                self.targets.append(value)


def test_index_links_only_files_that_exist(report):
    parser = _Links()
    parser.feed((report / "index.html").read_text())
    assert len(parser.targets) > 30
    for target in parser.targets:
        assert "://" not in target and not target.startswith("/"), target
        assert (report / target).is_file(), target
    linked = set(parser.targets)
    for png in (report / "figures").glob("*.png"):
        assert f"figures/{png.name}" in linked, png.name
    for table in ("paper_table.csv", "paper_table.tex", "ablation_table.csv", "performance.md"):
        assert table in linked


def test_table_numbers_equal_fold_means_of_metrics_json(report, runs_dir):
    frame = pd.read_csv(report / "paper_table.csv")
    measured = frame[frame["source"] == "measured"].set_index("experiment")
    assert sorted(measured.index) == sorted(e.name for e in PAPER_ROWS)
    for experiment in PAPER_ROWS:
        for column in COLUMNS:
            row = measured.loc[experiment.name]
            if column.task not in experiment.tasks:
                assert np.isnan(row[f"{column.key}_mean"])
                continue
            values = fold_values(runs_dir, experiment.name, column.task, column.key)
            assert row[f"{column.key}_mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert row[f"{column.key}_std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
            assert row[f"{column.key}_ci_low"] <= row[f"{column.key}_ci_high"]
    # the rendered cell shows the same number in percent
    markdown = (report / "paper_table.md").read_text()
    dice = fold_values(runs_dir, "unetr", "segmentation", "dice")
    assert f"{100 * dice.mean():.2f} ± {100 * dice.std(ddof=1):.2f}" in markdown
    hd95 = fold_values(runs_dir, "mstnet", "segmentation", "hd95")
    scans = pd.concat(pd.read_csv(runs_dir / "mstnet" / f"fold{k}" / "segmentation.csv") for k in range(5))
    row = measured.loc["mstnet"]
    assert row["hd95_pooled"] == pytest.approx(scans["hd95"].mean())
    # the pooled value is the primary number (bold: best, lowest HD95), its CI, then the fold mean ± std
    assert (f"**{scans['hd95'].mean():.2f}** [{row['hd95_ci_low']:.1f}, {row['hd95_ci_high']:.1f}]; "
            f"{hd95.mean():.2f} ± {hd95.std(ddof=1):.2f}") in markdown


def test_segmentation_ci_resamples_patients(report, runs_dir):
    scans = pd.concat(pd.read_csv(runs_dir / "mstnet" / f"fold{k}" / "segmentation.csv") for k in range(5))
    sums = scans.groupby("patient_id", sort=False)["dice"].agg(["sum", "count"])
    draws = np.random.default_rng(0).integers(0, len(sums), size=(N_RESAMPLES, len(sums)))
    means = sums["sum"].to_numpy()[draws].sum(axis=1) / sums["count"].to_numpy()[draws].sum(axis=1)
    row = pd.read_csv(report / "paper_table.csv").set_index("experiment").loc["mstnet"]
    assert (row["dice_ci_low"], row["dice_ci_high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))


def test_paired_p_values_and_stars(report, runs_dir):
    frame = pd.read_csv(report / "paper_table.csv").set_index("experiment")
    reference = pd.concat(pd.read_csv(runs_dir / "mstnet" / f"fold{k}" / "segmentation.csv") for k in range(5))
    other = pd.concat(pd.read_csv(runs_dir / "unetr" / f"fold{k}" / "segmentation.csv") for k in range(5))
    paired = reference.merge(other, on=["patient_id", "timepoint"], suffixes=("_ref", "_other"))
    per_patient = paired.groupby("patient_id")[["dice_ref", "dice_other"]].mean()  # one pair per patient
    expected = stats.wilcoxon(per_patient["dice_ref"], per_patient["dice_other"]).pvalue
    assert frame.at["unetr", "dice_p_wilcoxon"] == pytest.approx(expected, rel=1e-9)
    assert np.isnan(frame.at["mstnet", "dice_p_wilcoxon"]) and np.isnan(frame.at["mstnet", "auc_p_delong"])
    assert 0.0 <= frame.at["naslung", "auc_p_delong"] <= 1.0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in (report / "paper_table.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    keys = [c.key for c in COLUMNS]
    for experiment, method in (("unetr", "UNETR [b]"), ("naslung", "NASLung [a]")):
        for key, test in (("dice", "dice_p_wilcoxon"), ("auc", "auc_p_delong")):
            cell = rows[method][keys.index(key)]
            p_value = frame.at[experiment, test]
            assert cell.count("\\*") == len(stars(p_value)), (experiment, key, cell, p_value)
    tex = (report / "paper_table.tex").read_text()
    unetr_line = next(line for line in tex.splitlines() if line.startswith("UNETR"))
    assert unetr_line.count(f"$^{{{stars(frame.at['unetr', 'dice_p_wilcoxon'])}}}$") == (
        1 if stars(frame.at["unetr", "dice_p_wilcoxon"]) else 0)


def test_stars_thresholds():
    assert [stars(p) for p in (0.0009, 0.001, 0.0099, 0.01, 0.049, 0.05, 0.5, float("nan"))] == [
        "***", "**", "**", "*", "*", "", "", ""]


def test_with_published_adds_the_published_rows(runs_dir):
    results = load_results(runs_dir)
    table = paper_table(results, n_resamples=10, with_published=True)
    markdown = results_table_markdown(table)
    for row in ("NASLung", "SCAN", "DeepCAD", "UNETR", "MLTN", "ACSNet", "MST-Net"):
        assert f"*{row}, published (NLST)*" in markdown
    assert "| *MST-Net, published (NLST)* | 78.66 | 71.93 | 33.60 | 5.27 | 75.00 | 78.02 | - | - | 72.12 | - |" in markdown
    csv = pd.read_csv(pd.io.common.StringIO(results_table_csv(table)))
    published = csv[csv["source"] == "published (NLST)"].set_index("method")
    assert len(published) == 7
    assert published.at["NASLung", "accuracy_mean"] == pytest.approx(0.7192)
    assert published.at["UNETR", "hd95_mean"] == pytest.approx(37.62)
    assert "published (NLST)" not in results_table_markdown(paper_table(results, n_resamples=10))


@pytest.mark.parametrize("average", ["binary", "weighted"])
def test_vectorised_bootstrap_equals_classification_metrics(average):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 30)
    probabilities = np.round(rng.random(30), 2)  # ties on purpose
    draws = patient_draws(30, 25, seed=7)
    samples = classification_metric_samples(labels, probabilities, draws, threshold=0.4, average=average)
    for r, drawn in enumerate(draws):
        expected = classification_metrics(labels[drawn], probabilities[drawn], threshold=0.4, average=average)
        for key, value in expected.items():
            np.testing.assert_allclose(samples[key][r], value, rtol=1e-12, atol=1e-12, err_msg=f"{key} resample {r}")
    interval = percentile_interval(samples["auc"])
    assert interval == pytest.approx(bootstrap_ci(labels, probabilities, roc_auc_score, n_resamples=25, seed=7))


def test_vectorised_bootstrap_with_one_threshold_per_patient_equals_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    probabilities = rng.random(40)
    thresholds = np.where(np.arange(40) < 20, 0.3, 0.7)  # two folds, two thresholds
    draws = patient_draws(40, 20, seed=2)
    samples = classification_metric_samples(labels, probabilities, draws, threshold=thresholds)
    for r, drawn in enumerate(draws):
        predicted = probabilities[drawn] >= thresholds[drawn]
        truth = labels[drawn]
        assert samples["accuracy"][r] == pytest.approx(accuracy_score(truth, predicted))
        assert samples["precision"][r] == pytest.approx(precision_score(truth, predicted, zero_division=np.nan), nan_ok=True)
        assert samples["recall"][r] == pytest.approx(recall_score(truth, predicted, zero_division=np.nan), nan_ok=True)
        assert samples["f1"][r] == pytest.approx(f1_score(truth, predicted, zero_division=np.nan), nan_ok=True)


def test_validation_threshold_rule_reports_each_folds_own_threshold(runs_dir):
    results = load_results(runs_dir, threshold_rule="validation")
    table = paper_table(results, n_resamples=20)
    row = table.frame.set_index("experiment").loc["mstnet"]
    accuracies = []
    for k in range(5):
        predictions = pd.read_csv(runs_dir / "mstnet" / f"fold{k}" / "predictions.csv")
        threshold = 0.3 + 0.05 * k
        accuracies.append(((predictions["probability"] >= threshold) == (predictions["label"] == 1)).mean())
    assert row["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert row["auc_mean"] == pytest.approx(paper_table(load_results(runs_dir), n_resamples=20)
                                            .frame.set_index("experiment").at["mstnet", "auc_mean"])
    assert any("inner validation split (Youden's J; 0.30 to 0.50)" in note for note in table.notes)


def test_unknown_threshold_rule_is_refused(runs_dir):
    with pytest.raises(ValueError, match="threshold_rule: expected one of .*'fixed', 'validation'.*got 'youden'"):
        load_results(runs_dir, threshold_rule="youden")
    from typer.testing import CliRunner

    from mstnet.cli import build_app

    result = CliRunner().invoke(build_app(), ["report", str(runs_dir), "--threshold", "youden"])
    assert result.exit_code != 0 and "--threshold takes one of fixed, validation; got 'youden'" in result.output


def test_validation_threshold_rule_needs_the_recorded_block(tmp_path):
    runs = write_fake_runs(tmp_path / "runs", n_patients=10, epochs=3)
    metrics_path = runs / "mstnet" / "fold1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    del metrics["classification_at_validation_threshold"]
    metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(ResultsError, match=r"mstnet/fold1/metrics.json: no 'classification_at_validation_threshold'"):
        load_results(runs, threshold_rule="validation")


def test_ablation_differences_are_paired_and_carry_the_oracle(runs_dir):
    results = load_results(runs_dir)
    table = ablation_table(results, n_resamples=N_RESAMPLES)
    row = table.frame.set_index("experiment").loc["ablation/single-timepoint"]
    read = lambda name: pd.concat(pd.read_csv(runs_dir / name / f"fold{k}" / "predictions.csv") for k in range(5))  # noqa: E731
    paired = read("mstnet").merge(read("ablation__single-timepoint"), on=["patient_id", "label"], suffixes=("_r", "_v"))
    expected = roc_auc_score(paired["label"], paired["probability_v"]) - roc_auc_score(paired["label"], paired["probability_r"])
    assert row["auc_diff"] == pytest.approx(expected)
    assert row["auc_ci_low"] <= row["auc_diff"] <= row["auc_ci_high"]
    accuracy = ((paired["probability_v"] >= 0.5) == paired["label"]).mean() - ((paired["probability_r"] >= 0.5) == paired["label"]).mean()
    assert row["accuracy_diff"] == pytest.approx(accuracy)
    assert row["oracle_auc"] == ORACLE["scans1+clinical"]
    assert 0.0 <= row["dice_p"] <= 1.0 and row["n_scans"] == 80


def test_merging_refuses_the_same_fold_in_two_folders(runs_dir):
    with pytest.raises(ResultsError, match=r"experiment '.+' is in two results folders with fold\(s\) \[0, 1, 2, 3, 4\]"):
        load_many([runs_dir, runs_dir])


def test_merging_joins_folds_run_in_separate_folders(runs_dir, tmp_path):
    first, second = tmp_path / "machine_a", tmp_path / "machine_b"
    shutil.copytree(runs_dir, first)
    shutil.copytree(runs_dir, second)
    for fold in (3, 4):
        shutil.rmtree(first / "mstnet" / f"fold{fold}")
    for fold in (0, 1, 2):
        shutil.rmtree(second / "mstnet" / f"fold{fold}")
    for folder in second.iterdir():
        if folder.is_dir() and folder.name != "mstnet":
            shutil.rmtree(folder)
    merged, whole = load_many([first, second]), load_results(runs_dir)
    key = ["experiment", "fold"]
    pd.testing.assert_frame_equal(merged.fold_metrics.sort_values(key).reset_index(drop=True),
                                  whole.fold_metrics.sort_values(key).reset_index(drop=True))
    assert sorted(merged.experiments.index) == sorted(whole.experiments.index)
    assert len(merged.predictions) == len(whole.predictions)


def test_merging_refuses_an_experiment_on_other_folds(runs_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs_dir, other)
    cohort = json.loads((other / "cohort.json").read_text())
    (other / "cohort.json").write_text(json.dumps({**cohort, "splits_hash": "0" * 64}))
    with pytest.raises(ResultsError, match="with different folds"):
        load_many([runs_dir, other])


def test_broken_file_error_names_the_file_and_column(tmp_path):
    runs = write_fake_runs(tmp_path / "runs", n_patients=10, epochs=3)
    broken = runs / "naslung" / "fold2" / "predictions.csv"
    broken.write_text(pd.read_csv(broken).drop(columns="probability").to_csv(index=False))
    with pytest.raises(ResultsError, match=r"naslung/fold2/predictions.csv: missing column\(s\) \['probability'\]"):
        load_results(runs)


def test_screenshot_script_says_how_to_install_chromium(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    import screenshot_report

    monkeypatch.setenv("PATH", "")
    with pytest.raises(screenshot_report.ScreenshotError, match="apt-get install chromium"):
        screenshot_report.find_browser()


def test_report_command_is_registered():
    from typer.testing import CliRunner

    from mstnet.cli import build_app

    result = CliRunner().invoke(build_app(), ["report", "--help"])
    assert result.exit_code == 0
    assert "--with-published" in result.output and "--reference" in result.output


def test_every_classification_row_shows_the_ceiling_of_its_own_inputs(report):
    frame = pd.read_csv(report / "paper_table.csv")
    measured = frame[frame["source"] == "measured"].set_index("experiment")
    markdown = (report / "paper_table.md").read_text()
    for experiment in PAPER_ROWS:
        row = measured.loc[experiment.name]
        if "classification" in experiment.tasks:
            assert row["information"] == experiment.information
            assert row["ceiling_auc"] == pytest.approx(ORACLE[experiment.information])
            line = next(line for line in markdown.splitlines() if line.startswith(f"| {row['method']} "))
            assert f"ceiling {100 * ORACLE[experiment.information]:.1f}" in line
        else:
            assert np.isnan(row["ceiling_auc"])
