"""Run a registered experiment over cross-validation folds and write its results.

For each fold: fit the clinical encoder on the fold's training patients, build the model
for that view of the data, train on ``train`` with every choice made on ``validation``,
then evaluate once on ``test``. Results go to ``RUNS_DIR/<experiment>/fold<k>/`` in the
format of ``docs/results-format.md`` (training-seed replicate s >= 1 of ``--seeds``:
``RUNS_DIR/<experiment>/seed<s>/fold<k>/``, trained with the recipe's seed plus s); ``run.json`` is written last, so a fold without it is
unfinished: it resumes from ``last.pt`` on the next run, and finished folds are skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DistributedSampler

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import Cohort
from mstnet.data.dataset import collate_patients
from mstnet.errors import UsageError
from mstnet.experiments.distributed import DistributedModel, in_process_group, is_main_process
from mstnet.experiments.evaluation_fold import evaluate_fold, write_gallery, youden_threshold
from mstnet.experiments.fold_configuration import (fold_configuration, model_context, resolve_recipe,
                                                  stages_training_a_classifier_on_the_loader, tabular_context)
from mstnet.experiments.fold_data import (LARGE_NODULE_MM, FoldData, data_loader, large_nodule_weights, largest_nodule_diameters_mm,
                                          training_augmentation)
from mstnet.experiments.fold_metrics import fold_metrics
from mstnet.experiments.fold_record import FoldAttempts, FoldRecord, fold_log, recipe_summary, write_json
from mstnet.experiments.identity import CONFIG_FILE, identity_conflict, refuse_conflicts
from mstnet.experiments.presets import RunPreset
from mstnet.experiments.registry import ExperimentSpec, Recipe
from mstnet.experiments.splits import Splits
from mstnet.experiments.tracking import FoldTracking, TrackerSpec, fold_tracking
from mstnet.experiments.training import (
    EpochCallback,
    FitResult,
    fit,
    forward_batch,
    move_batch,
    seed_everything,
    to_channels_last,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Options shared by every fold of a run.

    Attributes:
        preset: sizes and training length.
        device: torch device to train on.
        params: hyperparameter overrides applied to the recipe (fields of :class:`Recipe`)
            and passed to the model builder (everything else).
        cache_dir: where preprocessed volumes are cached (shared by folds and experiments).
        callbacks: per-epoch callbacks (Optuna pruning, tests).
        progress: show progress bars.
        evaluate_test: evaluate on the test fold (False while tuning: tuning never sees it).
        workers: DataLoader worker processes (0: load in the training process). Augmentation
            draws depend on (epoch seed, patient) only, so results do not depend on it.
        fold_params: overrides for single folds (``{k: {...}}``), under ``params``: each
            fold's own tuned winner (``mstnet run --params best``, nested tuning).
        trackers: TensorBoard / MLflow logging of every fold (``--log``; :mod:`mstnet.experiments.tracking`);
            not part of a fold's configuration identity.
        export_masks: also write each evaluated fold's test predictions to ``fold<k>/masks/``
            (``mstnet run --export-masks``: NIfTI masks in each scan's geometry and
            ``probabilities.csv``, :class:`mstnet.experiments.prediction.PredictionWriter`);
            not part of the identity.
        table_recipe: training-recipe fields for every trained experiment of a table
            (``mstnet reproduce --set``), under ``params``; experiments fitted on patient
            features (no training recipe) ignore them. Part of the identity through each
            fold's resolved recipe.
        seed_index: which training-seed replicate these options train (``--seeds``): the
            recipe's seed (after ``--set seed=...``) plus ``seed_index``, results in
            :func:`fold_dir_of` (``seed<s>/fold<k>/`` for ``seed_index`` s >= 1). The seed is in
            the recipe, hence in each fold's configuration identity.
    """

    preset: RunPreset
    device: torch.device
    params: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    callbacks: tuple[EpochCallback, ...] = ()
    progress: bool = True
    evaluate_test: bool = True
    workers: int = 0
    fold_params: dict[int, dict[str, Any]] = field(default_factory=dict)
    trackers: tuple[TrackerSpec, ...] = ()
    export_masks: bool = False
    table_recipe: dict[str, Any] = field(default_factory=dict)
    seed_index: int = 0

    def for_seed(self, seed_index: int) -> "RunOptions":
        """These options for training-seed replicate ``seed_index`` (see ``seed_index``)."""
        return replace(self, seed_index=seed_index)

    def for_fold(self, fold_index: int) -> "RunOptions":
        """These options for one fold: its ``fold_params`` merged under ``params`` (``--set`` wins)."""
        if not self.fold_params:
            return self
        return replace(self, params={**self.fold_params.get(fold_index, {}), **self.params}, fold_params={})


def experiment_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / name.replace("/", "__")


def training_seeds(spec: ExperimentSpec, seeds: int) -> range:
    """The training-seed replicates ``--seeds`` gives ``spec``: ``0 .. seeds - 1`` for trained (torch)
    experiments; only 0 for tabular ones, whose fit has no training seed (a refit is the same model).

    Raises:
        UsageError: ``seeds`` below 1.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"--seeds takes a whole number of at least 1; got {seeds!r}")
    return range(seeds if spec.kind == "torch" else 1)


@dataclass(frozen=True)
class OpenFold:
    """A fold being run (:func:`open_fold`): its record writer, its options and its trackers."""

    record: FoldRecord
    options: RunOptions
    tracking: FoldTracking | None


@contextmanager
def open_fold(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int, runs_dir: Path,
              options: RunOptions, write: bool = True,
              extra_configuration: dict[str, Any] | None = None) -> Iterator[OpenFold]:
    """Start a fold, deep or tabular: resolve its configuration, refuse a folder that holds another, write
    ``config.json`` (with ``extra_configuration``, outside the identity) and keep ``train.log``, the
    trackers and the attempt record while the fold runs. ``write`` False (a DDP rank other than 0)
    writes nothing but the folder."""
    configuration = fold_configuration(spec, cohort, splits, fold_index, options)
    options = options.for_fold(fold_index)
    fold_dir = fold_dir_of(runs_dir, spec.name, fold_index, options.seed_index)
    conflict = identity_conflict(fold_dir, configuration)
    if in_process_group():
        torch.distributed.barrier()  # every rank has read the folder before rank 0 writes into it
    refuse_conflicts([conflict] if conflict else [])
    fold_dir.mkdir(parents=True, exist_ok=True)
    configuration.update(extra_configuration or {})
    if write:
        write_json(fold_dir / CONFIG_FILE, configuration)
    with fold_log(fold_dir) if write else nullcontext(), \
            fold_tracking(options.trackers if write else (), spec.name, fold_index, fold_dir, configuration) as tracking:
        record = FoldRecord(fold_dir, spec.name, fold_index, splits.hash, options.device,
                            FoldAttempts(fold_dir, write=write))
        yield OpenFold(record, options, tracking)


def run_fold(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int, runs_dir: Path,
             options: RunOptions) -> dict[str, Any]:
    """Train and evaluate one fold of a torch experiment; returns its metrics."""
    with open_fold(spec, cohort, splits, fold_index, runs_dir, options, write=is_main_process()) as fold:
        return _train_and_evaluate(spec, cohort, splits, fold_index, fold)


def _bias_initialiser(model: torch.nn.Module, data: FoldData, spec: ExperimentSpec, options: RunOptions):
    """``Stage -> None``: set the output biases the stage trains at the training data's priors
    (foreground fraction of the training crops; share of malignant training patients)."""
    from mstnet.experiments.initialisation import initialise_output_biases, training_priors

    data.train.set_augmentation_seed(0)
    foreground_prior, class_prior = training_priors(data.train)
    sample = collate_patients([data.train[i] for i in range(min(len(data.train), options.preset.batch_size))])
    batch = move_batch(sample, options.device)

    def initialise(stage) -> None:
        segmentation = stage.seg_weight > 0 and "segmentation" in spec.tasks
        classification = stage.cls_weight > 0 and "classification" in spec.tasks
        initialise_output_biases(model, lambda: forward_batch(model, batch, spec.data_view.use_clinical),
                                 foreground_prior if segmentation else None, class_prior if classification else None)

    return initialise


def _frozen_stage_factory(model: torch.nn.Module, data: FoldData, recipe: Recipe, options: RunOptions):
    """``() -> FrozenStageData`` for the cached classification stage (``Recipe.frozen_stage_cache``):
    the training patients un-augmented, the first ``frozen_stage_augmentations`` of the finite set."""
    from mstnet.experiments.frozen_stage import FrozenStageData, augmentation_set

    def make() -> FrozenStageData:
        augmentations = augmentation_set(recipe.frozen_stage_augmentations, *options.preset.crop_size[1:])
        log.info("classification stage on cached frozen outputs: %d patients x %d augmentations",
                 len(data.train_plain), len(augmentations))
        return FrozenStageData(model, data.train_plain, data.validation, collate_patients,
                               recipe.frozen_stage_batch_size or recipe.batch_size,
                               augmentations, options.device)

    return make


def _fold_model(spec: ExperimentSpec, data: FoldData, recipe: Recipe, options: RunOptions, fold_index: int):
    """The fold's model on its device (convolution weights channels-last by the recipe), and the module
    to train: the model itself, or its DDP wrapper under torchrun."""
    context = model_context(spec, data.encoder, options)
    if options.device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest convolution algorithms (seeding still fixes
        # initialisation and data order; cuDNN's choice may change the last bits of results).
        torch.backends.cudnn.benchmark = True
    model = spec.build(context).to(options.device)
    if recipe.channels_last:
        to_channels_last(model)
    log.info("%s fold %d: %s, %d trainable parameters", spec.name, fold_index, type(model).__name__,
             sum(p.numel() for p in model.parameters() if p.requires_grad))
    if in_process_group():
        return model, DistributedModel(model)
    return model, model


def _uses_frozen_stage(model: torch.nn.Module, trained: torch.nn.Module, recipe: Recipe) -> bool:
    """Whether the classification stage reads cached frozen outputs: the recipe asks for it, the model
    classifies from a frozen segmentation network (``classify``), and no DDP wrapper trains it."""
    return recipe.frozen_stage_cache and trained is model and hasattr(model, "classify")


def _fit_fold(model, trained, data: FoldData, spec: ExperimentSpec, recipe: Recipe, fold: OpenFold) -> FitResult:
    """Train the fold's model by its recipe, the output-bias initialisation and frozen-stage cache included."""
    options = fold.options
    frozen_stage = _frozen_stage_factory(model, data, recipe, options) if _uses_frozen_stage(model, trained, recipe) else None
    weights = None
    if recipe.large_nodule_weight != 1:
        if stages_training_a_classifier_on_the_loader(recipe, spec.tasks, frozen_stage is not None):
            raise UsageError(f"{spec.name}: large_nodule_weight needs the classification stage on the frozen-stage "
                             "cache, which this model or a DDP run cannot use")
        weights = large_nodule_weights(largest_nodule_diameters_mm(data.train), recipe.large_nodule_weight)
        log.info("%s: %d of %d training patients with a nodule over %g mm, sampled with weight %g", spec.name,
                 int((weights > 1).sum()), len(weights), LARGE_NODULE_MM, recipe.large_nodule_weight)

    def train_loader(seed: int):
        if hasattr(data.train, "set_augmentation_seed"):
            data.train.set_augmentation_seed(seed)
        loader = data_loader(data.train, recipe.batch_size, True, seed, options.device, options.workers, weights)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(seed)
        return loader

    on_stage_start = _bias_initialiser(model, data, spec, options) if recipe.output_bias_init else None
    tracking = fold.tracking
    if tracking:
        tracking.attach(model, data.validation, options.device, spec.data_view.use_clinical, recipe.amp)
    validation = data_loader(data.validation, recipe.batch_size, False, 0, options.device, options.workers)
    return fit(trained, train_loader, validation, recipe, spec.tasks, fold.record.fold_dir, options.device,
               use_clinical=spec.data_view.use_clinical,
               callbacks=(*options.callbacks, fold.record.attempts.tick, *(tracking.callbacks if tracking else ())),
               progress=options.progress, on_stage_start=on_stage_start, frozen_stage=frozen_stage)


def _train_and_evaluate(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int,
                        fold: OpenFold) -> dict[str, Any]:
    options, record = fold.options, fold.record
    recipe = resolve_recipe(spec, options)
    seed_everything(recipe.seed + fold_index)
    data = FoldData(cohort, splits.folds[fold_index], spec, options, training_augmentation(recipe))
    model, trained = _fold_model(spec, data, recipe, options, fold_index)
    result = _fit_fold(model, trained, data, spec, recipe, fold)
    history = pd.DataFrame([vars(r) for r in result.history])
    if not is_main_process():
        return {}
    record.write_history(history, result.seconds)
    if not options.evaluate_test:
        record.attempts.finish(result.resumed_from_epoch)
        return {"history": history}
    evaluation = evaluate_fold(model, data, spec, options, recipe, fold_index,
                               export_dir=record.fold_dir / "masks" if options.export_masks else None)
    if evaluation.scans:
        write_text_atomic(record.fold_dir / "segmentation.csv", pd.DataFrame(evaluation.scans).to_csv(index=False))
        write_gallery(record.fold_dir / "gallery.npz", evaluation.gallery, evaluation.scans)
    record.finish(evaluation.metrics, evaluation.patients, evaluation.threshold, selected_epoch=result.selected_epochs,
                  resumed_from_epoch=result.resumed_from_epoch, history=history,
                  recipe_text=recipe_summary(recipe, spec.tasks, cached_stage=_uses_frozen_stage(model, trained, recipe),
                                             device=options.device))
    return evaluation.metrics


def fold_dir_of(runs_dir: Path, name: str, fold_index: int, seed_index: int = 0) -> Path:
    """The folder of one (experiment, training-seed replicate, fold): ``<experiment>/fold<k>/`` for
    replicate 0 (the layout of a run without ``--seeds``), ``<experiment>/seed<s>/fold<k>/`` for s >= 1."""
    folder = experiment_dir(runs_dir, name)
    if seed_index:
        folder = folder / f"seed{seed_index}"
    return folder / f"fold{fold_index}"


def fold_is_complete(runs_dir: Path, name: str, fold_index: int, splits: Splits, seed_index: int = 0) -> bool:
    run_json = fold_dir_of(runs_dir, name, fold_index, seed_index) / "run.json"
    if not run_json.exists():
        return False
    record = json.loads(run_json.read_text())
    if record.get("splits_hash") != splits.hash:
        raise UsageError(
            f"{run_json} was produced with other folds (splits hash {record.get('splits_hash', '?')[:12]}, "
            f"now {splits.hash[:12]}); use another --out folder or delete that experiment's results"
        )
    return record.get("status") == "complete"


def check_experiment(spec: ExperimentSpec, cohort: Cohort, splits: Splits, runs_dir: Path, options: RunOptions,
                     folds: Sequence[int]) -> list[str]:
    """Resolve every fold's configuration (refusing bad settings and folds) and return the
    folds whose folder holds another configuration, one line each; nothing is written."""
    conflicts = []
    for fold_index in folds:
        configuration = fold_configuration(spec, cohort, splits, fold_index, options)
        conflict = identity_conflict(fold_dir_of(runs_dir, spec.name, fold_index, options.seed_index), configuration)
        if conflict:
            conflicts.append(conflict)
    return conflicts


def run_experiment(
    spec: ExperimentSpec,
    cohort: Cohort,
    splits: Splits,
    runs_dir: Path,
    options: RunOptions,
    folds: Sequence[int] | None = None,
    run_fold_fn: Callable[..., dict[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run ``spec`` on the given folds (all by default) of training-seed replicate ``options.seed_index``,
    skipping finished ones.

    Every fold's configuration is resolved and compared with what its folder holds before
    anything is written (:func:`check_experiment`).

    Raises:
        UsageError: a fold out of range, settings the experiment refuses, a folder that holds
            another configuration, or a seed replicate >= 1 of a tabular experiment.
    """
    runs_dir = Path(runs_dir)
    if options.seed_index not in training_seeds(spec, options.seed_index + 1):
        raise UsageError(f"{spec.name} is fitted on patient features and has no training seed: it runs once, "
                         f"not as seed replicate {options.seed_index}")
    fold_list = list(folds) if folds is not None else list(range(splits.n_folds))
    refuse_conflicts(check_experiment(spec, cohort, splits, runs_dir, options, fold_list))
    exp_dir = experiment_dir(runs_dir, spec.name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        write_json(exp_dir / "experiment.json", spec.metadata())
    fold_runner = run_fold_fn or (run_tabular_fold if spec.kind == "tabular" else run_fold)
    results = {}
    replicate = f" seed {options.seed_index}" if options.seed_index else ""
    for fold_index in fold_list:
        if fold_is_complete(runs_dir, spec.name, fold_index, splits, options.seed_index):
            log.info("%s%s fold %d: already complete with the same configuration, skipped", spec.name, replicate,
                     fold_index)
            results[fold_index] = json.loads(
                (fold_dir_of(runs_dir, spec.name, fold_index, options.seed_index) / "metrics.json").read_text())
            continue
        log.info("%s%s fold %d: training", spec.name, replicate, fold_index)
        results[fold_index] = fold_runner(spec, cohort, splits, fold_index, runs_dir, options)
    return results




def run_tabular_fold(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int, runs_dir: Path,
                     options: RunOptions) -> dict[str, Any]:
    """Fit a tabular (non-deep) classifier on patient features and evaluate it on the test fold."""
    from mstnet.data.features import patient_features

    features = patient_features(cohort, timepoints=spec.data_view.timepoints)
    with open_fold(spec, cohort, splits, fold_index, runs_dir, options,
                   extra_configuration={"features": list(features.columns)}) as opened:
        fold = splits.folds[fold_index]
        label_of = dict(zip(cohort.patient_ids, cohort.labels))
        estimator = spec.build(tabular_context(spec, opened.options))
        log.info("%s fold %d: fitting %s on %d patients, %d features", spec.name, fold_index, type(estimator).__name__,
                 len(fold.train), features.shape[1])
        estimator.fit(features.loc[list(fold.train)], np.array([label_of[p] for p in fold.train]))
        val_probs = estimator.predict_proba(features.loc[list(fold.validation)])
        threshold = youden_threshold([label_of[p] for p in fold.validation], val_probs)
        test_ids = list(fold.test)
        probabilities = estimator.predict_proba(features.loc[test_ids])
        patients = [{"patient_id": p, "fold": fold_index, "label": int(label_of[p]), "probability": float(q)}
                    for p, q in zip(test_ids, probabilities)]
        metrics = fold_metrics([], patients, threshold)
        opened.record.finish(metrics, patients, threshold)
    return metrics
