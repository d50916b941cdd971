"""Run a group of experiments on one cohort and one set of folds: the paper table, references, ablations.

``prepare_runs`` fixes the cohort and the folds of a results folder (``splits.json``,
``cohort.json``, ``oracle.json``); every experiment run into that folder uses the same
splits, and a folder made for another cohort or other folds is refused.

:func:`run_group` checks everything first and writes nothing until all checks pass
(:func:`preflight`): the cohort against what the experiments need (one full read of every
volume: :func:`mstnet.data.validate.validate_cohort`), the folds asked for, every
experiment's settings, and each fold folder's configuration identity.

``seeds`` (``--seeds N``) trains every (experiment, fold) N times with training seeds
``recipe.seed + s``, s = 0 .. N - 1, on the same folds: replicate 0 in ``<experiment>/fold<k>/``
(where a run without ``--seeds`` puts it), replicate s >= 1 in ``<experiment>/seed<s>/fold<k>/``
(:func:`mstnet.experiments.runner.fold_dir_of`). Each (experiment, seed, fold) is checked,
skipped, resumed and refused on its own, as a fold is without seeds.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import Cohort, CohortError
from mstnet.data.sources import load_cohort
from mstnet.data.validate import CohortNeeds, validate_cohort
from mstnet.errors import UsageError
from mstnet.experiments.identity import refuse_conflicts
from mstnet.experiments.presets import RunPreset
from mstnet.claims import CLAIM_EXPERIMENTS
from mstnet.experiments.registry import ExperimentSpec, get_experiment, list_experiments
from mstnet.experiments.runner import RunOptions, check_experiment, fold_dir_of, run_experiment, training_seeds
from mstnet.experiments.splits import Splits, make_splits
from mstnet.results_files import ORACLE_POSTERIORS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRuns:
    """A results folder bound to one cohort and its folds."""

    runs_dir: Path
    cohort: Cohort
    splits: Splits
    cohort_dir: Path | None = None
    preset: str | None = None
    crop_size: tuple[int, ...] | None = None


def default_cohort_dir(preset: str, seed: int = 0) -> Path:
    """The embedded synthetic cohort for ``preset``, generated on first use and cached."""
    from mstnet.synth import ensure_default_cohort

    return Path(ensure_default_cohort(preset, seed=seed))


def prepare_runs(runs_dir: Path, preset: RunPreset, data: Path | None = None, seed: int = 0, write: bool = True,
                 binarize_masks: str | None = None, synthetic: str | None = None) -> PreparedRuns:
    """Load the cohort (``data``, or the embedded synthetic cohort) and fix the folds of ``runs_dir``.

    Args:
        synthetic: the synthetic-cohort preset used without ``data`` (default: the run preset's
            name, e.g. ``cpu``; ``claims`` for the signal-controlled cohort on the cpu grid).
        write: write ``splits.json``, ``cohort.json`` and ``oracle.json`` now; ``False``
            leaves that to :func:`commit_runs` (``run_group`` does it once its checks pass).
        binarize_masks: how non-binary masks are read (None: refused; see ``mstnet data validate``).

    Raises:
        CohortError: a cohort that cannot be split into the preset's folds.
        UsageError: ``runs_dir`` holds other folds than this cohort and seed give.
    """
    runs_dir = Path(runs_dir)
    cohort_dir = Path(data) if data is not None else default_cohort_dir(synthetic or preset.name, seed=seed)
    cohort = load_cohort(cohort_dir, binarize_masks=binarize_masks)
    # What the folds need (patients, enough of each label), before they are drawn; the full
    # check of images and clinical records comes in :func:`preflight`.
    problems = validate_cohort(cohort, CohortNeeds(n_folds=preset.n_folds, clinical=False), check_images=False)
    if problems:
        raise CohortError(problems)
    fresh = make_splits(cohort.patient_ids, cohort.labels, n_folds=preset.n_folds,
                        validation_fraction=preset.validation_fraction, seed=seed)
    splits_path = runs_dir / "splits.json"
    splits = fresh
    if splits_path.exists():
        splits = Splits.read(splits_path)
        if splits.hash != fresh.hash:
            raise UsageError(
                f"{splits_path} holds other folds than this cohort and seed give (hash {splits.hash[:12]} vs "
                f"{fresh.hash[:12]}): results in one folder must share folds; use another --out"
            )
    prepared = PreparedRuns(runs_dir, cohort, splits, cohort_dir, preset.name, tuple(preset.crop_size))
    if write:
        commit_runs(prepared)
    return prepared


def commit_runs(prepared: PreparedRuns) -> None:
    """Write the folder's ``splits.json`` (once), ``cohort.json`` and ``oracle.json``."""
    runs_dir, cohort, splits, cohort_dir = prepared.runs_dir, prepared.cohort, prepared.splits, prepared.cohort_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (runs_dir / "splits.json").exists():
        splits.write(runs_dir / "splits.json")
    if cohort_dir is None:
        return
    ground_truth = (cohort_dir / "ground_truth.csv").exists()
    write_text_atomic(runs_dir / "cohort.json", json.dumps({
        "name": cohort_dir.name, "source": str(cohort_dir.resolve()), "patients": len(cohort),
        "malignant": int(sum(cohort.labels)), "synthetic": ground_truth, "preset": prepared.preset,
        "crop_size": list(prepared.crop_size or ()), "splits_hash": splits.hash,
        "note": ("synthetic cohort with known ground truth (not NLST)" if ground_truth else "user cohort"),
    }, indent=2) + "\n")
    truth = cohort_dir / "ground_truth.csv"
    if ground_truth:
        write_oracle_posteriors(pd.read_csv(truth, dtype={"patient_id": str}), runs_dir / ORACLE_POSTERIORS_FILE,
                                {patient.patient_id for patient in cohort})
    oracle = cohort_dir / "oracle.json"
    if oracle.exists():
        ceilings = json.loads(oracle.read_text())
        ceilings = ceilings.get("auc", ceilings)
        write_text_atomic(runs_dir / "oracle.json", json.dumps(
            {key: float(value) for key, value in ceilings.items() if isinstance(value, (int, float))}, indent=2) + "\n")


def write_oracle_posteriors(truth: pd.DataFrame, path: Path, patients: set[str]) -> Path | None:
    """Each cohort patient's label and oracle posteriors (``oracle_<key>`` of ``ground_truth.csv``) -> ``path``.

    ``everything`` is ``oracle_posterior`` in the truth table; it is written as ``oracle_everything``.
    None (nothing written) when the truth table has no oracle columns.
    """
    columns = [column for column in truth.columns if column.startswith("oracle_")]
    if not columns:
        return None
    frame = truth.loc[truth["patient_id"].isin(patients), ["patient_id", "label", *columns]]
    frame = frame.rename(columns={"oracle_posterior": "oracle_everything"})
    return write_text_atomic(path, frame.to_csv(index=False))


def cohort_needs(specs: Sequence[ExperimentSpec], n_folds: int) -> CohortNeeds:
    """What the experiments of a run need of the cohort together."""
    return CohortNeeds(min_timepoints=max(spec.data_view.timepoints for spec in specs), n_folds=n_folds,
                       segmentation=any("segmentation" in spec.tasks for spec in specs),
                       clinical=any(spec.data_view.use_clinical for spec in specs))


def preflight(prepared: PreparedRuns, specs: Sequence[ExperimentSpec], options: RunOptions, folds: Sequence[int],
              overwrite: bool = False, seeds: int = 1) -> None:
    """Every check of a run, before anything is written.

    1. The cohort, against what ``specs`` need, reading every volume in full (all problems at once).
    2. The folds asked for exist.
    3. Every experiment's settings resolve (unknown ``--set`` keys and wrong types refused).
    4. No fold folder (of any of the ``seeds`` training-seed replicates) holds another
       configuration; with ``overwrite``, such folds are removed.

    Raises:
        CohortError: the cohort's problems. UsageError: anything else.
    """
    replicates = {spec.name: training_seeds(spec, seeds) for spec in specs}
    bad_folds = [fold for fold in folds if not 0 <= fold < prepared.splits.n_folds]
    if bad_folds:
        raise UsageError(f"--folds {','.join(map(str, bad_folds))}: no such fold; the folds are 0-{prepared.splits.n_folds - 1}")
    if len(set(folds)) != len(folds):
        raise UsageError(f"--folds {','.join(map(str, folds))} names a fold twice")
    problems = validate_cohort(prepared.cohort, cohort_needs(specs, prepared.splits.n_folds), read_data=True)
    if problems:
        raise CohortError(problems)
    conflicts = [line for spec in specs for seed in replicates[spec.name]
                 for line in check_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir,
                                              options.for_seed(seed), folds)]
    if overwrite:
        for spec in specs:
            for seed, fold in ((seed, fold) for seed in replicates[spec.name] for fold in folds):
                folder = fold_dir_of(prepared.runs_dir, spec.name, fold, seed)
                if any(line.startswith(f"{folder} ") for line in conflicts):
                    log.warning("--overwrite: removing %s", folder)
                    shutil.rmtree(folder)
        return
    refuse_conflicts(conflicts)


def _run_one_fold(name: str, prepared: PreparedRuns, options: RunOptions, fold: int,
                  threads: int) -> tuple[str, int, int]:
    """Worker of :func:`run_group` with ``jobs > 1``: one (experiment, seed, fold) in its own process
    (the seed replicate is ``options.seed_index``)."""
    import torch

    from mstnet.experiments.registry import get_experiment

    torch.set_num_threads(threads)
    run_experiment(get_experiment(name), prepared.cohort, prepared.splits, prepared.runs_dir, options, folds=[fold])
    return name, options.seed_index, fold


def run_group(prepared: PreparedRuns, specs: Sequence[ExperimentSpec], options: RunOptions,
              folds: Sequence[int] | None = None, jobs: int = 1, overwrite: bool = False, launcher=None,
              seeds: int = 1) -> None:
    """Run every experiment of ``specs`` on the prepared folds (finished folds are skipped), ``seeds``
    times with training seeds ``recipe.seed + s`` (tabular experiments once; see the module docstring).

    :func:`preflight` runs first; only then are the folder's files written.

    With a ``launcher`` (:class:`mstnet.experiments.launcher.Launcher`, ``--launcher slurm``),
    the unfinished (experiment, seed, fold) triples run as the tasks of one SLURM job array instead,
    after the same checks, and this waits for them (``jobs`` does not apply).

    With ``jobs > 1``, (experiment, seed, fold) triples run in that many processes, sharing the
    machine's cores between them (each fold writes only its own folder, atomically).
    Small 3D networks on a CPU use several processes better than several threads.
    """
    folds = list(folds) if folds is not None else list(range(prepared.splits.n_folds))
    preflight(prepared, specs, options, folds, overwrite=overwrite, seeds=seeds)
    commit_runs(prepared)
    if launcher is not None:
        launcher.run_folds(prepared, specs, options, folds, seeds=seeds)
        return
    if jobs <= 1:
        for index, spec in enumerate(specs, start=1):
            log.info("[%d/%d] %s", index, len(specs), spec.name)
            for seed in training_seeds(spec, seeds):
                run_experiment(spec, prepared.cohort, prepared.splits, prepared.runs_dir, options.for_seed(seed),
                               folds=folds)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    worker_options = replace(options, progress=False)
    # Dense-prediction networks cost several times a classifier's step: start them first so
    # the short classification folds fill the end and both processes finish together.
    ordered = sorted(specs, key=lambda spec: "segmentation" not in spec.tasks)
    tasks = [(spec.name, seed, fold) for spec in ordered for seed in training_seeds(spec, seeds) for fold in folds]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one_fold, name, prepared, worker_options.for_seed(seed), fold, threads)
                   for name, seed, fold in tasks]
        for future in tqdm(as_completed(futures), total=len(futures), desc="folds", disable=not options.progress):
            name, seed, fold = future.result()
            log.info("%s%s fold %d done", name, f" seed {seed}" if seed else "", fold)


def claims_experiments() -> list[ExperimentSpec]:
    """MST-Net and the variants the claims need (:data:`mstnet.claims.CLAIM_EXPERIMENTS`), full model first."""
    return [get_experiment(name) for name in CLAIM_EXPERIMENTS]


def paper_table_experiments() -> list[ExperimentSpec]:
    """The registered experiments that fill rows of the paper's Table 1."""
    return list_experiments(group="paper-table")
