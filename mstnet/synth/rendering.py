"""Step 5 of the synthetic cohort (``docs/cohort.md``): one patient's images and masks.

One patient per task with its own child seed (``SeedSequence(seed).spawn``), so the result
does not depend on the number of worker processes (:func:`render_patient`): a procedural
thorax (:mod:`mstnet.synth.thorax`), the nodule shape resampled from the bank and scaled to
V(t) (its voxel count is matched to V(t) exactly, up to one voxel, by choosing the threshold
of the smoothed, slightly noisy shape field; so the written mask volume equals the drawn
volume), inserted with texture-dependent HU and partial-volume blur, a small misregistration
between rounds (shift, in-plane breathing scale, small rotation of the nodule), system blur
and spatially correlated noise.

The T0 nodule is the bank shape at its own LIDC consensus volume; later time points scale it
by the growth (the volumes of :func:`mstnet.synth.truth_table.draw_cohort_table`).

What a study may vary is a field of :class:`~mstnet.synth.config.SynthConfig`; the constants
below are fixed parts of the renderer (changing one changes the files of every cohort, so
:data:`~mstnet.synth.config.GENERATOR_VERSION` must be bumped with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mstnet.synth.config import SynthConfig
from mstnet.synth.thorax import ThoraxAnatomy, WorldTexture, lung_mask_2d, make_anatomy
from mstnet.synth.thorax_image import render_thorax

BANK_FIELD_SIGMA_VOXELS = 0.7
"""Gaussian sd (bank voxels) that smooths the binary LIDC shape into the field that is resampled and thresholded."""

MIN_BANK_VOLUME_MM3 = 1e-6
"""Floor on the bank shape's volume where it divides a drawn volume (an empty shape would divide by zero)."""

PLACEMENT_RADIUS_FRACTION = 0.8
"""The nodule's radius for placing it: this share of half the bank box's largest in-plane side at the
largest scale of any round (the box is wider than the nodule it holds)."""

PLACEMENT_GRID_MM = 1.0
"""Step of the in-plane map of the lungs on which the nodule's centre is chosen."""

PLEURA_CLEARANCE_MM = 3.0
"""An intrapulmonary nodule's centre lies at least its radius plus this from the pleura."""

JUXTAPLEURAL_DISTANCE_FRACTIONS = (0.3, 0.9)
"""A juxtapleural nodule's centre lies between these shares of its radius from the pleura (the far
bound plus :data:`JUXTAPLEURAL_MARGIN_MM`), so the nodule touches the pleura."""

JUXTAPLEURAL_MARGIN_MM = 1.0
"""Added to the far bound of :data:`JUXTAPLEURAL_DISTANCE_FRACTIONS`, so a small nodule has room to be placed."""

NODULE_Z_RANGE_MM = 4.0
"""The nodule centre's world z is uniform in +- this (the slab follows the nodule in z)."""

MASK_REACH_MARGIN_VOXELS = 2.0
"""Margin around the rotated, scaled bank box within which the nodule's field is resampled."""

MORPHOLOGY_NOISE_SIGMA_VOXELS = 1.2
"""Gaussian sd of the smooth noise added to the nodule's shape field (``morphology_noise`` its size)."""

MORPHOLOGY_NOISE_MIN_FIELD = 0.02
"""The shape noise is added only where the field exceeds this (on and near the nodule, not in empty space)."""

PLEURA_ROOM_FIELD = 1e-3
"""Height of the faint, wide field inside the lung that gives a nodule cut by the pleura room to keep its volume."""

PLEURA_ROOM_DECAY_BANK_VOXELS = 10.0
"""Decay length of that field, in bank voxels at the nodule's scale."""

NODULE_BOX_PAD_VOXELS = 4
"""Padding of the mask's bounding box within which the nodule's tissue is blended into the image."""

NODULE_TEXTURE_SIGMA_VOXELS = 1.0
"""Gaussian sd of the nodule's internal texture (``nodule_texture_sd_hu`` its size)."""

HU_RANGE = (-1024.0, 3071.0)
"""CT numbers an image is clipped to: air to the 12-bit ceiling, as scanners store them."""

_MARK_STREAM = 0x6D61726B
"""Spawn-key entry of the reader's-mark stream, apart from the image draws (images and masks do not change with it)."""


@dataclass(frozen=True)
class _Scene:
    """What every round of one patient shares: the anatomy, the nodule's shape and place, the grid and each round's draws."""

    config: SynthConfig
    patient_id: str
    texture_class: str
    anatomy: ThoraxAnatomy
    texture: WorldTexture
    ground_glass_hu: float
    field_bank: np.ndarray
    bank_volume: float
    nodule_world: np.ndarray
    scan_axes: list[np.ndarray]
    transforms: list[tuple[np.ndarray, np.ndarray, float]]
    world_axes: list[list[np.ndarray]]
    volumes: list[float]

    @property
    def spacing(self) -> np.ndarray:
        return np.asarray(self.config.spacing_mm, dtype=float)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.config.shape)


def render_patient(config: SynthConfig, record: dict[str, Any], bank_mask: np.ndarray, seed: np.random.SeedSequence,
                   folder: Path) -> dict[str, Any]:
    """Step 5 for one patient: write its images and masks (NIfTI) and return what the manifest needs.

    Args:
        config: the cohort's parameters.
        record: the patient's row of :func:`~mstnet.synth.truth_table.draw_cohort_table`.
        bank_mask: its boolean LIDC consensus shape at ``config.bank_spacing_mm``.
        seed: the patient's own seed sequence.
        folder: cohort folder (``images/`` and ``masks/`` inside).

    Returns:
        ``{"patient_id", "placement", "timepoints": [{timepoint, days, image, mask, x, y, z1, z2,
        centroid, mask_z, mask_volume_mm3, noise_sd_hu, shift_mm, breathing_scale}]}`` with paths
        relative to ``folder``: x, y, z1..z2 the reader's mark (:func:`reader_mark`), centroid
        (z, y, x) and mask_z (first, last slice) the mask's true position.
    """
    rng = np.random.default_rng(seed)
    anatomy = make_anatomy(rng, config.body_scale)
    field_bank = ndimage.gaussian_filter(bank_mask.astype(np.float32), sigma=BANK_FIELD_SIGMA_VOXELS)
    bank_volume = float(bank_mask.sum()) * config.bank_spacing_mm**3
    volumes = [float(record[f"volume_{tp}_mm3"]) for tp in config.timepoint_names]
    largest_scale = (max(volumes) / max(bank_volume, MIN_BANK_VOLUME_MM3)) ** (1.0 / 3.0)
    radius = 0.5 * max(bank_mask.shape[1:]) * config.bank_spacing_mm * largest_scale * PLACEMENT_RADIUS_FRACTION
    juxtapleural = bool(rng.random() < config.juxtapleural_fraction)
    nodule_world, pleura_distance = _place_nodule(rng, anatomy, radius, juxtapleural)
    scan_axes = _scan_axes(rng, nodule_world, config)
    transforms = _round_transforms(rng, config)
    world_axes = [[(axis - shift[i]) / scale[i] for i, axis in enumerate(scan_axes)] for shift, scale, _ in transforms]
    low = np.min([[a.min() for a in axes] for axes in world_axes], axis=0)
    high = np.max([[a.max() for a in axes] for axes in world_axes], axis=0)
    texture = WorldTexture.draw(rng, low, high)
    ground_glass_hu = rng.uniform(*config.ground_glass_hu_range)
    scene = _Scene(config, str(record["patient_id"]), str(record["texture"]), anatomy, texture, ground_glass_hu, field_bank,
                   bank_volume, nodule_world, scan_axes, transforms, world_axes, volumes)
    timepoints = [{"timepoint": tp, "days": float(record[f"days_{tp}"]), **_render_round(scene, k, rng, seed, folder)}
                  for k, tp in enumerate(config.timepoint_names)]
    return {
        "patient_id": scene.patient_id,
        "placement": {"juxtapleural": juxtapleural, "pleura_distance_mm": pleura_distance,
                      "volume0_mm3": float(record["volume_T0_mm3"])},
        "timepoints": timepoints,
    }


def _axis(centre: float, size: int, spacing: float) -> np.ndarray:
    return centre + (np.arange(size) - (size - 1) / 2.0) * spacing


def _place_nodule(rng: np.random.Generator, anatomy: ThoraxAnatomy, radius_mm: float, juxtapleural: bool) -> tuple[np.ndarray, float]:
    """A world centre (z, y, x) inside a lung: clear of the pleura by ``radius_mm`` or, if ``juxtapleural``, touching it."""
    ax, ay = anatomy.body_axes
    y = np.arange(-ay, ay, PLACEMENT_GRID_MM)
    x = np.arange(-ax, ax, PLACEMENT_GRID_MM)
    lung = lung_mask_2d(anatomy, y, x)
    distance = ndimage.distance_transform_edt(lung)
    if juxtapleural:
        near, far = JUXTAPLEURAL_DISTANCE_FRACTIONS
        candidates = np.argwhere((distance >= near * radius_mm) & (distance <= far * radius_mm + JUXTAPLEURAL_MARGIN_MM))
    else:
        candidates = np.argwhere(distance >= radius_mm + PLEURA_CLEARANCE_MM)
    if len(candidates) == 0:
        candidates = np.argwhere(distance == distance.max())
    row, column = candidates[rng.integers(len(candidates))]
    return np.array([rng.uniform(-NODULE_Z_RANGE_MM, NODULE_Z_RANGE_MM), y[row], x[column]]), float(distance[row, column])


def _scan_axes(rng: np.random.Generator, nodule_world: np.ndarray, config: SynthConfig) -> list[np.ndarray]:
    """World coordinates (mm) of the grid's z, y and x: around the nodule (``crop="nodule"``) or, in plane, the body
    (``crop="thorax"``), moved by a drawn jitter of up to ``centre_jitter_voxels``."""
    spacing = np.asarray(config.spacing_mm, dtype=float)
    jitter = np.array([rng.integers(-j, j + 1) if j > 0 else 0 for j in config.centre_jitter_voxels], dtype=float) * spacing
    if config.crop == "nodule":
        grid_centre = nodule_world + jitter
    else:
        grid_centre = np.array([nodule_world[0] + jitter[0], 0.0, 0.0])
    return [_axis(c, n, s) for c, n, s in zip(grid_centre, (int(s) for s in config.shape), spacing)]


def _round_transforms(rng: np.random.Generator, config: SynthConfig) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(shift mm (z, y, x), scale (z, y, x), in-plane rotation of the nodule in radians) of each round; none at T0."""
    transforms = []
    for k in range(config.n_timepoints):
        if k == 0:
            transforms.append((np.zeros(3), np.ones(3), 0.0))
        else:
            breathing = 1.0 + rng.normal(0.0, config.breathing_scale_sd)
            transforms.append((rng.normal(0.0, config.misregistration_sd_mm), np.array([1.0, breathing, breathing]),
                               np.deg2rad(rng.normal(0.0, config.rotation_sd_degrees))))
    return transforms


def _render_round(scene: _Scene, k: int, rng: np.random.Generator, seed: np.random.SeedSequence, folder: Path) -> dict[str, Any]:
    """Round ``k``: its image and mask written into ``folder``; returns their paths, the nodule's location and the draws."""
    image, mask, noise_sd = _draw_scan(scene, k, rng)
    image_name, mask_name = _write_scan(scene, k, image, mask, folder)
    shift, scale, _ = scene.transforms[k]
    return {
        "image": image_name,
        "mask": mask_name,
        **_nodule_location(scene, k, mask, seed),
        "mask_volume_mm3": float(mask.sum()) * float(np.prod(scene.spacing)),
        "noise_sd_hu": noise_sd,
        "shift_mm": [float(v) for v in shift],
        "breathing_scale": float(scale[1]),
    }


def _draw_scan(scene: _Scene, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Round ``k``'s image (HU, float32), nodule mask (boolean) and noise sd, each (D, H, W)."""
    config, spacing, shape = scene.config, scene.spacing, scene.shape
    shift, scale, angle = scene.transforms[k]
    image, lung = render_thorax(scene.anatomy, scene.texture, *scene.world_axes[k], hu=config.tissue)
    centre_scan = scene.nodule_world * scale + shift
    centre_voxel = (centre_scan - np.array([a[0] for a in scene.scan_axes])) / spacing
    size_scale = (scene.volumes[k] / max(scene.bank_volume, MIN_BANK_VOLUME_MM3)) ** (1.0 / 3.0)
    target = int(round(scene.volumes[k] / float(np.prod(spacing))))
    mask = _nodule_mask(scene.field_bank, config.bank_spacing_mm, centre_voxel, size_scale, angle, target, shape, spacing, rng,
                        config.morphology_noise, allowed=lung)
    if mask.any():
        image = _insert_nodule(image, mask, scene.texture_class, scene.ground_glass_hu, spacing, config, rng)
    image = ndimage.gaussian_filter(image, config.psf_sigma_voxels)
    noise_sd = float(rng.uniform(*config.noise_sd_hu_range))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), config.noise_correlation_voxels)
    image = np.clip(image + noise * (noise_sd / (noise.std() or 1.0)), *HU_RANGE).astype(np.float32)
    return image, mask, noise_sd


def _write_scan(scene: _Scene, k: int, image: np.ndarray, mask: np.ndarray, folder: Path) -> tuple[str, str]:
    """Write round ``k``'s image and mask as NIfTI into ``folder``; returns their paths relative to it."""
    from mstnet.data.io import write_nifti

    timepoint = scene.config.timepoint_names[k]
    spacing = tuple(scene.spacing)
    origin = (float(scene.scan_axes[2][0]), float(scene.scan_axes[1][0]), float(scene.scan_axes[0][0]))
    image_name = f"images/{scene.patient_id}_{timepoint}{scene.config.image_suffix}"
    mask_name = f"masks/{scene.patient_id}_{timepoint}.nii.gz"
    write_nifti(folder / image_name, image, spacing=spacing, origin=origin)
    write_nifti(folder / mask_name, mask.astype(np.uint8), spacing=spacing, origin=origin)
    return image_name, mask_name


def _nodule_location(scene: _Scene, k: int, mask: np.ndarray, seed: np.random.SeedSequence) -> dict[str, Any]:
    """The reader's mark (x, y, z1, z2), the mask's centroid (z, y, x) and slice range; all None for an empty mask."""
    if not mask.any():
        return {"x": None, "y": None, "z1": None, "z2": None, "centroid": None, "mask_z": None}
    zs, ys, xs = np.nonzero(mask)
    centroid = np.array([zs.mean(), ys.mean(), xs.mean()])
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    mark_rng = np.random.default_rng(np.random.SeedSequence(sequence.entropy, spawn_key=(*sequence.spawn_key, _MARK_STREAM, k)))
    mask_z = (int(zs.min()), int(zs.max()))
    mark = reader_mark(centroid, mask_z, scene.shape, scene.spacing, scene.config.mark_error_sd_mm, mark_rng)
    return {**mark, "centroid": [float(c) for c in centroid], "mask_z": list(mask_z)}


def reader_mark(centroid: np.ndarray, mask_z: tuple[int, int], shape: tuple[int, int, int], spacing: np.ndarray,
                error_sd_mm: tuple[float, float, float], rng: np.random.Generator) -> dict[str, Any]:
    """A reader's mark of the nodule: ``{"x", "y", "z1", "z2"}`` in voxels.

    x, y: the mask centroid plus Normal(0, sd / spacing) voxels, kept inside the grid. z1..z2:
    the mask's slice range ``mask_z`` shifted by round(Normal(0, sd_z / spacing_z)) slices, the
    shift limited so the range stays inside the grid.
    """
    sd_voxels = np.asarray(error_sd_mm, dtype=float) / np.asarray(spacing, dtype=float)
    error = rng.standard_normal(3) * sd_voxels
    depth, height, width = shape
    shift = int(np.clip(np.round(error[0]), -mask_z[0], depth - 1 - mask_z[1]))
    return {"x": float(np.clip(centroid[2] + error[2], 0.0, width - 1)), "y": float(np.clip(centroid[1] + error[1], 0.0, height - 1)),
            "z1": mask_z[0] + shift, "z2": mask_z[1] + shift}


def _nodule_mask(field_bank: np.ndarray, bank_spacing: float, centre_voxel: np.ndarray, scale: float, angle: float,
                 target_voxels: int, shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator,
                 morphology_noise: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Boolean (D, H, W) mask: the bank field scaled by ``scale``, rotated in plane, at ``centre_voxel`` (z, y, x),
    thresholded so that it holds ``target_voxels`` voxels (fewer only when cut by the grid border).

    ``allowed`` (boolean (D, H, W), the lung field) confines the nodule: a juxtapleural nodule
    flattens against the pleura instead of growing into the chest wall, keeping its volume."""
    bank_centre = (np.asarray(field_bank.shape) - 1) / 2.0
    half_extent_mm = np.asarray(field_bank.shape) * bank_spacing * scale / 2.0
    # an in-plane rotation can bring the box's corner (sqrt 2 of its half side) into reach
    reach = np.max(half_extent_mm) * np.sqrt(2) + MASK_REACH_MARGIN_VOXELS * spacing
    low = np.maximum(np.floor(centre_voxel - reach / spacing).astype(int), 0)
    high = np.minimum(np.ceil(centre_voxel + reach / spacing).astype(int) + 1, shape)
    mask = np.zeros(shape, dtype=bool)
    if np.any(high <= low):
        return mask
    grids = np.meshgrid(*[(np.arange(lo, hi) - c) * s for lo, hi, c, s in zip(low, high, centre_voxel, spacing)], indexing="ij")
    dz, dy, dx = grids
    cos, sin = np.cos(angle), np.sin(angle)
    ry, rx = cos * dy - sin * dx, sin * dy + cos * dx
    coordinates = [d / (scale * bank_spacing) + c for d, c in zip((dz, ry, rx), bank_centre)]
    values = ndimage.map_coordinates(field_bank, coordinates, order=1, mode="constant", cval=0.0)
    if morphology_noise > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(values.shape), sigma=MORPHOLOGY_NOISE_SIGMA_VOXELS)
        values = values + morphology_noise * noise / (noise.std() or 1.0) * (values > MORPHOLOGY_NOISE_MIN_FIELD)
    if allowed is not None:
        # the lung field grown by one voxel, so a nodule may touch the pleura
        room = ndimage.binary_dilation(allowed[low[0]:high[0], low[1]:high[1], low[2]:high[2]])
        values = np.where(room, values, 0.0)
        # room to keep the volume when the pleura cuts the shape: a wider, flatter field inside the lung
        distance = np.sqrt(dz**2 + dy**2 + dx**2)
        values = np.maximum(values, PLEURA_ROOM_FIELD * np.exp(-distance / (scale * bank_spacing * PLEURA_ROOM_DECAY_BANK_VOXELS)) * room)
    flat = values.ravel()
    count = int(min(max(target_voxels, 1), np.count_nonzero(flat > 0)))
    if count == 0:
        return mask
    threshold = np.partition(flat, flat.size - count)[flat.size - count]
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = values >= threshold
    return mask


def _insert_nodule(image: np.ndarray, mask: np.ndarray, texture: str, ground_glass_hu: float, spacing: np.ndarray,
                   config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Blend the nodule's tissue into ``image`` (D, H, W) with partial-volume blur, working on the mask's padded box."""
    found = np.argwhere(mask)
    low = np.maximum(found.min(0) - NODULE_BOX_PAD_VOXELS, 0)
    high = np.minimum(found.max(0) + NODULE_BOX_PAD_VOXELS + 1, mask.shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    local = mask[box]
    if texture == "solid":
        nodule_hu = np.full(local.shape, config.solid_hu, dtype=np.float32)
    else:
        nodule_hu = np.full(local.shape, ground_glass_hu, dtype=np.float32)
        if texture == "part_solid":
            depth = ndimage.distance_transform_edt(local, sampling=spacing)
            core = depth > (1.0 - config.part_solid_core_fraction) * depth.max()
            core_weight = ndimage.gaussian_filter(core.astype(np.float32), config.partial_volume_sigma_voxels)
            nodule_hu = nodule_hu + (config.solid_hu - ground_glass_hu) * core_weight
    inner = ndimage.gaussian_filter(rng.standard_normal(local.shape).astype(np.float32), NODULE_TEXTURE_SIGMA_VOXELS)
    nodule_hu = nodule_hu + config.nodule_texture_sd_hu * inner / (inner.std() or 1.0)
    occupancy = ndimage.gaussian_filter(local.astype(np.float32), config.partial_volume_sigma_voxels)
    image = image.copy()
    image[box] = image[box] + (nodule_hu - image[box]) * occupancy
    return image
