"""LIDC annotation database: masks agree with contour geometry (Pick's theorem), readers' Dice behaves."""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric.binary import dc

from mstnet.data.lidc_db import (
    LidcDatabase,
    annotation_bbox,
    annotation_mask,
    consensus_mask,
    dice,
    group_nodules,
    pairwise_dice,
)


@pytest.fixture(scope="module")
def database() -> LidcDatabase:
    return LidcDatabase()


def shoelace_area(coords: np.ndarray) -> float:
    x, y = coords[:, 0].astype(float), coords[:, 1].astype(float)
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def is_simple_chain(coords: np.ndarray) -> bool:
    """Unique points, 8-connected steps: every boundary lattice point is a vertex (Pick's theorem applies)."""
    closed = coords if (coords[0] == coords[-1]).all() else np.vstack([coords, coords[:1]])
    steps = np.abs(np.diff(closed, axis=0)).max(axis=1)
    unique = len({tuple(p) for p in closed[:-1]}) == len(closed) - 1
    return unique and bool((steps <= 1).all()) and len(closed) > 4


def interior_points(coords: np.ndarray) -> float:
    """Pick's theorem: interior lattice points = area - boundary points / 2 + 1."""
    points = coords[:-1] if (coords[0] == coords[-1]).all() else coords
    return shoelace_area(points) - len(points) / 2 + 1


def test_database_has_the_documented_size(database):
    assert len(database.scans()) == 1018
    assert sum(len(v) for v in database.all_annotations().values()) == 6859


@pytest.mark.parametrize("scan_id", [1, 2, 5, 11])
def test_annotation_volume_equals_contour_area_times_slice_spacing(database, scan_id):
    scan = database.scan(scan_id)
    checked = 0
    for annotation in database.annotations(scan_id):
        contours = annotation.contours
        slices = [c.z_position for c in contours]
        if not all(c.inclusion for c in contours) or len(set(slices)) != len(slices):
            continue
        if not all(is_simple_chain(c.coords) for c in contours):
            continue
        expected_mm3 = sum(interior_points(c.coords) for c in contours) * scan.pixel_spacing**2 * scan.slice_spacing
        mask = annotation_mask(annotation, scan).mask
        measured_mm3 = mask.sum() * scan.pixel_spacing**2 * scan.slice_spacing
        assert measured_mm3 == pytest.approx(expected_mm3, rel=1e-9, abs=1e-9)
        # and within a perimeter's worth of the raw shoelace area
        area_mm3 = sum(shoelace_area(c.coords) for c in contours) * scan.pixel_spacing**2 * scan.slice_spacing
        assert measured_mm3 <= area_mm3
        checked += 1
    assert checked >= 1


def test_hole_contours_are_removed(database):
    annotations = database.all_annotations()
    with_hole = next(a for anns in annotations.values() for a in anns if any(not c.inclusion for c in a.contours))
    scan = database.scan(with_hole.scan_id)
    without_holes = type(with_hole)(with_hole.id, with_hole.scan_id, with_hole.ratings, tuple(c for c in with_hole.contours if c.inclusion))
    bbox = annotation_bbox([with_hole], scan)
    assert annotation_mask(with_hole, scan, bbox).mask.sum() < annotation_mask(without_holes, scan, bbox).mask.sum()


def test_consensus_of_one_reader_is_that_reader_and_consensus_lies_between_union_and_intersection(database):
    scan = database.scan(1)
    nodule = max(database.nodules(1), key=len)
    assert len(nodule) == 4
    consensus, per_reader = consensus_mask(nodule, scan, level=0.5)
    stacked = np.stack(per_reader)
    assert np.array_equal(consensus.mask, stacked.sum(0) >= 2)
    assert (consensus.mask <= stacked.any(0)).all() and (stacked.all(0) <= consensus.mask).all()
    single, _ = consensus_mask(nodule[:1], scan)
    own = annotation_mask(nodule[0], scan)
    assert single.mask.sum() == own.mask.sum()


def test_inter_reader_dice_is_symmetric_in_unit_interval_and_matches_medpy(database):
    scan = database.scan(1)
    nodule = max(database.nodules(1), key=len)
    _, per_reader = consensus_mask(nodule, scan)
    values = pairwise_dice(per_reader)
    assert len(values) == 6
    for a in per_reader:
        for b in per_reader:
            assert dice(a, b) == pytest.approx(dice(b, a))
            assert 0.0 <= dice(a, b) <= 1.0
            assert dice(a, b) == pytest.approx(dc(a, b))
    assert dice(per_reader[0], per_reader[0]) == 1.0


def test_grouping_never_puts_more_than_four_readers_on_a_nodule(database):
    annotations = database.all_annotations()
    for scan_id in list(annotations)[:200]:
        for nodule in group_nodules(annotations[scan_id], database.scan(scan_id)):
            assert 1 <= len(nodule) <= 4
