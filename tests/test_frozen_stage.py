"""The cached classification stage equals the recomputing one for the same augmentation draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mstnet.data.dataset import collate_patients
from mstnet.experiments.frozen_stage import AUGMENTATIONS, FrozenStageData, augmentation_draw, augmentation_set
from mstnet.experiments.registry import Recipe
from mstnet.experiments.training import fit, forward_batch
from mstnet.models.config import mstnet_config
from mstnet.models.mstnet import build_mstnet

SHAPE = (8, 32, 32)


def _items(n: int, seed: int) -> list[dict]:
    """``n`` patients of two time points with a bright blob, clinical codes, days and a label."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(n):
        image = torch.randn(2, 1, *SHAPE, generator=generator)
        image[:, :, 2:6, 10:18, 12:20] += 2.0 + index % 3
        items.append({
            "image": image, "mask": (image > 1.5).float(), "has_mask": torch.tensor(True),
            "days": torch.tensor([0.0, 365.0]),
            "clinical_categorical": torch.tensor([index % 3, index % 4]),
            "clinical_numeric": torch.randn(2, generator=generator),
            "label": torch.tensor(index % 2), "patient_id": f"P{index:02d}",
        })
    return items


def _frozen_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_mstnet(mstnet_config("tiny", num_numeric=2))
    model.freeze_segmentation()
    return model


class _Loader:
    """A re-iterable batch source with a length, as the harness's DataLoader is."""

    def __init__(self, data: FrozenStageData, seed: int) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return self.data.train_batches_per_epoch()

    def __iter__(self):
        return self.data.train_batches(self.seed)


def test_the_set_is_the_in_plane_dihedral_group_then_reversed_slices():
    volume = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    outputs = [a(volume) for a in AUGMENTATIONS]
    assert AUGMENTATIONS[0](volume).equal(volume)
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 16
    assert AUGMENTATIONS[1](volume).equal(torch.from_numpy(np.rot90(volume.numpy(), 1, axes=(1, 2)).copy()))
    assert AUGMENTATIONS[4](volume).equal(volume.flip(-1))
    assert AUGMENTATIONS[8](volume).equal(volume.flip(0))
    assert all(a.quarter_turns % 2 == 0 for a in augmentation_set(8, 4, 6))
    with pytest.raises(ValueError, match="1..8 for 4 x 6"):
        augmentation_set(9, 4, 6)
    with pytest.raises(ValueError, match="1..16"):
        augmentation_set(0, 4, 4)


def test_draws_depend_on_epoch_seed_and_patient_only():
    draws = [augmentation_draw(7, index, 8) for index in range(200)]
    assert draws == [augmentation_draw(7, index, 8) for index in range(200)]
    assert set(draws) == set(range(8))
    assert draws != [augmentation_draw(8, index, 8) for index in range(200)]


def test_cached_batches_give_the_logits_of_the_whole_model_on_the_augmented_crop():
    model = _frozen_model().train()
    items = _items(6, seed=1)
    augmentations = augmentation_set(8, *SHAPE[1:])
    cached = FrozenStageData(model, items, items[:2], collate_patients, 4, augmentations, torch.device("cpu"))
    for epoch_seed in (3, 4, 3):
        for batch in cached.train_batches(epoch_seed):
            expected_images = torch.stack([augmentations[int(k)](items[i]["image"]) for k, i in
                                           zip(batch["augmentation"], [int(p[1:]) for p in batch["patient_id"]])])
            assert batch["image"].equal(expected_images)
            with torch.no_grad():
                from_cache = forward_batch(model, batch, use_clinical=True).cls_logits
                recomputed = forward_batch(model, {k: v for k, v in batch.items() if k != "frozen"}, True).cls_logits
            torch.testing.assert_close(from_cache, recomputed, rtol=1e-5, atol=1e-6)
    drawn = {(i, augmentation_draw(s, i, 8)) for s in (3, 4) for i in range(6)}
    assert cached.computed == len(drawn), "each (patient, augmentation) is computed once, then reused"


def test_cached_stage_trains_exactly_as_the_recomputing_stage():
    items, validation = _items(8, seed=2), _items(4, seed=3)
    recipe = Recipe(stages=("classification",), epochs=3, learning_rate=1e-3, batch_size=4, early_stopping_patience=10,
                    channels_last=False, amp=False)
    augmentations = augmentation_set(8, *SHAPE[1:])
    histories, models = [], []
    for cache in (True, False):
        model = _frozen_model()
        data = FrozenStageData(model, items, validation, collate_patients, 4, augmentations, torch.device("cpu"),
                               cache=cache)
        if cache:
            result = fit(model, lambda seed: _Loader(data, seed), None, recipe, ("segmentation", "classification"),
                         None, torch.device("cpu"), progress=False, frozen_stage=lambda: data)
        else:
            recompute = FrozenStageData(model, items, validation, collate_patients, 4, augmentations,
                                        torch.device("cpu"), cache=False)
            result = fit(model, lambda seed: _Loader(recompute, seed), list(recompute.validation_batches()), recipe,
                         ("segmentation", "classification"), None, torch.device("cpu"), progress=False)
        histories.append(result.history)
        models.append(model)
    for cached_epoch, recomputed_epoch in zip(*histories):
        assert cached_epoch.step == recomputed_epoch.step
        assert math.isclose(cached_epoch.train_loss, recomputed_epoch.train_loss, rel_tol=1e-5)
        assert math.isclose(cached_epoch.val_loss, recomputed_epoch.val_loss, rel_tol=1e-5)
        assert math.isclose(cached_epoch.val_auc, recomputed_epoch.val_auc, rel_tol=1e-6)
    for cached_parameter, recomputed_parameter in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(cached_parameter, recomputed_parameter, rtol=1e-4, atol=1e-6)


def test_the_cached_stage_counts_its_own_batches_for_the_schedule():
    items, validation = _items(8, seed=4), _items(4, seed=5)
    recipe = Recipe(stages=("classification",), epochs=2, learning_rate=1e-3, batch_size=2, early_stopping_patience=10,
                    channels_last=False, amp=False, lr_schedule="warmup_cosine", warmup_fraction=0.0,
                    final_lr_fraction=0.1)
    model = _frozen_model()
    augmentations = augmentation_set(4, *SHAPE[1:])
    cached = FrozenStageData(model, items, validation, collate_patients, 3, augmentations, torch.device("cpu"))
    harness_loader = FrozenStageData(model, items, validation, collate_patients, 2, augmentations, torch.device("cpu"),
                                     cache=False)
    seen_rates = []
    result = fit(model, lambda seed: _Loader(harness_loader, seed), None, recipe, ("segmentation", "classification"),
                 None, torch.device("cpu"), progress=False, frozen_stage=lambda: cached,
                 callbacks=[lambda record: seen_rates.append(record.lr)])
    assert [record.step for record in result.history] == [3, 6], "ceil(8 / 3) optimizer steps per epoch, not ceil(8 / 2)"
    total = 6
    expected_second_epoch_rate = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / total)))
    assert seen_rates[1] == pytest.approx(expected_second_epoch_rate)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("frozen_stage_batch_size", -1, "frozen_stage_batch_size must be 0"),
    ("frozen_stage_augmentations", 0, "frozen_stage_augmentations must be 1..16"),
    ("frozen_stage_augmentations", 17, "frozen_stage_augmentations must be 1..16"),
    ("frozen_stage_cache", "yes", "is not true or false"),
])
def test_bad_cache_settings_are_refused_in_one_line(key, value, message):
    from mstnet.errors import UsageError
    from mstnet.experiments.registry import checked_recipe

    with pytest.raises(UsageError, match=message) as refused:
        checked_recipe("mstnet", Recipe(), {key: value})
    assert "\n" not in str(refused.value) and "mstnet" in str(refused.value)
