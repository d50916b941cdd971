"""Recipe.large_nodule_weight: training patients with a nodule over LARGE_NODULE_MM drawn more often."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.dataset import PatientDataset
from mstnet.data.features import patient_features
from mstnet.data.transforms import PreprocessConfig
from mstnet.errors import UsageError
from mstnet.experiments.fold_data import (LARGE_NODULE_MM, WeightedDraws, data_loader, large_nodule_weights,
                                          largest_nodule_diameters_mm)
from mstnet.experiments.fold_record import recipe_summary
from mstnet.experiments.identity import recorded_recipe
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import Recipe, checked_recipe, get_experiment
from mstnet.experiments.runner import RunOptions, resolve_recipe


def test_largest_diameter_in_the_crops_equals_the_whole_masks_diameter(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, ClinicalCoder(tiny_cohort.clinical_schema).fit(tiny_cohort),
                             PreprocessConfig(crop_size=(8, 16, 16)), timepoints=2)
    features = patient_features(tiny_cohort, 2)
    expected = features[["diameter_mm_t0", "diameter_mm_t1"]].max(axis=1).loc[tiny_cohort.patient_ids].to_numpy()
    cube_mm3 = 5 ** 3 * 2.0 * 0.8 * 0.8  # the fixture's second scan: a 5-voxel cube at 2.0 x 0.8 x 0.8 mm
    assert expected == pytest.approx(np.full(4, (6 * cube_mm3 / np.pi) ** (1 / 3)))
    assert largest_nodule_diameters_mm(dataset) == pytest.approx(expected, rel=1e-9)


def test_weights_mark_only_nodules_over_the_threshold():
    weights = large_nodule_weights(np.array([5.0, LARGE_NODULE_MM, LARGE_NODULE_MM + 0.1, 27.0]), 3.0)
    assert weights.tolist() == [1.0, 1.0, 3.0, 3.0]


def test_weighted_loader_draws_each_patient_in_proportion_to_its_weight():
    dataset = list(range(4))
    weights = np.array([4.0, 1.0, 1.0, 1.0])
    draws = np.concatenate([list(data_loader(dataset, 2, True, seed, torch.device("cpu"), weights=weights).dataset)
                            for seed in range(500)])
    assert len(draws) == 2000
    counts = np.bincount(draws, minlength=4) / len(draws)
    assert counts[0] == pytest.approx(4 / 7, abs=0.04)  # binomial sd 0.011 over 2000 draws
    assert counts[1:] == pytest.approx(np.full(3, 1 / 7), abs=0.03)
    first = data_loader(dataset, 2, True, 7, torch.device("cpu"), weights=weights).dataset.patients
    assert first == data_loader(dataset, 2, True, 7, torch.device("cpu"), weights=weights).dataset.patients
    expected = torch.multinomial(torch.tensor(weights), 4, replacement=True, generator=torch.Generator().manual_seed(7))
    assert first == expected.tolist()  # torch's WeightedRandomSampler draws the same
    with pytest.raises(ValueError, match="shuffled"):
        data_loader(dataset, 2, False, 0, torch.device("cpu"), weights=weights)


def test_ranks_share_one_draw_equally_and_cover_it():
    weights = np.array([1.0, 2.0, 3.0, 1.0, 1.0])
    shares = [WeightedDraws(list(range(5)), weights, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]  # 5 draws rounded up to 6, as DistributedSampler pads
    drawn = torch.multinomial(torch.tensor(weights), 6, replacement=True, generator=torch.Generator().manual_seed(3))
    assert shares[0].patients == drawn[0::2].tolist() and shares[1].patients == drawn[1::2].tolist()
    assert sorted(shares[0].positions + shares[1].positions) == list(range(6))


def test_a_patient_drawn_twice_is_augmented_differently(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, ClinicalCoder(tiny_cohort.clinical_schema).fit(tiny_cohort),
                             PreprocessConfig(crop_size=(8, 16, 16)), timepoints=2, augment=True)
    dataset.set_augmentation_seed(5)
    assert torch.equal(dataset.item(2, 2)["image"], dataset[2]["image"])
    draws = WeightedDraws(dataset, np.array([1e6, 1.0, 1.0, 1.0]), seed=0)
    assert draws.patients == [0, 0, 0, 0]
    images = [draws[k]["image"] for k in range(4)]
    assert all(torch.equal(images[k], dataset.item(0, k)["image"]) for k in range(4))
    assert not any(torch.equal(images[0], images[k]) for k in range(1, 4))


def test_the_weight_is_refused_where_the_loader_trains_the_classifier():
    options = RunOptions(preset=run_preset("tiny"), device=torch.device("cpu"), params={"large_nodule_weight": 3})
    with pytest.raises(UsageError, match="mltn: large_nodule_weight would shift the malignancy mix its joint stage"):
        resolve_recipe(get_experiment("mltn"), options)
    assert resolve_recipe(get_experiment("unetr"), options).large_nodule_weight == 3  # its joint stage only segments
    mstnet = resolve_recipe(get_experiment("mstnet"), RunOptions(preset=run_preset("cpu"), device=torch.device("cpu"),
                                                                 params={"large_nodule_weight": 3}))
    assert mstnet.large_nodule_weight == 3 and mstnet.frozen_stage_cache
    assert ", patients with a nodule over 20 mm sampled x3" in recipe_summary(mstnet)
    assert "sampled" not in recipe_summary(Recipe())
    with pytest.raises(UsageError, match="large_nodule_weight must be at least 1"):
        checked_recipe("mstnet", Recipe(), {"large_nodule_weight": 0.5})


def test_a_ddp_run_refuses_the_weight_for_mstnet_before_training(monkeypatch):
    """Under torchrun MST-Net's classification stage recomputes the frozen network on the training
    loader (no cache), so the weight would reach its classifier: refused by resolve_recipe, before a
    fold folder is written; a segmentation-only row keeps it."""
    monkeypatch.setattr("mstnet.experiments.fold_configuration.in_process_group", lambda: True)
    options = RunOptions(preset=run_preset("cpu"), device=torch.device("cpu"), params={"large_nodule_weight": 3})
    with pytest.raises(UsageError, match="classification stage trains on .* which a DDP run does not use"):
        resolve_recipe(get_experiment("mstnet"), options)
    assert resolve_recipe(get_experiment("unetr"), options).large_nodule_weight == 3


def test_the_neutral_weight_is_left_out_of_the_recorded_recipe_so_older_results_keep_their_identity():
    from dataclasses import asdict

    recorded = recorded_recipe(asdict(Recipe()))
    assert set(asdict(Recipe())) - set(recorded) == {"large_nodule_weight"}
    assert recorded_recipe(asdict(Recipe(large_nodule_weight=3)))["large_nodule_weight"] == 3
