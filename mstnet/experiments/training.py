"""Training loop: stages, inner-validation selection, resumable checkpoints, AMP and DDP.

A fit runs one or more *stages* (``joint``; or ``segmentation`` then ``classification``,
the paper's two-stage recipe, where the second stage freezes the segmentation network and
starts from the first stage's best weights). Each epoch ends with a pass over the inner
validation split; the checkpoint with the best validation score (the negative validation
loss of the stage's objective) is kept, with early stopping after ``patience`` epochs
without improvement. The test fold never enters this module.

After every epoch the complete state (weights, optimiser, scheduler, best weights, history)
is written atomically to ``last.pt``; a fit started again on the same folder resumes from
it. Data order and augmentation are seeded by (seed, stage, epoch), so a resumed fit
equals an uninterrupted one.
"""

from __future__ import annotations

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
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mstnet.atomic import atomic_path
from mstnet.experiments.frozen_stage import FrozenStageData
from mstnet.experiments.registry import Recipe
from mstnet.models.losses import MultiTaskLoss
from mstnet.models.output import ModelOutput

log = logging.getLogger(__name__)

BATCH_TENSOR_KEYS = ("image", "mask", "has_mask", "days", "clinical_categorical", "clinical_numeric", "label")


@dataclass(frozen=True)
class Stage:
    """One training stage: its loss weights and which parameters it trains."""

    name: str
    epochs: int
    seg_weight: float
    cls_weight: float


@dataclass
class EpochRecord:
    """What one epoch produced; a row of ``history.csv``."""

    stage: str
    epoch: int
    train_loss: float
    val_loss: float
    val_score: float
    lr: float
    val_dice: float = math.nan
    val_auc: float = math.nan
    step: int = 0
    """Optimizer steps of the fold so far, over every stage (the training budget spent)."""


def stage_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, steps_per_epoch: int):
    """The learning-rate schedule of one stage, and whether it steps per optimizer step.

    ``"epoch_cosine"`` (the release): cosine decay per epoch to ``final_lr_fraction`` x the
    rate. ``"warmup_cosine"``: linear warm-up over the first ``warmup_fraction`` of the
    stage's optimizer steps, then cosine decay per step to ``final_lr_fraction`` x the rate.
    """
    if recipe.lr_schedule == "epoch_cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(epochs, 1), eta_min=recipe.learning_rate * recipe.final_lr_fraction), False
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(int(round(recipe.warmup_fraction * total)), total - 1)
    floor = recipe.final_lr_fraction

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


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
    epochs = recipe.stage_epochs or tuple(recipe.epochs for _ in recipe.stages)
    if len(epochs) != len(recipe.stages):
        raise ValueError(f"recipe has {len(recipe.stages)} stages but {len(epochs)} stage_epochs")
    stages = []
    for name, n_epochs in zip(recipe.stages, epochs):
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
    """
    formats = {3: torch.channels_last_3d, 2: torch.channels_last}
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and len(module.kernel_size) in formats:
            memory_format = formats[len(module.kernel_size)]
            module.weight.data = module.weight.data.contiguous(memory_format=memory_format)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA devices that support it, fp16 otherwise; nothing on the CPU."""
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
        return _unwrap(model).classify(
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


def foreground_probability(seg_logits: torch.Tensor) -> torch.Tensor:
    """[B, T, K, D, H, W] logits -> [B, T, D, H, W] foreground probability (K = 1 sigmoid, K > 1 softmax)."""
    if seg_logits.shape[2] == 1:
        return torch.sigmoid(seg_logits[:, :, 0].float())
    return torch.softmax(seg_logits.float(), dim=2)[:, :, 1:].sum(dim=2)


def malignancy_probability(cls_logits: torch.Tensor) -> torch.Tensor:
    """[B, 2] logits -> [B] probability of the malignant class."""
    return torch.softmax(cls_logits.float(), dim=1)[:, 1]


class _TupleOutputs(nn.Module):
    """Returns (seg_logits, cls_logits) so DistributedDataParallel can find the output tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        output = self.model(*args, **kwargs)
        return output.seg_logits, output.cls_logits


class DistributedModel(nn.Module):
    """A model under DistributedDataParallel that still returns :class:`ModelOutput`.

    Parameters a stage does not use (the classifier while segmentation trains, the frozen
    segmentation network afterwards) are allowed: ``find_unused_parameters=True``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parallel = nn.parallel.DistributedDataParallel(_TupleOutputs(model), find_unused_parameters=True)

    @property
    def core(self) -> nn.Module:
        return self.parallel.module.model

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        seg_logits, cls_logits = self.parallel(*args, **kwargs)
        return ModelOutput(seg_logits=seg_logits, cls_logits=cls_logits)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.core if isinstance(model, DistributedModel) else model


def _trainable_parameters(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """Parameters a stage trains. The classification stage of a two-stage recipe freezes the
    segmentation network (models expose ``freeze_segmentation`` / ``classification_parameters``)."""
    core = _unwrap(model)
    if stage.name == "classification" and hasattr(core, "freeze_segmentation"):
        core.freeze_segmentation()
        return [p for p in core.classification_parameters() if p.requires_grad]
    return [p for p in core.parameters() if p.requires_grad]


def _val_dice(probability: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> list[float]:
    """Hard Dice per scan ([B, T, D, H, W] probability vs [B, T, 1, D, H, W] mask) for scans with masks."""
    pred = probability > 0.5
    truth = mask[:, :, 0] > 0.5
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
                dices += _val_dice(foreground_probability(output.seg_logits), batch["mask"], batch["has_mask"])
            if output.cls_logits is not None:
                labels += batch["label"].tolist()
                probs += malignancy_probability(output.cls_logits).tolist()
    auc = roc_auc_score(labels, probs) if len(set(labels)) == 2 else math.nan
    return sum(losses) / max(sum(weights), 1), float(np.mean(dices)) if dices else math.nan, float(auc)


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler: Any | None) -> None:
    """One optimizer step (through the AMP scaler), then the per-step schedule if there is one."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


class _Replayable:
    """An iterable that calls ``batches()`` afresh on every pass (a validation loader)."""

    def __init__(self, batches: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches())


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def fit(
    model: nn.Module,
    make_train_loader: Callable[[int], Iterable[dict[str, Any]]],
    validation_loader: Iterable[dict[str, Any]],
    recipe: Recipe,
    tasks: Sequence[str],
    run_dir: Path | None,
    device: torch.device,
    use_clinical: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    progress: bool = True,
    on_stage_start: Callable[[Stage], None] | None = None,
    frozen_stage: Callable[[], FrozenStageData] | None = None,
) -> FitResult:
    """Train ``model`` by ``recipe``; leave the best (inner-validation) weights loaded.

    Args:
        model: returns :class:`ModelOutput` from ``(images [B, T, 1, D, H, W], clinical..., days)``;
            may be wrapped in :class:`DistributedModel`.
        make_train_loader: ``seed -> iterable of batch dicts``; called once per epoch with a
            seed derived from (recipe seed, stage, epoch), so the order and augmentation of an
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
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    last_path = run_dir / "last.pt" if run_dir else None
    best_path = run_dir / "best.pt" if run_dir else None
    core = _unwrap(model)
    state: dict[str, Any] = {"stage_index": 0, "epoch": 0, "history": [], "selected": {}, "best_score": -math.inf,
                             "best_weights": None, "stale": 0, "optimizer": None, "scheduler": None}
    resumed_from = None
    if last_path is not None and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        core.load_state_dict(state["weights"])
        resumed_from = len(state["history"])
        log.info("resuming %s from epoch %d of stage %d", run_dir, state["epoch"], state["stage_index"])

    history = [EpochRecord(**row) for row in state["history"]]
    for stage_index in range(state["stage_index"], len(stages)):
        stage = stages[stage_index]
        fresh_stage = not (stage_index == state["stage_index"] and state["optimizer"] is not None)
        if fresh_stage and stage_index > 0:
            core.load_state_dict(state["best_weights_previous_stage"])
        parameters = _trainable_parameters(model, stage)
        optimizer = torch.optim.Adam(parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(make_train_loader(0)) / recipe.gradient_accumulation)
        scheduler, per_step = stage_scheduler(optimizer, recipe, stage.epochs, steps_per_epoch)
        if not fresh_stage:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        else:
            state.update(epoch=0, best_score=-math.inf, best_weights=None, stale=0)
            if on_stage_start is not None:
                on_stage_start(stage)
        loss_fn = MultiTaskLoss(seg_weight=stage.seg_weight, cls_weight=stage.cls_weight)
        stage_train_loader, stage_validation = make_train_loader, validation_loader
        if frozen_stage is not None and stage.name == "classification" and hasattr(core, "classify"):
            cached = frozen_stage()
            stage_train_loader, stage_validation = cached.train_batches, _Replayable(cached.validation_batches)
        scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())
        epochs = tqdm(range(state["epoch"], stage.epochs), desc=f"{stage.name}", leave=False,
                      disable=not (progress and is_main_process()), initial=state["epoch"], total=stage.epochs)
        for epoch in epochs:
            if state["stale"] >= recipe.early_stopping_patience:
                break
            epoch_seed = recipe.seed * 100_003 + stage_index * 10_007 + epoch
            torch.manual_seed(epoch_seed)
            model.train()
            if stage.name == "classification" and hasattr(core, "freeze_segmentation"):
                core.freeze_segmentation()
            train_loss, n_seen = 0.0, 0
            optimizer.zero_grad(set_to_none=True)
            step = -1
            epoch_clock = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            for step, batch in enumerate(stage_train_loader(epoch_seed)):
                batch = move_batch(batch, device)
                with autocast_context(device, recipe.amp):
                    output = forward_batch(model, batch, use_clinical)
                    loss, _ = loss_fn(output, batch["mask"], batch["label"], batch["has_mask"])
                scaler.scale(loss / recipe.gradient_accumulation).backward()
                if (step + 1) % recipe.gradient_accumulation == 0:
                    _optimizer_step(optimizer, scaler, scheduler if per_step else None)
                    state["steps"] = state.get("steps", 0) + 1
                train_loss += float(loss.detach()) * len(batch["label"])
                n_seen += len(batch["label"])
            if n_seen and (step + 1) % recipe.gradient_accumulation != 0:
                _optimizer_step(optimizer, scaler, scheduler if per_step else None)
                state["steps"] = state.get("steps", 0) + 1
            if not per_step:
                scheduler.step()
            val_loss, val_dice, val_auc = evaluate_loss(model, stage_validation, loss_fn, device, use_clinical, recipe.amp)
            seconds = state.setdefault("seconds", [])
            seconds.append((seconds[-1] if seconds else 0.0) + time.perf_counter() - epoch_clock)
            record = EpochRecord(stage.name, epoch, train_loss / max(n_seen, 1), val_loss, -val_loss, lr, val_dice, val_auc,
                                 step=state["steps"])
            history.append(record)
            log.info("%s epoch %d/%d: train loss %.4f, validation loss %.4f, Dice %.3f, AUC %.3f, lr %.2e",
                     stage.name, epoch + 1, stage.epochs, record.train_loss, val_loss, val_dice, val_auc, lr)
            if record.val_score > state["best_score"]:
                state.update(best_score=record.val_score, stale=0,
                             best_weights={k: v.detach().cpu().clone() for k, v in core.state_dict().items()})
                state["selected"][stage.name] = epoch
                if best_path is not None and is_main_process():
                    _atomic_save(state["best_weights"], best_path)
            else:
                state["stale"] += 1
            epochs.set_postfix(train=f"{record.train_loss:.3f}", val=f"{val_loss:.3f}")
            state.update(stage_index=stage_index, epoch=epoch + 1, history=[vars(r) for r in history],
                         optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         weights=core.state_dict())
            if last_path is not None and is_main_process():
                _atomic_save(state, last_path)
            for callback in callbacks:
                callback(record)
        core.load_state_dict(state["best_weights"])
        state.update(best_weights_previous_stage=state["best_weights"], optimizer=None, scheduler=None,
                     stage_index=stage_index + 1, epoch=0)
        if last_path is not None and is_main_process():
            state["weights"] = core.state_dict()
            _atomic_save(state, last_path)
    return FitResult(history=history, selected_epochs=dict(state["selected"]), resumed_from_epoch=resumed_from,
                     seconds=list(state.get("seconds", [])))
