"""Procedural thorax: an analytic axial slab of chest anatomy in world millimetres, rendered on any grid.

The anatomy of one patient (:class:`ThoraxAnatomy`) is a set of shapes in a world frame whose
origin is the body centre (x to the patient's left, y posterior, z along the slab): the body
outline and subcutaneous fat, a muscle layer, rib cross-sections, the spine and aorta, the
mediastinum and heart, two lung fields with parenchymal texture (a smooth random field fixed in
the world frame, so it is the same at every time point) and a dependent density gradient, a branching vessel
tree in each lung and airways along its first generations.

:func:`make_anatomy` draws it part by part from the patient's random stream;
:func:`mstnet.synth.thorax_image.render_thorax` evaluates it on any world grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

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
        tree_depth: generations of the vessel tree per lung (default 6).
        trunks_per_lung: vessel trunks leaving each hilum (default 5), at z within the slab.
        through_plane_vessels: short vessels crossing the slab per lung, seen as dots (default 80).
    """
    body, fat, muscle = _draw_body(rng, body_scale)
    lungs, exponent = _draw_lungs(rng, body)
    ribs = _draw_ribs(rng)
    inside_lung = partial(_inside_lungs, lungs, exponent)
    tubes = _Tubes()
    for row in lungs:
        _draw_vessel_trees(rng, row, inside_lung, tree_depth, trunks_per_lung, tubes)
        _draw_through_plane_vessels(rng, row, inside_lung, through_plane_vessels, tubes)
    return ThoraxAnatomy(
        body_axes=body,
        fat_thickness=fat,
        muscle_thickness=muscle,
        lungs=lungs,
        lung_exponent=exponent,
        heart=(0.12 * body[0], -0.25 * body[1], 0.30 * body[0], 0.42 * body[1]),
        mediastinum_half_width=0.11 * body[0],
        spine=(0.70 * body[1], 0.13 * body[1]),
        aorta=(0.13 * body[0], 0.45 * body[1], 0.09 * body[1]),
        ribs=ribs,
        vessels=np.array(tubes.vessels, dtype=float).reshape(-1, 2, 3),
        vessel_radii=np.array(tubes.vessel_radii, dtype=float),
        airways=np.array(tubes.airways, dtype=float).reshape(-1, 2, 3),
        airway_radii=np.array(tubes.airway_radii, dtype=float),
    )


def _draw_body(rng: np.random.Generator, body_scale: float) -> tuple[tuple[float, float], float, float]:
    """The body ellipse's (half width, half depth), then the subcutaneous fat and the chest-wall muscle (mm)."""
    s = body_scale * rng.uniform(0.9, 1.1)
    body = (165.0 * s, 118.0 * s * rng.uniform(0.92, 1.08))
    fat = rng.uniform(8.0, 25.0)
    muscle = rng.uniform(8.0, 14.0)
    return body, fat, muscle


def _draw_lungs(rng: np.random.Generator, body: tuple[float, float]) -> tuple[np.ndarray, float]:
    """The two lung superellipses, rows (centre x, centre y, half width, half depth), and their exponent."""
    lung_half_width = 0.36 * body[0]
    lung_half_depth = 0.72 * body[1]
    lungs = np.array([
        [side * (0.47 * body[0] + rng.normal(0, 2)), 0.06 * body[1] + rng.normal(0, 2),
         lung_half_width * rng.uniform(0.93, 1.05), lung_half_depth * rng.uniform(0.93, 1.05)]
        for side in (-1.0, 1.0)
    ])
    exponent = rng.uniform(2.2, 2.8)
    return lungs, exponent


def _draw_ribs(rng: np.random.Generator) -> np.ndarray:
    """Rib cross-sections around the wall, rows (angle rad, centre z, half length in z, radius scale)."""
    n_ribs = 16
    angles = np.linspace(0, 2 * np.pi, n_ribs, endpoint=False) + rng.uniform(0, 2 * np.pi / n_ribs)
    ribs = np.c_[angles, rng.uniform(-20, 20, n_ribs), rng.uniform(5, 12, n_ribs), rng.uniform(0.8, 1.2, n_ribs)]
    # keep ribs off the anterior midline (sternum cartilage) and the spine
    return ribs[np.abs(np.cos(angles)) >= 0.2]


def _inside_lungs(lungs: np.ndarray, exponent: float, points: np.ndarray) -> np.ndarray:
    """(N, 3) world points (z, y, x) -> (N,) inside a lung (and within 60 mm of the slab centre)."""
    points = np.atleast_2d(points)
    z, y, x = points[:, 0], points[:, 1], points[:, 2]
    radius = np.minimum(_superellipse(x, y, *lungs[0], exponent), _superellipse(x, y, *lungs[1], exponent))
    return (radius < 0.97) & (np.abs(z) < 60)


@dataclass
class _Tubes:
    """Vessel and airway segments (start, end) and their radii, gathered lung by lung."""

    vessels: list = field(default_factory=list)
    vessel_radii: list = field(default_factory=list)
    airways: list = field(default_factory=list)
    airway_radii: list = field(default_factory=list)


def _draw_vessel_trees(rng: np.random.Generator, row: np.ndarray, inside_lung: Callable[[np.ndarray], np.ndarray],
                       tree_depth: int, trunks_per_lung: int, tubes: _Tubes) -> None:
    """The vessel trees leaving the hilum of the lung ``row``, an airway along the first generations of every other one."""
    side = np.sign(row[0])
    for trunk in range(trunks_per_lung):
        hilum = np.array([rng.uniform(-12, 12), row[1] - 0.1 * row[3] + rng.normal(0, 6), row[0] - side * 0.6 * row[2]])
        angle = -1.3 + 2.6 * (trunk + rng.uniform(0.2, 0.8)) / trunks_per_lung
        direction = np.array([rng.normal(0, 0.05), np.sin(angle), side * np.cos(angle)])
        direction /= np.linalg.norm(direction)
        tree, tree_radii = _grow_tree(rng, hilum, direction, 0.38 * row[2], rng.uniform(3.0, 4.5), tree_depth, inside_lung)
        tubes.vessels.extend(tree)
        tubes.vessel_radii.extend(tree_radii)
        # an airway accompanies the first generations of every other trunk (bronchovascular bundle)
        if trunk % 2 == 0 and len(tree):
            for start, end in tree[:3]:
                offset = np.array([0.0, rng.uniform(3, 5), rng.uniform(-3, 3)])
                tubes.airways.append((start + offset, end + offset))
                tubes.airway_radii.append(tree_radii[0] * 0.55)


def _draw_through_plane_vessels(rng: np.random.Generator, row: np.ndarray, inside_lung: Callable[[np.ndarray], np.ndarray],
                                count: int, tubes: _Tubes) -> None:
    """Small vessels crossing the slab in the lung ``row``: short through-plane segments seen as dots."""
    candidates = np.c_[rng.uniform(-20, 20, 4 * count), row[1] + rng.uniform(-1, 1, 4 * count) * row[3],
                       row[0] + rng.uniform(-1, 1, 4 * count) * row[2]]
    centres = candidates[inside_lung(candidates)][:count]
    tilts = np.c_[np.ones(len(centres)), rng.normal(0, 0.4, (len(centres), 2))]
    tilts /= np.linalg.norm(tilts, axis=1, keepdims=True)
    halves = rng.uniform(6, 15, len(centres))[:, None]
    tubes.vessels.extend(zip(centres - tilts * halves, centres + tilts * halves))
    tubes.vessel_radii.extend(rng.uniform(0.5, 1.5, len(centres)))


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
