"""A trained fold's evaluation: the threshold chosen on inner validation, then the test patients.

Segmentation metrics are per scan on the scan's whole field (:func:`field_segmentation_metrics`);
classification metrics per patient; ``gallery.npz`` keeps the best, median and worst test cases
(:func:`write_gallery`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mstnet.atomic import atomic_path
from mstnet.experiments.fold_data import FoldData, data_loader
from mstnet.experiments.fold_metrics import fold_metrics, scan_segmentation_row
from mstnet.experiments.registry import ExperimentSpec, Recipe
from mstnet.experiments.test_time import predict_batch
from mstnet.experiments.training import move_batch
from mstnet.metrics import DECISION_THRESHOLD

if TYPE_CHECKING:
    from mstnet.experiments.runner import RunOptions

GALLERY_CASES = 6


def youden_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (:data:`DECISION_THRESHOLD` if undefined)."""
    from sklearn.metrics import roc_curve

    if len(set(labels)) < 2:
        return DECISION_THRESHOLD
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 0.0), 1.0))


def predict(model: torch.nn.Module, loader, device: torch.device, use_clinical: bool, amp: bool,
            mirroring: bool = False):
    """Yield (batch, malignancy probability [B] or None, foreground probability [B, T, D, H, W] or None),
    averaged over mirrored inputs with ``mirroring`` (:func:`mstnet.experiments.test_time.predict_batch`)."""
    model.eval()
    with torch.no_grad():
        for batch in loader:
            probability, foreground = predict_batch(model, move_batch(batch, device), device, use_clinical, amp,
                                                    mirroring)
            yield batch, probability, foreground


def field_segmentation_metrics(pred_crop: np.ndarray, crop_start: Sequence[int], truth_field: np.ndarray,
                               spacing: Sequence[float]) -> dict[str, float]:
    """Segmentation metrics of one scan on its whole field, not on the crop the model saw.

    ``pred_crop`` (boolean, the crop's shape) is pasted into a zero field of ``truth_field``'s
    shape with its first voxel at ``crop_start`` (parts in the crop's padding outside the field
    dropped), and compared with ``truth_field``, the scan's whole reference mask, at the scan's
    own ``spacing`` (z, y, x) mm. A nodule partly or wholly outside the crop counts as missed
    there; the one-empty distance is the field's diagonal. The row also holds both masks'
    volumes on the field (:func:`scan_segmentation_row`).
    """
    from mstnet.data.transforms import paste_into_field

    pred_field = paste_into_field(np.asarray(pred_crop, dtype=bool), crop_start, truth_field.shape)
    return scan_segmentation_row(pred_field, np.asarray(truth_field, dtype=bool), spacing)


@dataclass
class FoldEvaluation:
    """What :func:`evaluate_fold` measured on a fold's test patients."""

    metrics: dict[str, Any]
    """``metrics.json`` (:func:`mstnet.experiments.fold_metrics.fold_metrics`)."""
    patients: list[dict]
    """Rows of ``predictions.csv`` (classifiers only)."""
    scans: list[dict]
    """Rows of ``segmentation.csv`` (segmenters only)."""
    gallery: list[tuple]
    """(patient id, images [T, D, H, W], reference masks, predicted masks) of each segmented patient."""
    threshold: float
    """The inner-validation (Youden) threshold; :data:`DECISION_THRESHOLD` without classification."""


def validation_threshold(model, data: FoldData, spec: ExperimentSpec, options: RunOptions, recipe: Recipe) -> float:
    """The Youden threshold of the model's probabilities on the inner validation split (classifiers only)."""
    if "classification" not in spec.tasks:
        return DECISION_THRESHOLD
    labels, probabilities = [], []
    loader = data_loader(data.validation, options.preset.batch_size, False, 0, options.device, options.workers)
    for batch, probability, _ in predict(model, loader, options.device, spec.data_view.use_clinical, recipe.amp,
                                       recipe.test_time_mirroring):
        labels += batch["label"].tolist()
        probabilities += probability.tolist()
    return youden_threshold(labels, probabilities)


def _scan_rows(data: FoldData, scans, batch: dict[str, Any], i: int, foreground: torch.Tensor, fold: int) -> list[dict]:
    """``segmentation.csv`` rows of patient ``i`` of ``batch``: each scan scored on its whole field."""
    rows = []
    patient_id = batch["patient_id"][i]
    for t, timepoint in enumerate(batch["timepoints"][i]):
        truth_field = data.test.reference_mask(scans[t])
        if tuple(truth_field.shape) != tuple(int(n) for n in batch["field_shape"][i, t]):
            raise RuntimeError(f"{patient_id} {timepoint}: reference mask of shape {truth_field.shape}, "
                               f"crop box on a field of {tuple(batch['field_shape'][i, t].tolist())}")
        rows.append({"patient_id": patient_id, "timepoint": timepoint, "fold": fold,
                     **field_segmentation_metrics(foreground[i, t].numpy() > DECISION_THRESHOLD,
                                                  batch["crop_start"][i, t].tolist(), truth_field,
                                                  batch["spacing"][i, t].tolist())})
    return rows


def evaluate_fold(model, data: FoldData, spec: ExperimentSpec, options: RunOptions, recipe: Recipe, fold: int,
                  export_dir: Path | None = None) -> FoldEvaluation:
    """Predictions and metrics on the inner validation split (threshold) and the test fold (numbers).

    Segmentation metrics are per scan on the scan's whole field (:func:`field_segmentation_metrics`:
    the crop's prediction pasted back at the crop's position, the full reference mask read from
    its file under the cohort's mask rule, each scan at its own spacing). With ``export_dir``, the
    test predictions are also written there (:class:`mstnet.experiments.prediction.PredictionWriter`)."""
    threshold = validation_threshold(model, data, spec, options, recipe)
    patients, scans, gallery = [], [], []
    scans_of = {patient.patient_id: patient_scans for patient, patient_scans in data.test.items}
    exporter = None
    if export_dir is not None:
        from mstnet.experiments.prediction import PredictionWriter

        exporter = PredictionWriter(export_dir, {"source": "mstnet run --export-masks", "experiment": spec.name,
                                                 "fold": fold, "timepoints": spec.data_view.timepoints})
    loader = data_loader(data.test, options.preset.batch_size, False, 0, options.device, options.workers)
    for batch, probability, foreground in predict(model, loader, options.device, spec.data_view.use_clinical,
                                                  recipe.amp, recipe.test_time_mirroring):
        for i, patient_id in enumerate(batch["patient_id"]):
            if probability is not None:
                patients.append({"patient_id": patient_id, "fold": fold, "label": int(batch["label"][i]),
                                 "probability": float(probability[i])})
            if exporter is not None:
                exporter.add(patient_id, scans_of[patient_id], None if foreground is None else foreground[i].numpy(),
                             batch["crop_start"][i], batch["field_shape"][i], None if probability is None else float(probability[i]))
            if foreground is None or not bool(batch["has_mask"][i]):
                continue
            scans += _scan_rows(data, scans_of[patient_id], batch, i, foreground, fold)
            gallery.append((patient_id, batch["image"][i, :, 0].numpy(), batch["mask"][i, :, 0].numpy() > DECISION_THRESHOLD,
                            foreground[i].numpy() > DECISION_THRESHOLD))
    if exporter is not None:
        exporter.close()
    return FoldEvaluation(fold_metrics(scans, patients, threshold), patients, scans, gallery, threshold)


def write_gallery(path: Path, gallery, scans: list[dict]) -> None:
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
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez_compressed(temporary, image=np.stack(images).astype(np.float32), mask=np.stack(masks),
                            pred=np.stack(preds), patient_id=np.array(ids), dice=np.array(dice),
                            timepoints=np.array(names, dtype=str), scan_dice=np.array(scan_dice, dtype=np.float64))
