"""Training step and inference per patient: MST-Net versus MONAI's UNETR and SwinUNETR.

Every model is built exactly as the harness builds it for ``mstnet reproduce`` (the
registered experiments ``mstnet``, ``unetr`` and ``monai-swinunetr``) and fed the same
batch: 4 patients x 2 time points of the run preset's crop (cpu: 16 x 48 x 48; on CUDA the
paper preset, 16 x 512 x 512 at batch 1, bf16 autocast). A training step is forward,
loss, backward and an Adam step, as in training; inference is one patient in eval mode.

Layouts: ``channels_last`` (the harness default, ``Recipe.channels_last``) and
``contiguous`` (before that change), to show what the layout buys.

FLOPs per call come from torch.utils.flop_counter; ``test_matmul_ceiling`` measures each
device's matmul throughput (CPU float32, CUDA bfloat16), against which the report prints each
model's achieved fraction.

Run: ``make bench`` (all benchmarks) or
``.venv/bin/python -m pytest benchmarks/test_bench_model.py --benchmark-enable``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks._measure import count_flops, run_measured
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import ModelContext, get_experiment
from mstnet.experiments.training import autocast_context, forward_batch, stages_for, to_channels_last
from mstnet.models.losses import MultiTaskLoss

MODELS = ("mstnet", "unetr", "monai-swinunetr")
LAYOUTS = ("channels_last", "contiguous")
TIMEPOINTS = 2
CLINICAL_CARDINALITIES = (3, 3, 4)
NUM_NUMERIC = 2
MATMUL_SIZE = 2048

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _setting(device: str) -> tuple[str, int]:
    """(preset, patients per training batch) benchmarked on ``device``."""
    return ("paper", 1) if device == "cuda" else ("cpu", 4)


def _model(name: str, device: str, layout: str, **params) -> torch.nn.Module:
    preset, _ = _setting(device)
    context = ModelContext(image_size=run_preset(preset).crop_size, num_timepoints=TIMEPOINTS,
                           clinical_cardinalities=CLINICAL_CARDINALITIES, num_numeric=NUM_NUMERIC,
                           use_clinical=get_experiment(name).data_view.use_clinical, preset=preset, params=params)
    torch.manual_seed(0)
    model = get_experiment(name).build(context).to(device)
    return to_channels_last(model) if layout == "channels_last" else model


def _batch(patients: int, device: str) -> dict[str, torch.Tensor]:
    preset, _ = _setting(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(patients, TIMEPOINTS, 1, *run_preset(preset).crop_size, generator=generator)
    batch = {
        "image": images,
        "mask": (images > 1.5).float(),
        "has_mask": torch.ones(patients, dtype=torch.bool),
        "days": torch.tensor([[0.0, 365.0]] * patients),
        "clinical_categorical": torch.ones(patients, len(CLINICAL_CARDINALITIES), dtype=torch.long),
        "clinical_numeric": torch.zeros(patients, NUM_NUMERIC),
        "label": torch.arange(patients) % 2,
    }
    return {key: value.to(device) for key, value in batch.items()}


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _training_step(name: str, device: str, layout: str, **params):
    """(one training step as a function, model) for experiment ``name``."""
    spec = get_experiment(name)
    model = _model(name, device, layout, **params).train()
    _, patients = _setting(device)
    batch = _batch(patients, device)
    stage = stages_for(spec.recipe_for(_setting(device)[0]), spec.tasks)[0]
    loss_fn = MultiTaskLoss(seg_weight=stage.seg_weight, cls_weight=stage.cls_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    use_clinical = spec.data_view.use_clinical

    def step() -> None:
        with autocast_context(torch.device(device), enabled=True):
            output = forward_batch(model, batch, use_clinical)
            loss, _ = loss_fn(output, batch["mask"], batch["label"], batch["has_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _synchronise(device)

    return step, model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", MODELS)
def test_training_step(benchmark, name, layout, device):
    benchmark.group = f"training step ({device})"
    step, model = _training_step(name, device, layout)
    baselines = []
    if layout == "channels_last":
        baselines.append(f"test_training_step[{name}-contiguous-{device}]")
        if name != "unetr":
            baselines.append(f"test_training_step[unetr-channels_last-{device}]")
    run_measured(benchmark, step, rounds=5, items_per_call=_setting(device)[1], item="patient", flops=count_flops(step),
                 parameters=sum(p.numel() for p in model.parameters()), baselines=baselines, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_gradient_checkpointing(benchmark, device):
    """MST-Net recomputing its ViT blocks and decoder stages in backward: memory against time."""
    benchmark.group = f"training step ({device})"
    step, model = _training_step("mstnet", device, "channels_last", gradient_checkpointing=True)
    run_measured(benchmark, step, rounds=5, items_per_call=_setting(device)[1], item="patient", flops=count_flops(step),
                 parameters=sum(p.numel() for p in model.parameters()),
                 baselines=[f"test_training_step[mstnet-channels_last-{device}]"], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_inference_per_patient(benchmark, name, device):
    benchmark.group = f"inference, one patient ({device})"
    spec = get_experiment(name)
    model = _model(name, device, "channels_last").eval()
    batch = _batch(1, device)

    def infer() -> None:
        with torch.no_grad(), autocast_context(torch.device(device), enabled=True):
            forward_batch(model, batch, spec.data_view.use_clinical)
        _synchronise(device)

    run_measured(benchmark, infer, rounds=5, items_per_call=1, item="patient", flops=count_flops(infer), device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_ceiling(benchmark, device):
    """A large matmul on all threads (CPU: float32, 2048^2; CUDA: bfloat16, the dtype autocast
    trains in, 8192^2): the FLOP/s ceiling of ``device``."""
    benchmark.group = "ceiling"
    size, dtype = (MATMUL_SIZE, torch.float32) if device == "cpu" else (4 * MATMUL_SIZE, torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)

    def multiply() -> None:
        torch.mm(left, right)
        _synchronise(device)

    run_measured(benchmark, multiply, rounds=20, flops=2 * size**3, ceiling=True, device=device,
                 dtype=str(dtype).removeprefix("torch."), threads=torch.get_num_threads())
