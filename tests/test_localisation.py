"""Localisation as in real use: crops placed from the nodule location (a reader's mark) only,
training jitter around it, segmentation metrics on each scan's whole field at its own spacing."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mstnet.data.clinical import ClinicalCoder
from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan
from mstnet.data.dataset import PatientDataset
from mstnet.data.io import read_mask, read_volume, write_nifti
from mstnet.data.transforms import AugmentConfig, PreprocessConfig, jitter_offsets, paste_into_field, preprocess_scan, preprocessing_transform
from mstnet.experiments.presets import run_preset
from mstnet.experiments.evaluation_fold import evaluate_fold, field_segmentation_metrics
from mstnet.metrics import segmentation_metrics
from mstnet.models.output import ModelOutput
from mstnet.synth import synth_config, synthesize_cohort
from mstnet.synth.shape_bank import build_shape_bank

# ------------------------------------------------------------------------------------------- placement


def test_shifting_the_location_moves_the_crop_and_the_mask_is_never_read():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 400, size=(16, 40, 40)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[6:9, 14:20, 20:25] = 1
    config = PreprocessConfig(crop_size=(6, 12, 12), hu_window=None)
    transform = preprocessing_transform(config)
    mark = NoduleLocation(x=21.0, y=17.0, z1=6, z2=8)
    crop, _, _, box = preprocess_scan(transform, image, mask, (2.0, 0.7, 0.7), mark, with_box=True)
    # an all-zero mask (or none) gives the same crop: placement reads the location only
    for other in (np.zeros_like(mask), None):
        same, _, _, same_box = preprocess_scan(transform, image, other, (2.0, 0.7, 0.7), mark, with_box=True)
        np.testing.assert_array_equal(same, crop)
        np.testing.assert_array_equal(same_box, box)
    # a mask elsewhere does not move it either
    moved_mask = np.roll(mask, (3, 9, -7), axis=(0, 1, 2))
    np.testing.assert_array_equal(preprocess_scan(transform, image, moved_mask, (2.0, 0.7, 0.7), mark)[0], crop)
    # moving the location by (dz, dy, dx) voxels moves the crop by as many
    dz, dy, dx = 2, -3, 5
    shifted, _, _, shifted_box = preprocess_scan(transform, image, mask, (2.0, 0.7, 0.7),
                                                 NoduleLocation(x=mark.x + dx, y=mark.y + dy, z1=mark.z1 + dz, z2=mark.z2 + dz),
                                                 with_box=True)
    assert (shifted_box[0] - box[0]).tolist() == [dz, dy, dx] and shifted_box[1].tolist() == [16, 40, 40]
    normalised = (image - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)
    (z, y, x), (d, h, w) = shifted_box[0], config.crop_size
    np.testing.assert_allclose(shifted, normalised[z:z + d, y:y + h, x:x + w], atol=1e-5)


def test_dataset_crop_follows_the_manifest_location_not_the_mask(tiny_cohort, tmp_path):
    encoder = ClinicalCoder(tiny_cohort.clinical_schema).fit(tiny_cohort)
    config = PreprocessConfig(crop_size=(4, 8, 8))
    reference = PatientDataset(tiny_cohort, encoder, config)[0]
    patient = tiny_cohort["P00"]
    zero_scans, shifted_scans = [], []
    for scan in patient.scans:
        zero = write_nifti(tmp_path / f"zero_{scan.timepoint}.nii.gz", np.zeros((12, 24, 24), np.uint8), (2.0, 0.8, 0.8))
        zero_scans.append(replace(scan, mask=zero))
        loc = scan.nodule
        shifted_scans.append(replace(scan, nodule=NoduleLocation(loc.x - 2, loc.y + 1, loc.z1 + 1, loc.z2 + 1)))
    zero_item = PatientDataset(replace(tiny_cohort, patients=(replace(patient, scans=tuple(zero_scans)),)), encoder, config)[0]
    torch.testing.assert_close(zero_item["image"], reference["image"], rtol=0, atol=0)
    assert torch.equal(zero_item["crop_start"], reference["crop_start"]) and zero_item["mask"].sum() == 0
    shifted_item = PatientDataset(replace(tiny_cohort, patients=(replace(patient, scans=tuple(shifted_scans)),)), encoder, config)[0]
    assert (shifted_item["crop_start"] - reference["crop_start"]).tolist() == [[1, 1, -2]] * 2


# ------------------------------------------------------------------------------------------- the reader's mark


@pytest.fixture(scope="module")
def bank():
    return build_shape_bank(scan_ids=tuple(range(1, 31)), workers=1, progress=False)


def test_the_cpu_cohort_marks_have_the_documented_error(bank, tmp_path):
    config = synth_config("cpu", n_patients=40, seed=1)
    assert config.mark_error_sd_mm == (2.0, 2.5, 2.5)
    folder = synthesize_cohort(config, tmp_path / "cpu40", workers=2, progress=False, bank=bank)
    manifest = pd.read_csv(folder / "manifest.csv")
    truth = pd.read_csv(folder / "ground_truth.csv").set_index("patient_id")
    errors: dict[str, list[float]] = {"z": [], "y": [], "x": []}
    for _, row in manifest.iterrows():
        tp, gt = row["timepoint"], truth.loc[row["patient_id"]]
        # the slab is the mask's slice range shifted as a whole
        assert row["nodule_z2"] - row["nodule_z1"] == gt[f"mask_z2_{tp}"] - gt[f"mask_z1_{tp}"]
        errors["z"].append((row["nodule_z1"] - gt[f"mask_z1_{tp}"]) * config.spacing_mm[0])
        errors["y"].append((row["nodule_y"] - gt[f"centroid_y_{tp}"]) * config.spacing_mm[1])
        errors["x"].append((row["nodule_x"] - gt[f"centroid_x_{tp}"]) * config.spacing_mm[2])
    # the centroid columns are the masks' centroids
    first = manifest.iloc[0]
    written = np.asarray(nib.load(folder / first["mask"]).dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(np.argwhere(written).mean(axis=0),
                               [truth.loc[first["patient_id"], f"centroid_{a}_{first['timepoint']}"] for a in "zyx"], atol=1e-9)
    n = len(manifest)
    assert n == 120
    for axis, sd in zip("zyx", config.mark_error_sd_mm):
        values = np.asarray(errors[axis])
        if axis == "z":  # whole slices: the sd of round(Normal(0, 1 slice)) is about sqrt(1 + 1/12) slices
            sd = config.spacing_mm[0] * math.sqrt((sd / config.spacing_mm[0]) ** 2 + 1 / 12)
        standard_error = sd / math.sqrt(2 * n)
        assert abs(values.std(ddof=1) - sd) < 4.5 * standard_error, (axis, values.std(ddof=1), sd)
        assert abs(values.mean()) < 4 * sd / math.sqrt(n), (axis, values.mean())


def _digests(folder: Path) -> dict[str, str]:
    return {f"{kind}/{p.name}": hashlib.sha256(np.asanyarray(nib.load(p).dataobj).tobytes()).hexdigest()
            for kind in ("images", "masks") for p in sorted((folder / kind).iterdir())}


def test_the_mark_has_its_own_random_stream_images_and_masks_do_not_change(bank, tmp_path):
    marked = synthesize_cohort(synth_config("tiny", n_patients=3, seed=4), tmp_path / "marked", workers=1, progress=False, bank=bank)
    exact = synthesize_cohort(synth_config("tiny", n_patients=3, seed=4, mark_error_sd_mm=(0.0, 0.0, 0.0)), tmp_path / "exact",
                              workers=1, progress=False, bank=bank)
    assert _digests(marked) == _digests(exact)
    with_error, without = pd.read_csv(marked / "manifest.csv"), pd.read_csv(exact / "manifest.csv")
    truth = pd.read_csv(exact / "ground_truth.csv").set_index("patient_id")
    for _, row in without.iterrows():  # no error: the mark is the mask centroid and slice range
        gt = truth.loc[row["patient_id"]]
        assert row["nodule_x"] == pytest.approx(gt[f"centroid_x_{row['timepoint']}"])
        assert (row["nodule_z1"], row["nodule_z2"]) == (gt[f"mask_z1_{row['timepoint']}"], gt[f"mask_z2_{row['timepoint']}"])
    assert not np.allclose(with_error["nodule_x"], without["nodule_x"])


# ------------------------------------------------------------------------------------------- training jitter


def test_training_crops_jitter_around_the_mark_per_epoch_and_validation_crops_do_not(tiny_cohort):
    encoder = ClinicalCoder(tiny_cohort.clinical_schema).fit(tiny_cohort)
    config = PreprocessConfig(crop_size=(4, 8, 8))
    no_flips = AugmentConfig(flip_prob=0.0, rotate90_prob=0.0, noise_prob=0.0)  # only the jitter
    train = PatientDataset(tiny_cohort, encoder, config, augment=no_flips)
    validation = PatientDataset(tiny_cohort, encoder, config)
    plain = validation[1]
    transform = preprocessing_transform(config)
    starts = set()
    for seed in range(6):
        train.set_augmentation_seed(seed)
        validation.set_augmentation_seed(seed)
        item = train[1]
        assert item["image"].shape == plain["image"].shape == (2, 1, 4, 8, 8)
        offset = jitter_offsets(no_flips.shift_voxels, seed, 1)
        assert all(abs(o) <= s for o, s in zip(offset, no_flips.shift_voxels))
        assert (item["crop_start"] - plain["crop_start"]).tolist() == [list(offset)] * 2
        # the training crop is the plain crop around the mark moved by the drawn offset
        for t, scan in enumerate(tiny_cohort["P01"].scans):
            volume = read_volume(scan.image)
            loc = scan.nodule
            moved = NoduleLocation(loc.x + offset[2], loc.y + offset[1], loc.z1 + offset[0], loc.z2 + offset[0])
            expected_image, expected_mask, _ = preprocess_scan(transform, volume.array, read_mask(scan.mask).array, volume.spacing, moved)
            np.testing.assert_array_equal(item["image"][t, 0].numpy(), expected_image)
            np.testing.assert_array_equal(item["mask"][t, 0].numpy(), expected_mask)
        starts.add(tuple(item["crop_start"][0].tolist()))
        again = validation[1]
        assert torch.equal(again["image"], plain["image"]) and torch.equal(again["crop_start"], plain["crop_start"])
    assert len(starts) > 1, "training crops differ between epoch seeds"
    train.set_augmentation_seed(2)
    first = train[1]
    assert torch.equal(train[1]["image"], first["image"]), "the same (seed, item) draws the same crop"


def test_slab_mode_feeds_the_whole_field_in_plane_and_jitters_only_in_depth(tiny_cohort):
    encoder = ClinicalCoder(tiny_cohort.clinical_schema).fit(tiny_cohort)
    slab = PreprocessConfig(crop_size=(4, 24, 24), crop_mode="slab")  # the tiny volumes are 12 x 24 x 24
    item = PatientDataset(tiny_cohort, encoder, slab)[0]
    loc = tiny_cohort["P00"].scans[0].nodule
    assert item["crop_start"][0].tolist() == [int(math.floor((loc.z1 + loc.z2) / 2 + 0.5)) - 2, 0, 0]
    train = PatientDataset(tiny_cohort, encoder, slab, augment=AugmentConfig(flip_prob=0, rotate90_prob=0, noise_prob=0))
    assert train.shift_voxels == (1, 0, 0)
    for seed in range(4):
        train.set_augmentation_seed(seed)
        assert train[0]["crop_start"][:, 1:].abs().sum() == 0
    assert run_preset("paper").crop_mode == "slab" and run_preset("paper").crop_size == (16, 512, 512)
    assert run_preset("cpu").crop_mode == "nodule"


# ------------------------------------------------------------------------------------------- metrics on the field


def test_paste_into_field_drops_what_lies_outside():
    crop = np.ones((2, 3, 3), bool)
    field = paste_into_field(crop, (-1, 4, 1), (4, 6, 6))
    assert field.sum() == 1 * 2 * 3 and field[0, 4:6, 1:4].all()


def test_a_crop_perfect_prediction_of_a_nodule_beyond_the_crop_scores_below_one_on_the_field():
    truth = np.zeros((12, 30, 30), bool)
    truth[3:9, 10:16, 10:16] = True  # 6 x 6 x 6 = 216 voxels
    start, size = (5, 8, 8), (4, 8, 8)  # the crop holds slices 5-8: 4 x 6 x 6 = 144 voxels of the nodule
    window = tuple(slice(s, s + n) for s, n in zip(start, size))
    pred_crop = truth[window].copy()  # exactly the crop's mask
    assert segmentation_metrics(pred_crop, truth[window])["dice"] == 1.0  # what the crop alone would report
    metrics = field_segmentation_metrics(pred_crop, start, truth, (2.0, 0.7, 0.7))
    assert metrics["dice"] == pytest.approx(2 * 144 / (144 + 216)) and metrics["dice"] < 1
    assert metrics["jaccard"] == pytest.approx(144 / 216)
    # a nodule wholly outside the crop is missed: the one-empty distance is the field's diagonal
    missed = field_segmentation_metrics(np.zeros(size, bool), (0, 20, 20), truth, (2.0, 0.7, 0.7))
    assert missed["dice"] == 0.0 and missed["hd95"] == pytest.approx(math.sqrt(24**2 + 21**2 + 21**2))


class _Model(torch.nn.Module):
    """Segments by intensity (the nodule is the bright tissue) or predicts a fixed box of the crop."""

    def __init__(self, box: tuple[slice, ...] | None = None):
        super().__init__()
        self.box = box

    def forward(self, images, clinical_categorical=None, clinical_numeric=None, days=None):
        if self.box is None:
            logits = torch.where(images > 0, 10.0, -10.0)
        else:
            logits = torch.full_like(images, -10.0)
            logits[(..., *self.box)] = 10.0
        return ModelOutput(seg_logits=logits, cls_logits=None)


def _two_spacing_cohort(folder: Path) -> Cohort:
    """One patient, T0 at 2.0 x 0.8 x 0.8 mm and T1 at 1.0 x 0.5 x 0.6 mm, a box nodule taller than the crop at T1."""
    shape = (12, 24, 24)
    scans = []
    for t, (spacing, box) in enumerate((((2.0, 0.8, 0.8), (slice(5, 8), slice(10, 13), slice(9, 12))),
                                        ((1.0, 0.5, 0.6), (slice(3, 9), slice(10, 14), slice(9, 13))))):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        image = np.where(mask, 40.0, -850.0).astype(np.float32)
        image_path = write_nifti(folder / "images" / f"P_T{t}.nii.gz", image, spacing)
        mask_path = write_nifti(folder / "masks" / f"P_T{t}.nii.gz", mask, spacing)
        zs, ys, xs = np.nonzero(mask)
        scans.append(Scan(f"T{t}", 365.0 * t, image_path, mask_path, NoduleLocation(float(xs.mean()), float(ys.mean()),
                                                                                     int(zs.min()), int(zs.max()))))
    patient = Patient("P", 1, tuple(scans), {"gender": "1", "age": 60.0})
    return Cohort((patient,), ClinicalSchema(("gender",), ("age",)), root=folder, name="two-spacings")


def _evaluate(cohort: Cohort, model: torch.nn.Module) -> list[dict]:
    encoder = ClinicalCoder(cohort.clinical_schema).fit(cohort)
    dataset = PatientDataset(cohort, encoder, PreprocessConfig(crop_size=(4, 8, 8)))
    data = SimpleNamespace(test=dataset, validation=dataset)
    spec = SimpleNamespace(tasks=("segmentation",), data_view=SimpleNamespace(use_clinical=False))
    options = SimpleNamespace(preset=SimpleNamespace(batch_size=1), device=torch.device("cpu"), workers=0)
    return evaluate_fold(model, data, spec, options, SimpleNamespace(amp=False, test_time_mirroring=False), fold=0).scans


def test_evaluate_fold_scores_each_scan_on_its_whole_field_at_its_own_spacing(tmp_path):
    cohort = _two_spacing_cohort(tmp_path)
    item = PatientDataset(cohort, ClinicalCoder(cohort.clinical_schema).fit(cohort), PreprocessConfig(crop_size=(4, 8, 8)))[0]
    assert item["spacing"].tolist() == [pytest.approx([2.0, 0.8, 0.8]), pytest.approx([1.0, 0.5, 0.6])]
    # a perfect segmenter of what it sees: T0 (inside the crop) scores 1, T1 (6 slices, crop 4) loses two slices
    rows = {row["timepoint"]: row for row in _evaluate(cohort, _Model())}
    assert rows["T0"]["dice"] == 1.0 and rows["T0"]["hd95"] == 0.0
    assert rows["T1"]["dice"] == pytest.approx(2 * 64 / (64 + 96))
    # a fixed box: every scan's HD95 is the hand computation at that scan's own spacing, not the other's
    box = (slice(1, 3), slice(2, 5), slice(2, 6))
    rows = {row["timepoint"]: row for row in _evaluate(cohort, _Model(box))}
    for t, scan in enumerate(cohort["P"].scans):
        truth = np.asarray(nib.load(scan.mask).dataobj).transpose(2, 1, 0) > 0
        crop = np.zeros((4, 8, 8), bool)
        crop[box] = True
        pred = paste_into_field(crop, item["crop_start"][t].tolist(), truth.shape)
        own = segmentation_metrics(pred, truth, spacing=item["spacing"][t].tolist())
        other = segmentation_metrics(pred, truth, spacing=item["spacing"][1 - t].tolist())
        row = rows[scan.timepoint]
        assert row["hd95"] == pytest.approx(own["hd95"]) and row["asd"] == pytest.approx(own["asd"])
        assert row["dice"] == pytest.approx(own["dice"])
        assert own["hd95"] != pytest.approx(other["hd95"])
