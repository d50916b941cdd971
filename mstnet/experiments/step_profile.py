"""Time, memory and FLOPs of one MST-Net training step, and the largest training batch that fits.

The measurements of ``mstnet gpu-check`` (:mod:`mstnet.commands.gpu`): a step is forward,
backward and an Adam step under bf16 autocast (the harness's
:func:`mstnet.experiments.training.autocast_context`) on a random batch of the model's sizes.
The same functions run on the CPU (tests/test_gpu_check.py, with the tiny preset).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

MIB = 1024**2
# The matmul of benchmarks/test_bench_model.py::test_matmul_ceiling: (size, dtype) per device.
CEILING_MATMUL = {"cuda": (8192, "bfloat16"), "cpu": (2048, "float32")}


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_flops(function: Callable[[], Any]) -> int:
    """Floating-point operations of one call (matmuls and convolutions, 2 per multiply-add,
    backward included), as ``benchmarks/_measure.py::count_flops`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def matmul_ceiling(device: str, rounds: int = 10) -> dict[str, Any]:
    """The device's matmul FLOP/s: the fastest of ``rounds`` square matmuls of :data:`CEILING_MATMUL`."""
    import torch

    kind = torch.device(device).type
    size, dtype_name = CEILING_MATMUL[kind]
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    torch.mm(left, right)
    synchronize(device)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(left, right)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    del left, right
    free_memory()
    return {"size": size, "dtype": dtype_name, "best_s": best, "flop_per_s": 2 * size**3 / best}


def build_model(preset: str, device: str, **overrides: Any):
    """(MST-Net of ``mstnet_config(preset, **overrides)`` in training mode on ``device``, its config)."""
    import torch

    from mstnet.models.config import mstnet_config
    from mstnet.models.mstnet import build_mstnet

    config = mstnet_config(preset, **overrides)
    torch.manual_seed(0)
    return build_mstnet(config).to(device).train(), config


def make_batch(config: Any, batch_size: int, device: str) -> dict[str, Any]:
    """A random batch of ``batch_size`` patients for ``config``'s sizes (masks: a sparse foreground)."""
    import torch

    generator = torch.Generator().manual_seed(batch_size)
    images = torch.randn(batch_size, config.num_timepoints, 1, *config.image_size, generator=generator)
    batch = {
        "image": images,
        "mask": (images > 2.0).float(),
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
        "days": torch.arange(config.num_timepoints, dtype=torch.float32).repeat(batch_size, 1) * 365.0,
        "clinical_categorical": torch.zeros(batch_size, len(config.clinical_cardinalities), dtype=torch.long),
        "clinical_numeric": torch.zeros(batch_size, config.num_numeric),
        "label": torch.arange(batch_size) % 2,
    }
    return {key: value.to(device) for key, value in batch.items()}


def _timed_steps(forward: Callable[[], Any], optimizer: Any, device: str, repeats: int,
                 warmup: int) -> dict[str, list[float]]:
    """Seconds of the forward pass, the backward pass and the optimizer step of each of ``repeats`` training
    steps run after ``warmup`` untimed ones (``forward`` returns the loss)."""
    times: dict[str, list[float]] = {"forward_s": [], "backward_s": [], "optimizer_s": []}
    for index in range(warmup + repeats):
        start = time.perf_counter()
        loss = forward()
        synchronize(device)
        middle = time.perf_counter()
        loss.backward()
        synchronize(device)
        after_backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        end = time.perf_counter()
        del loss
        if index >= warmup:
            times["forward_s"].append(middle - start)
            times["backward_s"].append(after_backward - middle)
            times["optimizer_s"].append(end - after_backward)
    return times


def _flops_per_step(forward: Callable[[], Any], optimizer: Any) -> int:
    """FLOPs of one forward and backward pass (:func:`count_flops`); the gradients are dropped after it."""
    def forward_backward() -> None:
        forward().backward()
        optimizer.zero_grad(set_to_none=True)

    return count_flops(forward_backward)


def time_step(model: Any, config: Any, batch_size: int, device: str, repeats: int = 3, warmup: int = 1,
              amp: bool = True, flops: bool = False, ceiling_flop_per_s: float | None = None) -> dict[str, Any]:
    """Forward, backward and an Adam step at ``batch_size`` under bf16 autocast (on CUDA): the median
    times of ``repeats`` steps after ``warmup``, steps per second and the peak memory of the whole
    (warm-up included; ``torch.cuda.max_memory_allocated``, None on the CPU).

    Raises:
        torch.cuda.OutOfMemoryError: the batch does not fit.
    """
    import statistics

    import torch

    from mstnet.experiments.training import autocast_context, forward_batch
    from mstnet.models.losses import MultiTaskLoss

    torch_device = torch.device(device)
    batch = make_batch(config, batch_size, device)
    loss_fn = MultiTaskLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    use_clinical = config.use_clinical

    def forward():
        with autocast_context(torch_device, enabled=amp):
            output = forward_batch(model, batch, use_clinical)
            loss, _ = loss_fn(output, batch["mask"], batch["label"], batch["has_mask"])
        return loss

    synchronize(device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    try:
        times = _timed_steps(forward, optimizer, device, repeats, warmup)
        peak = torch.cuda.max_memory_allocated(torch_device) / MIB if torch_device.type == "cuda" else None
        result: dict[str, Any] = {"batch": batch_size, **{key: statistics.median(value) for key, value in times.items()}}
        result["step_s"] = result["forward_s"] + result["backward_s"] + result["optimizer_s"]
        result["steps_per_s"] = 1.0 / result["step_s"]
        result["patients_per_s"] = batch_size / result["step_s"]
        result["peak_memory_mib"] = peak
        if flops:
            result["flops_per_step"] = _flops_per_step(forward, optimizer)
            result["flop_per_s"] = result["flops_per_step"] / (result["forward_s"] + result["backward_s"])
            if ceiling_flop_per_s:
                result["ceiling_fraction"] = result["flop_per_s"] / ceiling_flop_per_s
        return result
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer, batch
        free_memory()


def _out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def largest_batch(preset: str, device: str, limit: int = 64) -> dict[str, Any]:
    """The largest training batch (forward, backward, Adam step) that fits: doubling from 1, then
    bisection between the last that fitted and the first that did not; ``limit`` caps the search."""
    model, config = build_model(preset, device)
    tried: dict[int, dict[str, Any] | None] = {}

    def fits(size: int) -> bool:
        try:
            tried[size] = time_step(model, config, size, device, repeats=1, warmup=0)
            return True
        except (RuntimeError, MemoryError) as error:
            if not _out_of_memory(error):
                raise
            tried[size] = None
            free_memory()
            return False

    good, bad = 0, None
    size = 1
    while size <= limit:
        if fits(size):
            good = size
            size *= 2
        else:
            bad = size
            break
    if bad is None and good < limit:
        if fits(limit):
            good = limit
        else:
            bad = limit
    if bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if fits(middle) else (good, middle)
    del model
    free_memory()
    largest = tried.get(good) if good else None
    return {"largest": good, "limit": limit, "limited_by": "memory" if bad is not None else "--max-batch",
            "peak_memory_mib": largest["peak_memory_mib"] if largest else None,
            "patients_per_s": largest["patients_per_s"] if largest else None,
            "tried": {str(k): (v is not None) for k, v in sorted(tried.items())}}


def checkpointing_saving(preset: str, device: str, batch_size: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Peak memory and step time with and without ``gradient_checkpointing=True`` at ``batch_size``."""
    rows = {}
    for checkpointed in (False, True):
        model, config = build_model(preset, device, gradient_checkpointing=checkpointed)
        rows["checkpointed" if checkpointed else "plain"] = time_step(model, config, batch_size, device, repeats=repeats)
        del model
        free_memory()
    plain, checkpointed = rows["plain"], rows["checkpointed"]
    saving = None
    if plain["peak_memory_mib"] and checkpointed["peak_memory_mib"] is not None:
        saving = 1.0 - checkpointed["peak_memory_mib"] / plain["peak_memory_mib"]
    return {"batch": batch_size, "plain": plain, "checkpointed": checkpointed, "memory_saving_fraction": saving,
            "time_ratio": checkpointed["step_s"] / plain["step_s"]}
