"""Score another tool's predictions with the suite's metrics, into a results folder like the suite's own.

``mstnet evaluate PRED --data COHORT --name NAME --out RUNS_DIR`` (:func:`evaluate_predictions`):

- ``PRED`` is a folder of predicted masks named by patient and time point after a pattern
  (default :data:`~mstnet.experiments.prediction_folder.DEFAULT_PATTERN`,
  ``{patient_id}_{timepoint}.nii.gz``; NIfTI, DICOM series folders or ``.npy`` with the readers
  of :mod:`mstnet.data.io`), and/or a CSV of patient probabilities (``patient_id,probability``:
  ``PRED`` itself, ``PRED/probabilities.csv`` or ``--probabilities``).
- Each mask is scored on the whole field of its scan, in the geometry of the cohort's image of
  that scan (shape, spacing, origin and axis directions after the readers' reorientation to
  RAS+), against the scan's full reference mask at the scan's own spacing: the same
  :func:`mstnet.experiments.fold_metrics.scan_segmentation_row` call (overlap metrics and both
  volumes) the harness makes on its test folds
  (:func:`mstnet.experiments.evaluation_fold.field_segmentation_metrics`). A mask whose grid is not
  the image's (another shape, spacing, origin or orientation) is refused, naming the file and
  both geometries, unless ``resample=True`` (``--resample``): it is then resampled onto the
  image grid with SimpleITK, nearest neighbour, through physical coordinates. A mask stored
  in another orientation on the *same* grid (e.g. LPS, as ITK-based tools write) is the same
  grid after reorientation and is scored as is.
- Probabilities are scored with :func:`mstnet.metrics.classification_metrics` at 0.5.
- Folds: the suite's folds of ``folds_from`` (its ``splits.json``; each test patient scored in
  its fold), else one fold (fold 0) holding every patient of the cohort as test patients.

Which scans must be predicted: for every test patient of every evaluated fold, the latest
``timepoints`` scans (default: every scan; ``prediction.json`` of a folder written by
``mstnet predict`` or ``mstnet run --export-masks`` gives the number its model saw) that have
a reference mask. A missing prediction is an error, never a silently smaller test set;
predictions of other scans and patients are ignored (logged). ``mstnet predict`` output scored
on another fold than the one fold it was predicted with (an ensemble, or fold j's model on
fold k's test patients, which it was trained on) is logged as a warning.

The results folder follows ``docs/results-format.md`` (``experiment.json`` with ``"kind":
"external"``; per fold ``config.json``, ``metrics.json``, ``predictions.csv``,
``segmentation.csv``, ``run.json``), so ``mstnet report`` tables and paired tests include the
method. There is no inner validation: ``classification_at_validation_threshold`` repeats the
fixed-threshold block with ``validation_threshold`` 0.5. Nothing is written until every check
has passed.

Where the parts live: the layout of ``PRED`` in :mod:`mstnet.experiments.prediction_folder`, the
grids in :mod:`mstnet.experiments.mask_geometry`, the folds in
:mod:`mstnet.experiments.evaluation_folds`, and the results folder in
:mod:`mstnet.experiments.evaluation_results`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mstnet.data.cohort import Cohort, CohortError, Problem, Scan
from mstnet.data.io import check_mask_binarization, read_mask
from mstnet.errors import UsageError
from mstnet.experiments.evaluation_folds import evaluation_splits, folds_to_score, warn_leaks
from mstnet.experiments.evaluation_results import Evaluation, check_target, write_evaluation
from mstnet.experiments.fold_metrics import fold_metrics, scan_segmentation_row
from mstnet.experiments.mask_geometry import geometry_differences, resample_to, volume_geometry
from mstnet.experiments.prediction_folder import (
    DEFAULT_PATTERN,
    PROBABILITIES_FILE,
    find_mask_files,
    prediction_record,
    read_probabilities,
)

log = logging.getLogger(__name__)


def scored_scans(cohort: Cohort, patient_id: str, timepoints: int | None) -> list[Scan]:
    """The scans of a patient that must be predicted: the latest ``timepoints`` (all: None) with a reference mask."""
    scans = cohort[patient_id].scans
    if timepoints is not None:
        scans = scans[-timepoints:]
    return [scan for scan in scans if scan.mask is not None]


def score_mask(cohort: Cohort, patient_id: str, scan: Scan, mask_path: Path, resample: bool = False,
               binarize: str | None = None) -> tuple[dict[str, float], bool]:
    """(Dice, Jaccard, HD95, ASD) of one predicted mask on its scan's whole field, and whether it was resampled.

    Raises:
        CohortError: (one line naming the file and both geometries) a mask on another grid than
            its image, without ``resample``.
    """
    image = volume_geometry(scan.image)
    predicted_geometry = volume_geometry(mask_path, image_shape=image.shape)
    try:
        predicted = read_mask(mask_path, image_shape=image.shape if predicted_geometry.origin is None else None,
                              binarize=binarize).array.astype(bool)
    except CohortError as error:  # the reader's hint names the cohort's option; predictions have their own
        raise CohortError([Problem(p.message.replace("--binarize-masks", "--binarize-predictions"), patient_id,
                                   scan.timepoint, p.file) for p in error.problems]) from None
    differences = geometry_differences(predicted_geometry, image)
    if differences and not resample:
        raise CohortError(Problem(
            f"predicted mask's {', '.join(differences)} {'differs' if len(differences) == 1 else 'differ'} from its "
            f"image's: mask {predicted_geometry.describe()}; "
            f"image {image.describe()} ({scan.image}); pass --resample to resample masks onto their image's grid "
            "(nearest neighbour)", patient_id=patient_id, timepoint=scan.timepoint, file=str(mask_path)))
    if differences:
        log.info("%s: %s differ(s) from the image's; resampled onto the image grid", mask_path, ", ".join(differences))
        predicted = resample_to(predicted, predicted_geometry, image, mask_path)
    truth = read_mask(scan.mask, image_shape=image.shape, binarize=cohort.mask_binarization).array.astype(bool)
    if truth.shape != image.shape:
        raise CohortError(Problem(f"reference mask shape {truth.shape} differs from image shape {image.shape}",
                                  patient_id=patient_id, timepoint=scan.timepoint, file=str(scan.mask)))
    spacing = image.spacing or (1.0, 1.0, 1.0)
    return scan_segmentation_row(predicted, truth, spacing), bool(differences)



# ----------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Predicted:
    """What ``PRED`` holds: masks by (patient, time point), probabilities by patient, and where they came from."""

    masks: dict[tuple[str, str], Path]
    probabilities: dict[str, float]
    probability_file: Path | None
    record: dict[str, Any]
    """``prediction.json`` of a folder written by ``mstnet predict`` ({} when absent)."""
    timepoints: int | None
    """The ``timepoints`` asked for, else the number recorded in ``prediction.json``."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for task, present in (("segmentation", bool(self.masks)),
                                                ("classification", bool(self.probabilities))) if present)

    @property
    def patients(self) -> set[str]:
        return {p for p, _ in self.masks} | set(self.probabilities)


def _check_arguments(predictions: Path, name: str, timepoints: int | None, binarize_predictions: str | None) -> None:
    """Refuse a bad binarisation rule, method name or ``timepoints``, and a ``PRED`` that does not exist."""
    from mstnet.experiments.registry import list_experiments

    check_mask_binarization(binarize_predictions)
    if not name or name.startswith(".") or any(c in name for c in "\\:*?\"<>|") or name.strip() != name:
        raise UsageError(f"--name {name!r}: give a plain method name such as 'nnunet-3d'")
    if name in {spec.name for spec in list_experiments()}:
        raise UsageError(f"--name {name!r} is a registered experiment of the suite; give your method another name")
    if timepoints is not None and timepoints < 1:
        raise UsageError(f"--timepoints {timepoints}: must be at least 1")
    if not predictions.exists():
        raise CohortError(Problem("does not exist", file=str(predictions)))


def _read_predictions(predictions: Path, cohort: Cohort, pattern: str, probabilities: str | Path | None,
                      timepoints: int | None) -> _Predicted:
    """The masks and probabilities of ``PRED`` (a folder or a CSV), refusing a ``PRED`` that holds neither."""
    masks: dict[tuple[str, str], Path] = {}
    record: dict[str, Any] = {}
    probability_file = Path(probabilities) if probabilities is not None else None
    if predictions.is_dir():
        masks = find_mask_files(predictions, pattern, cohort)
        if probability_file is None and (predictions / PROBABILITIES_FILE).exists():
            probability_file = predictions / PROBABILITIES_FILE
        record = prediction_record(predictions)
        if timepoints is None and isinstance(record.get("timepoints"), int) and record["timepoints"] > 0:
            timepoints = int(record["timepoints"])
    elif predictions.suffix.lower() == ".csv":
        probability_file = probability_file or predictions
    else:
        raise UsageError(f"{predictions}: PRED must be a folder of masks or a CSV of probabilities")
    patient_probabilities = read_probabilities(probability_file, cohort) if probability_file is not None else {}
    predicted = _Predicted(masks, patient_probabilities, probability_file, record, timepoints)
    if not predicted.tasks:
        raise CohortError(Problem(f"no predictions: no mask named like {pattern!r} for a scan of cohort {cohort.name!r}, "
                                  f"and no probabilities ({PROBABILITIES_FILE} or --probabilities)", file=str(predictions)))
    return predicted


def _check_every_prediction_present(predicted: _Predicted, cohort: Cohort, evaluation: Evaluation,
                                    fold_list: Sequence[int], source: Path) -> None:
    """Every check on inputs that costs no image reads, all problems at once: a probability and a label for every
    test patient, a mask for every scored scan."""
    problems = []
    for k in fold_list:
        test = list(evaluation.splits.folds[k].test)
        if "classification" in evaluation.tasks:
            lacking = [p for p in test if p not in predicted.probabilities]
            if lacking:
                problems.append(f"fold {k}: no probability for {len(lacking)} of {len(test)} test patients "
                                f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''})")
            unlabelled = [p for p in test if cohort[p].label not in (0, 1)]
            if unlabelled:
                problems.append(f"fold {k}: test patients without a label 0/1 in the cohort ({', '.join(unlabelled[:5])})")
        if "segmentation" in evaluation.tasks:
            lacking = [f"{p} {s.timepoint}" for p in test for s in scored_scans(cohort, p, predicted.timepoints)
                       if (p, s.timepoint) not in predicted.masks]
            if lacking:
                hint = ("" if predicted.timepoints is not None
                        else "; --timepoints K scores only the latest K scans of each patient")
                problems.append(f"fold {k}: no predicted mask for {len(lacking)} scan(s) with a reference mask "
                                f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}){hint}")
    if problems:
        raise CohortError(Problem("; ".join(problems), file=str(source)))


def _score_folds(evaluation: Evaluation, predicted: _Predicted, cohort: Cohort, fold_list: Sequence[int],
                 resample: bool, binarize: str | None) -> None:
    """Score the test patients and scans of every fold of ``fold_list`` into ``evaluation``."""
    masks = predicted.masks
    for k in fold_list:
        patients, scans = [], []
        for patient_id in evaluation.splits.folds[k].test:
            if "classification" in evaluation.tasks:
                patients.append({"patient_id": patient_id, "fold": k, "label": int(cohort[patient_id].label),
                                 "probability": float(predicted.probabilities[patient_id])})
            if "segmentation" in evaluation.tasks:
                for scan in scored_scans(cohort, patient_id, predicted.timepoints):
                    values, resampled = score_mask(cohort, patient_id, scan, masks[patient_id, scan.timepoint],
                                                   resample=resample, binarize=binarize)
                    if resampled:
                        evaluation.resampled.setdefault(k, []).append(str(masks[patient_id, scan.timepoint]))
                    scans.append({"patient_id": patient_id, "timepoint": scan.timepoint, "fold": k, **values})
        evaluation.patients[k], evaluation.scans[k] = patients, scans
        evaluation.metrics[k] = fold_metrics(scans, patients)
    scored = {(r["patient_id"], r["timepoint"]) for rows in evaluation.scans.values() for r in rows}
    ignored = len(set(masks) - scored)
    if ignored:
        log.info("%d predicted mask(s) outside the scored scans ignored", ignored)


def evaluate_predictions(predictions: str | Path, cohort: Cohort, runs_dir: str | Path, name: str, *,
                         cohort_dir: str | Path | None = None, folds_from: str | Path | None = None,
                         folds: Sequence[int] | None = None, probabilities: str | Path | None = None,
                         pattern: str = DEFAULT_PATTERN, timepoints: int | None = None, resample: bool = False,
                         binarize_predictions: str | None = None, description: str | None = None,
                         overwrite: bool = False, write: bool = True) -> Evaluation:
    """Score predicted masks and/or probabilities and write them to ``runs_dir/<name>/`` (see the module docstring).

    Args:
        predictions: a folder of masks (and maybe ``probabilities.csv``), or a probabilities CSV.
        cohort: the cohort the predictions are for (its images give the geometry, its masks and
            labels the truth).
        runs_dir: the results folder to write into (may be the ``folds_from`` folder itself).
        name: the method's name in the results (``runs_dir/<name>/``); not a registered experiment.
        cohort_dir: where ``cohort`` was read from (recorded in ``cohort.json``).
        folds_from: a results folder whose ``splits.json`` gives the folds; default: one fold of everyone.
        folds: the folds to score (default: every fold with a prediction for one of its test patients).
        probabilities: the probabilities CSV (default: ``predictions`` when it is a CSV, else
            ``predictions/probabilities.csv`` when present).
        pattern: mask file names (:data:`~mstnet.experiments.prediction_folder.DEFAULT_PATTERN`).
        timepoints: score the latest ``timepoints`` scans of each patient (default: all, or the
            number recorded in ``predictions/prediction.json``).
        resample: resample masks on another grid than their image's (nearest neighbour) instead
            of refusing them.
        binarize_predictions: how predicted masks with values other than 0 and 1 are read
            (``nonzero`` or ``half``; default: refused).
        overwrite: replace an earlier ``mstnet evaluate`` result of the same name.
        write: write the results (False: only measure).

    Raises:
        UsageError: a bad name, pattern or fold; a results folder holding other folds or other
            results under ``name``.
        CohortError: missing or unreadable predictions, a mask on another grid (without ``resample``),
            a test patient without a label.
    """
    started = datetime.now(timezone.utc).isoformat()
    clock = time.perf_counter()
    predictions, runs_dir = Path(predictions), Path(runs_dir)
    _check_arguments(predictions, name, timepoints, binarize_predictions)
    predicted = _read_predictions(predictions, cohort, pattern, probabilities, timepoints)
    splits = evaluation_splits(cohort, folds_from)
    fold_list = folds_to_score(splits, folds, predicted.patients, predictions)
    warn_leaks(predicted.record, splits, fold_list)
    evaluation = Evaluation(runs_dir, name, splits, predicted.tasks)
    if write:
        check_target(evaluation, overwrite)
    skipped = sorted(set(range(splits.n_folds)) - set(fold_list))
    if skipped:
        log.info("scoring fold(s) %s; fold(s) %s left out", ",".join(map(str, fold_list)), ",".join(map(str, skipped)))
    _check_every_prediction_present(predicted, cohort, evaluation, fold_list, predictions)
    _score_folds(evaluation, predicted, cohort, fold_list, resample, binarize_predictions)
    if write:
        write_evaluation(evaluation, cohort, cohort_dir, predictions, predicted.probability_file, pattern,
                         predicted.timepoints, resample, binarize_predictions, description, overwrite, started,
                         time.perf_counter() - clock)
    return evaluation
