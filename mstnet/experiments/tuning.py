"""Optuna tuning of a registered experiment on inner validation only, across processes and machines.

The search space is declared once per experiment (``ExperimentSpec.search_space``:
``optuna.Trial -> dict`` of overrides); experiments without one get
:func:`default_search_space` (learning rate and weight decay).

Tuning is nested: a study belongs to one outer fold k (``<experiment>-<preset>-fold<k>``).
Its trials train on fold k's training portion and score the best inner-validation
``val_score`` (the negative validation loss) of the last training stage on fold k's inner
validation split, both drawn from fold k's non-test patients; no test patient of fold k
enters a trial (``RunOptions(evaluate_test=False)``), and ``mstnet run --params best`` gives
each fold the winner of its own study. (Averaging every fold's inner validation, or applying
fold 0's winner to the other folds, would let a fold's test patients choose its settings:
they are other folds' training and validation patients.) Every epoch is reported to the
trial, and a pruner (median or Hyperband) stops hopeless trials.

The study lives in an Optuna storage, so any number of processes or machines can work on
one study at once (``load_if_exists``):

- default: SQLite at ``RUNS_DIR/<experiment>/tuning/study.db``;
- any Optuna storage URL: ``sqlite:///path.db``, ``postgresql://user@host/db``, ...;
- ``journal:PATH``: an append-only journal file (``JournalStorage(JournalFileBackend(PATH))``),
  safe for several processes on one file system (NFS included) without a database server.

Each trial runs in its own folder ``RUNS_DIR/<experiment>/tuning/<study>/trial<k>/`` (trials
never resume one another's checkpoints); ``best_params.json`` is written to
``RUNS_DIR/<experiment>/tuning/<study>/``.

Example::

    study = tune("mstnet", n_trials=20, storage="journal:runs/mstnet/tuning/journal.log", preset="cpu")
    study.best_trial.user_attrs["overrides"]  # {"learning_rate": ..., ...}
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna

from mstnet.atomic import write_text_atomic
from mstnet.errors import UsageError

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband")
JOURNAL_PREFIX = "journal:"
BEST_PARAMS_FILE = "best_params.json"
OVERRIDES_ATTR = "overrides"
"""Trial user attribute holding the override dict the search space returned (the run's params)."""


def default_search_space(trial: optuna.Trial) -> dict[str, Any]:
    """Search space for experiments that declare none: Adam's learning rate and weight decay."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }


def tuning_dir(runs_dir: Path, experiment: str) -> Path:
    """``RUNS_DIR/<experiment>/tuning``: the default study database and one folder per study."""
    from mstnet.experiments.runner import experiment_dir

    return experiment_dir(Path(runs_dir), experiment) / "tuning"


def study_dir(runs_dir: Path, experiment: str, study_name: str) -> Path:
    """``RUNS_DIR/<experiment>/tuning/<study>``: the study's ``trial<k>/`` run folders and ``best_params.json``
    (trial numbers restart in every study, so each study keeps its own folders)."""
    return tuning_dir(runs_dir, experiment) / study_name.replace("/", "__")


def default_storage(runs_dir: Path, experiment: str) -> str:
    """The SQLite URL of an experiment's default study database."""
    return f"sqlite:///{(tuning_dir(runs_dir, experiment) / 'study.db').resolve()}"


def default_study_name(experiment: str, preset: str, fold: int = 0) -> str:
    """The study of outer fold ``fold``: ``<experiment>-<preset>-fold<k>``."""
    return f"{experiment}-{preset}-fold{fold}"


def make_storage(storage: str | optuna.storages.BaseStorage) -> str | optuna.storages.BaseStorage:
    """An Optuna storage from a URL, ``journal:PATH`` (journal file), or a storage object (returned as is).

    Raises:
        ValueError: text that is neither ``journal:PATH`` nor a URL with a scheme.
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = str(storage)
    if text.startswith(JOURNAL_PREFIX):
        path = Path(text[len(JOURNAL_PREFIX):]).expanduser()
        if not path.name:
            raise ValueError(f"storage {text!r}: journal:PATH needs a file path, e.g. journal:runs/study.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in text:
        raise ValueError(f"storage {text!r} is neither an Optuna URL (sqlite:///study.db, postgresql://...) "
                         f"nor {JOURNAL_PREFIX}PATH (a journal file shared by several processes)")
    if text.startswith("sqlite:///"):
        Path(text[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return text


def describe_storage(storage: str | optuna.storages.BaseStorage) -> str:
    """The storage as text for logs and files, without any password."""
    if not isinstance(storage, str):
        return type(storage).__name__
    if storage.startswith(JOURNAL_PREFIX) or "://" not in storage:
        return storage
    parts = urlsplit(storage)
    if parts.password is None:
        return storage
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def make_pruner(kind: str = "median", n_startup_trials: int = 5, n_warmup_steps: int = 1,
                max_resource: int | str = "auto") -> optuna.pruners.BasePruner:
    """``"median"``: prune a trial whose best value so far is below the median of earlier trials at the
    same step (after ``n_startup_trials`` finished trials and ``n_warmup_steps`` steps);
    ``"hyperband"``: successive halving brackets over ``1..max_resource`` steps (reduction factor 3)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource, reduction_factor=3)
    raise ValueError(f"pruner must be one of {PRUNERS}; got {kind!r}")


def open_study(study_name: str, storage: str | optuna.storages.BaseStorage, pruner: str = "median",
               seed: int | None = None, n_startup_trials: int = 5, n_warmup_steps: int = 1,
               max_resource: int | str = "auto") -> optuna.Study:
    """Create the study, or join it if another process already did (maximising).

    Args:
        study_name: the study's name in the storage.
        storage: see :func:`make_storage`.
        pruner: "median" or "hyperband" (see :func:`make_pruner`).
        seed: TPE sampler seed (None: fresh randomness, so concurrent workers explore apart;
            an integer makes a single-process study reproducible).
        n_startup_trials, n_warmup_steps, max_resource: pruner settings.
    """
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.create_study(
        study_name=study_name, storage=make_storage(storage), direction="maximize", load_if_exists=True,
        sampler=sampler, pruner=make_pruner(pruner, n_startup_trials, n_warmup_steps, max_resource),
    )


@dataclass(frozen=True)
class PruningReporter:
    """Fit callback: report each epoch's ``val_score`` to the trial at ``step_offset`` + the epoch's
    position, and raise :class:`optuna.TrialPruned` when the pruner says so.

    Steps are laid out so every trial of a study uses the same step for the same (fold, stage,
    epoch), whether or not early stopping cut an earlier stage short.

    Args:
        trial: the running trial.
        step_offset: first step of this fold.
        stage_offsets: first step of each training stage within the fold.
    """

    trial: optuna.Trial
    step_offset: int
    stage_offsets: dict[str, int]

    def __call__(self, record: Any) -> None:
        step = self.step_offset + self.stage_offsets[record.stage] + record.epoch
        if math.isfinite(record.val_score):
            self.trial.report(record.val_score, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (stage {record.stage}, epoch {record.epoch}, "
                                     f"val_score {record.val_score:.4f})")


def final_stage_score(history: Any) -> float:
    """Best ``val_score`` of the last training stage of a fold's history (a DataFrame of EpochRecords)."""
    last_stage = history["stage"].iloc[-1]
    return float(history.loc[history["stage"] == last_stage, "val_score"].max())


@dataclass(frozen=True)
class _Trials:
    """What every trial of one study shares; called with a trial, it trains and scores it (Optuna's objective)."""

    spec: Any
    prepared: Any
    run_options: Any
    base: Path
    folds: Sequence[int]
    stage_offsets: dict[str, int]
    steps_per_fold: int
    keep_checkpoints: bool

    def __call__(self, trial: optuna.Trial) -> float:
        from mstnet.experiments.runner import run_fold

        space: Callable[[Any], dict[str, Any]] = self.spec.search_space or default_search_space
        overrides = {**self.run_options.params, **space(trial)}
        trial.set_user_attr(OVERRIDES_ATTR, overrides)
        trial_dir = self.base / f"trial{trial.number}"
        trial.set_user_attr("run_dir", str(trial_dir))
        scores = []
        try:
            for position, fold_index in enumerate(self.folds):
                reporter = PruningReporter(trial, position * self.steps_per_fold, self.stage_offsets)
                options = replace(self.run_options, params=overrides, callbacks=(reporter,))
                result = run_fold(self.spec, self.prepared.cohort, self.prepared.splits, fold_index, trial_dir, options)
                scores.append(final_stage_score(result["history"]))
                trial.set_user_attr(f"fold{fold_index}_score", scores[-1])
        finally:
            if not self.keep_checkpoints:
                for checkpoint in trial_dir.rglob("*.pt"):
                    checkpoint.unlink()
        return sum(scores) / len(scores)


def _prepare_trials(spec: Any, fold: int, preset: str, runs_dir: Path, base: Path, data: Path | None, device: str,
                    epochs: int | None, params: dict[str, Any] | None, split_seed: int, progress: bool,
                    binarize_masks: str | None, keep_checkpoints: bool) -> _Trials:
    """The checked folds and cohort (``preflight`` in ``base/preflight``, the folder's files committed), the base
    options and the step layout of the trials of one outer fold."""
    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.reproduce import commit_runs, preflight, prepare_runs
    from mstnet.experiments.runner import RunOptions, resolve_recipe
    from mstnet.experiments.training import resolve_device, stages_for

    run_options = RunOptions(preset=run_preset(preset, epochs=epochs), device=resolve_device(device),
                             params=dict(params or {}), cache_dir=runs_dir / ".cache", progress=progress,
                             evaluate_test=False)
    prepared = prepare_runs(runs_dir, run_options.preset, data=data, seed=split_seed, write=False,
                            binarize_masks=binarize_masks)
    folds: Sequence[int] = (fold,)
    preflight(replace(prepared, runs_dir=base / "preflight"), [spec], run_options, folds)
    commit_runs(prepared)
    base.mkdir(parents=True, exist_ok=True)
    stages = stages_for(resolve_recipe(spec, run_options), spec.tasks)
    stage_offsets = {stage.name: sum(s.epochs for s in stages[:i]) for i, stage in enumerate(stages)}
    return _Trials(spec, prepared, run_options, base, folds, stage_offsets, sum(stage.epochs for stage in stages),
                   keep_checkpoints)


def tune(name: str, n_trials: int, storage: str | optuna.storages.BaseStorage | None = None,
         study_name: str | None = None, timeout: float | None = None, pruner: str = "median", fold: int = 0,
         preset: str = "cpu", runs_dir: Path = Path("runs"), data: Path | None = None, device: str = "auto",
         epochs: int | None = None, params: dict[str, Any] | None = None, seed: int | None = None,
         split_seed: int = 0, keep_checkpoints: bool = False, progress: bool = False,
         binarize_masks: str | None = None) -> optuna.Study:
    """Run ``n_trials`` trials of experiment ``name`` in this process (more processes may join the study).

    Args:
        name: registered experiment (``mstnet list``).
        n_trials: trials this process runs (K workers with ``n_trials`` each run K x n_trials).
        storage: Optuna URL, ``journal:PATH`` or a storage object; default SQLite under
            ``RUNS_DIR/<name>/tuning/study.db``.
        study_name: default ``<name>-<preset>-fold<k>``.
        timeout: stop starting new trials after this many seconds.
        pruner: "median" (default) or "hyperband".
        fold: the outer fold whose training portion the trials train on and whose inner
            validation split scores them (its test patients are never used).
        preset: size preset ("tiny", "cpu", "paper").
        runs_dir: results folder; its ``splits.json`` fixes the folds (shared with ``mstnet run``).
        data: cohort folder (default: the embedded synthetic cohort of the preset).
        device: "auto", "cpu" or "cuda".
        epochs: epochs per stage (default: the preset's).
        params: fixed overrides applied under every trial's suggestions.
        seed: sampler seed (see :func:`open_study`).
        split_seed: seed of the folds.
        keep_checkpoints: keep ``last.pt``/``best.pt`` of every trial (off: only histories stay).
        progress: show per-epoch progress bars.
        binarize_masks: how non-binary masks are read (None: refused).

    Returns:
        The study, with every trial of every worker so far.
    """
    from mstnet.experiments.registry import get_experiment

    if n_trials < 1:
        raise ValueError(f"n_trials must be at least 1; got {n_trials}")
    spec = get_experiment(name)
    if spec.kind != "torch":
        raise ValueError(f"experiment {name!r} is {spec.kind}; tuning trains torch experiments only")
    runs_dir = Path(runs_dir)
    study_name = study_name or default_study_name(name, preset, fold)
    trials = _prepare_trials(spec, fold, preset, runs_dir, study_dir(runs_dir, name, study_name), data, device, epochs,
                             params, split_seed, progress, binarize_masks, keep_checkpoints)
    storage = storage if storage is not None else default_storage(runs_dir, name)
    study = open_study(study_name, storage, pruner, seed=seed, max_resource=trials.steps_per_fold * len(trials.folds))
    _check_study_attributes(study, {"experiment": name, "preset": preset, "fold": fold,
                                    "splits_hash": trials.prepared.splits.hash})
    log.info("tuning %s on fold %d's training portion: study %r in %s, %d trial(s) in this process, pruner %s",
             name, fold, study_name, describe_storage(storage), n_trials, pruner)
    study.optimize(trials, n_trials=n_trials, timeout=timeout, gc_after_trial=True)
    write_best_params(study, trials.base / BEST_PARAMS_FILE, describe_storage(storage))
    return study


def _check_study_attributes(study: optuna.Study, attributes: dict[str, Any]) -> None:
    """Record what the study tunes; refuse to join a study made for another experiment, preset or folds."""
    for key, value in attributes.items():
        existing = study.user_attrs.get(key)
        if existing is None:
            study.set_user_attr(key, value)
        elif existing != value:
            raise UsageError(f"study {study.study_name!r} was made with {key}={existing!r}, not {value!r}; "
                             "use another --study name")


def best_overrides(study: optuna.Study) -> dict[str, Any]:
    """The overrides (run params) of the study's best trial.

    Raises:
        ValueError: the study has no completed trial yet.
    """
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise ValueError(f"study {study.study_name!r} has no completed trial yet")
    best = study.best_trial
    return dict(best.user_attrs.get(OVERRIDES_ATTR, best.params))


def write_best_params(study: optuna.Study, path: Path, storage_text: str = "") -> Path | None:
    """``best_params.json``: the best trial's overrides, value and the study's trial counts (None if no trial completed)."""
    states = [t.state for t in study.trials]
    try:
        overrides = best_overrides(study)
    except ValueError:
        log.warning("study %r: no completed trial, %s not written", study.study_name, path)
        return None
    record = {
        "study": study.study_name,
        "storage": storage_text,
        **{key: study.user_attrs.get(key) for key in ("experiment", "preset", "fold", "splits_hash")},
        "best_trial": study.best_trial.number,
        "best_value": study.best_value,
        "params": overrides,
        "trials": {state.name.lower(): states.count(state) for state in optuna.trial.TrialState if states.count(state)},
    }
    write_text_atomic(Path(path), json.dumps(record, indent=2, sort_keys=False) + "\n")
    return Path(path)


def load_best_params(study_name: str, storage: str | optuna.storages.BaseStorage) -> dict[str, Any]:
    """The best trial's overrides of an existing study, ready for ``RunOptions.params`` / ``mstnet run --set``.

    Raises:
        FileNotFoundError: a SQLite or journal file that does not exist. KeyError: no study of that
        name in the storage. ValueError: no completed trial yet.
    """
    if isinstance(storage, str):
        for prefix in ("sqlite:///", JOURNAL_PREFIX):
            if storage.startswith(prefix) and not Path(storage[len(prefix):]).expanduser().exists():
                raise FileNotFoundError(f"no Optuna study file at {storage[len(prefix):]} (storage {storage!r}); "
                                        "run `mstnet tune` first or pass --storage")
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    except KeyError:
        raise KeyError(f"no Optuna study named {study_name!r} in {describe_storage(storage)}") from None
    return best_overrides(study)



def best_params_per_fold(experiment: str, preset: str, folds: Sequence[int],
                         storage: str | optuna.storages.BaseStorage, study_prefix: str | None = None) -> dict[int, dict[str, Any]]:
    """Each outer fold's own winner: the best overrides of study ``<prefix>-fold<k>`` for every k in ``folds``.

    Raises:
        UsageError: folds without a study, or whose study has no completed trial (all named).
    """
    found, missing = {}, []
    for fold in folds:
        name = f"{study_prefix}-fold{fold}" if study_prefix else default_study_name(experiment, preset, fold)
        try:
            found[fold] = load_best_params(name, storage)
        except (FileNotFoundError, KeyError, ValueError) as error:
            missing.append(f"fold {fold} ({str(error).strip(chr(34))})")
    if missing:
        raise UsageError(f"--params best needs a tuned study for every fold run (nested tuning: `mstnet tune "
                         f"{experiment} --folds ...`); missing: {'; '.join(missing)}")
    return found
