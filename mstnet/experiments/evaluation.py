"""Score another tool's predictions with the suite's metrics, into a results folder like the suite's own.

``mstnet evaluate PRED --data COHORT --name NAME --out RUNS_DIR`` (:func:`evaluate_predictions`):

- ``PRED`` is a folder of predicted masks named by patient and time point after a pattern
  (default :data:`DEFAULT_PATTERN`, ``{patient_id}_{timepoint}.nii.gz``; NIfTI, DICOM series
  folders or ``.npy`` with the readers of :mod:`mstnet.data.io`), and/or a CSV of patient
  probabilities (``patient_id,probability``: ``PRED`` itself, ``PRED/probabilities.csv`` or
  ``--probabilities``).
- Each mask is scored on the whole field of its scan, in the geometry of the cohort's image of
  that scan (shape, spacing, origin and axis directions after the readers' reorientation to
  RAS+), against the scan's full reference mask at the scan's own spacing: the same
  :func:`mstnet.metrics.segmentation_metrics` call the harness makes on its test folds
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
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import Cohort, CohortError, Problem, Scan
from mstnet.data.io import (
    affine_geometry,
    check_mask_binarization,
    dicom_stored_geometry,
    image_format,
    npy_sidecar,
    read_mask,
    read_volume_info,
)
from mstnet.errors import UsageError
from mstnet.experiments.fold_metrics import fold_metrics
from mstnet.experiments.identity import CONFIG_FILE, IDENTITY_KEY, cohort_fingerprint, configuration_hash
from mstnet.experiments.splits import Fold, Splits
from mstnet.metrics import DECISION_THRESHOLD, segmentation_metrics

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "{patient_id}_{timepoint}.nii.gz"
"""How predicted masks are named inside ``PRED``: ``{patient_id}`` and ``{timepoint}`` are
replaced by each scan's values (``/`` allowed, for sub-folders; a DICOM series is a folder, e.g.
``{patient_id}_{timepoint}``)."""

PROBABILITIES_FILE = "probabilities.csv"
"""The probabilities CSV looked for inside ``PRED`` (and written by ``mstnet predict``)."""

PREDICTION_RECORD = "prediction.json"
"""Written by ``mstnet predict`` and ``mstnet run --export-masks`` beside their masks."""

EXTERNAL_KIND = "external"
"""``experiment.json`` ``kind`` of results written by ``mstnet evaluate``."""

SPACING_RTOL = 1e-4
"""Relative tolerance on spacings (headers store float32)."""
ORIGIN_TOL_VOXELS = 0.01
"""Origins within this fraction of the smallest voxel size count as equal."""
DIRECTION_TOL = 1e-4


# ----------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """The grid a volume's array lies on, as :mod:`mstnet.data.io` returns it (RAS+, ``(D, H, W)``).

    ``origin`` (LPS mm of voxel ``[0, 0, 0]``), ``direction`` (LPS unit vectors of the W, H, D
    axes) and ``orientation`` (the axis codes the file stores, e.g. ``RAS`` or ``LPS``) are None
    for ``.npy`` files, which carry no position; ``spacing`` is None for a ``.npy`` file
    without a sidecar.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None = None
    direction: tuple[tuple[float, float, float], ...] | None = None
    orientation: str | None = None

    def describe(self) -> str:
        parts = ["shape " + "x".join(str(n) for n in self.shape)]
        parts.append("spacing " + ("x".join(f"{s:.4g}" for s in self.spacing) + " mm" if self.spacing else "unknown"))
        if self.origin is not None:
            parts.append("origin (" + ", ".join(f"{v:.4g}" for v in self.origin) + ") mm")
        if self.direction is not None:
            parts.append(f"axes {axis_codes(self.direction)}" + (f" (stored {self.orientation})" if self.orientation else ""))
        return ", ".join(parts)


def axis_codes(direction: Sequence[Sequence[float]]) -> str:
    """``RAS`` etc.: where each of the W, H, D axes points (LPS direction vectors in, RAS codes out)."""
    codes = []
    for vector in direction:
        ras = np.asarray(vector, dtype=float) * np.array([-1.0, -1.0, 1.0])
        axis = int(np.argmax(np.abs(ras)))
        codes.append(("R", "A", "S")[axis] if ras[axis] > 0 else ("L", "P", "I")[axis])
    return "".join(codes)


def _canonical(shape_xyz: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxel shape ``(x, y, z)`` and RAS affine after reorientation to RAS+ (as :func:`mstnet.data.io.reorient_to_ras`)."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("R", "A", "S")))
    xyz = tuple(int(n) for n in shape_xyz)
    new_xyz = [0, 0, 0]
    for axis in range(3):
        new_xyz[int(transform[axis, 0])] = xyz[axis]
    return tuple(new_xyz), affine @ nib.orientations.inv_ornt_aff(transform, xyz)


def stored_affine(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """``(x, y, z)`` shape and RAS affine of a NIfTI file or DICOM series as stored; None for ``.npy``."""
    kind = image_format(path)
    if kind == "nifti":
        try:
            image = nib.load(str(path))
        except Exception as error:  # nibabel raises several unrelated types for damaged files
            raise CohortError(Problem(f"cannot be read as NIfTI: {error}", file=str(path))) from error
        shape = tuple(int(n) for n in image.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise CohortError(Problem(f"expected a 3D volume, got shape {shape}", file=str(path)))
        return shape, np.asarray(image.affine, dtype=float)
    if kind == "dicom":
        (slices, rows, columns), affine = dicom_stored_geometry(path)
        return (columns, rows, slices), affine
    return None


def volume_geometry(path: str | Path, image_shape: Sequence[int] | None = None) -> Geometry:
    """The :class:`Geometry` of a volume from its headers (no voxel data read)."""
    path = Path(path)
    stored = stored_affine(path)
    if stored is None:
        info = read_volume_info(path)
        shape = info.shape
        if image_shape is not None and shape != tuple(image_shape) and shape == tuple(image_shape)[1:] + tuple(image_shape)[:1]:
            shape = tuple(image_shape)  # stored slice axis last (the NLST layout); read_mask moves it
        return Geometry(shape, info.spacing if npy_sidecar(path).exists() else None)
    shape_xyz, affine = stored
    canonical_xyz, canonical_affine = _canonical(shape_xyz, affine)
    spacing, origin, direction = affine_geometry(canonical_affine)
    return Geometry(tuple(canonical_xyz[::-1]), spacing, origin, direction, "".join(nib.aff2axcodes(affine)))


def geometry_differences(mask: Geometry, image: Geometry) -> list[str]:
    """What differs between two grids: ``shape``, ``spacing``, ``origin``, ``orientation`` (unknown parts skipped).

    The grids are compared after reorientation to RAS+, so a mask stored in another axis order
    on the same grid (LPS, as ITK writes) differs in nothing; when the grids differ, a different
    stored axis order is named too.
    """
    found = []
    if mask.shape != image.shape:
        found.append("shape")
    if mask.spacing is not None and image.spacing is not None and not np.allclose(
            mask.spacing, image.spacing, rtol=SPACING_RTOL, atol=0.0):
        found.append("spacing")
    if mask.direction is not None and image.direction is not None and not np.allclose(
            mask.direction, image.direction, atol=DIRECTION_TOL, rtol=0.0):
        found.append("orientation")
    if mask.origin is not None and image.origin is not None:
        tolerance = ORIGIN_TOL_VOXELS * min(image.spacing or (1.0,))
        if not np.allclose(mask.origin, image.origin, atol=tolerance, rtol=0.0):
            found.append("origin")
    if found and "orientation" not in found and mask.orientation and image.orientation \
            and mask.orientation != image.orientation:
        found.append("orientation")  # stored axis order differs too (e.g. a flip written without its affine)
    return found


def resample_to(mask: np.ndarray, source: Geometry, target: Geometry, file: str | Path) -> np.ndarray:
    """``mask`` (on ``source``'s grid) resampled onto ``target``'s grid, nearest neighbour (SimpleITK).

    A side without a position (``.npy``) takes the other's origin and axes: both grids then start
    at the same voxel centre. A side without spacing cannot be resampled.
    """
    import SimpleITK as sitk

    if source.spacing is None:
        raise CohortError(Problem(f"cannot resample: a .npy mask without a sidecar {npy_sidecar(Path(file)).name} "
                                  "has no spacing", file=str(file)))
    canonical_axes = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))  # RAS+ axes in LPS
    origins = source.origin or target.origin or (0.0, 0.0, 0.0), target.origin or source.origin or (0.0, 0.0, 0.0)
    directions = (source.direction or target.direction or canonical_axes,
                  target.direction or source.direction or canonical_axes)

    def image(array: np.ndarray | None, geometry: Geometry, origin, direction) -> "sitk.Image":
        if array is None:
            result = sitk.Image([int(n) for n in geometry.shape[::-1]], sitk.sitkUInt8)
        else:
            result = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
        result.SetSpacing([float(s) for s in (geometry.spacing or source.spacing)[::-1]])
        result.SetOrigin([float(v) for v in origin])
        result.SetDirection([float(v) for v in np.asarray(direction, dtype=float).T.ravel()])
        return result

    moving = image(mask, source, origins[0], directions[0])
    reference = image(None, target, origins[1], directions[1])
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(bool)


# ----------------------------------------------------------------------------------------------- inputs


def pattern_regex(pattern: str) -> re.Pattern:
    """A regular expression matching the names ``pattern`` produces (for spotting files that name no scan)."""
    if "{patient_id}" not in pattern or "{timepoint}" not in pattern:
        raise UsageError(f"--pattern {pattern!r} must contain {{patient_id}} and {{timepoint}}, "
                         f"e.g. {DEFAULT_PATTERN!r}")
    parts = re.split(r"(\{patient_id\}|\{timepoint\})", pattern)
    regex = "".join("[^/]+" if part in ("{patient_id}", "{timepoint}") else re.escape(part) for part in parts)
    return re.compile(f"^{regex}$")


def mask_name(pattern: str, patient_id: str, timepoint: str) -> str:
    try:
        return pattern.format(patient_id=patient_id, timepoint=timepoint)
    except (KeyError, IndexError, ValueError) as error:
        raise UsageError(f"--pattern {pattern!r}: only {{patient_id}} and {{timepoint}} may be named ({error})") from None


def find_mask_files(folder: Path, pattern: str, cohort: Cohort) -> dict[tuple[str, str], Path]:
    """The predicted mask of every cohort scan that has one in ``folder``, keyed by (patient, time point).

    Files that match the pattern but name no scan of the cohort are logged and ignored (a
    naming mistake then shows as missing predictions, which :func:`evaluate_predictions` refuses).
    """
    regex = pattern_regex(pattern)
    found = {}
    expected = set()
    for patient in cohort:
        for scan in patient.scans:
            name = mask_name(pattern, patient.patient_id, scan.timepoint)
            expected.add(name)
            if (folder / name).exists():
                found[patient.patient_id, scan.timepoint] = folder / name
    depth = pattern.count("/")
    candidates = folder.glob("/".join(["*"] * (depth + 1)))
    strays = sorted(str(p.relative_to(folder)) for p in candidates
                    if regex.match(str(p.relative_to(folder))) and str(p.relative_to(folder)) not in expected)
    if strays:
        log.warning("%s: %d file(s) match the pattern %r but name no scan of cohort %r, ignored: %s%s", folder,
                    len(strays), pattern, cohort.name, ", ".join(strays[:5]), " ..." if len(strays) > 5 else "")
    return found


def read_probabilities(path: Path, cohort: Cohort) -> dict[str, float]:
    """``patient_id -> probability`` from a CSV with columns ``patient_id`` and ``probability``.

    Patients that are not in the cohort are logged and ignored.

    Raises:
        CohortError: a missing column, a duplicate patient, a probability that is not a number
            in [0, 1] (named with its line).
    """
    if not path.exists():
        raise CohortError(Problem("does not exist", file=str(path)))
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(Problem(f"cannot be read as CSV: {error}", file=str(path))) from None
    missing = [c for c in ("patient_id", "probability") if c not in frame.columns]
    if missing:
        raise CohortError(Problem(f"column(s) {missing} missing (expected patient_id,probability; found "
                                  f"{list(frame.columns)})", file=str(path)))
    known = set(cohort.patient_ids)
    problems, probabilities, strays = [], {}, []
    for index, (patient_id, value) in enumerate(zip(frame["patient_id"].astype(str).str.strip(), frame["probability"])):
        line = index + 2
        try:
            probability = float(value)
        except (TypeError, ValueError):
            probability = math.nan
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            problems.append(Problem(f"line {line}: probability must be a number in [0, 1], got {value!r}",
                                    patient_id=patient_id, file=str(path)))
        elif patient_id not in known:
            strays.append(patient_id)
        elif patient_id in probabilities:
            problems.append(Problem(f"line {line}: second probability for this patient", patient_id=patient_id,
                                    file=str(path)))
        else:
            probabilities[patient_id] = probability
    if problems:
        raise CohortError(problems[0] if len(problems) == 1 else Problem(
            f"{problems[0]} (and {len(problems) - 1} more problem(s) in this file)"))
    if strays:
        log.warning("%s: %d patient(s) not in cohort %r, ignored: %s%s", path, len(strays), cohort.name,
                    ", ".join(strays[:5]), " ..." if len(strays) > 5 else "")
    return probabilities


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
    return segmentation_metrics(predicted, truth, spacing=tuple(float(s) for s in spacing)), bool(differences)


# ----------------------------------------------------------------------------------------------- folds


def single_fold(patient_ids: Sequence[str]) -> Splits:
    """One fold (fold 0) whose test patients are ``patient_ids`` (no training or validation patients)."""
    return Splits(folds=(Fold(0, (), (), tuple(sorted(patient_ids))),), seed=0)


def read_splits(runs_dir: Path) -> Splits:
    path = Path(runs_dir) / "splits.json"
    if not path.exists():
        raise UsageError(f"--folds-from {runs_dir}: no splits.json there (a results folder of `mstnet run` holds one)")
    try:
        return Splits.read(path)
    except (ValueError, KeyError, TypeError) as error:
        raise CohortError(Problem(f"cannot be read as folds: {error}", file=str(path))) from None


@dataclass
class Evaluation:
    """What :func:`evaluate_predictions` measured: per fold, its patients' and scans' rows and metrics."""

    runs_dir: Path
    name: str
    splits: Splits
    tasks: tuple[str, ...]
    patients: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    scans: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    resampled: dict[int, list[str]] = field(default_factory=dict)
    """Per fold, the masks resampled onto their image's grid (``--resample``)."""

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.name.replace("/", "__")


def _prediction_record(folder: Path) -> dict[str, Any]:
    """``prediction.json`` of a folder written by ``mstnet predict`` / ``--export-masks`` ({} when absent or unreadable)."""
    record = folder / PREDICTION_RECORD
    try:
        data = json.loads(record.read_text()) if record.exists() else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _warn_leaks(record: dict[str, Any], splits: Splits, fold_list: Sequence[int]) -> None:
    """Log when ``mstnet predict`` output of some folds is scored on other folds of the same splits:
    those models were trained on the scored test patients."""
    folds = record.get("folds")
    if record.get("splits_hash") != splits.hash or not isinstance(folds, list):
        return
    leaking = [k for k in fold_list if folds != [k]]
    if leaking:
        log.warning("these predictions come from fold(s) %s of %s, whose models were trained on the test patients "
                    "of fold(s) %s scored here: score fold k with `mstnet predict --fold k` output (--folds k)",
                    ",".join(map(str, folds)), record.get("run_dir", "?"), ",".join(map(str, leaking)))


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
        pattern: mask file names (:data:`DEFAULT_PATTERN`).
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
    from mstnet.experiments.registry import list_experiments

    started = datetime.now(timezone.utc).isoformat()
    clock = time.perf_counter()
    predictions, runs_dir = Path(predictions), Path(runs_dir)
    check_mask_binarization(binarize_predictions)
    if not name or name.startswith(".") or any(c in name for c in "\\:*?\"<>|") or name.strip() != name:
        raise UsageError(f"--name {name!r}: give a plain method name such as 'nnunet-3d'")
    if name in {spec.name for spec in list_experiments()}:
        raise UsageError(f"--name {name!r} is a registered experiment of the suite; give your method another name")
    if timepoints is not None and timepoints < 1:
        raise UsageError(f"--timepoints {timepoints}: must be at least 1")
    if not predictions.exists():
        raise CohortError(Problem("does not exist", file=str(predictions)))

    # What was predicted.
    masks: dict[tuple[str, str], Path] = {}
    record: dict[str, Any] = {}
    probability_file = Path(probabilities) if probabilities is not None else None
    if predictions.is_dir():
        masks = find_mask_files(predictions, pattern, cohort)
        if probability_file is None and (predictions / PROBABILITIES_FILE).exists():
            probability_file = predictions / PROBABILITIES_FILE
        record = _prediction_record(predictions)
        if timepoints is None and isinstance(record.get("timepoints"), int) and record["timepoints"] > 0:
            timepoints = int(record["timepoints"])
    elif predictions.suffix.lower() == ".csv":
        probability_file = probability_file or predictions
    else:
        raise UsageError(f"{predictions}: PRED must be a folder of masks or a CSV of probabilities")
    patient_probabilities = read_probabilities(probability_file, cohort) if probability_file is not None else {}
    tasks = tuple(task for task, present in (("segmentation", bool(masks)), ("classification", bool(patient_probabilities)))
                  if present)
    if not tasks:
        raise CohortError(Problem(f"no predictions: no mask named like {pattern!r} for a scan of cohort {cohort.name!r}, "
                                  f"and no probabilities ({PROBABILITIES_FILE} or --probabilities)", file=str(predictions)))
    predicted_patients = {p for p, _ in masks} | set(patient_probabilities)

    # Which folds.
    splits = read_splits(Path(folds_from)) if folds_from is not None else single_fold(cohort.patient_ids)
    unknown = sorted({p for f in splits.folds for p in f.test} - set(cohort.patient_ids))
    if unknown:
        raise CohortError(Problem(f"the folds hold {len(unknown)} patient(s) that are not in cohort {cohort.name!r} "
                                  f"({', '.join(unknown[:5])}): --data is not the cohort of --folds-from",
                                  file=str(Path(folds_from) / "splits.json") if folds_from else None))
    if folds is None:
        fold_list = [f.fold for f in splits.folds if predicted_patients & set(f.test)]
        if not fold_list:
            raise CohortError(Problem("no prediction for a test patient of any fold", file=str(predictions)))
    else:
        fold_list = list(dict.fromkeys(folds))
        bad = [k for k in fold_list if not 0 <= k < splits.n_folds]
        if bad:
            raise UsageError(f"--folds {','.join(map(str, bad))}: no such fold; the folds are 0-{splits.n_folds - 1}")
    _warn_leaks(record, splits, fold_list)
    if write:
        _check_target(Evaluation(runs_dir, name, splits, tasks), overwrite)
    skipped = sorted(set(range(splits.n_folds)) - set(fold_list))
    if skipped:
        log.info("scoring fold(s) %s; fold(s) %s left out", ",".join(map(str, fold_list)), ",".join(map(str, skipped)))

    # Every check on inputs that cost no image reads, all problems at once.
    problems = []
    for k in fold_list:
        test = list(splits.folds[k].test)
        if "classification" in tasks:
            lacking = [p for p in test if p not in patient_probabilities]
            if lacking:
                problems.append(f"fold {k}: no probability for {len(lacking)} of {len(test)} test patients "
                                f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''})")
            unlabelled = [p for p in test if cohort[p].label not in (0, 1)]
            if unlabelled:
                problems.append(f"fold {k}: test patients without a label 0/1 in the cohort ({', '.join(unlabelled[:5])})")
        if "segmentation" in tasks:
            lacking = [f"{p} {s.timepoint}" for p in test for s in scored_scans(cohort, p, timepoints)
                       if (p, s.timepoint) not in masks]
            if lacking:
                hint = "" if timepoints is not None else "; --timepoints K scores only the latest K scans of each patient"
                problems.append(f"fold {k}: no predicted mask for {len(lacking)} scan(s) with a reference mask "
                                f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}){hint}")
    if problems:
        raise CohortError(Problem("; ".join(problems), file=str(predictions)))

    evaluation = Evaluation(runs_dir, name, splits, tasks)
    for k in fold_list:
        test = list(splits.folds[k].test)
        patients, scans = [], []
        for patient_id in test:
            if "classification" in tasks:
                patients.append({"patient_id": patient_id, "fold": k, "label": int(cohort[patient_id].label),
                                 "probability": float(patient_probabilities[patient_id])})
            if "segmentation" in tasks:
                for scan in scored_scans(cohort, patient_id, timepoints):
                    values, resampled = score_mask(cohort, patient_id, scan, masks[patient_id, scan.timepoint],
                                                   resample=resample, binarize=binarize_predictions)
                    if resampled:
                        evaluation.resampled.setdefault(k, []).append(str(masks[patient_id, scan.timepoint]))
                    scans.append({"patient_id": patient_id, "timepoint": scan.timepoint, "fold": k, **values})
        evaluation.patients[k], evaluation.scans[k] = patients, scans
        evaluation.metrics[k] = fold_metrics(scans, patients)
    scored = {(r["patient_id"], r["timepoint"]) for rows in evaluation.scans.values() for r in rows}
    ignored = len(set(masks) - scored)
    if ignored:
        log.info("%d predicted mask(s) outside the scored scans ignored", ignored)
    if write:
        _write(evaluation, cohort, cohort_dir, predictions, probability_file, pattern, timepoints, resample,
               binarize_predictions, description, overwrite, started, time.perf_counter() - clock)
    return evaluation


# ----------------------------------------------------------------------------------------------- writing


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _check_target(evaluation: Evaluation, overwrite: bool) -> None:
    runs_dir, splits = evaluation.runs_dir, evaluation.splits
    if (runs_dir / "splits.json").exists():
        held = read_splits(runs_dir)
        if held.hash != splits.hash:
            raise UsageError(f"{runs_dir} holds other folds (splits hash {held.hash[:12]}, these {splits.hash[:12]}): "
                             f"pass --folds-from {runs_dir} to score on its folds, or use another --out")
    folder = evaluation.folder
    if (folder / "experiment.json").exists():
        try:
            kind = json.loads((folder / "experiment.json").read_text()).get("kind")
        except json.JSONDecodeError:
            kind = None
        if kind != EXTERNAL_KIND:
            raise UsageError(f"{folder} holds results of one of the suite's experiments; give your method another --name")
        if not overwrite:
            raise UsageError(f"{folder} already holds `mstnet evaluate` results named {evaluation.name!r}; "
                             "pass --overwrite to replace them, or give another --name")
    elif folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not a results folder of `mstnet evaluate`; give another --name")


def _write(evaluation: Evaluation, cohort: Cohort, cohort_dir, predictions: Path, probability_file: Path | None,
           pattern: str, timepoints: int | None, resample: bool, binarize: str | None, description: str | None,
           overwrite: bool, started: str, wall_s: float) -> None:
    from mstnet.experiments.reproduce import PreparedRuns, commit_runs

    _check_target(evaluation, overwrite)  # again: nothing may have changed it while scoring
    runs_dir, splits, folder = evaluation.runs_dir, evaluation.splits, evaluation.folder
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (runs_dir / "cohort.json").exists():
        commit_runs(PreparedRuns(runs_dir, cohort, splits, Path(cohort_dir) if cohort_dir is not None else None))
    elif not (runs_dir / "splits.json").exists():
        splits.write(runs_dir / "splits.json")
    if folder.exists():
        shutil.rmtree(folder)
    source = {"predictions": str(predictions.resolve()),
              "probabilities": str(probability_file.resolve()) if probability_file else None,
              "pattern": pattern if "segmentation" in evaluation.tasks else None, "timepoints": timepoints,
              "resample": resample, "binarize_predictions": binarize}
    metadata = {"name": evaluation.name,
                "description": description or f"predictions scored by mstnet evaluate ({predictions.name})",
                "tasks": list(evaluation.tasks), "group": "extra", "table_row": None, "information": "everything",
                "footnote": "", "kind": EXTERNAL_KIND, "source": source}
    _write_json(folder / "experiment.json", metadata)
    finished = datetime.now(timezone.utc).isoformat()
    for k, metrics in evaluation.metrics.items():
        fold_dir = folder / f"fold{k}"
        fold = splits.folds[k]
        configuration = {"experiment": metadata, "fold": k, "evaluate": source,
                         "data": {"cohort_fingerprint": cohort_fingerprint(cohort), "splits_hash": splits.hash,
                                  "patients": {"train": len(fold.train), "validation": len(fold.validation),
                                               "test": len(fold.test)}}}
        configuration[IDENTITY_KEY] = configuration_hash(json.loads(json.dumps(configuration, default=str)))
        _write_json(fold_dir / CONFIG_FILE, configuration)
        if evaluation.scans[k]:
            write_text_atomic(fold_dir / "segmentation.csv", pd.DataFrame(evaluation.scans[k]).to_csv(index=False))
        if evaluation.patients[k]:
            write_text_atomic(fold_dir / "predictions.csv", pd.DataFrame(evaluation.patients[k]).to_csv(index=False))
        _write_json(fold_dir / "metrics.json", metrics)
        _write_json(fold_dir / "run.json", {
            "status": "complete", "experiment": evaluation.name, "fold": k, "splits_hash": splits.hash,
            "started": started, "finished": finished, "wall_s": wall_s, "attempts": [], "selected_epoch": None,
            "threshold": DECISION_THRESHOLD, "resumed_from_epoch": None, "evaluated_by": "mstnet evaluate",
            "resampled_masks": evaluation.resampled.get(k, []), "python": platform.python_version(),
        })
    log.info("%s: %s scored on fold(s) %s -> %s", evaluation.name, "+".join(evaluation.tasks),
             ",".join(map(str, evaluation.metrics)), folder)
