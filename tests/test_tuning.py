"""Optuna tuning: storages, pruners, step layout, two worker processes on one journal study, a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from mstnet.experiments.registry import ModelContext, Recipe, get_experiment, list_experiments
from mstnet.experiments.tuning import (
    PruningReporter,
    default_search_space,
    describe_storage,
    final_stage_score,
    load_best_params,
    make_pruner,
    make_storage,
    open_study,
    tune,
)
from tests.harness_cohort import write_growth_cohort

WORKERS = 2
TRIALS_PER_WORKER = 6
STEPS = 5
BAD_REGION = 0.7
GOOD_PARAMS = (0.1, 0.2, 0.3, 0.4)
BAD_PARAMS = (0.9, 0.95)

WORKER_SCRIPT = textwrap.dedent(f"""
    import sys, time
    from types import SimpleNamespace
    import optuna
    from mstnet.experiments.tuning import PruningReporter, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, study_name, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    study = open_study(study_name, storage, pruner="median", seed=worker, n_startup_trials=2, n_warmup_steps=0)

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("worker", worker)
        reporter = PruningReporter(trial, step_offset=0, stage_offsets={{"joint": 0}})
        for epoch in range({STEPS}):
            time.sleep(0.02)
            reporter(SimpleNamespace(stage="joint", epoch=epoch, val_score=synthetic_score(x, epoch)))
        return synthetic_score(x, {STEPS} - 1)

    def synthetic_score(x, epoch):
        return -1.0 - epoch if x > {BAD_REGION} else 1.0 - 1.0 / (epoch + 2)

    study.optimize(objective, n_trials={TRIALS_PER_WORKER})
""")


def synthetic_score(x: float, epoch: int) -> float:
    """Good region: the same rising curve for every x (never below any median); bad region: falling, negative."""
    return -1.0 - epoch if x > BAD_REGION else 1.0 - 1.0 / (epoch + 2)


def test_two_workers_share_one_journal_study_with_exact_trial_count_and_prune_the_bad_region(tmp_path):
    storage = f"journal:{tmp_path / 'study.log'}"
    study = open_study("synthetic", storage, pruner="median", n_startup_trials=2, n_warmup_steps=0)
    for x in GOOD_PARAMS + BAD_PARAMS:
        study.enqueue_trial({"x": x})
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    workers = [subprocess.Popen([sys.executable, str(script), storage, "synthetic", str(w)], cwd=Path(__file__).parents[1],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in range(WORKERS)]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output

    trials = optuna.load_study(study_name="synthetic", storage=make_storage(storage)).trials
    assert len(trials) == WORKERS * TRIALS_PER_WORKER
    assert sorted(t.number for t in trials) == list(range(WORKERS * TRIALS_PER_WORKER))
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    per_worker = pd.Series([t.user_attrs["worker"] for t in trials]).value_counts()
    assert per_worker.to_dict() == {w: TRIALS_PER_WORKER for w in range(WORKERS)}
    by_number = {t.number: t for t in trials}
    assert [by_number[n].params["x"] for n in range(len(GOOD_PARAMS + BAD_PARAMS))] == list(GOOD_PARAMS + BAD_PARAMS)
    for number in range(len(GOOD_PARAMS), len(GOOD_PARAMS) + len(BAD_PARAMS)):
        assert by_number[number].state == optuna.trial.TrialState.PRUNED
        assert by_number[number].intermediate_values == {0: synthetic_score(by_number[number].params["x"], 0)}
    for trial in trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.params["x"] > BAD_REGION
        else:
            assert trial.value == synthetic_score(trial.params["x"], STEPS - 1)
            assert trial.intermediate_values == {e: synthetic_score(trial.params["x"], e) for e in range(STEPS)}


class RecordingTrial:
    """Stands in for an optuna.Trial: records reports; asks to prune once ``prune_at`` is reported."""

    def __init__(self, prune_at: int | None = None):
        self.reports: list[tuple[int, float]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune_at is not None and bool(self.reports) and self.reports[-1][0] == self.prune_at


def test_reporter_lays_out_steps_by_fold_and_stage_and_raises_when_pruned():
    trial = RecordingTrial(prune_at=16)
    reporter = PruningReporter(trial, step_offset=10, stage_offsets={"segmentation": 0, "classification": 4})
    reporter(SimpleNamespace(stage="segmentation", epoch=1, val_score=-0.9))
    reporter(SimpleNamespace(stage="classification", epoch=0, val_score=-0.7))
    reporter(SimpleNamespace(stage="classification", epoch=1, val_score=float("nan")))
    assert trial.reports == [(11, -0.9), (14, -0.7)]
    with pytest.raises(optuna.TrialPruned, match="step 16"):
        reporter(SimpleNamespace(stage="classification", epoch=2, val_score=-0.6))


def test_final_stage_score_is_the_best_of_the_last_stage_only():
    history = pd.DataFrame({"stage": ["segmentation"] * 3 + ["classification"] * 3,
                            "val_score": [-0.2, -0.1, -0.3, -0.8, -0.6, -0.7]})
    assert final_stage_score(history) == -0.6


def test_storage_forms(tmp_path):
    journal = make_storage(f"journal:{tmp_path / 'sub' / 'j.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "sub").is_dir()
    assert make_storage(f"sqlite:///{tmp_path / 'db' / 's.db'}") == f"sqlite:///{tmp_path / 'db' / 's.db'}"
    assert (tmp_path / "db").is_dir()
    with pytest.raises(ValueError, match="neither an Optuna URL"):
        make_storage(str(tmp_path / "study.db"))
    with pytest.raises(FileNotFoundError, match="missing.db"):
        load_best_params("any", f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    assert describe_storage("postgresql://tuner:secret@db.example:5432/optuna") == "postgresql://tuner:***@db.example:5432/optuna"
    assert "secret" not in describe_storage("postgresql://tuner:secret@db.example/optuna")


def test_pruner_choices():
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband", max_resource=12), optuna.pruners.HyperbandPruner)
    with pytest.raises(ValueError, match="hyperband"):
        make_pruner("percentile")


SEARCH_SPACE_EXPERIMENTS = ["mstnet", *[spec.name for spec in list_experiments(group="ablation")]]


@pytest.mark.parametrize("name", SEARCH_SPACE_EXPERIMENTS)
def test_search_space_overrides_build_the_model(name):
    """Every suggestion is a Recipe field or a field the experiment's builder accepts."""
    spec = get_experiment(name)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    overrides = (spec.search_space or default_search_space)(study.ask())
    model_params = {key: value for key, value in overrides.items() if key not in Recipe.__dataclass_fields__}
    view = spec.data_view
    spec.build(ModelContext(image_size=(8, 32, 32), num_timepoints=view.timepoints, clinical_cardinalities=(3, 4),
                            num_numeric=1, use_clinical=view.use_clinical, preset="tiny", params=model_params))


def test_tune_runs_trials_on_inner_validation_only_and_writes_best_params(tmp_path):
    cohort = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    runs = tmp_path / "runs"
    storage = f"journal:{tmp_path / 'journal.log'}"
    study = tune("clinical-only", n_trials=2, storage=storage, study_name="smoke", preset="tiny", runs_dir=runs,
                 data=cohort, device="cpu", epochs=2, seed=0)
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    tuning = runs / "clinical-only" / "tuning" / "smoke"
    for trial in study.trials:
        fold_dir = tuning / f"trial{trial.number}" / "clinical-only" / "fold0"
        history = pd.read_csv(fold_dir / "history.csv")
        assert trial.value == pytest.approx(history["val_score"].max())
        assert trial.intermediate_values == pytest.approx(dict(enumerate(history["val_score"])))
        assert not any(fold_dir.glob("*.pt"))
        for test_output in ("metrics.json", "predictions.csv", "run.json"):
            assert not (fold_dir / test_output).exists()
    record = json.loads((tuning / "best_params.json").read_text())
    assert record["best_trial"] == study.best_trial.number and record["best_value"] == pytest.approx(study.best_value)
    assert record["params"] == study.best_trial.params == load_best_params("smoke", storage)
    assert set(record["params"]) == {"learning_rate", "weight_decay"}
    assert record["trials"] == {"complete": 2}

    default = tune("clinical-only", n_trials=1, preset="tiny", runs_dir=runs, data=cohort, device="cpu", epochs=1, seed=0)
    assert default.study_name == "clinical-only-tiny-fold0" and len(default.trials) == 1
    assert (runs / "clinical-only" / "tuning" / "study.db").exists()
    assert (runs / "clinical-only" / "tuning" / "clinical-only-tiny-fold0" / "trial0" / "clinical-only" / "fold0"
            / "history.csv").exists()
    assert json.loads((tuning / "best_params.json").read_text()) == record


def _shuffle_test_labels(cohort_dir: Path, test_ids: list[str], seed: int) -> None:
    """Permute the labels of ``test_ids`` among themselves (manifest rows of every time point)."""
    manifest = pd.read_csv(cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    labels = {pid: manifest.loc[manifest.patient_id == pid, "label"].iloc[0] for pid in test_ids}
    permuted = dict(zip(test_ids, pd.Series([labels[p] for p in test_ids]).sample(frac=1.0, random_state=seed)))
    flipped = [pid for pid in test_ids if permuted[pid] != labels[pid]]
    assert flipped, "the permutation must change some test labels"
    manifest["label"] = [permuted.get(pid, label) for pid, label in zip(manifest.patient_id, manifest.label)]
    manifest.to_csv(cohort_dir / "manifest.csv", index=False)


def test_tuning_is_nested_shuffling_a_folds_test_labels_changes_nothing_chosen_for_it(tmp_path, monkeypatch):
    """Fold k's trials see only fold k's training and inner-validation patients: with the same
    folds, permuting the labels of fold k's test patients leaves every trial value and the
    chosen hyperparameters of fold k unchanged."""
    import shutil

    import mstnet.experiments.reproduce as reproduce
    from mstnet.experiments.splits import Splits

    original = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    shuffled = Path(shutil.copytree(original, tmp_path / "shuffled"))

    def tune_fold(cohort_dir: Path, runs: Path):
        return tune("clinical-only", n_trials=3, storage=f"journal:{runs / 'journal.log'}", preset="tiny", fold=1,
                    runs_dir=runs, data=cohort_dir, device="cpu", epochs=2, seed=0)

    first = tune_fold(original, tmp_path / "runs-a")
    splits = Splits.read(tmp_path / "runs-a" / "splits.json")
    test_ids = list(splits.folds[1].test)
    _shuffle_test_labels(shuffled, test_ids, seed=3)
    # the same folds as the first run (stratification would otherwise redraw them for the new labels)
    monkeypatch.setattr(reproduce, "make_splits", lambda *args, **kwargs: splits)
    second = tune_fold(shuffled, tmp_path / "runs-b")
    assert first.study_name == second.study_name == "clinical-only-tiny-fold1"
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert first.best_trial.params == second.best_trial.params


def test_run_params_best_gives_each_fold_its_own_winner_and_names_untuned_folds(tmp_path, capsys):
    import optuna as optuna_module

    from mstnet.cli import main
    from mstnet.experiments.tuning import OVERRIDES_ATTR, default_storage, default_study_name

    cohort = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    runs = tmp_path / "runs"
    storage = default_storage(runs, "clinical-only")
    make_storage(storage)
    for fold, rate in ((0, 0.002), (1, 0.004)):
        study = optuna_module.create_study(study_name=default_study_name("clinical-only", "tiny", fold), storage=storage,
                                           direction="maximize")
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
        trial.set_user_attr(OVERRIDES_ATTR, {"learning_rate": rate})
        study.tell(trial, 1.0)
    with pytest.raises(SystemExit) as done:
        main(["run", "clinical-only", "--data", str(cohort), "--preset", "tiny", "--folds", "0,1,2", "--epochs", "1",
              "--out", str(runs), "--params", "best"])
    assert done.value.code == 2 and "missing: fold 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["run", "clinical-only", "--data", str(cohort), "--preset", "tiny", "--folds", "0,1", "--epochs", "1",
              "--out", str(runs), "--params", "best"])
    assert done.value.code == 0
    rates = [json.loads((runs / "clinical-only" / f"fold{k}" / "config.json").read_text())["recipe"]["learning_rate"]
             for k in (0, 1)]
    assert rates == [0.002, 0.004]
