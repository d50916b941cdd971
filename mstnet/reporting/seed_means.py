"""Training-seed replicates (``--seeds N``) of a :class:`~mstnet.reporting.results.Results`: the seeds that
count, and the means over them (see :mod:`mstnet.reporting.results`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mstnet.results_files import CLASSIFICATION_METRICS, SEGMENTATION_METRICS, VOLUME_COLUMNS

log = logging.getLogger(__name__)


def _kept_seeds(fold_metrics: pd.DataFrame, experiment: str) -> list[int]:
    """The seeds of ``experiment`` that hold the folds of its seed with the most folds (see the module docstring)."""
    rows = fold_metrics[fold_metrics["experiment"] == experiment]
    folds_of = {int(seed): set(group["fold"].astype(int)) for seed, group in rows.groupby("seed")}
    full = max(folds_of.values(), key=len) if folds_of else set()
    for seed, folds in folds_of.items():
        if folds != full:
            log.warning("%s seed %d: lacks fold(s) %s that its other seeds have; this seed is left out", experiment,
                        seed, sorted(full - folds))
    return [seed for seed, folds in folds_of.items() if folds == full]


def _mean_over_seeds(frame: pd.DataFrame, key: list[str], columns: list[str], several: set[str]) -> pd.DataFrame:
    """``frame`` without its ``seed`` column, the rows of the ``several``-seed experiments replaced by their
    means over seeds (``columns`` averaged where defined, the rest the first seed's), one per ``key``."""
    if not several or frame.empty:
        return frame.drop(columns="seed").reset_index(drop=True)
    pieces = []
    for name, rows in frame.groupby("experiment", sort=False):
        rows = rows.drop(columns="seed")
        if name in several:
            grouped = rows.groupby(key, sort=False)
            mean = grouped.first()
            mean[columns] = grouped[columns].mean()
            rows = mean.reset_index()[list(rows.columns)]
        pieces.append(rows)
    return pd.concat(pieces, ignore_index=True)


def seed_means(seed_fold_metrics: pd.DataFrame, seed_predictions: pd.DataFrame,
               seed_segmentation: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The per-replicate frames without incomplete seeds (see the module docstring), then their means over seeds.

    Returns:
        (seed_fold_metrics, seed_predictions, seed_segmentation) of the seeds that count, and
        (fold_metrics, predictions, segmentation): for an experiment with one seed its rows
        as they are (without ``seed``); with several, one row per (experiment, fold), patient and
        scan in the first seed's order, metric values, thresholds and probabilities averaged over
        the seeds where they are defined, the other columns the first seed's.
    """
    kept = {name: _kept_seeds(seed_fold_metrics, name) for name in dict.fromkeys(seed_fold_metrics["experiment"])}
    several = {name for name, seeds in kept.items() if len(seeds) > 1}
    frames = [frame.loc[np.array([int(seed) in kept.get(name, ()) for name, seed in zip(frame["experiment"], frame["seed"])],
                                 dtype=bool)].reset_index(drop=True) for frame in (seed_fold_metrics, seed_predictions, seed_segmentation)]
    means = (_mean_over_seeds(frames[0], ["experiment", "fold"],
                              [*SEGMENTATION_METRICS, *CLASSIFICATION_METRICS, "threshold"], several),
             _mean_over_seeds(frames[1], ["experiment", "patient_id"], ["probability"], several),
             _mean_over_seeds(frames[2], ["experiment", "patient_id", "timepoint"],
                              [*SEGMENTATION_METRICS, *(c for c in VOLUME_COLUMNS if c in frames[2].columns)], several))
    return (*frames, *means)
