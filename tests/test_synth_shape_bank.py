"""LIDC shape bank: exclusions, volumes against the database's own consensus, cache round trip."""

from __future__ import annotations

import numpy as np
import pytest

from mstnet.data.lidc_db import CALCIFICATION_ABSENT, LidcDatabase, consensus_mask
from mstnet.synth.shape_bank import (
    ShapeBank,
    build_shape_bank,
    cache_root,
    load_shape_bank,
    resample_isotropic,
    shape_bank_path,
)

SCAN_IDS = tuple(range(1, 41))


@pytest.fixture(scope="module")
def small_bank() -> ShapeBank:
    return build_shape_bank(scan_ids=SCAN_IDS, workers=1, progress=False)


def test_bank_keeps_only_non_calcified_nodules_of_at_least_3_mm(small_bank):
    assert len(small_bank) > 20
    assert set(small_bank.column("calcification")) == {float(CALCIFICATION_ABSENT)}
    assert min(e.equivalent_diameter_mm for e in small_bank.entries) >= 3.0
    excluded = small_bank.summary["excluded"]
    assert excluded["calcified"] > 0
    assert small_bank.summary["nodules_kept"] + sum(excluded.values()) == small_bank.summary["nodules_grouped"]


def test_bank_volume_is_the_consensus_volume_recomputed_from_the_database(small_bank):
    database = LidcDatabase()
    for entry in small_bank.entries[:8]:
        scan = database.scan(entry.scan_id)
        annotations = [a for a in database.annotations(entry.scan_id) if a.id in entry.annotation_ids]
        consensus, readers = consensus_mask(annotations, scan)
        votes = np.sum(readers, axis=0)
        expected = float((2 * votes >= len(readers)).sum()) * scan.pixel_spacing**2 * scan.slice_spacing
        assert entry.volume_mm3 == pytest.approx(expected)
        assert entry.ratings["malignancy"] == np.median([a.ratings["malignancy"] for a in annotations])


def test_resampled_shapes_keep_the_native_volume(small_bank):
    ratio = small_bank.column("bank_volume_mm3") / small_bank.column("volume_mm3")
    assert 0.9 < np.median(ratio) < 1.05
    assert ratio.min() > 0.6 and ratio.max() < 1.3


def test_resampling_a_ball_preserves_its_volume():
    z, y, x = np.mgrid[-10:11, -20:21, -20:21]
    spacing = (2.0, 0.7, 0.7)
    ball = (z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= 6.0**2
    resampled = resample_isotropic(ball, spacing, 0.5)
    native = ball.sum() * np.prod(spacing)
    assert resampled.sum() * 0.5**3 == pytest.approx(native, rel=0.08)
    assert resampled.sum() * 0.5**3 == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.08)


def test_inter_reader_dice_summary_is_the_mean_of_the_pairs(small_bank):
    pairs = np.array([d for e in small_bank.entries for d in e.reader_dice])
    summary = small_bank.summary["inter_reader_dice"]
    assert summary["pairs"] == pairs.size
    assert summary["mean"] == pytest.approx(pairs.mean())
    assert summary["median"] == pytest.approx(np.median(pairs))
    assert 0.5 < summary["mean"] < 1.0


def test_bank_cache_round_trip_is_exact_and_leaves_no_temporary_files(small_bank, tmp_path, monkeypatch):
    monkeypatch.setenv("MSTNET_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    path = shape_bank_path(small_bank.spacing_mm)
    small_bank.save(path)
    loaded = load_shape_bank(small_bank.spacing_mm)
    assert len(loaded) == len(small_bank)
    for a, b in zip(loaded.entries, small_bank.entries):
        assert np.array_equal(a.mask, b.mask)
        assert a.volume_mm3 == b.volume_mm3 and a.ratings == b.ratings and a.reader_dice == b.reader_dice
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_cache_root_follows_xdg_when_no_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MSTNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "mstnet"
