"""The training loop: resume equals an uninterrupted fit, stages freeze what they should, selection uses validation."""

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from mstnet.errors import UsageError
from mstnet.experiments.fold_record import recipe_summary
from mstnet.experiments.optimisation import SGD_MOMENTUM, stage_optimizer
from mstnet.experiments.registry import OPTIMIZERS, Recipe, checked_recipe
from mstnet.experiments.training import fit, stages_for, to_channels_last
from mstnet.models.losses import MultiTaskLoss
from mstnet.models.output import ModelOutput


class TinyTwoTaskNet(nn.Module):
    """A conv segmentation head plus a pooled linear classifier; exposes the two-stage API."""

    def __init__(self):
        super().__init__()
        self.segmenter = nn.Conv3d(1, 1, 3, padding=1)
        self.classifier = nn.Linear(2, 2)

    def forward(self, images, clinical_categorical=None, clinical_numeric=None, days=None):
        b, t = images.shape[:2]
        seg = self.segmenter(images.flatten(0, 1)).unflatten(0, (b, t))
        pooled = torch.stack([images.mean(dim=(2, 3, 4, 5))[:, -1], torch.sigmoid(seg).mean(dim=(2, 3, 4, 5))[:, -1]], 1)
        return ModelOutput(seg_logits=seg, cls_logits=self.classifier(pooled))

    def freeze_segmentation(self):
        self.segmenter.requires_grad_(False)

    def classification_parameters(self):
        return self.classifier.parameters()


def _batches(n_patients=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n_patients, 2, 1, 4, 8, 8, generator=generator)
    masks = (images > 0.8).float()
    labels = (images.mean(dim=(1, 2, 3, 4, 5)) > 0).long()
    return [
        {"image": images[i:i + 2], "mask": masks[i:i + 2], "has_mask": torch.ones(2, dtype=torch.bool),
         "days": torch.tensor([[0.0, 365.0]] * 2), "clinical_categorical": torch.zeros(2, 0, dtype=torch.long),
         "clinical_numeric": torch.zeros(2, 0), "label": labels[i:i + 2]}
        for i in range(0, n_patients, 2)
    ]


TRAIN, VALIDATION = _batches(8, seed=1), _batches(4, seed=2)


def _train_loader(seed):
    order = torch.randperm(len(TRAIN), generator=torch.Generator().manual_seed(seed)).tolist()
    return [TRAIN[i] for i in order]


RECIPE = Recipe(epochs=4, learning_rate=1e-2, stages=("segmentation", "classification"), early_stopping_patience=10, seed=3)


def _fit(run_dir, callbacks=()):
    torch.manual_seed(0)
    model = TinyTwoTaskNet()
    result = fit(model, _train_loader, VALIDATION, RECIPE, ("segmentation", "classification"), run_dir,
                 torch.device("cpu"), use_clinical=False, callbacks=callbacks, progress=False)
    return model, result


class Interrupt(RuntimeError):
    pass


def test_resumed_fit_equals_uninterrupted_fit(tmp_path):
    reference, reference_result = _fit(tmp_path / "straight")

    seen = []

    def interrupt_after_five_epochs(record):
        seen.append(record)
        if len(seen) == 5:  # mid-way through the classification stage
            raise Interrupt("injected")

    with pytest.raises(Interrupt):
        _fit(tmp_path / "interrupted", callbacks=[interrupt_after_five_epochs])
    resumed, resumed_result = _fit(tmp_path / "interrupted")

    assert resumed_result.resumed_from_epoch == 5
    assert [(r.stage, r.epoch) for r in resumed_result.history] == [(r.stage, r.epoch) for r in reference_result.history]
    for a, b in zip(resumed_result.history, reference_result.history):
        assert a.val_loss == pytest.approx(b.val_loss, abs=1e-6)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resume")
    assert resumed_result.selected_epochs == reference_result.selected_epochs


def test_classification_stage_leaves_segmentation_weights_at_stage_one_best(tmp_path):
    model, result = _fit(tmp_path)
    best = torch.load(tmp_path / "last.pt", weights_only=False)["best_weights_previous_stage"]
    torch.testing.assert_close(model.segmenter.weight, best["segmenter.weight"])
    stages = [r.stage for r in result.history]
    assert stages == ["segmentation"] * 4 + ["classification"] * 4


def test_selected_epoch_is_the_best_validation_epoch(tmp_path):
    _, result = _fit(tmp_path)
    for stage in ("segmentation", "classification"):
        records = [r for r in result.history if r.stage == stage]
        best = max(records, key=lambda r: r.val_score)
        assert result.selected_epochs[stage] == best.epoch
        assert best.val_score == pytest.approx(-best.val_loss)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    recipe = Recipe(epochs=30, learning_rate=0.0, final_lr_fraction=1.0, early_stopping_patience=2)
    torch.manual_seed(0)
    result = fit(TinyTwoTaskNet(), _train_loader, VALIDATION, recipe, ("segmentation", "classification"), None,
                 torch.device("cpu"), use_clinical=False, progress=False)
    assert len(result.history) == 3  # epoch 0 sets the best; with lr 0 nothing improves for 2 more epochs
    assert all(math.isfinite(r.val_loss) for r in result.history)


def test_stages_follow_the_tasks_of_the_model():
    two_stage = Recipe(stages=("segmentation", "classification"), epochs=3)
    assert [s.name for s in stages_for(two_stage, ("segmentation",))] == ["segmentation"]
    assert [(s.seg_weight, s.cls_weight) for s in stages_for(Recipe(), ("classification",))] == [(0.0, 0.3)]
    with pytest.raises(ValueError, match="unknown training stage 'pretrain'"):
        stages_for(Recipe(stages=("pretrain",)), ("segmentation",))


def test_segmentation_epochs_lengthens_only_the_segmentation_stage():
    two_stage = Recipe(stages=("segmentation", "classification"), stage_epochs=(8, 16), segmentation_epochs=24)
    stages = stages_for(two_stage, ("segmentation", "classification"))
    assert [(s.name, s.epochs) for s in stages] == [("segmentation", 24), ("classification", 16)]
    assert [s.epochs for s in stages_for(Recipe(epochs=5, segmentation_epochs=24), ("segmentation",))] == [5]
    assert [s.epochs for s in stages_for(replace(two_stage, segmentation_epochs=0), ("segmentation",))] == [8]
    assert recipe_summary(two_stage).startswith("segmentation+classification, Adam lr 0.0001, cosine per epoch, 24/16 epochs")
    assert "8/16 epochs" in recipe_summary(replace(two_stage, segmentation_epochs=0))
    cached = replace(two_stage, frozen_stage_cache=True)
    assert "cached frozen outputs" in recipe_summary(cached)
    classifier_only = recipe_summary(cached, ("classification",), cached_stage=False)
    assert classifier_only.startswith("classification, Adam lr 0.0001, cosine per epoch, 16 epochs")
    assert "cached" not in classifier_only
    assert "mirroring" not in recipe_summary(two_stage)
    assert recipe_summary(replace(two_stage, test_time_mirroring=True)).endswith(", test-time mirroring (8 flips)")
    assert "scale augmentation" not in recipe_summary(two_stage)
    assert recipe_summary(replace(two_stage, scale_augmentation=0.2, cpu_bf16=True, test_time_mirroring=True)).endswith(
        ", scale augmentation (p 0.2, x0.7-1.4), bf16 training steps on the CPU, test-time mirroring (8 flips)")
    with pytest.raises(UsageError, match="segmentation_epochs must be 0"):
        checked_recipe("mstnet", two_stage, {"segmentation_epochs": -1})
    with pytest.raises(UsageError, match="scale_augmentation must be a probability"):
        checked_recipe("mstnet", two_stage, {"scale_augmentation": 1.5})


@pytest.mark.parametrize("device, native_bf16, words", [
    ("cpu", True, ", bf16 training steps on the CPU"),
    ("cpu", False, ", float32 training steps (bf16 asked, but the CPU has no native bf16)"),
    ("cuda", False, ""),
])
def test_recipe_summary_names_the_precision_the_cpu_steps_ran_in(device, native_bf16, words, monkeypatch):
    from mstnet.experiments import training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native_bf16)
    recipe = Recipe(epochs=4, stages=("joint",), cpu_bf16=True)
    plain = recipe_summary(replace(recipe, cpu_bf16=False), device=torch.device(device))
    assert recipe_summary(recipe, device=torch.device(device)) == plain + words


def test_the_recipe_sets_the_training_augmentation():
    from mstnet.data.transforms import AugmentConfig
    from mstnet.experiments.fold_data import training_augmentation

    assert training_augmentation(Recipe()) == AugmentConfig()
    assert training_augmentation(Recipe(scale_augmentation=0.2)) == AugmentConfig(zoom_prob=0.2)
    assert training_augmentation(Recipe(augment=False, scale_augmentation=0.2)) is False


def test_channels_last_changes_layout_not_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1),
                          nn.Flatten(0, 1), nn.Conv2d(4, 3, 3, padding=1))
    inputs = torch.randn(2, 1, 4, 8, 8)
    reference = model(inputs)
    reference.sum().backward()
    reference_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    to_channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model[5].weight.is_contiguous(memory_format=torch.channels_last)
    output = model(inputs)
    output.sum().backward()
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)
    for parameter, expected in zip(model.parameters(), reference_grads):
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-4, atol=1e-5)


class _ResNetShortcut(nn.Module):
    """A residual block whose shortcut downsamples with a strided 1 x 1 convolution (torchvision's ResNet)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.shortcut = nn.Conv2d(4, 8, 1, stride=2, bias=False)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def test_channels_last_leaves_strided_pointwise_convolutions_contiguous():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _ResNetShortcut())
    inputs = torch.randn(6, 1, 16, 16)
    reference = model(inputs)
    output_weights = torch.randn_like(reference)  # a loss whose gradient does not vanish through batch norm
    (reference * output_weights).sum().backward()
    reference_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    to_channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[1].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    shortcut = model[1].shortcut
    assert shortcut._forward_pre_hooks  # its input is made contiguous (checked below); a 1 x 1 weight has one layout
    seen = []
    shortcut.register_forward_hook(lambda module, args, output: seen.append(args[0].is_contiguous()))
    output = model(inputs)
    (output * output_weights).sum().backward()
    assert seen == [True]  # the channels-last activation reaches the shortcut contiguous
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)
    for parameter, expected in zip(model.parameters(), reference_grads):
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-3, atol=1e-4)  # sums in another order


def test_acsnet_trains_channels_last_without_corrupting_the_heap(tmp_path):
    """oneDNN's AVX2 weight gradient of a strided 1 x 1 convolution on channels-last input overran a
    buffer (to_channels_last's docstring); glibc's MALLOC_CHECK_=3 turns such an overrun into an abort
    at once. On CPUs with AVX-512 this passes with or without the fix."""
    script = tmp_path / "train_steps.py"
    script.write_text(
        "import torch\n"
        "from mstnet.experiments.registry import ModelContext, get_experiment\n"
        "from mstnet.experiments.training import to_channels_last\n"
        "torch.manual_seed(0)\n"
        "context = ModelContext(image_size=(8, 32, 32), num_timepoints=2, clinical_cardinalities=(), num_numeric=0,\n"
        "                       use_clinical=False, preset='tiny')\n"
        "model = to_channels_last(get_experiment('acsnet').build(context))\n"
        "for _ in range(3):\n"
        "    output = model(torch.randn(4, 2, 1, 8, 32, 32), None, None, torch.zeros(4, 2))\n"
        "    (output.seg_logits.sum() + output.cls_logits.sum()).backward()\n"
        "print('trained')\n")
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0 and "trained" in finished.stdout, finished.stderr[-2000:]


OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_recipe_optimizer_builds_and_takes_a_step(name):
    torch.manual_seed(0)
    model = TinyTwoTaskNet()
    optimizer = stage_optimizer(Recipe(optimizer=name, learning_rate=1e-2, weight_decay=1e-4), model.parameters())
    assert type(optimizer) is OPTIMIZER_CLASSES[name]
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-2 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == SGD_MOMENTUM == 0.99 and group["nesterov"] is True
    before = [p.detach().clone() for p in model.parameters()]
    batch = TRAIN[0]
    loss, _ = MultiTaskLoss()(model(batch["image"]), batch["mask"], batch["label"], batch["has_mask"])
    loss.backward()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after)), "every parameter moves"


def test_fit_trains_with_the_recipes_optimizer(tmp_path):
    def stop_after_first_epoch(record):
        raise Interrupt("injected")

    recipe = Recipe(epochs=2, learning_rate=1e-2, optimizer="sgd", stages=("segmentation",), seed=3)
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        fit(TinyTwoTaskNet(), _train_loader, VALIDATION, recipe, ("segmentation",), tmp_path, torch.device("cpu"),
            use_clinical=False, callbacks=[stop_after_first_epoch], progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["stage_index"] == 0
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True
    assert state["optimizer"]["param_groups"][0]["momentum"] == SGD_MOMENTUM


def test_an_unknown_optimizer_is_refused_in_one_line():
    with pytest.raises(UsageError) as refused:
        checked_recipe("mstnet", Recipe(), {"optimizer": "rmsprop"})
    message = str(refused.value)
    assert "\n" not in message
    assert "optimizer 'rmsprop'" in message and "adam, adamw, sgd" in message


@pytest.mark.parametrize("cpu_bf16, native_bf16", [(False, True), (True, True), (True, False)])
def test_cpu_bf16_autocasts_the_training_steps_only(cpu_bf16, native_bf16, monkeypatch, caplog):
    from mstnet.experiments import training
    from mstnet.experiments.training import autocast_context

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native_bf16)
    torch.manual_seed(0)
    model = TinyTwoTaskNet()
    seen: list[tuple[bool, torch.dtype]] = []
    model.segmenter.register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
    recipe = Recipe(epochs=1, learning_rate=1e-2, stages=("segmentation",), seed=3, cpu_bf16=cpu_bf16)
    fit(model, _train_loader, VALIDATION, recipe, ("segmentation",), None, torch.device("cpu"), use_clinical=False,
        progress=False)
    training_dtypes = {dtype for is_training, dtype in seen if is_training}
    assert training_dtypes == {torch.bfloat16 if cpu_bf16 and native_bf16 else torch.float32}
    # asked for on a CPU that would emulate bf16: float32 steps, and the log says so
    assert ("has no native bf16" in caplog.text) == (cpu_bf16 and not native_bf16)
    assert {dtype for is_training, dtype in seen if not is_training} == {torch.float32}  # validation stays float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    with autocast_context(torch.device("cpu"), enabled=True):  # the CUDA switch alone leaves the CPU in float32
        assert nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
