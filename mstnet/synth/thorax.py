"""Procedural thorax: an analytic axial slab of chest anatomy in world millimetres, rendered on any grid.

The anatomy of one patient (:class:`ThoraxAnatomy`) is a set of shapes in a world frame whose
origin is the body centre (x to the patient's left, y posterior, z along the slab): the body
outline and subcutaneous fat, a muscle layer, rib cross-sections, the spine and aorta, the
mediastinum and heart, two lung fields with parenchymal texture (a smooth random field fixed in
the world frame, so it is the same at every time point) and a dependent density gradient, a branching vessel
tree in each lung and airways along its first generations.

Because every part is a function of world coordinates, :func:`render_thorax` evaluates the
same patient on a full 16 x 512 x 512 slab or on a nodule-centred crop, and a later scan is
the same anatomy seen through a slightly shifted and scaled grid (misregistration, breathing).
Grids are separable: world coordinates are three 1-D arrays (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TissueHU:
    """CT numbers (HU) of the tissues.

    Attributes:
        air: outside the body and airway lumen (default -1000).
        lung: aerated lung parenchyma (default -850).
        lung_texture_sd: amplitude of the parenchymal texture (default 25).
        lung_dependent_gradient: extra HU at the posterior (dependent) lung edge (default 50).
        fat: subcutaneous and mediastinal fat (default -100).
        soft_tissue: muscle, heart, vessels (non-contrast blood), airway walls (default 40).
        bone: rib and vertebral cortex (default 700).
        cancellous_bone: vertebral body interior (default 250).
    """

    air: float = -1000.0
    lung: float = -850.0
    lung_texture_sd: float = 25.0
    lung_dependent_gradient: float = 50.0
    fat: float = -100.0
    soft_tissue: float = 40.0
    bone: float = 700.0
    cancellous_bone: float = 250.0


@dataclass(frozen=True, eq=False)
class ThoraxAnatomy:
    """One patient's chest in world mm (origin at the body centre).

    Attributes:
        body_axes: (half width, half depth) of the body ellipse.
        fat_thickness: subcutaneous fat (mm).
        muscle_thickness: chest-wall muscle (mm).
        lungs: (2, 4) rows (centre x, centre y, half width, half depth) of the two lung ellipses.
        lung_exponent: superellipse exponent of the lungs (2 = ellipse, larger = boxier).
        heart: (centre x, centre y, half width, half depth).
        mediastinum_half_width: half width of the central soft-tissue band (mm).
        spine: (centre y, radius) of the vertebral body.
        aorta: (centre x, centre y, radius).
        ribs: (R, 4) rows (angle rad, centre z, half length in z, radius scale).
        vessels: (V, 2, 3) segment end points (z, y, x) mm.
        vessel_radii: (V,) radii mm.
        airways: (A, 2, 3) segment end points.
        airway_radii: (A,) lumen radii mm.
    """

    body_axes: tuple[float, float]
    fat_thickness: float
    muscle_thickness: float
    lungs: np.ndarray
    lung_exponent: float
    heart: tuple[float, float, float, float]
    mediastinum_half_width: float
    spine: tuple[float, float]
    aorta: tuple[float, float, float]
    ribs: np.ndarray
    vessels: np.ndarray
    vessel_radii: np.ndarray
    airways: np.ndarray
    airway_radii: np.ndarray


def _superellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, exponent: float = 2.0) -> np.ndarray:
    """Normalised radius: < 1 inside the (super)ellipse."""
    return (np.abs((x - cx) / ax) ** exponent + np.abs((y - cy) / ay) ** exponent) ** (1.0 / exponent)


def _grow_tree(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float, radius: float,
               depth: int, inside) -> tuple[np.ndarray, np.ndarray]:
    """A bifurcating tree grown one generation at a time (vectorised over the branches of a generation).

    A branch stops where it would leave the lung (``inside``: (N, 3) points -> (N,) bool) and
    then has no children. Returns segments (N, 2, 3) in breadth-first order and radii (N,).
    """
    fractions = np.linspace(0.0, 1.0, 6)[1:]
    starts, directions = start[None].astype(float), direction[None].astype(float)
    lengths, radii_now = np.array([length]), np.array([radius])
    segments, radii = [], []
    for _ in range(depth):
        if len(starts) == 0:
            break
        points = starts[:, None] + directions[:, None] * (lengths[:, None, None] * fractions[None, :, None])
        inside_points = inside(points.reshape(-1, 3)).reshape(len(starts), len(fractions))
        reached = np.where(inside_points.all(axis=1), len(fractions), np.argmin(inside_points, axis=1))
        grown = reached > 0
        ends = points[np.arange(len(starts)), np.maximum(reached - 1, 0)]
        segments.append(np.stack([starts[grown], ends[grown]], axis=1))
        radii.append(radii_now[grown])
        full = (reached == len(fractions)) & (radii_now >= 0.5)
        parents, parent_directions = ends[full], directions[full]
        count = len(parents)
        if count == 0:
            break
        children = []
        for sign in (-1.0, 1.0):
            angle = sign * rng.uniform(0.35, 0.75, count)
            cos, sin = np.cos(angle), np.sin(angle)
            # rotate in the axial plane, tilt a little out of it
            child = np.stack([parent_directions[:, 0] + rng.normal(0, 0.08, count),
                              cos * parent_directions[:, 1] - sin * parent_directions[:, 2],
                              sin * parent_directions[:, 1] + cos * parent_directions[:, 2]], axis=1)
            children.append(child / np.linalg.norm(child, axis=1, keepdims=True))
        starts = np.concatenate([parents, parents])
        directions = np.concatenate(children)
        lengths = np.concatenate([lengths[full], lengths[full]]) * rng.uniform(0.7, 0.85, 2 * count)
        radii_now = np.concatenate([radii_now[full], radii_now[full]]) * rng.uniform(0.68, 0.8, 2 * count)
    if not segments:
        return np.zeros((0, 2, 3)), np.zeros(0)
    return np.concatenate(segments), np.concatenate(radii)


def make_anatomy(rng: np.random.Generator, body_scale: float = 1.0, tree_depth: int = 6, trunks_per_lung: int = 5,
                 through_plane_vessels: int = 80) -> ThoraxAnatomy:
    """Draw one patient's anatomy.

    Args:
        rng: random generator (the patient's own stream).
        body_scale: multiplies every in-plane size (default 1.0: a 330 x 240 mm chest).
        tree_depth: generations of the vessel tree per lung (default 7).
        trunks_per_lung: vessel trunks leaving each hilum (default 5), at z within the slab.
        through_plane_vessels: short vessels crossing the slab per lung, seen as dots (default 80).
    """
    s = body_scale * rng.uniform(0.9, 1.1)
    body = (165.0 * s, 118.0 * s * rng.uniform(0.92, 1.08))
    fat = rng.uniform(8.0, 25.0)
    muscle = rng.uniform(8.0, 14.0)
    lung_half_width = 0.36 * body[0]
    lung_half_depth = 0.72 * body[1]
    lungs = np.array([
        [side * (0.47 * body[0] + rng.normal(0, 2)), 0.06 * body[1] + rng.normal(0, 2),
         lung_half_width * rng.uniform(0.93, 1.05), lung_half_depth * rng.uniform(0.93, 1.05)]
        for side in (-1.0, 1.0)
    ])
    exponent = rng.uniform(2.2, 2.8)
    heart = (0.12 * body[0], -0.25 * body[1], 0.30 * body[0], 0.42 * body[1])
    spine = (0.70 * body[1], 0.13 * body[1])
    aorta = (0.13 * body[0], 0.45 * body[1], 0.09 * body[1])
    n_ribs = 16
    angles = np.linspace(0, 2 * np.pi, n_ribs, endpoint=False) + rng.uniform(0, 2 * np.pi / n_ribs)
    ribs = np.c_[angles, rng.uniform(-20, 20, n_ribs), rng.uniform(5, 12, n_ribs), rng.uniform(0.8, 1.2, n_ribs)]
    # keep ribs off the anterior midline (sternum cartilage) and the spine
    ribs = ribs[np.abs(np.cos(angles)) >= 0.2]

    def inside_lung(points: np.ndarray) -> np.ndarray:
        """(N, 3) world points (z, y, x) -> (N,) inside a lung (and within 60 mm of the slab centre)."""
        points = np.atleast_2d(points)
        z, y, x = points[:, 0], points[:, 1], points[:, 2]
        radius = np.minimum(_superellipse(x, y, *lungs[0], exponent), _superellipse(x, y, *lungs[1], exponent))
        return (radius < 0.97) & (np.abs(z) < 60)

    segments: list = []
    radii: list = []
    airway_segments: list = []
    airway_radii: list = []
    for row in lungs:
        side = np.sign(row[0])
        for trunk in range(trunks_per_lung):
            hilum = np.array([rng.uniform(-12, 12), row[1] - 0.1 * row[3] + rng.normal(0, 6), row[0] - side * 0.6 * row[2]])
            angle = -1.3 + 2.6 * (trunk + rng.uniform(0.2, 0.8)) / trunks_per_lung
            direction = np.array([rng.normal(0, 0.05), np.sin(angle), side * np.cos(angle)])
            direction /= np.linalg.norm(direction)
            tree, tree_radii = _grow_tree(rng, hilum, direction, 0.38 * row[2], rng.uniform(3.0, 4.5), tree_depth, inside_lung)
            segments.extend(tree)
            radii.extend(tree_radii)
            # an airway accompanies the first generations of every other trunk (bronchovascular bundle)
            if trunk % 2 == 0 and len(tree):
                for start, end in tree[:3]:
                    offset = np.array([0.0, rng.uniform(3, 5), rng.uniform(-3, 3)])
                    airway_segments.append((start + offset, end + offset))
                    airway_radii.append(tree_radii[0] * 0.55)
        # small vessels crossing the slab: short through-plane segments seen as dots
        candidates = np.c_[rng.uniform(-20, 20, 4 * through_plane_vessels), row[1] + rng.uniform(-1, 1, 4 * through_plane_vessels) * row[3],
                           row[0] + rng.uniform(-1, 1, 4 * through_plane_vessels) * row[2]]
        centres = candidates[inside_lung(candidates)][:through_plane_vessels]
        tilts = np.c_[np.ones(len(centres)), rng.normal(0, 0.4, (len(centres), 2))]
        tilts /= np.linalg.norm(tilts, axis=1, keepdims=True)
        halves = rng.uniform(6, 15, len(centres))[:, None]
        segments.extend(zip(centres - tilts * halves, centres + tilts * halves))
        radii.extend(rng.uniform(0.5, 1.5, len(centres)))
    return ThoraxAnatomy(
        body_axes=body,
        fat_thickness=fat,
        muscle_thickness=muscle,
        lungs=lungs,
        lung_exponent=exponent,
        heart=heart,
        mediastinum_half_width=0.11 * body[0],
        spine=spine,
        aorta=aorta,
        ribs=ribs,
        vessels=np.array(segments, dtype=float).reshape(-1, 2, 3),
        vessel_radii=np.array(radii, dtype=float),
        airways=np.array(airway_segments, dtype=float).reshape(-1, 2, 3),
        airway_radii=np.array(airway_radii, dtype=float),
    )


@dataclass(frozen=True, eq=False)
class WorldTexture:
    """Smooth unit-variance random field on a world lattice (mm), sampled trilinearly anywhere inside it.

    The parenchymal texture is anatomy: it must look the same at every time point, so it is
    drawn once per patient on a lattice fixed in the world frame and sampled through each
    scan's (shifted, scaled) grid.
    """

    origin: np.ndarray
    spacing_mm: float
    values: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, spacing_mm: float = 1.0,
             correlation_mm: float = 1.6) -> "WorldTexture":
        """Gaussian-filtered white noise over the world box [low, high] (z, y, x mm), normalised to unit sd."""
        low, high = np.asarray(low, float) - 4 * correlation_mm, np.asarray(high, float) + 4 * correlation_mm
        shape = np.maximum(np.ceil((high - low) / spacing_mm).astype(int) + 1, 2)
        values = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), correlation_mm / spacing_mm, mode="wrap")
        values /= values.std() or 1.0
        return cls(low, spacing_mm, values)

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(D, H, W) values at the separable world grid (z (D,), y (H,), x (W,)); 0 outside the lattice."""
        indices = [(axis - origin) / self.spacing_mm for axis, origin in zip((z, y, x), self.origin)]
        grid = np.meshgrid(*indices, indexing="ij", sparse=False)
        return ndimage.map_coordinates(self.values, grid, order=1, mode="constant", cval=0.0)


def lung_mask_2d(anatomy: ThoraxAnatomy, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Boolean (H, W) lung mask of the axial plane z = 0 on world coordinates ``y`` (H,), ``x`` (W,)."""
    yy, xx = y[:, None], x[None, :]
    lung = np.zeros((len(y), len(x)), dtype=bool)
    for row in anatomy.lungs:
        lung |= _superellipse(xx, yy, *row, anatomy.lung_exponent) < 1.0
    heart_x, heart_y, heart_ax, heart_ay = anatomy.heart
    lung &= _superellipse(xx, yy, heart_x, heart_y, heart_ax, heart_ay) >= 1.0
    lung &= np.abs(xx) >= anatomy.mediastinum_half_width
    return lung


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


def render_thorax(anatomy: ThoraxAnatomy, texture_field: "WorldTexture", z: np.ndarray, y: np.ndarray, x: np.ndarray,
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

    def ramp(normalised_radius: np.ndarray, scale_mm: float) -> np.ndarray:
        """1 well inside, 0 well outside, linear over ``softness_mm`` around radius 1 (scale: the shape's size)."""
        return np.clip((1.0 - normalised_radius) * np.float32(scale_mm / softness_mm) + np.float32(0.5), 0.0, 1.0)

    def blend(base: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
        return base + (value - base) * weight

    # everything but ribs, lung texture, vessels and airways is the same on every slice: a 2-D plane
    ax, ay = anatomy.body_axes
    plane = np.full((len(y), len(x)), hu.air, dtype=np.float32)
    plane = blend(plane, hu.fat, ramp(_superellipse(xx, yy, 0, 0, ax, ay), min(ax, ay)))
    inner = anatomy.fat_thickness
    plane = blend(plane, hu.soft_tissue, ramp(_superellipse(xx, yy, 0, 0, ax - inner, ay - inner), min(ax, ay) - inner))
    wall = inner + anatomy.muscle_thickness
    plane = blend(plane, hu.fat, ramp(_superellipse(xx, yy, 0, 0, ax - wall, ay - wall), min(ax, ay) - wall) * np.float32(0.8))
    heart_x, heart_y, heart_ax, heart_ay = anatomy.heart
    heart = ramp(_superellipse(xx, yy, heart_x, heart_y, heart_ax, heart_ay), min(heart_ax, heart_ay))
    plane = blend(plane, hu.soft_tissue, heart)
    aorta_x, aorta_y, aorta_r = anatomy.aorta
    aorta = ramp(_superellipse(xx, yy, aorta_x, aorta_y, aorta_r, aorta_r), aorta_r)
    plane = blend(plane, hu.soft_tissue, aorta)
    spine_y, spine_r = anatomy.spine
    vertebra = ramp(_superellipse(xx, yy, 0.0, spine_y, spine_r, spine_r), spine_r)
    plane = blend(plane, hu.bone, vertebra)
    plane = blend(plane, hu.cancellous_bone, ramp(_superellipse(xx, yy, 0.0, spine_y, spine_r - 3, spine_r - 3), spine_r - 3))
    canal_y = spine_y + spine_r + 7.0
    plane = blend(plane, hu.bone, ramp(_superellipse(xx, yy, 0.0, canal_y, 11.0, 9.0), 9.0))
    plane = blend(plane, hu.soft_tissue - 20, ramp(_superellipse(xx, yy, 0.0, canal_y, 6.5, 5.5), 5.5))
    # lung fields (2-D), then the parenchyma with its texture and dependent gradient (3-D)
    lung_field = np.zeros((len(y), len(x)), dtype=np.float32)
    for row in anatomy.lungs:
        lung_field = np.maximum(lung_field, ramp(_superellipse(xx, yy, *row, anatomy.lung_exponent), min(row[2], row[3])))
    mediastinum = np.clip((anatomy.mediastinum_half_width - np.abs(xx)) / softness_mm + 0.5, 0.0, 1.0) * (np.abs(yy) < ay * 0.75)
    lung_field = lung_field * (1.0 - heart) * (1.0 - mediastinum) * (1.0 - aorta) * (1.0 - vertebra)
    dependent = hu.lung_dependent_gradient * np.clip((yy / ay + 0.7) / 1.4, 0.0, 1.0)
    image = np.broadcast_to(plane, shape).copy()
    in_lung = np.flatnonzero(lung_field.any(axis=1))
    if in_lung.size:
        rows = slice(in_lung[0], in_lung[-1] + 1)
        texture = hu.lung_texture_sd * texture_field.sample(z, y[rows], x)
        parenchyma = (hu.lung + dependent[rows]) + texture
        image[:, rows] = blend(image[:, rows], parenchyma, lung_field[rows])
    # ribs: oval cross-sections in the wall, each present over a range of z, drawn in their own box
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
        rib = ramp(_superellipse(bx, by, cx, cy, 7.0 * scale, 5.0 * scale), 5.0 * scale)[None] * weight
        marrow = ramp(_superellipse(bx, by, cx, cy, 4.5 * scale, 2.8 * scale), 3.0 * scale)[None] * weight
        image[box] = blend(blend(image[box], hu.bone, rib), hu.cancellous_bone, marrow)
    # vessels (inside the lungs) and airways
    lung = np.broadcast_to(lung_field > 0.5, shape).copy()
    vessels = np.zeros(shape, dtype=np.float32)
    _segment_occupancy(vessels, z, y, x, anatomy.vessels, anatomy.vessel_radii, softness_mm)
    image = blend(image, hu.soft_tissue, vessels * lung_field)
    walls = np.zeros(shape, dtype=np.float32)
    _segment_occupancy(walls, z, y, x, anatomy.airways, anatomy.airway_radii + 1.2, softness_mm)
    image = blend(image, hu.soft_tissue, walls)
    lumen = np.zeros(shape, dtype=np.float32)
    _segment_occupancy(lumen, z, y, x, anatomy.airways, anatomy.airway_radii, softness_mm)
    image = blend(image, hu.air, lumen)
    return image.astype(np.float32), lung
