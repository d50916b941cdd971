"""Repeated training seeds (``--seeds N``): the layout, the command line and the report's aggregation.

The aggregation tests write small result folders by hand (as ``tests/fake_runs.py`` does) with
several seeds per experiment and compare the table with numbers computed here directly from the
per-seed files: each seed's pooled value with scikit-learn / numpy, their mean and sample std,
the bootstrap of that mean, and the paired tests on each patient's mean over seeds. One tiny
real run checks the folders, the recipe seeds and that a rerun skips every seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from harness_cohort import write_growth_cohort
from mstnet.cli import main
from mstnet.errors import UsageError
from mstnet.experiments.registry import get_experiment
from mstnet.metrics import bootstrap_mean_ci, classification_metrics, delong_test
from mstnet.reporting.results import load_results
from mstnet.reporting.paper_formats import results_table_csv, results_table_markdown
from mstnet.reporting.paper_table import paper_table

PATIENTS = [f"P{i:02d}" for i in range(12)]
LABELS = np.array([0, 1] * 6)
FOLDS = {0: PATIENTS[:6], 1: PATIENTS[6:]}
TIMEPOINTS = ("T0", "T1")
RESAMPLES = 200


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _write_fold(fold_dir: Path, fold: int, probability: np.ndarray | None, dice: np.ndarray | None) -> None:
    """One complete fold folder: predictions.csv and/or segmentation.csv, metrics.json computed from them, run.json."""
    test = FOLDS[fold]
    labels = LABELS[[PATIENTS.index(p) for p in test]]
    metrics: dict = {"segmentation": None, "classification": None, "convention": "monai", "average": "binary",
                     "threshold": 0.5}
    fold_dir.mkdir(parents=True, exist_ok=True)
    if probability is not None:
        pd.DataFrame({"patient_id": test, "fold": fold, "label": labels, "probability": probability}).to_csv(
            fold_dir / "predictions.csv", index=False)
        metrics["classification"] = classification_metrics(labels, probability)
    if dice is not None:
        scans = pd.DataFrame([{"patient_id": p, "timepoint": t, "fold": fold} for p in test for t in TIMEPOINTS])
        scans["dice"] = dice
        scans["jaccard"] = dice / (2.0 - dice)
        scans["hd95"] = 2.0 + 30.0 * (1.0 - dice)
        scans["asd"] = scans["hd95"] / 4.0
        scans.to_csv(fold_dir / "segmentation.csv", index=False)
        metrics["segmentation"] = {k: float(scans[k].mean()) for k in ("dice", "jaccard", "hd95", "asd")}
        np.savez_compressed(fold_dir / "gallery.npz", dice=np.zeros(1))
    _write_json(fold_dir / "metrics.json", metrics)
    _write_json(fold_dir / "run.json", {"status": "complete", "fold": fold, "splits_hash": "h", "wall_s": 1.0})


def _write_runs(runs_dir: Path, seeds: dict[str, int], rng: np.random.Generator) -> dict:
    """A RUNS_DIR with MST-Net (both tasks), NASLung (classification) and UNETR (segmentation), each with
    ``seeds[name]`` training seeds; returns every value written: ``{name: {"probability": (S, 12), "dice": (S, 24)}}``."""
    _write_json(runs_dir / "cohort.json", {"name": "hand", "patients": len(PATIENTS), "splits_hash": "h"})
    _write_json(runs_dir / "splits.json", {"seed": 0, "n_folds": 2, "hash": "h", "folds": [
        {"fold": k, "train": [p for p in PATIENTS if p not in test], "validation": [], "test": test}
        for k, test in FOLDS.items()]})
    tasks = {"mstnet": ("segmentation", "classification"), "naslung": ("classification",), "unetr": ("segmentation",)}
    rows = {"mstnet": "MST-Net", "naslung": "NASLung", "unetr": "UNETR"}
    written = {}
    for name, task in tasks.items():
        folder = runs_dir / name
        _write_json(folder / "experiment.json", {"name": name, "description": name, "tasks": list(task),
                                                 "group": "paper-table", "table_row": rows[name]})
        n = seeds[name]
        probability = np.clip(0.5 + 0.3 * (LABELS - 0.5) + rng.normal(0, 0.25, (n, len(PATIENTS))), 0.01, 0.99) \
            if "classification" in task else None
        dice = rng.uniform(0.4, 0.95, (n, len(PATIENTS) * len(TIMEPOINTS))) if "segmentation" in task else None
        for seed in range(n):
            for fold, test in FOLDS.items():
                patients = [PATIENTS.index(p) for p in test]
                scans = [i * len(TIMEPOINTS) + t for i in patients for t in range(len(TIMEPOINTS))]
                _write_fold((folder / f"seed{seed}" if seed else folder) / f"fold{fold}", fold,
                            None if probability is None else probability[seed, patients],
                            None if dice is None else dice[seed, scans])
        written[name] = {"probability": probability, "dice": dice}
    return written


def _hand_bootstrap_auc(probabilities: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the mean over seeds of the pooled AUC, patients resampled as the report draws
    them (``default_rng(0).integers(0, N, (R, N))``), every seed scored on the same resample."""
    draws = np.random.default_rng(0).integers(0, len(PATIENTS), size=(RESAMPLES, len(PATIENTS)))
    values = []
    for draw in draws:
        labels = LABELS[draw]
        if labels.min() == labels.max():
            continue
        values.append(np.mean([roc_auc_score(labels, p[draw]) for p in probabilities]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def test_seed_aggregation_equals_a_hand_computation(tmp_path):
    written = _write_runs(tmp_path / "runs", {"mstnet": 3, "naslung": 2, "unetr": 1}, np.random.default_rng(7))
    results = load_results(tmp_path / "runs")
    table = paper_table(results, n_resamples=RESAMPLES, seed=0)
    frame = table.frame.set_index("experiment")

    mstnet = written["mstnet"]
    aucs = np.array([roc_auc_score(LABELS, p) for p in mstnet["probability"]])
    accuracies = np.array([np.mean((p >= 0.5) == LABELS) for p in mstnet["probability"]])
    dice_per_seed = mstnet["dice"].mean(axis=1)
    assert frame.at["mstnet", "n_seeds"] == 3
    assert frame.at["mstnet", "auc_pooled"] == pytest.approx(aucs.mean(), abs=1e-12)
    assert frame.at["mstnet", "auc_seed_sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
    assert frame.at["mstnet", "accuracy_pooled"] == pytest.approx(accuracies.mean(), abs=1e-12)
    assert frame.at["mstnet", "dice_pooled"] == pytest.approx(dice_per_seed.mean(), abs=1e-12)
    assert frame.at["mstnet", "dice_seed_sd"] == pytest.approx(np.std(dice_per_seed, ddof=1), abs=1e-12)
    assert (frame.at["mstnet", "auc_ci_low"], frame.at["mstnet", "auc_ci_high"]) == pytest.approx(
        _hand_bootstrap_auc(mstnet["probability"]), abs=1e-12)
    # Dice: the bootstrap of the mean over seeds is the bootstrap of each scan's mean over seeds.
    scan_means = mstnet["dice"].mean(axis=0)
    scan_patients = np.repeat(PATIENTS, len(TIMEPOINTS))
    assert (frame.at["mstnet", "dice_ci_low"], frame.at["mstnet", "dice_ci_high"]) == pytest.approx(
        bootstrap_mean_ci(scan_means, groups=scan_patients, n_resamples=RESAMPLES, seed=0), abs=1e-12)
    # The fold mean ± std is over the folds' values averaged over seeds.
    fold_dice = np.array([[mstnet["dice"][s, k * 12:(k + 1) * 12].mean() for k in FOLDS] for s in range(3)]).mean(axis=0)
    assert frame.at["mstnet", "dice_mean"] == pytest.approx(fold_dice.mean(), abs=1e-12)
    assert frame.at["mstnet", "dice_std"] == pytest.approx(np.std(fold_dice, ddof=1), abs=1e-12)

    # The results frames hold each patient's and each scan's mean over seeds.
    predictions = results.predictions[results.predictions["experiment"] == "mstnet"].set_index("patient_id")
    assert predictions.loc[PATIENTS, "probability"].to_numpy() == pytest.approx(mstnet["probability"].mean(axis=0),
                                                                                abs=1e-12)

    # Paired tests: DeLong on each patient's mean probability, Wilcoxon on each patient's mean Dice.
    naslung = written["naslung"]["probability"]
    assert frame.at["naslung", "auc_p_delong"] == pytest.approx(delong_test(
        LABELS, mstnet["probability"].mean(axis=0), naslung.mean(axis=0))["p_value"], abs=1e-12)
    assert frame.at["naslung", "auc_pooled"] == pytest.approx(np.mean([roc_auc_score(LABELS, p) for p in naslung]),
                                                              abs=1e-12)
    per_patient = lambda values: values.reshape(len(PATIENTS), len(TIMEPOINTS)).mean(axis=1)  # noqa: E731
    expected = stats.wilcoxon(per_patient(scan_means), per_patient(written["unetr"]["dice"][0])).pvalue
    assert frame.at["unetr", "dice_p_wilcoxon"] == pytest.approx(expected, abs=1e-12)
    assert frame.at["unetr", "n_seeds"] == 1 and np.isnan(frame.at["unetr", "dice_seed_sd"])

    # What the renderings show: the spread and its note; the CSV's seed columns.
    markdown = results_table_markdown(table)
    assert f"± {100 * np.std(aucs, ddof=1):.2f} sd over 3 seeds" in markdown
    assert "sample standard deviation (ddof=1) between the seeds' pooled values" in markdown
    csv = pd.read_csv(pd.io.common.StringIO(results_table_csv(table)))
    measured = csv[csv["source"] == "measured"].set_index("experiment")
    assert measured.at["mstnet", "n_seeds"] == 3 and measured.at["naslung", "n_seeds"] == 2
    assert measured.at["mstnet", "auc_seed_sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)


def test_one_seed_keeps_the_columns_and_cells_of_a_run_without_seeds(tmp_path):
    _write_runs(tmp_path / "runs", {"mstnet": 1, "naslung": 1, "unetr": 1}, np.random.default_rng(3))
    table = paper_table(load_results(tmp_path / "runs"), n_resamples=RESAMPLES)
    header = results_table_csv(table).splitlines()[0].split(",")
    assert "n_seeds" not in header and not any(name.endswith("_seed_sd") for name in header)
    markdown = results_table_markdown(table)
    assert "seeds" not in markdown


def test_a_seed_missing_a_fold_is_left_out_with_a_warning(tmp_path, caplog):
    runs = tmp_path / "runs"
    written = _write_runs(runs, {"mstnet": 3, "naslung": 1, "unetr": 1}, np.random.default_rng(5))
    # seed 3 of MST-Net finished fold 0 only (its fold 1 was interrupted)
    _write_fold(runs / "mstnet" / "seed3" / "fold0", 0, np.full(6, 0.5), np.full(12, 0.5))
    with caplog.at_level(logging.WARNING):
        results = load_results(runs)
    assert results.seeds("mstnet") == [0, 1, 2]
    assert any("mstnet seed 3: lacks fold(s) [1]" in record.getMessage() for record in caplog.records)
    row = paper_table(results, n_resamples=RESAMPLES).frame.set_index("experiment").loc["mstnet"]
    assert row["auc_pooled"] == pytest.approx(np.mean([roc_auc_score(LABELS, p) for p in written["mstnet"]["probability"]]))


def test_seeds_on_two_machines_merge_and_the_same_seed_twice_is_refused(tmp_path):
    from mstnet.reporting.results import ResultsError
    from mstnet.reporting.results_merge import load_many

    rng = np.random.default_rng(11)
    _write_runs(tmp_path / "a", {"mstnet": 1, "naslung": 1, "unetr": 1}, rng)
    _write_runs(tmp_path / "b", {"mstnet": 2, "naslung": 1, "unetr": 1}, rng)
    with pytest.raises(ResultsError, match=r"fold\(s\) \[0, 1\] in both"):
        load_many([tmp_path / "a", tmp_path / "b"])
    for name in ("fold0", "fold1"):  # machine b keeps only its seed 1 of MST-Net
        for path in sorted((tmp_path / "b" / "mstnet" / name).iterdir()):
            path.unlink()
        (tmp_path / "b" / "mstnet" / name).rmdir()
    for name in ("naslung", "unetr"):
        for path in sorted((tmp_path / "b" / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (tmp_path / "b" / name).rmdir()
    merged = load_many([tmp_path / "a", tmp_path / "b"])
    assert merged.seeds("mstnet") == [0, 1] and merged.seeds("naslung") == [0]


# ----------------------------------------------------------------------------------------- layout and options


def test_seed_folders_and_recipe_seeds(tmp_path):
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.runner import RunOptions, fold_dir_of, resolve_recipe, training_seeds

    import torch

    assert fold_dir_of(tmp_path, "ablation/no-stdm", 2) == tmp_path / "ablation__no-stdm" / "fold2"
    assert fold_dir_of(tmp_path, "ablation/no-stdm", 2, 3) == tmp_path / "ablation__no-stdm" / "seed3" / "fold2"
    spec = get_experiment("monai-basicunet")
    options = RunOptions(preset=run_preset("tiny"), device=torch.device("cpu"))
    assert [resolve_recipe(spec, options.for_seed(s)).seed for s in range(3)] == [0, 1, 2]
    based = RunOptions(preset=run_preset("tiny"), device=torch.device("cpu"), params={"seed": 5})
    assert [resolve_recipe(spec, based.for_seed(s)).seed for s in range(3)] == [5, 6, 7]
    assert list(training_seeds(spec, 3)) == [0, 1, 2]
    assert list(training_seeds(get_experiment("logreg-clinical"), 3)) == [0]  # fitted, no training seed
    with pytest.raises(UsageError, match="--seeds"):
        training_seeds(spec, 0)


@pytest.mark.parametrize("command", [("run", "mstnet"), ("reproduce", "paper-table"), ("ablate", "no-stdm")])
def test_seeds_below_one_is_a_usage_error_in_one_line(capsys, tmp_path, command):
    out = tmp_path / "runs"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*command, "--seeds", "0", "--preset", "tiny", "--out", str(out)])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert done.value.code == 2 and len(lines) == 1 and "--seeds" in lines[0], stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------- a real run


def test_two_seeds_train_in_their_own_folders_and_a_rerun_skips_both(capsys, tmp_path):
    from mstnet.experiments.launcher import pending_folds
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.reproduce import prepare_runs

    cohort = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    out = tmp_path / "runs"
    command = ["run", "monai-basicunet", "--preset", "tiny", "--folds", "0", "--epochs", "1", "--data", str(cohort),
               "--out", str(out)]

    def cli(*extra: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main([*command, *extra])
        return done.value.code, capsys.readouterr().err

    assert cli("--seeds", "2")[0] == 0
    first, second = out / "monai-basicunet" / "fold0", out / "monai-basicunet" / "seed1" / "fold0"
    configs = [json.loads((folder / "config.json").read_text()) for folder in (first, second)]
    assert [c["recipe"]["seed"] for c in configs] == [0, 1]
    assert configs[0]["identity"] != configs[1]["identity"]
    assert all(json.loads((f / "run.json").read_text())["status"] == "complete" for f in (first, second))
    assert (first / "segmentation.csv").exists() and (second / "segmentation.csv").exists()

    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert cli("--seeds", "2")[0] == 0  # both seeds finished with the same configuration: skipped
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts} == files
    prepared = prepare_runs(out, run_preset("tiny"), data=cohort, write=False)
    spec = get_experiment("monai-basicunet")
    assert pending_folds(prepared, [spec], [0], seeds=2) == []
    assert pending_folds(prepared, [spec], [0], seeds=3) == [("monai-basicunet", 0, 2)]

    code, stderr = cli("--seeds", "2", "--set", "seed=5")  # another base seed: both folders hold another one
    assert code == 2 and "holds another configuration" in stderr and "recipe.seed: 0 -> 5" in stderr, stderr
    assert load_results(out).seeds("monai-basicunet") == [0, 1]
