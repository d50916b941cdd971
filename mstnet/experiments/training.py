"""Training loop: stages, inner-validation selection, resumable checkpoints, AMP and DDP.

A fit runs one or more *stages* (``joint``; or ``segmentation`` then ``classification``,
the paper's two-stage recipe, where the second stage freezes the segmentation network and
starts from the first stage's best weights). Each epoch ends with a pass over the inner
validation split; the checkpoint with the best validation score (the negative validation
loss of the stage's objective) is kept, with early stopping after ``patience`` epochs
without improvement. The test fold never enters this module.

After every epoch the complete :class:`TrainingState` (weights, optimiser, scheduler, best
weights, history) is written atomically to ``last.pt``; a fit started again on the same
folder resumes from it. Data order and augmentation are seeded by (seed, stage, epoch)
(:func:`epoch_seed`), so a resumed fit equals an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mstnet.experiments.distributed import is_main_process, unwrap
from mstnet.experiments.frozen_stage import FrozenStageData
from mstnet.experiments.optimisation import optimizer_step, stage_optimizer, stage_scheduler
from mstnet.experiments.registry import Recipe, epochs_per_stage
from mstnet.metrics import DECISION_THRESHOLD
from mstnet.models.losses import MultiTaskLoss
from mstnet.experiments.training_state import Checkpoints, EpochRecord, TrainingState
from mstnet.models.output import ModelOutput, foreground_map

log = logging.getLogger(__name__)

BATCH_TENSOR_KEYS = ("image", "mask", "has_mask", "days", "clinical_categorical", "clinical_numeric", "label")

EPOCH_SEED_PER_RECIPE_SEED = 100_003
"""Step of an epoch's seed per unit of the recipe's seed (:func:`epoch_seed`)."""

EPOCH_SEED_PER_STAGE = 10_007
"""Step of an epoch's seed per stage (:func:`epoch_seed`)."""


def epoch_seed(recipe_seed: int, stage_index: int, epoch: int) -> int:
    """The seed of one epoch's data order and augmentation (and of ``torch.manual_seed`` for dropout):
    ``recipe_seed`` x :data:`EPOCH_SEED_PER_RECIPE_SEED` + ``stage_index`` x :data:`EPOCH_SEED_PER_STAGE`
    + ``epoch``.

    Each step is a prime larger than everything below it (a stage has fewer than 10_007 epochs, and
    nine stages of them stay below 100_003), so every (seed, stage, epoch) of a fit, and of its
    training-seed replicates (seeds s, s + 1, ...), gets a seed of its own; a function of these three
    only, so a resumed fit draws what an uninterrupted one does.
    """
    return recipe_seed * EPOCH_SEED_PER_RECIPE_SEED + stage_index * EPOCH_SEED_PER_STAGE + epoch


@dataclass(frozen=True)
class Stage:
    """One training stage: its loss weights and which parameters it trains."""

    name: str
    epochs: int
    seg_weight: float
    cls_weight: float


@dataclass
class FitResult:
    """The outcome of :func:`fit`: best weights (already loaded into the model) and the history."""

    history: list[EpochRecord]
    selected_epochs: dict[str, int]
    resumed_from_epoch: int | None = None
    seconds: list[float] = field(default_factory=list)
    """Cumulative wall seconds of training and inner validation at the end of each epoch of
    ``history`` (kept apart from the history, which is deterministic)."""


EpochCallback = Callable[[EpochRecord], None]
"""Called after every epoch; may raise (Optuna pruning, an injected interruption)."""


def stages_for(recipe: Recipe, tasks: Sequence[str]) -> list[Stage]:
    """The stages a recipe runs for a model with the given tasks."""
    has_seg, has_cls = "segmentation" in tasks, "classification" in tasks
    stages = []
    for name, n_epochs in zip(recipe.stages, epochs_per_stage(recipe)):
        if name == "joint":
            stages.append(Stage("joint", n_epochs, recipe.seg_loss_weight if has_seg else 0.0, recipe.cls_loss_weight if has_cls else 0.0))
        elif name == "segmentation" and has_seg:
            stages.append(Stage("segmentation", n_epochs, 1.0, 0.0))
        elif name == "classification" and has_cls:
            stages.append(Stage("classification", n_epochs, 0.0, 1.0))
        elif name not in ("segmentation", "classification"):
            raise ValueError(f"unknown training stage {name!r}; expected joint, segmentation or classification")
    if not stages:
        raise ValueError(f"recipe stages {recipe.stages} train nothing for tasks {tuple(tasks)}")
    return stages


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present (the local rank's GPU under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store convolution weights channels-last (3D: channels-last-3d), in place.

    Convolutions then produce channels-last activations, which oneDNN runs faster on the CPU
    (training steps 1.1-1.5x faster on this project's 2-core CPU, ``make bench``; see
    benchmarks/README.md) and cuDNN is built for on the GPU (not measured here). Values are unchanged: only the memory layout differs.

    Except strided 1 x 1 convolutions (ResNet's downsampling shortcuts): they keep their weights
    contiguous and get a contiguous input (:func:`_contiguous_input`). oneDNN's AVX2 kernel for the
    weight gradient of a strided 1 x 1 convolution on channels-last input corrupts the heap (seen on an
    AVX2-only AMD EPYC with PyTorch 2.14.1: ACSNet at the tiny preset aborted with "free(): invalid
    size" in about one run of three; gdb put the fault in ``jit_avx2_1x1_convolution_bwd_weights_t``).
    """
    formats = {3: torch.channels_last_3d, 2: torch.channels_last}
    for module in model.modules():
        if not (isinstance(module, nn.modules.conv._ConvNd) and len(module.kernel_size) in formats):
            continue
        if _strided_pointwise(module):
            module.register_forward_pre_hook(_contiguous_input)
            continue
        module.weight.data = module.weight.data.contiguous(memory_format=formats[len(module.kernel_size)])
    return model


def _strided_pointwise(conv: nn.modules.conv._ConvNd) -> bool:
    """Whether ``conv`` is a 1 x 1 (x 1) convolution with a stride above 1."""
    return all(k == 1 for k in conv.kernel_size) and any(s > 1 for s in conv.stride)


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the module's first input in the contiguous layout."""
    return (args[0].contiguous(), *args[1:])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matrix products natively on this CPU (AVX-512 BF16 or
    AMX). Elsewhere bf16 is emulated and far slower than float32: on an AVX2-only AMD EPYC, one MLTN
    epoch of the cpu preset (fold 0, with its inner validation) took 295 s under bf16 autocast and 20 to
    25 s in float32 (``mstnet run mltn --preset cpu --folds 0 --epochs 2 --set cpu_bf16=false``)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_steps(cpu_bf16: bool, device: torch.device) -> bool:
    """Whether training steps asked to run in bf16 on the CPU (``Recipe.cpu_bf16``) do: only on a CPU
    device whose CPU runs bf16 natively (:func:`cpu_has_native_bf16`); elsewhere they stay float32."""
    return cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16()


def autocast_context(device: torch.device, enabled: bool, cpu_bf16: bool = False):
    """bf16 autocast on CUDA devices that support it, fp16 otherwise (``enabled``); on the CPU, bf16
    autocast with ``cpu_bf16`` where the CPU runs bf16 natively (:func:`cpu_bf16_steps`), else nothing."""
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16_steps(cpu_bf16, device) else nullcontext()
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` (non-blocking from pinned memory); other entries unchanged."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def forward_batch(model: nn.Module, batch: dict[str, Any], use_clinical: bool) -> ModelOutput:
    """Run ``model`` on a batch dict: images [B, T, 1, D, H, W] plus clinical inputs and days.

    A batch of :class:`mstnet.experiments.frozen_stage.FrozenStageData` that carries the frozen
    network's outputs (``"frozen"``) runs only the classification network on them.
    """
    if "frozen" in batch:
        return unwrap(model).classify(
            batch["frozen"],
            clinical_categorical=batch["clinical_categorical"] if use_clinical else None,
            clinical_numeric=batch["clinical_numeric"] if use_clinical else None,
            days=batch["days"],
        )
    return model(
        batch["image"],
        clinical_categorical=batch["clinical_categorical"] if use_clinical else None,
        clinical_numeric=batch["clinical_numeric"] if use_clinical else None,
        days=batch["days"],
    )


def malignancy_probability(cls_logits: torch.Tensor) -> torch.Tensor:
    """[B, 2] logits -> [B] probability of the malignant class."""
    return torch.softmax(cls_logits.float(), dim=1)[:, 1]


def _trainable_parameters(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """Parameters a stage trains. The classification stage of a two-stage recipe freezes the
    segmentation network (models expose ``freeze_segmentation`` / ``classification_parameters``)."""
    core = unwrap(model)
    if stage.name == "classification" and hasattr(core, "freeze_segmentation"):
        core.freeze_segmentation()
        return [p for p in core.classification_parameters() if p.requires_grad]
    return [p for p in core.parameters() if p.requires_grad]


def _val_dice(probability: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> list[float]:
    """Hard Dice per scan ([B, T, D, H, W] probability vs [B, T, 1, D, H, W] mask) for scans with masks."""
    pred = probability > DECISION_THRESHOLD
    truth = mask[:, :, 0] > DECISION_THRESHOLD
    inter = (pred & truth).flatten(2).sum(-1).float()
    total = pred.flatten(2).sum(-1).float() + truth.flatten(2).sum(-1).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return dice[has_mask.bool()].flatten().tolist()


def evaluate_loss(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    loss_fn: MultiTaskLoss,
    device: torch.device,
    use_clinical: bool,
    amp: bool,
) -> tuple[float, float, float]:
    """Mean loss, mean hard Dice and AUC of ``model`` over ``loader`` (validation data)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    losses, weights, dices, labels, probs = [], [], [], [], []
    with torch.no_grad():
        for batch in loader:
            batch = move_batch(batch, device)
            with autocast_context(device, amp):
                output = forward_batch(model, batch, use_clinical)
                loss, _ = loss_fn(output, batch["mask"], batch["label"], batch["has_mask"])
            n = len(batch["label"])
            losses.append(float(loss) * n)
            weights.append(n)
            if output.seg_logits is not None:
                dices += _val_dice(foreground_map(output.seg_logits.float())[:, :, 0], batch["mask"], batch["has_mask"])
            if output.cls_logits is not None:
                labels += batch["label"].tolist()
                probs += malignancy_probability(output.cls_logits).tolist()
    auc = roc_auc_score(labels, probs) if len(set(labels)) == 2 else math.nan
    return sum(losses) / max(sum(weights), 1), float(np.mean(dices)) if dices else math.nan, float(auc)


class _Replayable:
    """An iterable that calls ``batches()`` afresh on every pass (a validation loader)."""

    def __init__(self, batches: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches())


@dataclass(frozen=True)
class _Fit:
    """What every step of one :func:`fit` shares (its arguments, see there)."""

    model: nn.Module
    core: nn.Module
    make_train_loader: Callable[[int], Iterable[dict[str, Any]]]
    validation_loader: Iterable[dict[str, Any]]
    recipe: Recipe
    device: torch.device
    use_clinical: bool
    checkpoints: Checkpoints
    on_stage_start: Callable[[Stage], None] | None
    frozen_stage: Callable[[], FrozenStageData] | None


@dataclass
class _StageRun:
    """One stage being trained: its optimizer, schedule, loss and data."""

    stage: Stage
    index: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool
    loss_fn: MultiTaskLoss
    train_batches: Callable[[int], Iterable[dict[str, Any]]]
    validation: Iterable[dict[str, Any]]
    scaler: torch.amp.GradScaler


def _start_stage(run: _Fit, state: TrainingState, stage: Stage, stage_index: int) -> _StageRun:
    """Set up ``stage``: afresh (from the previous stage's best weights, with ``on_stage_start``), or,
    on a resume within it, with the saved optimizer and schedule."""
    recipe, core = run.recipe, run.core
    fresh = not (stage_index == state.stage_index and state.optimizer is not None)
    if fresh and stage_index > 0:
        core.load_state_dict(state.best_weights_previous_stage)
    optimizer = stage_optimizer(recipe, _trainable_parameters(run.model, stage))
    train_batches, validation = run.make_train_loader, run.validation_loader
    batches_per_epoch = len(run.make_train_loader(0))
    if run.frozen_stage is not None and stage.name == "classification" and hasattr(core, "classify"):
        cached = run.frozen_stage()
        train_batches, validation = cached.train_batches, _Replayable(cached.validation_batches)
        batches_per_epoch = cached.train_batches_per_epoch()
    steps_per_epoch = math.ceil(batches_per_epoch / recipe.gradient_accumulation)
    scheduler, per_step = stage_scheduler(optimizer, recipe, stage.epochs, steps_per_epoch)
    if not fresh:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    else:
        state.epoch, state.best_score, state.best_weights, state.stale = 0, -math.inf, None, 0
        if run.on_stage_start is not None:
            run.on_stage_start(stage)
    loss_fn = MultiTaskLoss(seg_weight=stage.seg_weight, cls_weight=stage.cls_weight)
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp and run.device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    return _StageRun(stage, stage_index, optimizer, scheduler, per_step, loss_fn, train_batches, validation, scaler)


def _train_steps(run: _Fit, stage_run: _StageRun, state: TrainingState, seed: int) -> tuple[float, int]:
    """One pass over the epoch's training batches (drawn with ``seed``): (summed loss x patients, patients)."""
    recipe, optimizer = run.recipe, stage_run.optimizer
    per_step_scheduler = stage_run.scheduler if stage_run.per_step else None
    train_loss, n_seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    step = -1
    for step, batch in enumerate(stage_run.train_batches(seed)):
        batch = move_batch(batch, run.device)
        with autocast_context(run.device, recipe.amp, recipe.cpu_bf16):
            output = forward_batch(run.model, batch, run.use_clinical)
            loss, _ = stage_run.loss_fn(output, batch["mask"], batch["label"], batch["has_mask"])
        stage_run.scaler.scale(loss / recipe.gradient_accumulation).backward()
        if (step + 1) % recipe.gradient_accumulation == 0:
            optimizer_step(optimizer, stage_run.scaler, per_step_scheduler)
            state.steps += 1
        train_loss += float(loss.detach()) * len(batch["label"])
        n_seen += len(batch["label"])
    if n_seen and (step + 1) % recipe.gradient_accumulation != 0:
        optimizer_step(optimizer, stage_run.scaler, per_step_scheduler)
        state.steps += 1
    return train_loss, n_seen


def _run_epoch(run: _Fit, stage_run: _StageRun, state: TrainingState, epoch: int) -> EpochRecord:
    """Train one epoch, then validate; the epoch's record, appended to the history."""
    stage = stage_run.stage
    seed = epoch_seed(run.recipe.seed, stage_run.index, epoch)
    torch.manual_seed(seed)
    run.model.train()
    if stage.name == "classification" and hasattr(run.core, "freeze_segmentation"):
        run.core.freeze_segmentation()
    epoch_clock = time.perf_counter()
    lr = stage_run.optimizer.param_groups[0]["lr"]
    train_loss, n_seen = _train_steps(run, stage_run, state, seed)
    if not stage_run.per_step:
        stage_run.scheduler.step()
    val_loss, val_dice, val_auc = evaluate_loss(run.model, stage_run.validation, stage_run.loss_fn, run.device,
                                                run.use_clinical, run.recipe.amp)
    state.seconds.append((state.seconds[-1] if state.seconds else 0.0) + time.perf_counter() - epoch_clock)
    record = EpochRecord(stage.name, epoch, train_loss / max(n_seen, 1), val_loss, -val_loss, lr, val_dice, val_auc,
                         step=state.steps)
    state.history.append(record)
    log.info("%s epoch %d/%d: train loss %.4f, validation loss %.4f, Dice %.3f, AUC %.3f, lr %.2e",
             stage.name, epoch + 1, stage.epochs, record.train_loss, val_loss, val_dice, val_auc, lr)
    return record


def _select(run: _Fit, state: TrainingState, record: EpochRecord) -> None:
    """Keep the epoch's weights (and write ``best.pt``) when it beats the stage's best validation score."""
    if record.val_score > state.best_score:
        state.best_score, state.stale = record.val_score, 0
        state.best_weights = {k: v.detach().cpu().clone() for k, v in run.core.state_dict().items()}
        state.selected[record.stage] = record.epoch
        run.checkpoints.save_best(state.best_weights)
    else:
        state.stale += 1


def _checkpoint_epoch(run: _Fit, state: TrainingState, stage_run: _StageRun, epoch: int) -> None:
    """Record that ``epoch`` of the stage is done and save the state."""
    state.stage_index, state.epoch = stage_run.index, epoch + 1
    state.optimizer, state.scheduler = stage_run.optimizer.state_dict(), stage_run.scheduler.state_dict()
    state.weights = run.core.state_dict()
    run.checkpoints.save_state(state)


def _finish_stage(run: _Fit, state: TrainingState, stage_index: int) -> None:
    """Load the stage's best weights, where the next stage starts, and save the state."""
    run.core.load_state_dict(state.best_weights)
    state.best_weights_previous_stage = state.best_weights
    state.optimizer = state.scheduler = None
    state.stage_index, state.epoch = stage_index + 1, 0
    state.weights = run.core.state_dict()
    run.checkpoints.save_state(state)


def _resume(run: _Fit, run_dir: Path | None) -> tuple[TrainingState, int | None]:
    """The saved state of an interrupted fit in ``run_dir`` (its weights loaded) and its epochs done, or
    a new state and None."""
    state = run.checkpoints.saved_state()
    if state is None:
        return TrainingState(), None
    run.core.load_state_dict(state.weights)
    log.info("resuming %s from epoch %d of stage %d", run_dir, state.epoch, state.stage_index)
    return state, len(state.history)


def fit(model: nn.Module, make_train_loader: Callable[[int], Iterable[dict[str, Any]]],
        validation_loader: Iterable[dict[str, Any]], recipe: Recipe, tasks: Sequence[str], run_dir: Path | None,
        device: torch.device, use_clinical: bool = True, callbacks: Sequence[EpochCallback] = (),
        progress: bool = True, on_stage_start: Callable[[Stage], None] | None = None,
        frozen_stage: Callable[[], FrozenStageData] | None = None) -> FitResult:
    """Train ``model`` by ``recipe``; leave the best (inner-validation) weights loaded.

    Args:
        model: returns :class:`ModelOutput` from ``(images [B, T, 1, D, H, W], clinical..., days)``;
            may be wrapped in :class:`mstnet.experiments.distributed.DistributedModel`.
        make_train_loader: ``seed -> iterable of batch dicts``; called once per epoch with
            :func:`epoch_seed` of (recipe seed, stage, epoch), so the order and augmentation of an
            epoch are reproducible.
        validation_loader: the inner validation split (no augmentation).
        recipe: optimiser, schedule, stages, loss weights, early stopping.
        tasks: the model's tasks, choosing which losses apply.
        run_dir: where ``last.pt`` (resume state) and ``best.pt`` go; None keeps nothing on disk.
        device: where to train.
        use_clinical: feed clinical inputs to the model.
        callbacks: called with each epoch's record (e.g. Optuna pruning).
        progress: show tqdm progress bars.
        on_stage_start: called with each stage when it starts afresh (not on a resume), after
            the previous stage's best weights are loaded and before its first step
            (output-bias initialisation).
        frozen_stage: for a model whose classification stage freezes the segmentation
            network (``Recipe.frozen_stage_cache``): called when that stage starts or resumes,
            with the segmentation weights in place; its batches (frozen outputs cached per
            patient and augmentation) replace both loaders in that stage.
    """
    stages = stages_for(recipe, tasks)
    if recipe.cpu_bf16 and device.type == "cpu" and not cpu_bf16_steps(recipe.cpu_bf16, device):
        log.warning("the recipe asks for bf16 training steps on the CPU, but this CPU has no native bf16 "
                    "(AVX-512 BF16 or AMX), where it runs emulated and far slower: training in float32")
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    run = _Fit(model, unwrap(model), make_train_loader, validation_loader, recipe, device, use_clinical,
               Checkpoints(run_dir), on_stage_start, frozen_stage)
    state, resumed_from = _resume(run, run_dir)
    for stage_index in range(state.stage_index, len(stages)):
        stage = stages[stage_index]
        stage_run = _start_stage(run, state, stage, stage_index)
        epochs = tqdm(range(state.epoch, stage.epochs), desc=f"{stage.name}", leave=False,
                      disable=not (progress and is_main_process()), initial=state.epoch, total=stage.epochs)
        for epoch in epochs:
            if state.stale >= recipe.early_stopping_patience:
                break
            record = _run_epoch(run, stage_run, state, epoch)
            _select(run, state, record)
            epochs.set_postfix(train=f"{record.train_loss:.3f}", val=f"{record.val_loss:.3f}")
            _checkpoint_epoch(run, state, stage_run, epoch)
            for callback in callbacks:
                callback(record)
        _finish_stage(run, state, stage_index)
    return FitResult(history=list(state.history), selected_epochs=dict(state.selected), resumed_from_epoch=resumed_from,
                     seconds=list(state.seconds))
