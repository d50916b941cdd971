"""Experiment tracking: TensorBoard event files and MLflow runs, one per (experiment, fold).

``mstnet run|reproduce|ablate --log tensorboard`` and ``--log mlflow`` (both may be given)
attach a :class:`FoldTracking` to every fold the process trains:

- when the fold starts (:func:`fold_tracking`), each tracker opens: TensorBoard writes to
  ``RUNS_DIR/<experiment>/fold<k>/tensorboard/``; MLflow starts (or, for a resumed fold,
  reopens) a run named ``<experiment> fold<k>`` in the MLflow experiment ``<experiment>``
  of a local store (MLflow's default, ``sqlite:///mlflow.db`` with artifacts in ``./mlruns``
  under the working folder, or ``--mlflow-uri``; no server), with the fold's resolved
  configuration (``config.json``, flattened to ``recipe.learning_rate``-style keys) as
  parameters;
- after every epoch (:meth:`FoldTracking.epoch`, an epoch callback of
  :func:`mstnet.experiments.training.fit`): ``train_loss``, ``val_loss``, ``val_dice``,
  ``val_auc`` and ``lr``, each tagged by training stage (``train_loss/segmentation``), at
  step = epoch of that stage (so a resumed fold continues its curves), and an image of a few
  inner-validation cases (the slice through the nodule at each time point, ground truth in
  green, the model's prediction in magenta);
- when the fold ends, its test metrics (``metrics.json``: ``test/dice``, ``test/auc``, ...)
  are logged, MLflow gets the fold's files as artifacts (all but the resume state
  ``last.pt`` and the TensorBoard folder), and the run is closed (``FAILED`` when the fold
  raised).

Tracking never changes results: the images are drawn in eval mode without gradients from
the inner-validation split (never the test fold) and consume no random numbers, and the
trackers are not part of a fold's configuration identity.

The packages are optional (``pip install -e ".[tracking]"``: tensorboard, mlflow-skinny);
:func:`tracker_specs` refuses ``--log`` in one line naming that extra when one is missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstnet.errors import UsageError

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow")
EXTRA = "tracking"
TENSORBOARD_DIR = "tensorboard"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
SCALARS = ("train_loss", "val_loss", "val_dice", "val_auc", "lr")
"""Fields of :class:`mstnet.experiments.training_state.EpochRecord` logged after every epoch."""
ARTIFACTS_LEFT_OUT = ("last.pt", TENSORBOARD_DIR)
"""Fold files MLflow does not get: the resume state (the largest file) and the TensorBoard events."""
TRUTH_RGB = (0.1, 0.85, 0.2)
PREDICTION_RGB = (0.95, 0.1, 0.85)
MLFLOW_PARAM_LENGTH = 6000
MIN_PANEL_PIXELS = 128
"""Slices smaller than this (the tiny preset's 32 x 32 crops) are enlarged, pixel by pixel, to at least this height."""


@dataclass(frozen=True)
class TrackerSpec:
    """One tracker of a run (picklable, so it travels to ``--jobs`` worker processes).

    Attributes:
        kind: "tensorboard" or "mlflow".
        uri: MLflow tracking URI (None: MLflow's default local store, or ``MLFLOW_TRACKING_URI``).
        images: inner-validation cases drawn after every epoch (0: none).
    """

    kind: str
    uri: str | None = None
    images: int = 2


def install_hint(kind: str) -> str:
    return f'--log {kind} needs the {PACKAGES[kind]} package: pip install -e ".[{EXTRA}]" (optional extra "{EXTRA}")'


def tracker_specs(kinds: Sequence[str] | None, mlflow_uri: str | None = None, images: int = 2) -> tuple[TrackerSpec, ...]:
    """The trackers of ``--log KIND`` (repeatable, or comma-separated) and ``--mlflow-uri``.

    Raises:
        UsageError: an unknown kind, ``--mlflow-uri`` without ``--log mlflow``, or a tracker
            whose package is not installed (the message names the extra to install).
    """
    names = [part.strip() for item in (kinds or []) for part in str(item).split(",") if part.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise UsageError(f"--log {unknown[0]!r}: no such tracker; choose tensorboard or mlflow (or both: "
                         f"--log tensorboard --log mlflow)")
    names = list(dict.fromkeys(names))
    if mlflow_uri and "mlflow" not in names:
        raise UsageError("--mlflow-uri is for --log mlflow; add --log mlflow or leave --mlflow-uri out")
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UsageError(install_hint(name))
    return tuple(TrackerSpec(name, uri=mlflow_uri if name == "mlflow" else None, images=images) for name in names)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with dotted keys (``{"recipe": {"lr": 1}}`` -> ``{"recipe.lr": 1}``);
    lists and other leaves are kept as they are."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: "{}"}
    return {prefix[:-1]: value}


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MLFLOW_PARAM_LENGTH else text[: MLFLOW_PARAM_LENGTH - 3] + "..."


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fold_test_metrics(fold_dir: Path) -> dict[str, float]:
    """``test/<metric>`` of a finished fold's ``metrics.json`` (finite values only); {} when absent."""
    path = Path(fold_dir) / "metrics.json"
    if not path.exists():
        return {}
    metrics = json.loads(path.read_text())
    values = {}
    for section, prefix in (("segmentation", "test"), ("classification", "test"),
                            ("classification_at_validation_threshold", "test_at_validation_threshold")):
        for key, value in (metrics.get(section) or {}).items():
            if _finite(value):
                values[f"{prefix}/{key}"] = float(value)
    return values


# ------------------------------------------------------------------------------------- images


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2D boolean mask (pixels of the mask with a 4-neighbour outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def case_panel(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray | None) -> np.ndarray:
    """One case as an RGB float image [H, T * W, 3] in [0, 1]: the slice through the nodule at
    each time point, side by side, with the ground-truth outline (green) and the prediction's (magenta).

    Args:
        image: [T, D, H, W] intensities as fed to the model.
        truth: [T, D, H, W] boolean reference mask.
        prediction: [T, D, H, W] boolean predicted mask, or None (a model without segmentation).
    """
    panels = []
    for t in range(image.shape[0]):
        profile = truth[t].sum(axis=(1, 2))
        z = int(np.argmax(profile)) if profile.any() else image.shape[1] // 2
        slice_ = image[t, z].astype(np.float64)
        low, high = np.percentile(slice_, [1, 99])
        grey = np.clip((slice_ - low) / max(high - low, 1e-6), 0.0, 1.0)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        rgb[_outline(truth[t, z])] = TRUTH_RGB
        if prediction is not None:
            rgb[_outline(prediction[t, z])] = PREDICTION_RGB
        panels.append(rgb)
    panel = np.concatenate(panels, axis=1)
    factor = max(1, -(-MIN_PANEL_PIXELS // panel.shape[0]))
    return panel.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else panel


class ValidationCases:
    """A few inner-validation patients, collated once, drawn with the current weights after every epoch."""

    def __init__(self, model, dataset, device, use_clinical: bool, amp: bool, n_cases: int):
        from mstnet.data.dataset import collate_patients

        n_cases = min(n_cases, len(dataset))
        self.model, self.device, self.use_clinical, self.amp = model, device, use_clinical, amp
        self.batch = collate_patients([dataset[i] for i in range(n_cases)]) if n_cases else None

    def image(self) -> np.ndarray | None:
        """[sum of case heights, T * W, 3] float RGB in [0, 1], cases stacked top to bottom; None without cases."""
        if self.batch is None:
            return None
        import torch

        from mstnet.experiments.training import autocast_context, forward_batch, move_batch
        from mstnet.metrics import DECISION_THRESHOLD
        from mstnet.models.output import foreground_map

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast_context(self.device, self.amp):
                output = forward_batch(self.model, move_batch(self.batch, self.device), self.use_clinical)
        finally:
            self.model.train(was_training)
        foreground = None if output.seg_logits is None else \
            (foreground_map(output.seg_logits.float())[:, :, 0] > DECISION_THRESHOLD).cpu().numpy()
        images = self.batch["image"][:, :, 0].float().numpy()
        masks = self.batch["mask"][:, :, 0].numpy() > DECISION_THRESHOLD
        rows = [case_panel(images[i], masks[i], None if foreground is None else foreground[i])
                for i in range(images.shape[0])]
        width = max(row.shape[1] for row in rows)
        rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
        return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------------------------- trackers


class _TensorBoard:
    def __init__(self, spec: TrackerSpec, experiment: str, fold_index: int, fold_dir: Path, configuration: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard missing or broken after the check
            raise UsageError(install_hint("tensorboard")) from error
        self.directory = Path(fold_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.directory))
        self.writer.add_text("configuration", "```\n" + json.dumps(configuration, indent=2, default=str) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image.astype(np.float32), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, fold_dir: Path, failed: bool, status: str | None = None) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, spec: TrackerSpec, experiment: str, fold_index: int, fold_dir: Path, configuration: dict):
        uri = spec.uri
        if uri and ("://" not in uri or uri.startswith("file:")):
            # A folder (file store): MLflow 3 keeps it only on request; it is what was asked for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError as error:
            raise UsageError(install_hint("mlflow")) from error
        self.client = _retry(lambda: MlflowClient(tracking_uri=uri))
        self.artifact_location = _artifacts_beside(uri)
        experiment_id = _retry(lambda: self._experiment_id(experiment))
        identity = str(configuration.get("identity", ""))
        tags = {"mstnet.experiment": experiment, "mstnet.fold": str(fold_index), "mstnet.identity": identity,
                "mstnet.fold_dir": str(Path(fold_dir).resolve())}
        self.run_id = self._unfinished_run(experiment_id, tags)
        if self.run_id is None:
            run = self.client.create_run(experiment_id, run_name=f"{experiment} fold{fold_index}", tags=tags)
            self.run_id = run.info.run_id
            params = [Param(key[:250], _param_text(value)) for key, value in flatten(configuration).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start:start + 100])
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("%s fold %d: MLflow run %s resumed", experiment, fold_index, self.run_id)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _unfinished_run(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        """The run of an earlier, unfinished attempt at the same fold folder and configuration."""
        if "'" in tags["mstnet.fold_dir"]:
            return None
        query = " and ".join(f"tags.`{key}` = '{tags[key]}'" for key in ("mstnet.fold_dir", "mstnet.identity"))
        try:
            runs = self.client.search_runs([experiment_id], filter_string=query, max_results=10)
        except Exception as error:  # a store without search: start a new run
            log.debug("MLflow search failed (%s); starting a new run", error)
            return None
        unfinished = [run for run in runs if run.info.status != "FINISHED"]
        return unfinished[0].info.run_id if unfinished else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for key, value in values.items()])

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        try:
            self.client.log_image(self.run_id, pixels, key=tag.replace("/", "_"), step=step)
        except TypeError:  # MLflow before step-indexed images
            self.client.log_image(self.run_id, pixels, artifact_file=f"images/{tag}_step{step:04d}.png")

    def flush(self) -> None:
        pass

    def close(self, fold_dir: Path, failed: bool, status: str | None = None) -> None:
        if not failed:
            for path in sorted(Path(fold_dir).iterdir()):
                if path.name in ARTIFACTS_LEFT_OUT:
                    continue
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
                elif path.is_dir():  # e.g. masks/ of --export-masks
                    self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        self.client.set_terminated(self.run_id, status=status or ("FAILED" if failed else "FINISHED"))


def _artifacts_beside(uri: str | None) -> str | None:
    """For a local SQLite store named by ``--mlflow-uri sqlite:///PATH``, the folder ``mlruns`` beside the
    database (MLflow would put artifacts under the working folder); None otherwise (MLflow's own choice:
    ``./mlruns`` beside the default ``./mlflow.db``, or the file store's own folder)."""
    prefix = "sqlite:///"
    if not uri or not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return (Path(uri[len(prefix):]).expanduser().resolve().parent / "mlruns").as_uri()


def _retry(make, attempts: int = 5, pause_s: float = 0.5):
    """``make()``, tried again on errors: parallel ``--jobs`` processes may set up one local store at once."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s * (attempt + 1))
    raise AssertionError("unreachable")


TRACKER_CLASSES = {"tensorboard": _TensorBoard, "mlflow": _MLflow}


class FoldTracking:
    """The trackers of one fold (none: every method does nothing).

    Opened by :func:`fold_tracking`; :meth:`attach` gives it the model and the
    inner-validation data for the per-epoch images; :meth:`epoch` is the epoch callback.
    """

    def __init__(self, specs: Sequence[TrackerSpec], experiment: str, fold_index: int, fold_dir: Path,
                 configuration: dict):
        self.fold_dir = Path(fold_dir)
        self.specs = tuple(specs)
        self.trackers: list[Any] = []
        for spec in self.specs:
            self.trackers.append(TRACKER_CLASSES[spec.kind](spec, experiment, fold_index, self.fold_dir, configuration))
        self.cases: ValidationCases | None = None

    def __bool__(self) -> bool:
        return bool(self.trackers)

    @property
    def callbacks(self) -> tuple:
        """The epoch callbacks to hand to ``fit`` (none without trackers)."""
        return (self.epoch,) if self.trackers else ()

    def attach(self, model, dataset, device, use_clinical: bool, amp: bool) -> None:
        """Draw ``images`` cases of ``dataset`` (the inner validation split) with ``model`` after every epoch."""
        n_cases = max((spec.images for spec in self.specs), default=0)
        if self.trackers and n_cases > 0 and dataset is not None and len(dataset):
            self.cases = ValidationCases(model, dataset, device, use_clinical, amp, n_cases)

    def epoch(self, record) -> None:
        """Epoch callback: the record's scalars, tagged by stage, and the validation cases' image."""
        if not self.trackers:
            return
        values = {f"{key}/{record.stage}": float(getattr(record, key)) for key in SCALARS
                  if _finite(getattr(record, key, None))}
        image = self.cases.image() if self.cases is not None else None
        for tracker in self.trackers:
            tracker.scalars(values, record.epoch)
            if image is not None:
                tracker.image(f"validation_cases/{record.stage}", image, record.epoch)
            tracker.flush()

    def close(self, failed: bool = False, status: str | None = None) -> None:
        """Log the test metrics (when the fold finished), hand over artifacts and close every tracker."""
        values = {} if failed else fold_test_metrics(self.fold_dir)
        errors = []
        for tracker in self.trackers:
            try:
                if values:
                    tracker.scalars(values, 0)
                tracker.close(self.fold_dir, failed, status)
            except Exception as error:  # one tracker failing must not hide the fold's result or the others
                errors.append(error)
                log.warning("%s: closing the %s tracker failed: %s", self.fold_dir, type(tracker).__name__, error)
        self.trackers = []
        if errors and not failed:
            raise errors[0]


@contextmanager
def fold_tracking(specs: Sequence[TrackerSpec], experiment: str, fold_index: int, fold_dir: Path,
                  configuration: dict) -> Iterator[FoldTracking]:
    """Fold-start and fold-end hooks: open the trackers, yield them, close them (``FAILED`` on an exception)."""
    tracking = FoldTracking(specs, experiment, fold_index, fold_dir, configuration)
    try:
        yield tracking
    except BaseException as error:
        tracking.close(failed=True, status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracking.close()
