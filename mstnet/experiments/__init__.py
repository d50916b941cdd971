"""Experiments: the registry, folds, training and results on disk (composes data, models, metrics)."""

from mstnet.experiments.registry import (
    DataView,
    ExperimentSpec,
    ModelContext,
    Recipe,
    get_experiment,
    list_experiments,
    register_experiment,
)

__all__ = [
    "DataView",
    "ExperimentSpec",
    "ModelContext",
    "Recipe",
    "get_experiment",
    "list_experiments",
    "register_experiment",
]
