"""Predict new cases with the fold checkpoints of a results folder, and write masks in each scan's geometry.

``mstnet predict RUN_DIR --data NEW --out DIR`` (:func:`predict_cohort`):

- The model of each fold is rebuilt from the fold's ``config.json`` (the experiment's builder
  with the recorded :class:`~mstnet.experiments.registry.ModelContext`) and loaded from its
  ``best.pt``, the checkpoint the fold's test numbers were measured with.
- The clinical encoder (category codes and numeric standardisation) is **refitted** on that
  fold's training patients of the cohort the folder was trained on (``RUN_DIR/cohort.json``
  ``source``, or ``train_data``), exactly as the harness fits it; the cohort must still be
  the one trained on (its fingerprint is compared with the fold's ``config.json``), so the
  encoding is the training one. Nothing new is stored in the results folder.
- New cases need no labels: a manifest may leave ``label`` empty or out
  (:func:`mstnet.data.sources.manifest.load_manifest_cohort` with ``require_labels=False``;
  such patients get the placeholder label -1, which nothing reads). Crops are placed from the
  manifest's nodule location as in training (docs/protocol.md, "Localisation"); without one,
  on the volume centre.
- The ensemble (default) is the mean over the folds of the malignancy probability and of the
  foreground probability of every voxel, then thresholded at 0.5; ``fold=k`` uses one fold.

Output (:class:`PredictionWriter`, also used by ``mstnet run --export-masks`` for its own
test folds): ``DIR/{patient_id}_{timepoint}.nii.gz`` for every scan the model segments (the
latest T of each patient, T being the experiment's time points): uint8 0/1, the crop's
prediction pasted into the scan's whole field, stored in the source image's voxel order with
the source image's affine (a DICOM series: its patient-coordinate affine; a ``.npy`` image:
the diagonal affine of its spacing); ``DIR/probabilities.csv`` (``patient_id,probability``)
for classification experiments; ``DIR/prediction.json`` saying what was predicted with what.
``mstnet evaluate DIR`` reads this layout as it is.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from mstnet.atomic import atomic_path, write_text_atomic
from mstnet.data.cohort import Cohort, CohortError, Problem
from mstnet.data.io import write_nifti
from mstnet.errors import UsageError
from mstnet.experiments.mask_geometry import stored_affine, volume_geometry
from mstnet.experiments.prediction_folder import DEFAULT_PATTERN, PREDICTION_RECORD, PROBABILITIES_FILE, mask_name
from mstnet.metrics import DECISION_THRESHOLD

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- writing masks


def write_mask_like(path: str | Path, mask: np.ndarray, image: str | Path) -> Path:
    """Write ``mask`` (``(D, H, W)``, on the grid :func:`mstnet.data.io.read_volume` gives ``image``) as NIfTI
    in ``image``'s geometry: its stored voxel order and its affine, so ``read_mask`` gives ``mask`` back.

    Raises:
        ValueError: ``mask`` does not have the image's shape.
    """
    path = Path(path)
    mask = np.asarray(mask, dtype=np.uint8)
    geometry = volume_geometry(image)
    if tuple(mask.shape) != geometry.shape:
        raise ValueError(f"{path}: mask of shape {mask.shape} for image {image} of shape {geometry.shape}")
    stored = stored_affine(image)
    if stored is None:  # .npy image: no position; the diagonal affine of its spacing, as the readers assume
        return write_nifti(path, mask, spacing=geometry.spacing or (1.0, 1.0, 1.0))
    shape_xyz, affine = stored
    current = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), current)
    data = nib.orientations.apply_orientation(mask.transpose(2, 1, 0), back)
    if tuple(data.shape) != tuple(shape_xyz):
        raise ValueError(f"{path}: reoriented mask of shape {data.shape}, image {image} stores {shape_xyz}")
    output = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    output.set_qform(affine, code=1)
    output.set_sform(affine, code=1)
    output.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as temporary:
        nib.save(output, str(temporary))
    return path


@dataclass
class PredictionWriter:
    """Writes predicted masks (in each source image's geometry) and patient probabilities into ``folder``.

    Call :meth:`add` per patient, then :meth:`close` (``probabilities.csv``, ``prediction.json``).
    """

    folder: Path
    record: dict[str, Any] = field(default_factory=dict)
    pattern: str = DEFAULT_PATTERN
    probabilities: dict[str, float] = field(default_factory=dict)
    masks: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, patient_id: str, scans: Sequence, foreground: Any | None, crop_start: Any, field_shape: Any,
            probability: float | None = None) -> None:
        """One patient: ``foreground`` ``[T, d, h, w]`` (crop probabilities or booleans, > 0.5 is
        foreground; None: no segmentation), ``crop_start`` / ``field_shape`` ``[T, 3]`` (where each
        crop lies in its scan), ``scans`` the T scans, ``probability`` its malignancy probability."""
        from mstnet.data.transforms import paste_into_field

        if probability is not None:
            self.probabilities[patient_id] = float(probability)
        if foreground is None:
            return
        foreground = np.asarray(foreground.detach().cpu() if hasattr(foreground, "detach") else foreground)
        crop_start, field_shape = np.asarray(crop_start), np.asarray(field_shape)
        for t, scan in enumerate(scans):
            shape = tuple(int(n) for n in field_shape[t])
            image_shape = volume_geometry(scan.image).shape
            if shape != image_shape:
                raise CohortError(Problem(f"the crop lies on a grid of {shape}, the image has {image_shape} (resampled "
                                          "preprocessing): cannot paste the prediction into the image's field",
                                          patient_id=patient_id, timepoint=scan.timepoint, file=str(scan.image)))
            crop = foreground[t] > DECISION_THRESHOLD if foreground.dtype != bool else foreground[t]
            field_mask = paste_into_field(crop.astype(np.uint8), [int(v) for v in crop_start[t]], shape)
            write_mask_like(self.folder / mask_name(self.pattern, patient_id, scan.timepoint), field_mask, scan.image)
            self.masks += 1

    def close(self) -> Path:
        if self.probabilities:
            frame = pd.DataFrame({"patient_id": list(self.probabilities), "probability": list(self.probabilities.values())})
            write_text_atomic(self.folder / PROBABILITIES_FILE, frame.to_csv(index=False))
        record = {**self.record, "pattern": self.pattern, "masks": self.masks, "patients_with_probability":
                  len(self.probabilities), "threshold": DECISION_THRESHOLD}
        write_text_atomic(self.folder / PREDICTION_RECORD, json.dumps(record, indent=2, default=str) + "\n")
        return self.folder


# ----------------------------------------------------------------------------------------------- folds


@dataclass
class FoldModel:
    """One fold's rebuilt model with its clinical encoder."""

    fold: int
    model: torch.nn.Module
    encoder: Any
    use_clinical: bool
    amp: bool
    mirroring: bool = False
    """Test-time mirroring, as the fold's recipe evaluated its test patients (``test_time_mirroring``)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CohortError(Problem("file not found", file=str(path))) from None
    except json.JSONDecodeError as error:
        raise CohortError(Problem(f"not valid JSON ({error})", file=str(path))) from None


def experiment_folder(run_dir: Path, experiment: str | None) -> Path:
    """The experiment folder of ``run_dir`` (a results folder, or an experiment folder itself) to predict with."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a results folder")
    if (run_dir / "experiment.json").exists() and experiment is None:
        return run_dir
    trained = sorted(p.parent for p in run_dir.glob("*/experiment.json") if any(p.parent.glob("fold*/best.pt")))
    names = {_read_json(p / "experiment.json").get("name", p.name): p for p in trained}
    if experiment is not None:
        if experiment in names:
            return names[experiment]
        raise UsageError(f"--experiment {experiment!r}: no trained folds of it in {run_dir}; "
                         f"trained experiments there: {', '.join(sorted(names)) or 'none'}")
    if len(names) == 1:
        return next(iter(names.values()))
    if not names:
        raise UsageError(f"{run_dir}: no experiment with a trained fold (fold<k>/best.pt) in this folder")
    raise UsageError(f"{run_dir} holds {len(names)} trained experiments; choose one with --experiment "
                     f"({', '.join(sorted(names))})")


def trained_folds(folder: Path) -> list[int]:
    """Folds of an experiment folder that finished training (``run.json`` complete, ``best.pt``, ``config.json``)."""
    folds = []
    for fold_dir in sorted(folder.glob("fold*")):
        suffix = fold_dir.name[len("fold"):]
        if not suffix.isdigit() or not (fold_dir / "best.pt").exists() or not (fold_dir / "config.json").exists():
            continue
        run = fold_dir / "run.json"
        if run.exists() and _read_json(run).get("status") == "complete":
            folds.append(int(suffix))
    return sorted(folds)


def training_cohort(runs_dir: Path, fingerprint: str, train_data: str | Path | None = None) -> Cohort:
    """The cohort ``runs_dir`` was trained on, checked against the fold's ``cohort_fingerprint``.

    The mask rule is not stored on disk, so each rule is tried until the fingerprint matches.

    Raises:
        CohortError: the cohort is missing or is not the one trained on.
    """
    from mstnet.data.io import MASK_BINARIZATIONS
    from mstnet.data.sources import load_cohort
    from mstnet.experiments.identity import cohort_fingerprint

    if train_data is None:
        record = runs_dir / "cohort.json"
        source = _read_json(record).get("source")
        if not source:
            raise CohortError(Problem("names no cohort source; pass --train-data", file=str(record)))
        train_data = Path(source)
    train_data = Path(train_data)
    if not train_data.exists():
        raise CohortError(Problem("the cohort the folds were trained on is not there (the clinical encoder is refitted "
                                  "on its training patients); pass --train-data with its new place", file=str(train_data)))
    for rule in (None, *MASK_BINARIZATIONS):
        cohort = load_cohort(train_data, binarize_masks=rule)
        if cohort_fingerprint(cohort) == fingerprint:
            return cohort
    raise CohortError(Problem("is not the cohort the folds were trained on (its fingerprint differs from the folds' "
                              "config.json): the clinical encoder cannot be refitted as in training", file=str(train_data)))


def load_fold_model(fold_dir: Path, training: Cohort, splits, device: torch.device) -> FoldModel:
    """Rebuild one fold's model from ``config.json`` and ``best.pt``, with its refitted clinical encoder."""
    from mstnet.data.clinical import ClinicalCoder
    from mstnet.experiments.registry import ModelContext, get_experiment
    from mstnet.experiments.training import to_channels_last

    configuration = _read_json(fold_dir / "config.json")
    spec = get_experiment(configuration["experiment"]["name"])
    if spec.kind != "torch":
        raise UsageError(f"{spec.name} is fitted on patient features, not a trained network: `mstnet predict` needs "
                         "a fold checkpoint (best.pt)")
    fold_index = int(configuration["fold"])
    fold = splits.folds[fold_index]
    encoder = ClinicalCoder(training.clinical_schema.restricted_to(spec.data_view.clinical_sources)).fit(
        training.subset(fold.train))
    recorded = configuration["context"]
    context = ModelContext(image_size=tuple(recorded["image_size"]), num_timepoints=int(recorded["num_timepoints"]),
                           clinical_cardinalities=tuple(recorded["clinical_cardinalities"]),
                           num_numeric=int(recorded["num_numeric"]), use_clinical=bool(recorded["use_clinical"]),
                           preset=recorded["preset"], params=dict(recorded.get("params") or {}))
    if tuple(encoder.cardinalities) != context.clinical_cardinalities or encoder.num_numeric != context.num_numeric:
        raise CohortError(Problem(f"the refitted clinical encoder ({encoder.cardinalities}, {encoder.num_numeric} numeric) "
                                  f"differs from the one trained with ({list(context.clinical_cardinalities)}, "
                                  f"{context.num_numeric} numeric)", file=str(fold_dir / "config.json")))
    model = spec.build(context)
    recipe = configuration.get("recipe") or {}
    if recipe.get("channels_last", False):
        to_channels_last(model)
    state = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    return FoldModel(fold_index, model, encoder, spec.data_view.use_clinical, bool(recipe.get("amp", False)),
                     bool(recipe.get("test_time_mirroring", False)))


def _with_clinical(batch: dict, patients: Sequence, encoder) -> dict:
    """``batch`` with its clinical inputs encoded by ``encoder`` (each fold has its own)."""
    encoded = [encoder.encode(patient) for patient in patients]
    return {**batch,
            "clinical_categorical": torch.from_numpy(np.stack([e.categorical for e in encoded])),
            "clinical_numeric": torch.from_numpy(np.stack([e.numeric for e in encoded])),
            "clinical_numeric_missing": torch.from_numpy(np.stack([e.numeric_missing for e in encoded]))}


@dataclass(frozen=True)
class PredictionRun:
    """What :func:`predict_cohort` wrote."""

    out: Path
    experiment: str
    folds: tuple[int, ...]
    probabilities: dict[str, float]
    masks: int


def load_unlabelled_cohort(data: str | Path, binarize_masks: str | None = None) -> Cohort:
    """A cohort to predict: labels may be empty or absent in a manifest (placeholder -1, never read)."""
    from mstnet.data.sources import detect_kind, load_cohort

    options = {"require_labels": False} if detect_kind(data) == "manifest" else {}
    return load_cohort(data, binarize_masks=binarize_masks, **options)


def _folds_to_predict_with(folder: Path, fold: int | None) -> list[int]:
    """``[fold]`` when it is a trained fold of ``folder``, else (None) every trained fold."""
    available = trained_folds(folder)
    if not available:
        raise UsageError(f"{folder}: no finished fold with a best.pt checkpoint")
    if fold is not None and fold not in available:
        raise UsageError(f"--fold {fold}: not a trained fold of {folder.name}; trained folds: "
                         f"{', '.join(map(str, available))}")
    return [fold] if fold is not None else available


def _clear_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` without ``overwrite``; with it, remove earlier predictions there."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} is not empty; pass --overwrite to replace predictions there, or use another --out")
        for stale in [*out.glob("*.nii.gz"), *out.glob("*.nii"), out / PROBABILITIES_FILE, out / PREDICTION_RECORD]:
            stale.unlink(missing_ok=True)


def _predict_batches(loader, patients_of: dict, models: Sequence[FoldModel], device: torch.device,
                     writer: PredictionWriter) -> None:
    """Each batch through every fold's model; the mean over folds of the probabilities and foregrounds to ``writer``."""
    from mstnet.experiments.evaluation_fold import predict

    for batch in loader:
        patients = [patients_of[p][0] for p in batch["patient_id"]]
        probabilities, foregrounds = [], []
        for fold_model in models:
            fold_batch = _with_clinical(batch, patients, fold_model.encoder)
            for _, probability, foreground in predict(fold_model.model, [fold_batch], device,
                                                      fold_model.use_clinical, fold_model.amp, fold_model.mirroring):
                probabilities.append(probability)
                foregrounds.append(foreground)
        probability = torch.stack(probabilities).double().mean(0) if probabilities[0] is not None else None
        foreground = torch.stack(foregrounds).double().mean(0) if foregrounds[0] is not None else None
        for i, patient_id in enumerate(batch["patient_id"]):
            writer.add(patient_id, patients_of[patient_id][1], None if foreground is None else foreground[i].numpy(),
                       batch["crop_start"][i], batch["field_shape"][i],
                       None if probability is None else float(probability[i]))


def predict_cohort(run_dir: str | Path, cohort: Cohort, out: str | Path, *, experiment: str | None = None,
                   fold: int | None = None, device: torch.device | str = "cpu", train_data: str | Path | None = None,
                   batch_size: int | None = None, overwrite: bool = False) -> PredictionRun:
    """Predict ``cohort`` with the folds of ``run_dir`` and write the masks and probabilities to ``out``.

    Args:
        run_dir: a results folder (``RUNS_DIR``) or one experiment's folder in it.
        cohort: the cases to predict (:func:`load_unlabelled_cohort`).
        experiment: which experiment of ``run_dir`` (needed when it holds several).
        fold: one fold; default (None): the mean of every trained fold (ensemble).
        device: where to run the models.
        train_data: the training cohort, when it moved from ``RUN_DIR/cohort.json``'s ``source``.
        batch_size: patients per forward pass (default: the run's preset's).
        overwrite: replace earlier predictions in ``out``.

    Raises:
        UsageError: no such experiment or fold, or ``out`` holding other files.
        CohortError: the training cohort is missing or changed; unreadable new cases.
    """
    from torch.utils.data import DataLoader

    from mstnet.data.dataset import PatientDataset, collate_patients
    from mstnet.data.transforms import PreprocessConfig
    from mstnet.experiments.splits import Splits

    device = torch.device(device) if isinstance(device, str) else device
    folder = experiment_folder(Path(run_dir), experiment)
    runs_dir = folder.parent
    folds = _folds_to_predict_with(folder, fold)
    out = Path(out)
    _clear_output(out, overwrite)
    configurations = {k: _read_json(folder / f"fold{k}" / "config.json") for k in folds}
    first = configurations[folds[0]]
    splits = Splits.read(runs_dir / "splits.json")
    training = training_cohort(runs_dir, first["data"]["cohort_fingerprint"], train_data)
    models = [load_fold_model(folder / f"fold{k}", training, splits, device) for k in folds]
    spec_name = first["experiment"]["name"]
    tasks = tuple(first["experiment"]["tasks"])
    preset = first["preset"]
    timepoints = int(first["context"]["num_timepoints"])
    preprocess = PreprocessConfig(crop_size=tuple(preset["crop_size"]), crop_mode=preset.get("crop_mode", "nodule"))
    writer = PredictionWriter(out, {"source": "mstnet predict", "run_dir": str(folder.resolve()),
                                    "experiment": spec_name, "folds": folds, "splits_hash": splits.hash,
                                    "combination": "mean over folds" if len(folds) > 1 else f"fold {folds[0]}",
                                    "cohort": str(cohort.root) if cohort.root else cohort.name,
                                    "timepoints": timepoints, "tasks": list(tasks), "device": str(device)})
    with tempfile.TemporaryDirectory(prefix="mstnet-predict-") as cache:
        dataset = PatientDataset(cohort, models[0].encoder, preprocess, timepoints=timepoints, augment=False,
                                 cache_dir=cache)
        loader = DataLoader(dataset, batch_size=batch_size or int(preset["batch_size"]), shuffle=False,
                            collate_fn=collate_patients)
        patients_of = {patient.patient_id: (patient, scans) for patient, scans in dataset.items}
        _predict_batches(loader, patients_of, models, device, writer)
    writer.close()
    log.info("%s (%s): %d masks, %d probabilities -> %s", spec_name, writer.record["combination"], writer.masks,
             len(writer.probabilities), out)
    return PredictionRun(out, spec_name, tuple(folds), dict(writer.probabilities), writer.masks)
