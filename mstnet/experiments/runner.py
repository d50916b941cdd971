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
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mstnet.atomic import write_text_atomic
from mstnet.data.clinical import ClinicalEncoder
from mstnet.data.cohort import Cohort
from mstnet.data.dataset import PatientDataset, collate_patients
from mstnet.data.transforms import PreprocessConfig
from mstnet.errors import UsageError
from mstnet.experiments.presets import RunPreset
from mstnet.experiments.convergence import fold_plateau, short_of_plateau
from mstnet.experiments.identity import (
    CONFIG_FILE,
    IDENTITY_KEY,
    PRESET_FIELDS_OUTSIDE_IDENTITY,
    cohort_fingerprint,
    configuration_hash,
    identity_conflict,
    refuse_conflicts,
)
from mstnet.experiments.registry import ExperimentSpec, ModelContext, Recipe, checked_recipe, split_overrides
from mstnet.experiments.splits import Fold, Splits
from mstnet.experiments.tracking import FoldTracking, TrackerSpec, fold_tracking
from mstnet.experiments.training import (
    DistributedModel,
    EpochCallback,
    fit,
    foreground_probability,
    forward_batch,
    is_main_process,
    malignancy_probability,
    move_batch,
    seed_everything,
    to_channels_last,
)
from mstnet.metrics import classification_metrics, segmentation_metrics

log = logging.getLogger(__name__)

GALLERY_CASES = 6


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


def resolve_recipe(spec: ExperimentSpec, options: RunOptions) -> Recipe:
    """The experiment's recipe for the preset: the preset's batch size, the preset's training
    length (epochs, patience) unless the recipe has its own (``Recipe.budget_from_preset=False``;
    ``--epochs`` always sets the epochs), then ``--set`` recipe fields, and the seed of training-seed
    replicate ``options.seed_index`` (the recipe's seed plus it).

    Raises:
        UsageError: a recipe field of the wrong type or out of range.
    """
    preset = options.preset
    recipe = replace(spec.recipe_for(preset.name), batch_size=preset.batch_size)
    if recipe.budget_from_preset:
        recipe = replace(recipe, epochs=preset.epochs, early_stopping_patience=preset.patience)
    if preset.epochs_given:
        recipe = replace(recipe, epochs=preset.epochs, stage_epochs=None)
    recipe_overrides, _ = split_overrides(options.params)
    recipe = checked_recipe(spec.name, recipe, recipe_overrides)
    return replace(recipe, seed=recipe.seed + options.seed_index) if options.seed_index else recipe


def _environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in metrics.items()}


def youden_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (0.5 if undefined)."""
    from sklearn.metrics import roc_curve

    if len(set(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 0.0), 1.0))


class FoldData:
    """The three datasets of one fold, sharing a clinical encoder fitted on ``train`` only."""

    def __init__(self, cohort: Cohort, fold: Fold, spec: ExperimentSpec, options: RunOptions):
        self.encoder = ClinicalEncoder(cohort.clinical_schema.restricted_to(spec.data_view.clinical_sources)).fit(cohort.subset(fold.train))
        preprocess = PreprocessConfig(crop_size=options.preset.crop_size, crop_mode=options.preset.crop_mode)
        timepoints = spec.data_view.timepoints

        def dataset(ids: Sequence[str], augment: bool) -> PatientDataset:
            return PatientDataset(cohort.subset(ids), self.encoder, preprocess, timepoints=timepoints,
                                  augment=augment, cache_dir=options.cache_dir)

        self.train = dataset(fold.train, augment=True)
        self.validation = dataset(fold.validation, augment=False)
        self.train_plain = dataset(fold.train, augment=False)
        """The training patients without augmentation (the cached classification stage)."""
        self.test = dataset(fold.test, augment=False)
        self.timepoints = timepoints


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device, workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
                      collate_fn=collate_patients, pin_memory=device.type == "cuda", num_workers=workers)


def model_context(spec: ExperimentSpec, encoder: ClinicalEncoder, options: RunOptions) -> ModelContext:
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
        context = model_context(spec, ClinicalEncoder(cohort.clinical_schema.restricted_to(spec.data_view.clinical_sources))
                                .fit(cohort.subset(fold.train)), options)
        model = _build_for_settings(spec, context)
    configuration = {
        "experiment": spec.metadata(), "fold": fold_index, "preset": preset,
        "recipe": None if recipe is None else asdict(recipe),
        "context": {k: v for k, v in asdict(context).items() if k != "settings"},
        "model": _model_record(model, context),
        "data": {"cohort_fingerprint": cohort_fingerprint(cohort), "splits_hash": splits.hash,
                 "patients": {"train": len(fold.train), "validation": len(fold.validation), "test": len(fold.test)}},
    }
    configuration = json.loads(json.dumps(configuration, default=_json_default))
    configuration[IDENTITY_KEY] = configuration_hash(configuration)
    return configuration


def predict(model: torch.nn.Module, loader, device: torch.device, use_clinical: bool, amp: bool):
    """Yield (batch, malignancy probability [B] or None, foreground probability [B, T, D, H, W] or None)."""
    from mstnet.experiments.training import autocast_context

    model.eval()
    with torch.no_grad():
        for batch in loader:
            moved = move_batch(batch, device)
            with autocast_context(device, amp):
                output = forward_batch(model, moved, use_clinical)
            probability = malignancy_probability(output.cls_logits).cpu() if output.cls_logits is not None else None
            foreground = foreground_probability(output.seg_logits).cpu() if output.seg_logits is not None else None
            yield batch, probability, foreground


def field_segmentation_metrics(pred_crop: np.ndarray, crop_start: Sequence[int], truth_field: np.ndarray,
                               spacing: Sequence[float]) -> dict[str, float]:
    """Segmentation metrics of one scan on its whole field, not on the crop the model saw.

    ``pred_crop`` (boolean, the crop's shape) is pasted into a zero field of ``truth_field``'s
    shape with its first voxel at ``crop_start`` (parts in the crop's padding outside the field
    dropped), and compared with ``truth_field``, the scan's whole reference mask, at the scan's
    own ``spacing`` (z, y, x) mm. A nodule partly or wholly outside the crop counts as missed
    there; the one-empty distance is the field's diagonal.
    """
    from mstnet.data.transforms import paste_into_field

    pred_field = paste_into_field(np.asarray(pred_crop, dtype=bool), crop_start, truth_field.shape)
    return segmentation_metrics(pred_field, np.asarray(truth_field, dtype=bool), spacing=tuple(float(s) for s in spacing))


def evaluate_fold(model, data: FoldData, spec: ExperimentSpec, options: RunOptions, recipe: Recipe, fold: int,
                  export_dir: Path | None = None):
    """Predictions and metrics on the inner validation split (threshold) and the test fold (numbers).

    Segmentation metrics are per scan on the scan's whole field (:func:`field_segmentation_metrics`:
    the crop's prediction pasted back at the crop's position, the full reference mask read from
    its file under the cohort's mask rule, each scan at its own spacing). With ``export_dir``, the
    test predictions are also written there (:class:`mstnet.experiments.prediction.PredictionWriter`)."""
    use_clinical = spec.data_view.use_clinical
    batch_size = options.preset.batch_size
    threshold = 0.5
    if "classification" in spec.tasks:
        val_labels, val_probs = [], []
        for batch, probability, _ in predict(model, _loader(data.validation, batch_size, False, 0, options.device, options.workers),
                                             options.device, use_clinical, recipe.amp):
            val_labels += batch["label"].tolist()
            val_probs += probability.tolist()
        threshold = youden_threshold(val_labels, val_probs)
    patients, scans, gallery = [], [], []
    scans_of = {patient.patient_id: patient_scans for patient, patient_scans in data.test.items}
    exporter = None
    if export_dir is not None:
        from mstnet.experiments.prediction import PredictionWriter

        exporter = PredictionWriter(export_dir, {"source": "mstnet run --export-masks", "experiment": spec.name,
                                                 "fold": fold, "timepoints": spec.data_view.timepoints})
    for batch, probability, foreground in predict(model, _loader(data.test, batch_size, False, 0, options.device, options.workers),
                                                  options.device, use_clinical, recipe.amp):
        for i, patient_id in enumerate(batch["patient_id"]):
            label = int(batch["label"][i])
            if probability is not None:
                patients.append({"patient_id": patient_id, "fold": fold, "label": label, "probability": float(probability[i])})
            if exporter is not None:
                exporter.add(patient_id, scans_of[patient_id], None if foreground is None else foreground[i].numpy(),
                             batch["crop_start"][i], batch["field_shape"][i], None if probability is None else float(probability[i]))
            if foreground is None or not bool(batch["has_mask"][i]):
                continue
            for t, timepoint in enumerate(batch["timepoints"][i]):
                scan = scans_of[patient_id][t]
                truth_field = data.test.reference_mask(scan)
                if tuple(truth_field.shape) != tuple(int(n) for n in batch["field_shape"][i, t]):
                    raise RuntimeError(f"{patient_id} {timepoint}: reference mask of shape {truth_field.shape}, "
                                       f"crop box on a field of {tuple(batch['field_shape'][i, t].tolist())}")
                scans.append({"patient_id": patient_id, "timepoint": timepoint, "fold": fold,
                              **field_segmentation_metrics(foreground[i, t].numpy() > 0.5, batch["crop_start"][i, t].tolist(),
                                                           truth_field, batch["spacing"][i, t].tolist())})
            gallery.append((patient_id, batch["image"][i, :, 0].numpy(), batch["mask"][i, :, 0].numpy() > 0.5,
                            foreground[i].numpy() > 0.5))
    if exporter is not None:
        exporter.close()
    metrics: dict[str, Any] = {"segmentation": None, "classification": None, "convention": "monai",
                               "average": "binary", "threshold": 0.5}
    if scans:
        frame = pd.DataFrame(scans)
        metrics["segmentation"] = _clean({k: float(frame[k].mean()) for k in ("dice", "jaccard", "hd95", "asd")})
    if patients:
        frame = pd.DataFrame(patients)
        metrics["classification"] = _clean(classification_metrics(frame["label"].to_numpy(), frame["probability"].to_numpy()))
        metrics["classification_at_validation_threshold"] = _clean(
            classification_metrics(frame["label"].to_numpy(), frame["probability"].to_numpy(), threshold=threshold))
        metrics["validation_threshold"] = threshold
    return metrics, patients, scans, gallery, threshold


def _write_gallery(path: Path, gallery, scans: list[dict]) -> None:
    """Best, median and worst test cases by mean Dice: central nodule slice of each time point,
    with each case's time-point names (the scans the model saw, e.g. T1, T2) and per-scan Dice
    (``timepoints`` and ``scan_dice``, [N, T], in the order of ``segmentation.csv``)."""
    if not gallery:
        return
    frame = pd.DataFrame(scans)
    dice_by_patient = frame.groupby("patient_id")["dice"].mean()
    scans_of = {patient_id: rows for patient_id, rows in frame.groupby("patient_id", sort=False)}
    ordered = sorted(gallery, key=lambda case: dice_by_patient.get(case[0], 0.0))
    picks = sorted({0, len(ordered) // 2, len(ordered) - 1, 1 % len(ordered), max(len(ordered) - 2, 0)})[:GALLERY_CASES]
    images, masks, preds, ids, dice, names, scan_dice = [], [], [], [], [], [], []
    for index in picks:
        patient_id, image, mask, pred = ordered[index]
        depth_profile = mask.sum(axis=(0, 2, 3))
        z = int(np.argmax(depth_profile)) if depth_profile.any() else image.shape[1] // 2
        images.append(image[:, z]), masks.append(mask[:, z]), preds.append(pred[:, z])
        ids.append(patient_id), dice.append(float(dice_by_patient.get(patient_id, math.nan)))
        rows = scans_of.get(patient_id)
        n_timepoints = image.shape[0]
        if rows is not None and len(rows) == n_timepoints:
            names.append([str(t) for t in rows["timepoint"]]), scan_dice.append(rows["dice"].astype(float).tolist())
        else:
            names.append([f"scan {t + 1}" for t in range(n_timepoints)]), scan_dice.append([math.nan] * n_timepoints)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, image=np.stack(images).astype(np.float32), mask=np.stack(masks), pred=np.stack(preds),
                        patient_id=np.array(ids), dice=np.array(dice), timepoints=np.array(names, dtype=str),
                        scan_dice=np.array(scan_dice, dtype=np.float64))
    tmp.replace(path)


ATTEMPTS_FILE = "attempts.json"
TIMING_FILE = "timing.csv"
"""Per epoch: stage, epoch, optimizer step and cumulative wall seconds (the learning curve's time axis)."""
TRAIN_LOG = "train.log"


class FoldAttempts:
    """The attempts at one fold (``attempts.json``): start, finish and wall time of each.

    A new attempt is recorded when a fold starts (or resumes); :meth:`tick` (an epoch
    callback) keeps its wall time current, so a killed attempt still counts up to its last
    epoch. ``run.json`` gets the total over all attempts.
    """

    def __init__(self, fold_dir: Path, write: bool = True):
        self.path = Path(fold_dir) / ATTEMPTS_FILE
        self.write = write
        self.clock = time.perf_counter()
        self.attempts: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else []
        self.attempts.append({"started": datetime.now(timezone.utc).isoformat(), "finished": None, "wall_s": 0.0})
        self._save()

    def _save(self) -> None:
        if self.write:
            _write_json(self.path, self.attempts)

    def tick(self, _record: Any = None) -> None:
        self.attempts[-1]["wall_s"] = time.perf_counter() - self.clock
        self._save()

    def finish(self, resumed_from_epoch: int | None = None) -> dict[str, Any]:
        """Close the current attempt; the fields of ``run.json`` that describe all attempts."""
        self.tick()
        self.attempts[-1].update(finished=datetime.now(timezone.utc).isoformat(), resumed_from_epoch=resumed_from_epoch)
        self._save()
        return {"started": self.attempts[0]["started"], "finished": self.attempts[-1]["finished"],
                "wall_s": sum(a["wall_s"] for a in self.attempts), "attempts": self.attempts}


@contextmanager
def fold_log(fold_dir: Path) -> Iterator[None]:
    """Append the package's log records (INFO and up) to ``fold_dir/train.log`` while the fold runs."""
    handler = logging.FileHandler(Path(fold_dir) / TRAIN_LOG, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("mstnet")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()
        package_logger.setLevel(previous_level)


def recipe_summary(recipe: Recipe) -> str:
    """One line naming what a recipe does, for table footnotes: stages, rate, schedule, bias initialisation."""
    stages = "+".join(recipe.stages)
    schedule = (f"warm-up {recipe.warmup_fraction:.0%} then cosine per step" if recipe.lr_schedule == "warmup_cosine"
                else "cosine per epoch")
    epochs = "/".join(map(str, recipe.stage_epochs)) if recipe.stage_epochs else str(recipe.epochs)
    return (f"{stages}, Adam lr {recipe.learning_rate:g}, {schedule}, {epochs} epochs x batch {recipe.batch_size}"
            + (", output biases at the priors" if recipe.output_bias_init else "")
            + (f", classification stage on cached frozen outputs ({recipe.frozen_stage_augmentations} augmentations)"
               if recipe.frozen_stage_cache and "classification" in recipe.stages else ""))


def _write_fold_record(fold_dir: Path, spec: ExperimentSpec, splits: Splits, fold_index: int, metrics: dict[str, Any],
                       patients: list[dict], attempts: FoldAttempts, threshold: float, device: torch.device,
                       selected_epoch: dict[str, int] | None = None, resumed_from_epoch: int | None = None,
                       history: pd.DataFrame | None = None, recipe: Recipe | None = None) -> None:
    """predictions.csv, metrics.json, then run.json (last: its presence marks the fold complete).

    With a training ``history``, run.json also holds the training budget (``optimizer_steps``,
    ``training_seconds``) and the plateau verdict of every stage (:mod:`mstnet.experiments.convergence`).
    """
    if patients:
        write_text_atomic(fold_dir / "predictions.csv", pd.DataFrame(patients).to_csv(index=False))
    _write_json(fold_dir / "metrics.json", metrics)
    training: dict[str, Any] = {}
    if history is not None and len(history):
        rows = history.to_dict("records")
        verdicts = fold_plateau(rows)
        training = {"optimizer_steps": int(rows[-1]["step"]),
                    "plateau": verdicts, "plateau_reached": all(v["reached"] for v in verdicts.values()),
                    "short_of_plateau": short_of_plateau(verdicts)}
    if recipe is not None:
        training["recipe_summary"] = recipe_summary(recipe)
    _write_json(fold_dir / "run.json", {
        "status": "complete", "experiment": spec.name, "fold": fold_index, "splits_hash": splits.hash,
        **attempts.finish(resumed_from_epoch), "selected_epoch": selected_epoch, "threshold": threshold,
        "resumed_from_epoch": resumed_from_epoch, **training, **_environment(device),
    })


def run_fold(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int, runs_dir: Path,
             options: RunOptions) -> dict[str, Any]:
    """Train and evaluate one fold of a torch experiment; returns its metrics."""
    configuration = fold_configuration(spec, cohort, splits, fold_index, options)
    options = options.for_fold(fold_index)
    fold_dir = fold_dir_of(runs_dir, spec.name, fold_index, options.seed_index)
    refuse_conflicts([conflict] if (conflict := identity_conflict(fold_dir, configuration)) else [])
    fold_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    if main:
        _write_json(fold_dir / CONFIG_FILE, configuration)
    with fold_log(fold_dir) if main else nullcontext(), \
            fold_tracking(options.trackers if main else (), spec.name, fold_index, fold_dir, configuration) as tracking:
        return _train_and_evaluate(spec, cohort, splits, fold_index, fold_dir, options, FoldAttempts(fold_dir, write=main),
                                   tracking)


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
        return FrozenStageData(model, data.train_plain, data.validation, collate_patients, recipe.batch_size,
                               augmentations, options.device)

    return make


def _train_and_evaluate(spec: ExperimentSpec, cohort: Cohort, splits: Splits, fold_index: int, fold_dir: Path,
                        options: RunOptions, attempts: FoldAttempts, tracking: FoldTracking | None = None) -> dict[str, Any]:
    recipe = resolve_recipe(spec, options)
    seed_everything(recipe.seed + fold_index)
    data = FoldData(cohort, splits.folds[fold_index], spec, options)
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
    trained = model
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trained = DistributedModel(model)

    def train_loader(seed: int):
        if hasattr(data.train, "set_augmentation_seed"):
            data.train.set_augmentation_seed(seed)
        loader = _loader(data.train, recipe.batch_size, True, seed, options.device, options.workers)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(seed)
        return loader

    on_stage_start = _bias_initialiser(model, data, spec, options) if recipe.output_bias_init else None
    frozen_stage = None
    if recipe.frozen_stage_cache and trained is model:
        frozen_stage = _frozen_stage_factory(model, data, recipe, options)
    if tracking:
        tracking.attach(model, data.validation, options.device, spec.data_view.use_clinical, recipe.amp)
    result = fit(trained, train_loader, _loader(data.validation, recipe.batch_size, False, 0, options.device, options.workers), recipe,
                 spec.tasks, fold_dir, options.device, use_clinical=spec.data_view.use_clinical,
                 callbacks=(*options.callbacks, attempts.tick, *(tracking.callbacks if tracking else ())),
                 progress=options.progress, on_stage_start=on_stage_start, frozen_stage=frozen_stage)
    history = pd.DataFrame([vars(r) for r in result.history])
    if not is_main_process():
        return {}
    write_text_atomic(fold_dir / "history.csv", history.to_csv(index=False))
    if len(result.seconds) == len(history):
        timing = history[["stage", "epoch", "step"]].assign(seconds=result.seconds)
        write_text_atomic(fold_dir / TIMING_FILE, timing.to_csv(index=False))
    if not options.evaluate_test:
        attempts.finish(result.resumed_from_epoch)
        return {"history": history}
    metrics, patients, scans, gallery, threshold = evaluate_fold(
        model, data, spec, options, recipe, fold_index, export_dir=fold_dir / "masks" if options.export_masks else None)
    if scans:
        write_text_atomic(fold_dir / "segmentation.csv", pd.DataFrame(scans).to_csv(index=False))
        _write_gallery(fold_dir / "gallery.npz", gallery, scans)
    _write_fold_record(fold_dir, spec, splits, fold_index, metrics, patients, attempts, threshold, options.device,
                       selected_epoch=result.selected_epochs, resumed_from_epoch=result.resumed_from_epoch,
                       history=history, recipe=recipe)
    return metrics


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
        _write_json(exp_dir / "experiment.json", spec.metadata())
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

    configuration = fold_configuration(spec, cohort, splits, fold_index, options)
    options = options.for_fold(fold_index)
    fold_dir = fold_dir_of(runs_dir, spec.name, fold_index, options.seed_index)
    refuse_conflicts([conflict] if (conflict := identity_conflict(fold_dir, configuration)) else [])
    fold_dir.mkdir(parents=True, exist_ok=True)
    fold = splits.folds[fold_index]
    features = patient_features(cohort, timepoints=spec.data_view.timepoints)
    configuration["features"] = list(features.columns)
    _write_json(fold_dir / CONFIG_FILE, configuration)
    with fold_log(fold_dir), fold_tracking(options.trackers, spec.name, fold_index, fold_dir, configuration):
        attempts = FoldAttempts(fold_dir)
        label_of = dict(zip(cohort.patient_ids, cohort.labels))
        estimator = spec.build(tabular_context(spec, options))
        log.info("%s fold %d: fitting %s on %d patients, %d features", spec.name, fold_index, type(estimator).__name__,
                 len(fold.train), features.shape[1])
        estimator.fit(features.loc[list(fold.train)], np.array([label_of[p] for p in fold.train]))
        val_probs = estimator.predict_proba(features.loc[list(fold.validation)])
        threshold = youden_threshold([label_of[p] for p in fold.validation], val_probs)
        test_ids = list(fold.test)
        probabilities = estimator.predict_proba(features.loc[test_ids])
        labels = np.array([label_of[p] for p in test_ids])
        patients = [{"patient_id": p, "fold": fold_index, "label": int(y), "probability": float(q)}
                    for p, y, q in zip(test_ids, labels, probabilities)]
        metrics = {"segmentation": None, "classification": _clean(classification_metrics(labels, probabilities)),
                   "classification_at_validation_threshold": _clean(classification_metrics(labels, probabilities,
                                                                                           threshold=threshold)),
                   "validation_threshold": threshold, "convention": "monai", "average": "binary", "threshold": 0.5}
        _write_fold_record(fold_dir, spec, splits, fold_index, metrics, patients, attempts, threshold, options.device)
    return metrics
