"""Named ablations: listing, configuration diffs against the full model, and one training step each."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ablations.variants import ABLATIONS, ablation
from mstnet.cli import build_app
from mstnet.experiments.presets import RUN_PRESETS
from mstnet.experiments.registry import ModelContext, get_experiment, list_experiments
from mstnet.experiments.runner import RunOptions, resolve_recipe
from mstnet.experiments.training import stages_for
from mstnet.models.losses import MultiTaskLoss
from tests.harness_cohort import write_growth_cohort

LEARNING_RATE = 1e-3
BATCH = 2
IMAGE_SIZE = (8, 32, 32)
CARDINALITIES = (3, 4)
NUM_NUMERIC = 1
PROTOCOL_ABLATIONS = ("image-only", "clinical-only", "single-timepoint", "planar-2d", "no-stdm", "fusion-no-difference",
                      "concat-fusion", "joint-training", "conv-stem")
"""The ablations docs protocol.md requires, by their registered names."""

ABLATION_NAMES = [spec.name for spec in list_experiments(group="ablation")]


def _context(name: str) -> ModelContext:
    view = get_experiment(name).data_view
    return ModelContext(image_size=IMAGE_SIZE, num_timepoints=view.timepoints, clinical_cardinalities=CARDINALITIES,
                        num_numeric=NUM_NUMERIC, use_clinical=view.use_clinical, preset="tiny")


def _build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_experiment(name).build(_context(name))


def _batch(timepoints: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, timepoints, 1, *IMAGE_SIZE, generator=generator)
    masks = torch.zeros(BATCH, timepoints, 1, *IMAGE_SIZE)
    masks[..., 3:5, 12:20, 12:20] = 1.0
    return {
        "images": images,
        "masks": masks,
        "labels": torch.tensor([0, 1]),
        "has_mask": torch.ones(BATCH, dtype=torch.bool),
        "categorical": torch.stack([torch.randint(0, c, (BATCH,), generator=generator) for c in CARDINALITIES], dim=1),
        "numeric": torch.randn(BATCH, NUM_NUMERIC, generator=generator),
        "days": torch.tensor([[0.0, 360.0, 735.0][:timepoints], [0.0, 380.0, 720.0][:timepoints]]),
    }


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], use_clinical: bool):
    return model(batch["images"], clinical_categorical=batch["categorical"] if use_clinical else None,
                 clinical_numeric=batch["numeric"] if use_clinical else None, days=batch["days"])


def test_list_shows_every_ablation_with_its_description():
    result = CliRunner().invoke(build_app(), ["ablate", "--list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert len(ABLATION_NAMES) >= 10
    for spec in list_experiments(group="ablation"):
        assert spec.name in result.output
        assert spec.description in result.output
    assert set(PROTOCOL_ABLATIONS) <= set(ABLATION_NAMES)


def test_unknown_ablation_is_refused_by_name():
    result = CliRunner().invoke(build_app(), ["ablate", "no-such-variant", "--preset", "tiny"], env={"COLUMNS": "400"})
    assert result.exit_code != 0
    assert "no-such-variant" in result.output and "no-stdm" in result.output


def test_readme_table_lists_every_ablation():
    readme = (Path(__file__).parents[1] / "ablations" / "README.md").read_text()
    for spec in list_experiments(group="ablation"):
        assert f"`{spec.name}`" in readme, spec.name


@pytest.mark.parametrize("row", [row for row in ABLATIONS if row.build is None], ids=lambda row: row.name)
def test_variant_config_differs_from_mstnet_exactly_by_its_declared_changes(row):
    full = dataclasses.asdict(_build("mstnet").config)
    variant = dataclasses.asdict(_build(row.name).config)
    expected = dict(row.config)
    if row.data_view.timepoints != 2:
        expected["num_timepoints"] = row.data_view.timepoints
    if not row.data_view.use_clinical:
        expected["use_clinical"] = False
    assert {key: value for key, value in variant.items() if full[key] != value} == expected


def test_registered_metadata_matches_the_table():
    for row in ABLATIONS:
        spec = get_experiment(row.name)
        assert spec.group == "ablation" and spec.description == row.description
        assert spec.data_view == row.data_view and spec.information == row.information
        for preset in ("tiny", "cpu", "paper"):
            full = get_experiment("mstnet").recipe_for(preset)
            expected = full
            if row.name == "joint-training":
                expected = dataclasses.replace(full, stages=("joint",), **(
                    {"stage_epochs": None, "epochs": full.stage_epochs[0]} if full.stage_epochs else {}))
            assert spec.recipe_for(preset) == expected, (row.name, preset)
            assert stages_for(spec.recipe_for(preset), spec.tasks), (row.name, preset)  # one length per stage
            resolve_recipe(spec, RunOptions(preset=RUN_PRESETS[preset], device=torch.device("cpu")))  # not refused
    joint_cpu = stages_for(get_experiment("joint-training").recipe_for("cpu"), ("segmentation", "classification"))
    assert [(stage.name, stage.epochs) for stage in joint_cpu] == [("joint", RUN_PRESETS["cpu"].epochs)]
    assert ablation("image-only").information == "scans2"
    assert ablation("clinical-only").information == "clinical"
    assert ablation("single-timepoint").information == "scans1+clinical"
    assert ablation("with-reads").information == "scans2+clinical+reads"
    assert ablation("time-aware-fusion").information == "scans3+clinical"
    assert get_experiment("mstnet").information == "scans2+clinical"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_no_stdm_and_concat_fusion_drop_exactly_their_modules():
    full = _build("mstnet")
    assert _count(_build("no-stdm")) == _count(full) - _count(full.stdm_z12) - _count(full.stdm_z9)
    assert _count(_build("concat-fusion")) == _count(full) - _count(full.classifier.cross_modal_fusion)


@pytest.mark.parametrize("name", ABLATION_NAMES)
def test_one_training_step_is_finite_and_moves_parameters_by_adam_first_step(name):
    """Adam's first step moves every weight by lr x g / (|g| + eps): lr x sign(g) where |g| >> eps."""
    spec = get_experiment(name)
    model = _build(name).train()
    batch = _batch(spec.data_view.timepoints)
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    output = _forward(model, batch, spec.data_view.use_clinical)
    assert output.cls_logits.shape == (BATCH, 2)
    if "segmentation" in spec.tasks:
        assert output.seg_logits.shape == (BATCH, spec.data_view.timepoints, 1, *IMAGE_SIZE)
    else:
        assert output.seg_logits is None
    loss, terms = MultiTaskLoss(seg_weight=0.7, cls_weight=0.3)(output, batch["masks"], batch["labels"], batch["has_mask"])
    assert torch.isfinite(loss)
    assert set(terms) == ({"segmentation", "classification"} if "segmentation" in spec.tasks else {"classification"})
    loss.backward()
    gradients = {key: p.grad.detach().clone() for key, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    moved = 0
    for key, parameter in model.named_parameters():
        gradient = gradients.get(key)
        if gradient is None:
            continue
        large = gradient.abs() > 1e-4
        delta = parameter.detach() - before[key]
        torch.testing.assert_close(delta[large], -LEARNING_RATE * gradient[large].sign(), rtol=0.0, atol=1e-5)
        moved += int(large.sum())
    assert moved > 0
    last_layer = "head.5.weight" if name == "clinical-only" else "classifier.head.5.weight"
    assert not torch.equal(dict(model.named_parameters())[last_layer].detach(), before[last_layer])


def test_stdm_across_time_lets_one_scan_see_the_other_and_depth_stdm_does_not():
    """Change only the T1 scan: the z12 STDM output of the T0 scan moves only when STDM attends across time."""
    batch = _batch(2)
    changed = batch["images"].clone()
    changed[:, 1] = torch.randn(changed[:, 1].shape, generator=torch.Generator().manual_seed(5))
    for name, crosses_time in (("mstnet", False), ("stdm-across-time", True)):
        model = _build(name).eval()
        outputs = []
        model.stdm_z12.register_forward_hook(lambda module, inputs, output: outputs.append(output[0::2]))
        with torch.no_grad():
            _forward(model, batch, True)
            _forward(model, {**batch, "images": changed}, True)
        difference = float((outputs[0] - outputs[1]).abs().max())
        assert (difference > 1e-3) if crosses_time else (difference == 0.0), (name, difference)


def test_clinical_only_ignores_the_images():
    model = _build("clinical-only").eval()
    batch = _batch(1)
    with torch.no_grad():
        first = _forward(model, batch, True).cls_logits
        second = _forward(model, {**batch, "images": torch.zeros_like(batch["images"])}, True).cls_logits
    torch.testing.assert_close(first, second, rtol=0.0, atol=0.0)


def test_time_aware_fusion_starts_blind_to_intervals_and_learns_to_use_them():
    """The interval encoding is zero-initialised: only after a training step do the days change the output."""
    model = _build("time-aware-fusion")
    batch = _batch(3)
    later = {**batch, "days": batch["days"] * 2}

    def logits(inputs):
        model.eval()
        with torch.no_grad():
            return _forward(model, inputs, True).cls_logits

    torch.testing.assert_close(logits(batch), logits(later), rtol=0.0, atol=0.0)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    output = _forward(model, batch, True)
    loss, _ = MultiTaskLoss()(output, batch["masks"], batch["labels"], batch["has_mask"])
    loss.backward()
    optimizer.step()
    assert not torch.allclose(logits(batch), logits(later), atol=1e-7)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MSTNET_SLOW") != "1", reason="slow (about a minute on two cores); set MSTNET_SLOW=1")
def test_ablate_runs_mstnet_and_the_variant_on_the_same_folds_and_reports(tmp_path):
    cohort = write_growth_cohort(tmp_path / "cohort", n_patients=20)
    runs, report = tmp_path / "runs", tmp_path / "report"
    result = CliRunner().invoke(build_app(), ["ablate", "no-stdm", "--preset", "tiny", "--data", str(cohort), "--folds", "0",
                                              "--epochs", "1", "--device", "cpu", "--out", str(runs), "--report", str(report)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    splits_hash = json.loads((runs / "splits.json").read_text())["hash"]
    for name in ("mstnet", "no-stdm"):
        run = json.loads((runs / name / "fold0" / "run.json").read_text())
        assert run["status"] == "complete" and run["splits_hash"] == splits_hash
    assert json.loads((runs / "no-stdm" / "experiment.json").read_text())["group"] == "ablation"
    assert "no-stdm" in (report / "ablation_table.md").read_text()
