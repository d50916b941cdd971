"""Parameter counts and one-step training times of every registered baseline.

``python -m baselines._parameter_table [--preset cpu] [--image-size D H W] [--timepoints 2]``
writes a Markdown table (name, group, tasks, parameters, floating-point operations and seconds
of one training step on a batch of 4 patients, built and laid out (channels-last) as the
harness does; the image size defaults to the run preset's crop; the FLOP count does not
depend on machine load) to stdout; ``baselines/README.md`` quotes its output. MST-Net's
row is there for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from baselines._common import count_parameters
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import ModelContext, list_experiments
from mstnet.experiments.training import to_channels_last
from mstnet.models.losses import MultiTaskLoss

BASELINE_GROUPS = ("paper-table", "reference")


def measure(name: str, preset: str, image_size: tuple[int, int, int], timepoints: int, batch: int = 4,
            clinical_cardinalities: tuple[int, ...] = (3, 3, 3, 3, 3), num_numeric: int = 1) -> dict[str, object]:
    """Parameters and mean seconds of a training step (forward, loss, backward) of experiment ``name``."""
    from mstnet.experiments.registry import get_experiment

    spec = get_experiment(name)
    t = min(timepoints, spec.data_view.timepoints)
    context = ModelContext(image_size=image_size, num_timepoints=t, clinical_cardinalities=clinical_cardinalities,
                           num_numeric=num_numeric, use_clinical=spec.data_view.use_clinical, preset=preset)
    model = to_channels_last(spec.build(context))
    model.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, t, 1, *image_size, generator=generator)
    masks = (torch.rand(batch, t, 1, *image_size, generator=generator) > 0.9).float()
    labels = torch.tensor([0, 1] * (batch // 2))
    inputs = {"clinical_categorical": torch.ones(batch, len(clinical_cardinalities), dtype=torch.long),
              "clinical_numeric": torch.zeros(batch, num_numeric),
              "days": torch.arange(t, dtype=torch.float32).repeat(batch, 1) * 365.0}
    has_mask = torch.ones(batch, t, dtype=torch.bool)
    loss_fn = MultiTaskLoss(seg_weight=1.0 if "segmentation" in spec.tasks else 0.0,
                            cls_weight=1.0 if "classification" in spec.tasks else 0.0)
    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_fn(model(images, **inputs), masks, labels, has_mask)
        loss.backward()
    model.zero_grad(set_to_none=True)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        output = model(images, **inputs)
        loss, _ = loss_fn(output, masks, labels, has_mask)
        loss.backward()
        model.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
    return {"name": name, "group": spec.group, "tasks": "+".join(t[:3] for t in spec.tasks),
            "parameters": count_parameters(model), "step_gflop": counter.get_total_flops() / 1e9,
            "step_s": min(timings[1:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--image-size", type=int, nargs=3, default=None, help="default: the run preset's crop")
    parser.add_argument("--timepoints", type=int, default=2)
    args = parser.parse_args(argv)
    image_size = tuple(args.image_size) if args.image_size else run_preset(args.preset).crop_size
    rows = [measure(spec.name, args.preset, image_size, args.timepoints)
            for group in BASELINE_GROUPS for spec in list_experiments(group=group) if spec.kind == "torch"]
    sys.stdout.write("| experiment | group | tasks | parameters | GFLOP per train step | train step (s) |\n"
                     "| --- | --- | --- | ---: | ---: | ---: |\n")
    for row in rows:
        sys.stdout.write(f"| {row['name']} | {row['group']} | {row['tasks']} | {row['parameters']:,} | {row['step_gflop']:.1f} | {row['step_s']:.2f} |\n")


if __name__ == "__main__":
    main()
