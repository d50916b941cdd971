"""Several RUNS_DIRs read as one :class:`~mstnet.reporting.results.Results` (``mstnet report A B ...``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mstnet.reporting.results import Results, ResultsError, load_results
from mstnet.reporting.seed_means import seed_means

log = logging.getLogger(__name__)


def _first_row_per_experiment(experiments: pd.DataFrame) -> pd.DataFrame:
    return experiments[~experiments.index.duplicated(keep="first")]


def _splits_hash(part: Results) -> str | None:
    return next((c.get("splits_hash") for c in part.cohorts if c.get("splits_hash")), None)


def _check_each_fold_once(parts: list[Results]) -> None:
    """Refuse an experiment found in several parts on other folds, or with the same (seed, fold) twice."""
    seen: dict[str, tuple[Path, str | None, set[tuple[int, int]]]] = {}
    for part in parts:
        part_hash = _splits_hash(part)
        for name, folder in part.experiments["folder"].items():
            rows = part.seed_fold_metrics[part.seed_fold_metrics["experiment"] == name]
            folds = set(zip(rows["seed"].astype(int), rows["fold"].astype(int)))
            if name not in seen:
                seen[name] = (folder, part_hash, folds)
                continue
            first_folder, first_hash, first_folds = seen[name]
            if part_hash is None or part_hash != first_hash:
                raise ResultsError(f"experiment {name!r} is in two results folders with different folds (splits hash "
                                   f"{str(first_hash)[:12]} in {first_folder}, {str(part_hash)[:12]} in {folder}); "
                                   "report them separately or remove one")
            if first_folds & folds:
                both = sorted(first_folds & folds)
                named = ([fold for _, fold in both] if all(seed == 0 for seed, _ in both)
                         else ", ".join(f"seed {seed} fold {fold}" for seed, fold in both))
                raise ResultsError(f"experiment {name!r} is in two results folders with fold(s) "
                                   f"{named} in both ({first_folder} and {folder}); keep one copy")
            seen[name] = (first_folder, first_hash, first_folds | folds)


def _merged_oracle(parts: list[Results]) -> dict[str, float]:
    """The parts' ``oracle.json`` values, the first part's where they differ (logged)."""
    oracle: dict[str, float] = {}
    for part in parts:
        for key, value in part.oracle.items():
            if key in oracle and not math.isclose(oracle[key], value):
                log.warning("oracle.json differs between results folders (%s: %.4f vs %.4f); keeping the first",
                            key, oracle[key], value)
            oracle.setdefault(key, value)
    return oracle


def merge_results(parts: Iterable[Results]) -> Results:
    """One :class:`Results` from several RUNS_DIRs.

    An experiment may appear in several folders when they share the folds (same splits
    hash) and hold different folds of it, e.g. ``mstnet run NAME --folds k`` run on several
    machines, each into its own folder; or different training-seed replicates of the same
    folds. The same (seed, fold) twice, or one experiment on other folds, is an error.
    """
    parts = list(parts)
    if not parts:
        raise ResultsError("no results folders given")
    if len(parts) == 1:
        return parts[0]
    _check_each_fold_once(parts)
    oracle = _merged_oracle(parts)
    hashes = {c.get("splits_hash") for part in parts for c in part.cohorts if c.get("splits_hash")}
    if len(hashes) > 1:
        log.warning("the results folders use different folds (%d splits hashes); paired tests pair on patient ids",
                    len(hashes))
    seed_frames = seed_means(
        pd.concat([p.seed_fold_metrics for p in parts], ignore_index=True),
        pd.concat([p.seed_predictions for p in parts if len(p.seed_predictions)] or [parts[0].seed_predictions],
                  ignore_index=True),
        pd.concat([p.seed_segmentation for p in parts if len(p.seed_segmentation)] or [parts[0].seed_segmentation],
                  ignore_index=True))
    return Results(
        runs_dirs=tuple(d for part in parts for d in part.runs_dirs),
        experiments=_first_row_per_experiment(pd.concat([p.experiments for p in parts])),
        fold_metrics=seed_frames[3], predictions=seed_frames[4], segmentation=seed_frames[5],
        seed_fold_metrics=seed_frames[0], seed_predictions=seed_frames[1], seed_segmentation=seed_frames[2],
        histories=pd.concat([p.histories for p in parts if len(p.histories)] or [parts[0].histories], ignore_index=True),
        runs=pd.concat([p.runs for p in parts if len(p.runs)] or [parts[0].runs], ignore_index=True),
        cohorts=tuple(c for part in parts for c in part.cohorts), oracle=oracle,
        published=next((p.published for p in parts if p.published is not None), None),
        galleries={k: v for part in parts for k, v in part.galleries.items()},
        studies={k: v for part in reversed(parts) for k, v in part.studies.items()},
        benchmark_files=tuple(f for part in parts for f in part.benchmark_files),
        threshold_rule=parts[0].threshold_rule,
    )


def load_many(runs_dirs: Iterable[str | Path], threshold_rule: str = "fixed") -> Results:
    """Load and merge several RUNS_DIRs (see :func:`merge_results`)."""
    return merge_results(load_results(d, threshold_rule) for d in runs_dirs)
