"""Preprocessing, clinical encoding and the cached patient dataset, checked against MONAI, scikit-learn and hand computation."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import ClinicalSchema, CohortError, NoduleLocation, Patient
from mstnet.data.dataset import PatientDataset, collate_patients
from mstnet.data.io import read_mask, read_volume
from mstnet.data.transforms import (
    AugmentConfig,
    PreprocessConfig,
    augmentation_transform,
    crop_or_pad,
    preprocess_scan,
    preprocessing_transform,
)

# ------------------------------------------------------------------------------------------- transforms


def test_crop_inside_the_volume_equals_monai_spatial_crop():
    from monai.transforms import SpatialCrop

    array = np.random.default_rng(0).normal(size=(1, 10, 20, 20)).astype(np.float32)
    ours = crop_or_pad(array, (5, 9, 11), (4, 6, 6), pad_value=-1.0)
    theirs = SpatialCrop(roi_center=(5, 9, 11), roi_size=(4, 6, 6))(array)
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_crop_leaving_the_volume_pads_and_keeps_the_centre_voxel_in_the_middle():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    out = crop_or_pad(array, (0, 0, 6), (3, 4, 4), pad_value=-99.0)
    assert out[0, 1, 2, 2] == array[0, 0, 0, 6]  # centre voxel at index size // 2
    assert out[0, 0].max() == -99.0  # slice above the volume is padding
    assert out[0, 1, :2].max() == -99.0 and out[0, 1, :, 3:].max() == -99.0
    np.testing.assert_array_equal(out[0, 1:, 2:, :3], array[0, :2, :2, 4:7])


def test_zscore_pipeline_clips_then_normalises_whole_volume_then_crops_on_the_nodule():
    rng = np.random.default_rng(1)
    image = rng.uniform(-1500, 800, size=(8, 16, 16)).astype(np.float32)
    config = PreprocessConfig(crop_size=(4, 6, 6), hu_window=(-1000, 400), normalisation="zscore")
    nodule = NoduleLocation(x=10.0, y=5.0, z1=3, z2=5)
    out_image, out_mask, spacing = preprocess_scan(preprocessing_transform(config), image, None, (2.0, 1.0, 1.0), nodule)
    clipped = np.clip(image, -1000, 400)
    normalised = (clipped - clipped.mean()) / clipped.std()
    expected = normalised[4 - 2:4 + 2, 5 - 3:5 + 3, 10 - 3:10 + 3]  # centre (4, 5, 10), start centre - size // 2
    np.testing.assert_allclose(out_image, expected, rtol=1e-4, atol=1e-4)
    assert out_mask.shape == (4, 6, 6) and out_mask.sum() == 0
    assert spacing == (2.0, 1.0, 1.0)


def test_window_normalisation_maps_the_hu_window_to_unit_range():
    image = np.array([-2000, -1000, -300, 400, 3000], np.float32).reshape(1, 1, 5)
    config = PreprocessConfig(crop_size=(1, 1, 5), hu_window=(-1000, 400), normalisation="window")
    out, _, _ = preprocess_scan(preprocessing_transform(config), image, None, (1, 1, 1), None)
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_crop_centre_without_a_location_is_the_volume_centre_never_the_mask():
    # placement reads the nodule location only (as in real use); the mask centroid is not a fallback
    image = np.zeros((9, 9, 9), np.float32)
    image[1, 2, 3] = 1000.0
    mask = np.zeros((9, 9, 9), np.uint8)
    mask[1, 2, 3] = 1
    config = PreprocessConfig(crop_size=(3, 3, 3), hu_window=None, normalisation="zscore")
    transform = preprocessing_transform(config)
    with_mask, cropped_mask, _ = preprocess_scan(transform, image, mask, (1, 1, 1), None)
    assert cropped_mask.sum() == 0  # the volume centre (4, 4, 4): the marked voxel lies outside
    without_mask, _, _ = preprocess_scan(transform, image, None, (1, 1, 1), None)
    np.testing.assert_array_equal(with_mask, without_mask)
    assert with_mask.max() == with_mask.min()
    by_location, cropped_mask, _ = preprocess_scan(transform, image, mask, (1, 1, 1), NoduleLocation(3.0, 2.0, 1, 1))
    assert cropped_mask[1, 1, 1] == 1 and by_location[1, 1, 1] == by_location.max()


def test_resampling_matches_monai_spacing_and_moves_the_nodule_with_the_grid():
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    mask = np.zeros((6, 20, 20), np.uint8)
    mask[2:4, 8:14, 6:10] = 1
    image = np.where(mask, 40.0, -850.0).astype(np.float32)
    config = PreprocessConfig(crop_size=(11, 39, 39), target_spacing=(1.0, 0.5, 0.5), hu_window=None, crop_mode="slab")
    nodule = NoduleLocation(x=7.5, y=10.5, z1=2, z2=3)
    out_image, out_mask, spacing = preprocess_scan(preprocessing_transform(config), image, mask, (2.0, 1.0, 1.0), nodule)
    assert spacing == (1.0, 0.5, 0.5)
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    expected_mask = Spacing(pixdim=(1.0, 0.5, 0.5), mode="nearest")(MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=affine))
    assert expected_mask.shape[1:] == (11, 39, 39)
    np.testing.assert_array_equal(out_mask, expected_mask[0].numpy() > 0.5)
    # physical volume is kept within a voxel layer; the crop (whole resampled grid) loses nothing
    assert out_mask.sum() * 0.25 == pytest.approx(mask.sum() * 2.0, rel=0.35)


def test_augmentation_moves_all_time_points_with_the_same_random_draw():
    base = np.random.default_rng(2).normal(size=(8, 8, 8)).astype(np.float32)
    data = {"image": torch.from_numpy(np.stack([base, base])), "mask": torch.from_numpy(np.stack([base > 1, base > 1]).astype(np.float32))}
    augment = augmentation_transform(AugmentConfig(flip_prob=0.5, rotate90_prob=1.0, noise_prob=0.0), (8, 8, 8), seed=3)
    changed = 0
    for _ in range(8):
        out = augment({k: v.clone() for k, v in data.items()})
        image, mask = np.asarray(out["image"]), np.asarray(out["mask"])
        np.testing.assert_array_equal(image[0], image[1])
        np.testing.assert_array_equal(mask[0], mask[1])
        np.testing.assert_array_equal(mask[0], image[0] > 1)  # mask follows the image
        changed += not np.array_equal(image[0], base)
    assert changed == 8  # a rotation by 90, 180 or 270 degrees always happens


def _ball(shape, radius):
    """A ball of ``radius`` voxels at the centre of ``shape``, as float32 0/1."""
    grid = np.indices(shape).astype(np.float64)
    centre = np.array([(n - 1) / 2 for n in shape]).reshape(3, 1, 1, 1)
    return (np.sqrt(((grid - centre) ** 2).sum(0)) <= radius).astype(np.float32)


def test_zoom_scales_the_nodule_volume_by_the_cube_of_the_drawn_factor_for_every_time_point():
    ball = _ball((32, 32, 32), 8.0)
    data = {"image": torch.from_numpy(np.stack([ball * 3.0 - 1.0] * 2)), "mask": torch.from_numpy(np.stack([ball] * 2))}
    augment = augmentation_transform(AugmentConfig(flip_prob=0.0, rotate90_prob=0.0, noise_prob=0.0, zoom_prob=1.0),
                                     (32, 32, 32), seed=5)
    factors, volumes = [], []
    for _ in range(12):
        out = augment({k: v.clone() for k, v in data.items()})
        factor = augment.transforms[0].rand_zoom._zoom[0]
        image, mask = np.asarray(out["image"]), np.asarray(out["mask"])
        assert mask.shape == (2, 32, 32, 32) and set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal(image[0], image[1])  # every time point gets the same zoom
        np.testing.assert_array_equal(mask[0], mask[1])
        # MONAI rounds the zoomed size to whole voxels, so the volume follows factor ** 3 only roughly
        assert mask[0].sum() == pytest.approx(ball.sum() * factor ** 3, rel=0.25)
        assert ((image[0] > 0.5) == (mask[0] > 0)).mean() > 0.985  # the mask stays on the zoomed image
        factors.append(factor)
        volumes.append(mask[0].sum())
    assert np.corrcoef(np.argsort(np.argsort(factors)), np.argsort(np.argsort(volumes)))[0, 1] > 0.9
    assert min(factors) >= 0.7 and max(factors) <= 1.4 and max(factors) - min(factors) > 0.1


def test_zoom_is_absent_at_probability_zero_so_the_default_draws_do_not_change():
    from monai.transforms import RandZoomd

    assert not any(isinstance(t, RandZoomd) for t in augmentation_transform(AugmentConfig(), (8, 8, 8)).transforms)
    assert isinstance(augmentation_transform(AugmentConfig(zoom_prob=0.2), (8, 8, 8)).transforms[0], RandZoomd)
    with pytest.raises(ValueError, match="zoom_prob"):
        AugmentConfig(zoom_prob=1.5)
    with pytest.raises(ValueError, match="zoom_range"):
        AugmentConfig(zoom_range=(1.4, 0.7))


def test_preprocess_config_rejects_bad_values_with_the_argument_named():
    with pytest.raises(ValueError, match="normalisation"):
        PreprocessConfig(normalisation="minmax")
    with pytest.raises(ValueError, match="hu_window"):
        PreprocessConfig(hu_window=(400, -1000))
    with pytest.raises(ValueError, match="crop_size"):
        PreprocessConfig(crop_size=(0, 4, 4))


# ------------------------------------------------------------------------------------------- clinical


def _patients(records):
    return [Patient(f"Q{i}", 0, (), record) for i, record in enumerate(records)]


def test_clinical_encoder_sees_only_training_categories_and_statistics():
    from sklearn.preprocessing import StandardScaler

    schema = ClinicalSchema(categorical=("race",), numeric=("age",))
    train = _patients([{"race": "1", "age": 60.0}, {"race": "2", "age": 70.0}, {"race": 1.0, "age": 65.0}])
    test = _patients([{"race": "7", "age": 80.0}, {"race": None, "age": math.nan}, {"race": "2", "age": 60.0}])
    encoder = ClinicalCoder(schema).fit(train)
    assert encoder.cardinalities == [3]  # unknown + {"1", "2"}
    codes = [int(encoder.encode(p).categorical[0]) for p in test]
    assert codes == [0, 0, 2]  # "7" seen only in test data -> unknown; missing -> unknown
    scaler = StandardScaler().fit([[60.0], [70.0], [65.0]])
    encoded = [encoder.encode(p) for p in test]
    assert encoded[0].numeric[0] == pytest.approx(scaler.transform([[80.0]])[0, 0])
    assert encoded[1].numeric[0] == 0.0 and bool(encoded[1].numeric_missing[0])
    assert not encoded[2].numeric_missing[0]
    restored = ClinicalCoder.from_state_dict(encoder.state_dict())
    assert restored.encode(test[2]).categorical.tolist() == [2]


# ------------------------------------------------------------------------------------------- dataset


def _encoder(cohort):
    return ClinicalCoder(cohort.clinical_schema).fit(cohort)


def test_dataset_item_holds_preprocessed_time_points_clinical_codes_and_label(tiny_cohort):
    config = PreprocessConfig(crop_size=(4, 8, 8))
    dataset = PatientDataset(tiny_cohort, _encoder(tiny_cohort), config, timepoints=2)
    item = dataset[1]
    patient = tiny_cohort["P01"]
    assert item["image"].shape == (2, 1, 4, 8, 8) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (2, 1, 4, 8, 8) and bool(item["has_mask"])
    transform = preprocessing_transform(config)
    for t, scan in enumerate(patient.scans):
        volume = read_volume(scan.image)
        expected_image, expected_mask, _ = preprocess_scan(transform, volume.array, read_mask(scan.mask).array, volume.spacing, scan.nodule)
        np.testing.assert_array_equal(item["image"][t, 0].numpy(), expected_image)
        np.testing.assert_array_equal(item["mask"][t, 0].numpy(), expected_mask)
    assert int(item["mask"][1].sum()) == 4 * 5 * 5  # T1 cube of side 5 cut to 4 slices by the crop
    assert item["days"].tolist() == [0.0, 365.0]
    assert item["label"].item() == 1 and item["patient_id"] == "P01" and item["timepoints"] == ["T0", "T1"]
    assert item["clinical_categorical"].tolist() == [2, 2]  # gender "2" -> 2 of {"1","2"}; cigsmok "1" -> 2 of {"0","1"}
    ages = np.array([55.0, 58.0, 61.0, 64.0])
    assert item["clinical_numeric"].item() == pytest.approx((58.0 - ages.mean()) / ages.std(), rel=1e-5)
    assert item["spacing"].shape == (2, 3)  # each time point its own spacing
    assert item["spacing"].tolist() == [pytest.approx([2.0, 0.8, 0.8])] * 2


def test_timepoints_select_latest_scans_or_named_ones_and_too_few_names_the_patients(tiny_cohort):
    encoder = _encoder(tiny_cohort)
    config = PreprocessConfig(crop_size=(4, 8, 8))
    assert PatientDataset(tiny_cohort, encoder, config, timepoints=1)[0]["timepoints"] == ["T1"]
    assert PatientDataset(tiny_cohort, encoder, config, timepoints=["T0"])[0]["timepoints"] == ["T0"]
    with pytest.raises(CohortError) as error:
        PatientDataset(tiny_cohort, encoder, config, timepoints=3)
    assert all(f"patient P0{i}" in str(error.value) for i in range(4))
    assert "3 asked for" in str(error.value)


def test_missing_mask_gives_zeros_and_has_mask_false(tiny_cohort):
    patient = tiny_cohort["P00"]
    no_mask = replace(patient, scans=tuple(replace(s, mask=None) for s in patient.scans))
    cohort = replace(tiny_cohort, patients=(no_mask,))
    item = PatientDataset(cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)))[0]
    assert not bool(item["has_mask"]) and item["mask"].sum() == 0


def test_memory_cache_serves_later_epochs_without_reading_files(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)))
    first = [dataset[i]["image"] for i in range(len(dataset))]
    assert dataset.reads == 8
    second = [dataset[i]["image"] for i in range(len(dataset))]
    assert dataset.reads == 8
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_disk_cache_is_shared_and_invalidated_by_file_change_or_config(tiny_cohort, tmp_path):
    encoder, config = _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8))
    cache = tmp_path / "cache"
    warm = PatientDataset(tiny_cohort, encoder, config, cache_dir=cache)
    expected = [warm[i]["image"] for i in range(len(warm))]
    assert len(list(cache.glob("*.npz"))) == 8
    fresh = PatientDataset(tiny_cohort, encoder, config, cache_dir=cache)
    assert all(torch.equal(fresh[i]["image"], expected[i]) for i in range(len(fresh)))
    assert fresh.reads == 0
    image_path = tiny_cohort["P00"].scans[0].image
    stat = image_path.stat()
    os.utime(image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = PatientDataset(tiny_cohort, encoder, config, cache_dir=cache)
    touched[0]
    assert touched.reads == 1
    other_config = PatientDataset(tiny_cohort, encoder, replace(config, hu_window=(-1200.0, 600.0)), cache_dir=cache)
    other_config[0]
    assert other_config.reads == 2


def test_augmentation_runs_after_the_cache_and_keeps_time_points_aligned(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)),
                             augment=AugmentConfig(flip_prob=0.5, rotate90_prob=0.5, noise_prob=0.0, shift_voxels=(0, 0, 0)), seed=0)
    plain = PatientDataset(tiny_cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)))
    differs = 0
    for epoch in range(4):
        dataset.set_augmentation_seed(epoch)
        item, reference = dataset[2], plain[2]
        for t in range(2):  # each augmented time point equals one spatial transform of its original, the same for both
            assert item["mask"][t].sum() == reference["mask"][t].sum()
        differs += not torch.equal(item["image"], reference["image"])
    assert dataset.reads == 2 and differs > 0
    # identical draw for both time points: the union of T0's cube lies inside T1's larger cube in both
    item = dataset[2]
    assert bool(((item["mask"][0] > 0) <= (item["mask"][1] > 0)).all())


def test_augmentation_draws_depend_on_seed_and_item_not_on_workers_or_order(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)), timepoints=2,
                             augment=AugmentConfig(flip_prob=0.5, rotate90_prob=0.5, noise_prob=1.0), seed=0)
    dataset.set_augmentation_seed(7)
    in_process = torch.cat([batch["image"] for batch in DataLoader(dataset, batch_size=2, collate_fn=collate_patients)])
    workers = torch.cat([batch["image"] for batch in DataLoader(dataset, batch_size=2, collate_fn=collate_patients,
                                                                  num_workers=2)])
    reversed_order = torch.stack([dataset[i]["image"] for i in reversed(range(len(dataset)))]).flip(0)
    torch.testing.assert_close(workers, in_process, rtol=0, atol=0)
    torch.testing.assert_close(reversed_order, in_process, rtol=0, atol=0)
    dataset.set_augmentation_seed(8)
    assert not torch.equal(dataset[0]["image"], in_process[0]), "another epoch seed draws anew"


def test_collate_works_with_a_dataloader_and_keeps_ids_as_lists(tiny_cohort):
    dataset = PatientDataset(tiny_cohort, _encoder(tiny_cohort), PreprocessConfig(crop_size=(4, 8, 8)), timepoints=2)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_patients)))
    assert batch["image"].shape == (3, 2, 1, 4, 8, 8)
    assert batch["label"].tolist() == [0, 1, 0]
    assert batch["patient_id"] == ["P00", "P01", "P02"]
    assert batch["timepoints"] == [["T0", "T1"]] * 3
    assert batch["clinical_categorical"].dtype == torch.long and batch["clinical_categorical"].shape == (3, 2)
    assert batch["has_mask"].shape == (3,) and batch["spacing"].shape == (3, 2, 3)
