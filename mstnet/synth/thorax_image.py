"""The thorax's CT image: the layers of a :class:`~mstnet.synth.thorax.ThoraxAnatomy` evaluated on a world grid.

Because every part of the anatomy is a function of world coordinates, :func:`render_thorax`
evaluates the same patient on a full 16 x 512 x 512 slab or on a nodule-centred crop, and a
later scan is the same anatomy seen through a slightly shifted and scaled grid
(misregistration, breathing). Grids are separable: world coordinates are three 1-D arrays
(z, y, x). The layers, painted in this order: the chest wall, the heart, aorta and spine (one
axial plane, the same on every slice), the lung parenchyma with its texture, the ribs, the
vessels and the airways.
"""

from __future__ import annotations

import numpy as np

from mstnet.synth.thorax import ThoraxAnatomy, TissueHU, WorldTexture, _superellipse


def render_thorax(anatomy: ThoraxAnatomy, texture_field: WorldTexture, z: np.ndarray, y: np.ndarray, x: np.ndarray,
                  hu: TissueHU = TissueHU(), softness_mm: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the anatomy on the separable world grid (z (D,), y (H,), x (W,) in mm).

    Args:
        anatomy: the patient's anatomy.
        texture_field: the patient's parenchymal texture (unit sd), covering the grid.
        z, y, x: world coordinates of the voxel centres along each axis.
        hu: CT numbers.
        softness_mm: width of the partial-volume ramp at tissue edges.

    Returns:
        (image, lung): float32 (D, H, W) HU without noise, boolean (D, H, W) lung field
        (parenchyma, vessels included).
    """
    shape = (len(z), len(y), len(x))
    z, y, x = (np.asarray(a, dtype=np.float32) for a in (z, y, x))
    yy, xx = y[:, None], x[None, :]
    # everything but ribs, lung texture, vessels and airways is the same on every slice: a 2-D plane
    plane = _chest_wall(anatomy, yy, xx, hu, softness_mm)
    plane, organs = _add_heart_aorta_and_spine(plane, anatomy, yy, xx, hu, softness_mm)
    lung_field = _lung_field(anatomy, yy, xx, organs, softness_mm)
    image = np.broadcast_to(plane, shape).copy()
    _add_parenchyma(image, anatomy, texture_field, lung_field, (z, y, x), hu)
    _add_ribs(image, anatomy, lung_field, (z, y, x), hu, softness_mm)
    lung = np.broadcast_to(lung_field > 0.5, shape).copy()
    image = _add_vessels_and_airways(image, anatomy, lung_field, (z, y, x), hu, softness_mm)
    return image.astype(np.float32), lung


def _ramp(normalised_radius: np.ndarray, scale_mm: float, softness_mm: float) -> np.ndarray:
    """1 well inside, 0 well outside, linear over ``softness_mm`` around radius 1 (scale: the shape's size)."""
    return np.clip((1.0 - normalised_radius) * np.float32(scale_mm / softness_mm) + np.float32(0.5), 0.0, 1.0)


def _blend(base: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
    return base + (value - base) * weight


def _chest_wall(anatomy: ThoraxAnatomy, yy: np.ndarray, xx: np.ndarray, hu: TissueHU, softness_mm: float) -> np.ndarray:
    """The (H, W) plane of air, the body's subcutaneous fat, the chest-wall muscle and the fat within it (HU)."""
    ax, ay = anatomy.body_axes
    plane = np.full((yy.shape[0], xx.shape[1]), hu.air, dtype=np.float32)
    plane = _blend(plane, hu.fat, _ramp(_superellipse(xx, yy, 0, 0, ax, ay), min(ax, ay), softness_mm))
    inner = anatomy.fat_thickness
    plane = _blend(plane, hu.soft_tissue, _ramp(_superellipse(xx, yy, 0, 0, ax - inner, ay - inner), min(ax, ay) - inner, softness_mm))
    wall = inner + anatomy.muscle_thickness
    inner_fat = _ramp(_superellipse(xx, yy, 0, 0, ax - wall, ay - wall), min(ax, ay) - wall, softness_mm) * np.float32(0.8)
    return _blend(plane, hu.fat, inner_fat)


def _add_heart_aorta_and_spine(plane: np.ndarray, anatomy: ThoraxAnatomy, yy: np.ndarray, xx: np.ndarray, hu: TissueHU,
                               softness_mm: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``plane`` with the heart, the aorta and the vertebra (body, marrow, arch, canal); also the (H, W) weights
    of heart, aorta and vertebral body, which the lung fields leave out."""
    heart_x, heart_y, heart_ax, heart_ay = anatomy.heart
    heart = _ramp(_superellipse(xx, yy, heart_x, heart_y, heart_ax, heart_ay), min(heart_ax, heart_ay), softness_mm)
    plane = _blend(plane, hu.soft_tissue, heart)
    aorta_x, aorta_y, aorta_r = anatomy.aorta
    aorta = _ramp(_superellipse(xx, yy, aorta_x, aorta_y, aorta_r, aorta_r), aorta_r, softness_mm)
    plane = _blend(plane, hu.soft_tissue, aorta)
    spine_y, spine_r = anatomy.spine
    vertebra = _ramp(_superellipse(xx, yy, 0.0, spine_y, spine_r, spine_r), spine_r, softness_mm)
    plane = _blend(plane, hu.bone, vertebra)
    marrow = _ramp(_superellipse(xx, yy, 0.0, spine_y, spine_r - 3, spine_r - 3), spine_r - 3, softness_mm)
    plane = _blend(plane, hu.cancellous_bone, marrow)
    canal_y = spine_y + spine_r + 7.0
    plane = _blend(plane, hu.bone, _ramp(_superellipse(xx, yy, 0.0, canal_y, 11.0, 9.0), 9.0, softness_mm))
    plane = _blend(plane, hu.soft_tissue - 20, _ramp(_superellipse(xx, yy, 0.0, canal_y, 6.5, 5.5), 5.5, softness_mm))
    return plane, (heart, aorta, vertebra)


def _lung_field(anatomy: ThoraxAnatomy, yy: np.ndarray, xx: np.ndarray, organs: tuple[np.ndarray, np.ndarray, np.ndarray],
                softness_mm: float) -> np.ndarray:
    """(H, W) weight of the lung fields: the two lungs less the mediastinum and ``organs`` (heart, aorta, vertebra)."""
    heart, aorta, vertebra = organs
    lung_field = np.zeros((yy.shape[0], xx.shape[1]), dtype=np.float32)
    for row in anatomy.lungs:
        lung = _ramp(_superellipse(xx, yy, *row, anatomy.lung_exponent), min(row[2], row[3]), softness_mm)
        lung_field = np.maximum(lung_field, lung)
    ay = anatomy.body_axes[1]
    mediastinum = np.clip((anatomy.mediastinum_half_width - np.abs(xx)) / softness_mm + 0.5, 0.0, 1.0) * (np.abs(yy) < ay * 0.75)
    return lung_field * (1.0 - heart) * (1.0 - mediastinum) * (1.0 - aorta) * (1.0 - vertebra)


def _add_parenchyma(image: np.ndarray, anatomy: ThoraxAnatomy, texture_field: WorldTexture, lung_field: np.ndarray,
                    axes: tuple[np.ndarray, np.ndarray, np.ndarray], hu: TissueHU) -> None:
    """Blend the parenchyma, with its texture and dependent gradient, into ``image`` over the lung fields (in place)."""
    z, y, x = axes
    dependent = hu.lung_dependent_gradient * np.clip((y[:, None] / anatomy.body_axes[1] + 0.7) / 1.4, 0.0, 1.0)
    in_lung = np.flatnonzero(lung_field.any(axis=1))
    if in_lung.size:
        rows = slice(in_lung[0], in_lung[-1] + 1)
        texture = hu.lung_texture_sd * texture_field.sample(z, y[rows], x)
        parenchyma = (hu.lung + dependent[rows]) + texture
        image[:, rows] = _blend(image[:, rows], parenchyma, lung_field[rows])


def _add_ribs(image: np.ndarray, anatomy: ThoraxAnatomy, lung_field: np.ndarray, axes: tuple[np.ndarray, np.ndarray, np.ndarray],
              hu: TissueHU, softness_mm: float) -> None:
    """Ribs into ``image`` (in place): oval cross-sections in the wall, each present over a range of z, drawn in their own box."""
    z, y, x = axes
    ax, ay = anatomy.body_axes
    wall = anatomy.fat_thickness + anatomy.muscle_thickness
    rib_radius_x, rib_radius_y = ax - wall + 4.0, ay - wall + 4.0
    for angle, centre_z, half_length, scale in anatomy.ribs:
        present = np.clip((half_length - np.abs(z - centre_z)) / 2.0, 0.0, 1.0)
        if not present.any():
            continue
        cx, cy = rib_radius_x * np.cos(angle), rib_radius_y * np.sin(angle)
        near_y = np.flatnonzero(np.abs(y - cy) < 6.0 * scale + 2)
        near_x = np.flatnonzero(np.abs(x - cx) < 8.0 * scale + 2)
        if not near_y.size or not near_x.size:
            continue
        box = (slice(None), slice(near_y[0], near_y[-1] + 1), slice(near_x[0], near_x[-1] + 1))
        by, bx = y[box[1]][:, None], x[box[2]][None, :]
        weight = present[:, None, None] * (1.0 - lung_field[box[1:]])[None]  # ribs lie outside the lungs
        rib = _ramp(_superellipse(bx, by, cx, cy, 7.0 * scale, 5.0 * scale), 5.0 * scale, softness_mm)[None] * weight
        marrow = _ramp(_superellipse(bx, by, cx, cy, 4.5 * scale, 2.8 * scale), 3.0 * scale, softness_mm)[None] * weight
        image[box] = _blend(_blend(image[box], hu.bone, rib), hu.cancellous_bone, marrow)


def _add_vessels_and_airways(image: np.ndarray, anatomy: ThoraxAnatomy, lung_field: np.ndarray,
                             axes: tuple[np.ndarray, np.ndarray, np.ndarray], hu: TissueHU, softness_mm: float) -> np.ndarray:
    """``image`` with the vessels (inside the lungs), then the airway walls and lumens."""
    z, y, x = axes
    vessels = np.zeros(image.shape, dtype=np.float32)
    _segment_occupancy(vessels, z, y, x, anatomy.vessels, anatomy.vessel_radii, softness_mm)
    image = _blend(image, hu.soft_tissue, vessels * lung_field)
    walls = np.zeros(image.shape, dtype=np.float32)
    _segment_occupancy(walls, z, y, x, anatomy.airways, anatomy.airway_radii + 1.2, softness_mm)
    image = _blend(image, hu.soft_tissue, walls)
    lumen = np.zeros(image.shape, dtype=np.float32)
    _segment_occupancy(lumen, z, y, x, anatomy.airways, anatomy.airway_radii, softness_mm)
    return _blend(image, hu.air, lumen)


def _segment_occupancy(volume: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, segments: np.ndarray,
                       radii: np.ndarray, softness_mm: float) -> None:
    """Max-accumulate the partial-volume occupancy (0..1) of tubes (segments with radii) into ``volume`` (D, H, W)."""
    axes = (z, y, x)
    if len(segments) == 0:
        return
    # keep the segments whose padded bounding box meets the grid
    reach = (radii + 2 * softness_mm)[:, None]
    low = segments.min(axis=1) - reach
    high = segments.max(axis=1) + reach
    grid_low = np.array([a.min() for a in axes])
    grid_high = np.array([a.max() for a in axes])
    meets = np.all((high >= grid_low) & (low <= grid_high), axis=1)
    for (start, end), radius in zip(segments[meets], radii[meets]):
        reach = radius + 2 * softness_mm
        index_ranges = []
        for axis, (a, b) in enumerate(zip(start, end)):
            low, high = min(a, b) - reach, max(a, b) + reach
            coordinates = axes[axis]
            ascending = coordinates[-1] >= coordinates[0]
            sorted_coordinates = coordinates if ascending else coordinates[::-1]
            i0, i1 = np.searchsorted(sorted_coordinates, [low, high])
            if not ascending:
                i0, i1 = len(coordinates) - i1, len(coordinates) - i0
            index_ranges.append((i0, i1))
        if any(i1 <= i0 for i0, i1 in index_ranges):
            continue
        (z0, z1), (y0, y1), (x0, x1) = index_ranges
        pz, py, px = z[z0:z1, None, None], y[None, y0:y1, None], x[None, None, x0:x1]
        direction = end - start
        length2 = float(direction @ direction) or 1e-9
        t = ((pz - start[0]) * direction[0] + (py - start[1]) * direction[1] + (px - start[2]) * direction[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        distance = np.sqrt((pz - start[0] - t * direction[0]) ** 2 + (py - start[1] - t * direction[1]) ** 2 + (px - start[2] - t * direction[2]) ** 2)
        occupancy = np.clip((radius - distance) / softness_mm + 0.5, 0.0, 1.0)
        block = volume[z0:z1, y0:y1, x0:x1]
        np.maximum(block, occupancy, out=block)
