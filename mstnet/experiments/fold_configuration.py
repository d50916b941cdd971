"""The resolved configuration of one fold: its recipe, the context its model is built for, and
``config.json`` with its identity hash (:mod:`mstnet.experiments.identity`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import torch

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import Cohort
from mstnet.errors import UsageError
from mstnet.experiments.distributed import in_process_group
from mstnet.experiments.fold_record import json_default
from mstnet.experiments.identity import (IDENTITY_KEY, PRESET_FIELDS_OUTSIDE_IDENTITY, cohort_fingerprint, configuration_hash,
                                        recorded_recipe)
from mstnet.experiments.registry import ExperimentSpec, ModelContext, Recipe, checked_recipe, split_overrides
from mstnet.experiments.splits import Splits
from mstnet.experiments.training import stages_for

if TYPE_CHECKING:
    from mstnet.experiments.runner import RunOptions


def stages_training_a_classifier_on_the_loader(recipe: Recipe, tasks: Sequence[str], frozen_cache: bool) -> list[str]:
    """Names of the stages of ``recipe`` that train a classifier on the training loader's batches:
    every stage with a classification loss, but a classification stage that reads the frozen-stage
    cache (``frozen_cache``) instead."""
    return [stage.name for stage in stages_for(recipe, tasks) if stage.cls_weight > 0
            and not (stage.name == "classification" and frozen_cache)]


def resolve_recipe(spec: ExperimentSpec, options: RunOptions) -> Recipe:
    """The experiment's recipe for the preset: the preset's batch size, the preset's training
    length (epochs, patience) unless the recipe has its own (``Recipe.budget_from_preset=False``;
    ``--epochs`` always sets the epochs), then the table's recipe fields (``mstnet reproduce --set``,
    ``options.table_recipe``), then ``--set`` recipe fields, and the seed of training-seed
    replicate ``options.seed_index`` (the recipe's seed plus it).

    Raises:
        UsageError: a recipe field of the wrong type or out of range; ``large_nodule_weight`` for a
            recipe whose training loader trains a classifier (a joint stage of a model that
            classifies, or a classification stage without ``frozen_stage_cache``, which a DDP run
            does not use).
    """
    preset = options.preset
    recipe = replace(spec.recipe_for(preset.name), batch_size=preset.batch_size)
    if recipe.budget_from_preset:
        recipe = replace(recipe, epochs=preset.epochs, early_stopping_patience=preset.patience)
    if preset.epochs_given:
        recipe = replace(recipe, epochs=preset.epochs, stage_epochs=None)
    recipe_overrides, _ = split_overrides(options.params)
    recipe = checked_recipe(spec.name, recipe, {**options.table_recipe, **recipe_overrides})
    if recipe.large_nodule_weight != 1:
        frozen_cache = recipe.frozen_stage_cache and not in_process_group()
        classifying = stages_training_a_classifier_on_the_loader(recipe, spec.tasks, frozen_cache)
        if classifying:
            raise UsageError(f"{spec.name}: large_nodule_weight would shift the malignancy mix its {classifying[0]} "
                             "stage trains on (every large nodule is a risk factor); it applies to segmentation "
                             "stages and a classification stage on the frozen-stage cache only"
                             + (", which a DDP run does not use" if recipe.frozen_stage_cache and not frozen_cache else "")
                             + "; --set large_nodule_weight=1 turns it off")
    return replace(recipe, seed=recipe.seed + options.seed_index) if options.seed_index else recipe


def model_context(spec: ExperimentSpec, encoder: ClinicalCoder, options: RunOptions) -> ModelContext:
    """The context a torch experiment's model is built for: crop size, time points, the fold's clinical
    columns (``encoder``) and the ``--set`` model settings."""
    _, model_overrides = split_overrides(options.params)
    return ModelContext(
        image_size=tuple(options.preset.crop_size),
        num_timepoints=spec.data_view.timepoints,
        clinical_cardinalities=tuple(encoder.cardinalities),
        num_numeric=encoder.num_numeric,
        use_clinical=spec.data_view.use_clinical,
        preset=options.preset.name,
        params=model_overrides,
    )


def tabular_context(spec: ExperimentSpec, options: RunOptions) -> ModelContext:
    """The context of a tabular experiment; recipe fields do not apply to it and are refused."""
    recipe_overrides, model_overrides = split_overrides(options.params)
    if recipe_overrides:
        raise UsageError(f"{spec.name} is fitted on patient features, not trained by the harness: "
                         f"--set {', '.join(sorted(recipe_overrides))} does not apply to it")
    return ModelContext(image_size=tuple(options.preset.crop_size), num_timepoints=spec.data_view.timepoints,
                        clinical_cardinalities=(), num_numeric=0, use_clinical=spec.data_view.use_clinical,
                        preset=options.preset.name, params=model_overrides)


def _model_record(model: Any, context: ModelContext) -> dict[str, Any]:
    """The model configuration of ``config.json``: class, resolved settings and trainable parameters."""
    record: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                              "settings": dict(context.settings)}
    if isinstance(model, torch.nn.Module):
        record["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return record


def _build_for_settings(spec: ExperimentSpec, context: ModelContext) -> torch.nn.Module:
    """Build the model to resolve its settings: on the meta device (no memory), or on the CPU
    for builders that read tensor values while constructing (MONAI's SwinUNETR)."""
    try:
        try:
            with torch.device("meta"):
                return spec.build(context)
        except (RuntimeError, NotImplementedError):
            context.settings.clear()
            return spec.build(context)
    except UsageError as error:
        if str(error).startswith(f"{spec.name}:"):
            raise
        raise UsageError(f"{spec.name}: {error}") from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"{spec.name}: cannot build the model with these settings: {error}") from None


def fold_configuration(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int,
                       options: RunOptions) -> dict[str, Any]:
    """The full resolved configuration of one fold and its ``identity`` hash (``config.json``).

    The model is built on PyTorch's meta device (no memory, no initialisation) to resolve its
    settings, so an unknown ``--set`` key or a wrong type fails here, before any training.

    Raises:
        UsageError: a fold that does not exist, or settings the experiment refuses.
    """
    if not 0 <= fold_index < splits.n_folds:
        raise UsageError(f"fold {fold_index} does not exist: the folds are 0-{splits.n_folds - 1}")
    options = options.for_fold(fold_index)
    fold = splits.folds[fold_index]
    preset = {k: v for k, v in asdict(options.preset).items() if k not in PRESET_FIELDS_OUTSIDE_IDENTITY}
    if spec.kind == "tabular":
        context = tabular_context(spec, options)
        model, recipe = spec.build(context), None
    else:
        recipe = resolve_recipe(spec, options)
        context = model_context(spec, ClinicalCoder(cohort.clinical_schema.restricted_to(spec.data_view.clinical_sources))
                                .fit(cohort.subset(fold.train)), options)
        model = _build_for_settings(spec, context)
    configuration = {
        "experiment": spec.metadata(), "fold": fold_index, "preset": preset,
        "recipe": None if recipe is None else recorded_recipe(asdict(recipe)),
        "context": {k: v for k, v in asdict(context).items() if k != "settings"},
        "model": _model_record(model, context),
        "data": {"cohort_fingerprint": cohort_fingerprint(cohort), "splits_hash": splits.hash,
                 "patients": {"train": len(fold.train), "validation": len(fold.validation), "test": len(fold.test)}},
    }
    configuration = json.loads(json.dumps(configuration, default=json_default))
    configuration[IDENTITY_KEY] = configuration_hash(configuration)
    return configuration
