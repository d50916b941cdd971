"""Generate the synthetic longitudinal screening cohort (``docs/cohort.md``, steps 1-7).

Tabular truth first, in this process, from one random stream (:func:`draw_cohort_table`):

1. a nodule from the LIDC shape bank (non-calcified, T0 diameter within the preset's range);
   its median ratings give the texture class (solid / part-solid / non-solid) and spiculation;
2. clinical variables from NLST-like marginals (:class:`mstnet.synth.risk.ClinicalMarginals`);
3. malignancy y ~ Bernoulli(sigmoid(Brock logit + offset)), the offset solved so the expected
   malignant fraction is ``malignant_fraction``;
4. a growth rate from label- and texture-dependent VDT distributions; volumes
   V(t) = V0 exp(r t) at screening days 0, ~365, ~730 (jittered), V0 the LIDC consensus volume;
6. derived NLST columns (``scr_res0`` / ``scr_iso0``: 4 = positive, nodule >= 4 mm; 2 = negative,
   minor abnormality);
7. the oracle posteriors, one per information set (:mod:`mstnet.synth.oracle`).

Then images, one patient per task with its own child seed (``SeedSequence(seed).spawn``), so
the result does not depend on the number of worker processes (step 5, :func:`render_patient`):
a procedural thorax (:mod:`mstnet.synth.thorax`), the nodule shape resampled from the bank and
scaled to V(t) (its voxel count is matched to V(t) exactly, up to one voxel, by choosing the
threshold of the smoothed, slightly noisy shape field; so the written mask volume equals the
drawn volume), inserted with texture-dependent HU and partial-volume blur, a small
misregistration between rounds (shift, in-plane breathing scale, small rotation of the
nodule), system blur and spatially correlated noise.

The T0 nodule is the bank shape at its own LIDC consensus volume; later time points scale it
by the growth. Output (``synthesize_cohort``): ``images/`` and ``masks/`` (NIfTI), the cohort
files (``manifest.csv``, ``clinical.csv``, ``clinical_schema.json``), ``ground_truth.csv``,
``oracle.json`` and ``cohort.json``. Generation goes into ``<out>.partial`` with a per-patient
completion record, so an interrupted run resumes; the folder is renamed at the end.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import expit
from tqdm.auto import tqdm

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan
from mstnet.synth.oracle import ORACLE_KEYS, oracle_report, oracle_scores, stored_scores, write_oracle
from mstnet.synth.risk import (TEXTURES, ClinicalMarginals, GrowthModel, brock_logit, brock_terms, solve_offset, texture_class,
                               vdt_days)
from mstnet.synth.shape_bank import ShapeBank, load_shape_bank
from mstnet.synth.thorax import TissueHU, WorldTexture, lung_mask_2d, make_anatomy, render_thorax

log = logging.getLogger(__name__)

CLINICAL_SOURCES: dict[str, str] = {
    "race": "history", "cigsmok": "history", "gender": "history", "age": "history", "pack_years": "history",
    "family_history": "history",
    "scr_res0": "screening", "scr_iso0": "screening",
    "emphysema": "read", "upper_lobe": "read", "nodule_count": "read", "nodule_type": "read", "spiculated": "read",
}
"""Where each column of ``clinical.csv`` comes from (written to ``clinical_schema.json`` as ``"sources"``):
demographics and history, the screening result, or the radiologist's read of the CT (the
Brock covariates emphysema, upper lobe, nodule count and nodule type, and spiculation)."""

CLINICAL_SCHEMA = ClinicalSchema(
    categorical=("race", "cigsmok", "gender", "scr_res0", "scr_iso0", "family_history", "emphysema", "upper_lobe",
                 "nodule_type", "spiculated"),
    numeric=("age", "pack_years", "nodule_count"),
    sources=CLINICAL_SOURCES,
)
"""Columns of ``clinical.csv`` (NLST names first, then the Brock covariates), with their sources."""


def clinical_categories(config: SynthConfig) -> dict[str, tuple[str, ...]]:
    """The values each categorical column of :data:`CLINICAL_SCHEMA` can take (written to ``clinical_schema.json``)."""
    binary = ("0", "1")
    return {"race": tuple(str(code) for code in config.clinical.race_codes), "cigsmok": binary, "gender": ("1", "2"),
            "scr_res0": ("2", "4"), "scr_iso0": ("2", "4"), "family_history": binary, "emphysema": binary,
            "upper_lobe": binary, "nodule_type": TEXTURES, "spiculated": binary}


GENERATOR_VERSION = 4
"""Part of every cohort's fingerprint: bumped when the same parameters give other files, so a
cached cohort is regenerated. 3: the manifest's nodule location is a reader's mark (mask
centroid plus a drawn error, ``mark_error_sd_mm``); ground_truth.csv gains the mask centroids.
4: oracle.json and the ``oracle_*`` columns hold the Bayes-optimal AUC of every information
set (:mod:`mstnet.synth.information_sets`); clinical_schema.json gains sources and categories."""

_MARK_STREAM = 0x6D61726B
"""Spawn-key entry of the reader's-mark stream, apart from the image draws (images and masks do not change with it)."""


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the synthetic cohort (recorded in ``cohort.json``).

    Attributes:
        name: preset name (``tiny``, ``cpu``, ``paper`` or your own).
        seed: master seed; everything is a deterministic function of it.
        n_patients: patients (default 150, as in the paper's NLST subset).
        malignant_fraction: expected share of malignant patients (default 0.4).
        shape: (D, H, W) voxels of every scan (default 16 x 96 x 96).
        spacing_mm: (z, y, x) voxel spacing (default 2.0 x 0.7 x 0.7 mm: a 6 mm nodule spans
            about 9 voxels in plane and 3 slices).
        crop: ``"nodule"`` (grid centred near the nodule) or ``"thorax"`` (full axial slab
            centred on the body, the slab's z centred on the nodule).
        centre_jitter_voxels: (z, y, x) maximum offset of the nodule from the crop centre.
        mark_error_sd_mm: (z, y, x) sd of the reader's-mark error (default 2.0, 2.5, 2.5 mm: one
            slice in z, about 3.6 voxels in plane at 0.7 mm). The manifest's nodule location is
            the mask centroid plus a Gaussian error per scan and axis, drawn from a stream of
            its own; z1..z2 is the mask's slice range shifted by the z error in whole slices
            (kept inside the grid). ``(0, 0, 0)``: the location is the mask centroid.
        n_timepoints: screening rounds T0, T1, ... (default 3).
        interval_days: mean days between rounds (default 365).
        interval_jitter_days: sd of each interval (default 30).
        min_initial_diameter_mm: smallest T0 nodule drawn from the bank (default 3 mm).
        max_initial_diameter_mm: largest T0 nodule drawn (default 16 mm, so growth fits the grid).
        min_volume_mm3: volumes never fall below this (a shrinking nodule stays visible; default 10).
        max_diameter_mm: growth stops where the longest diameter reaches this (default 30 mm).
        include_spiculation: add Brock's spiculation term (full model) to the logit (default True).
        spiculated_rating: median LIDC spiculation rating at or above which a nodule counts as spiculated (default 3).
        clinical: NLST-like clinical marginals.
        growth: VDT distributions.
        tissue: CT numbers of the anatomy.
        solid_hu: mean HU of solid nodule tissue (default 30).
        ground_glass_hu_range: per-patient HU of ground-glass tissue, uniform (default -700 to -450).
        part_solid_core_fraction: share of the depth of a part-solid nodule that is solid core (default 0.5).
        nodule_texture_sd_hu: sd of the nodule's internal texture (default 15).
        partial_volume_sigma_voxels: (z, y, x) blur of the nodule edge (default 0.35, 0.5, 0.5).
        psf_sigma_voxels: (z, y, x) blur of the whole image (scanner resolution; default 0.3, 0.5, 0.5).
        noise_sd_hu_range: per-scan noise sd, uniform (default 20-45 HU, low-dose CT).
        noise_correlation_voxels: (z, y, x) Gaussian correlation of the noise (default 0.4, 0.8, 0.8).
        misregistration_sd_mm: (z, y, x) sd of the shift of later rounds (default 1.0, 1.5, 1.5).
        breathing_scale_sd: sd of the in-plane scale of later rounds (default 0.015).
        rotation_sd_degrees: sd of the nodule's in-plane rotation per round (default 6).
        morphology_noise: sd of the smooth noise added to the nodule's shape field (default 0.06;
            the field is 1 inside, 0 outside), so a scan is never a pure rescaling of the last.
        juxtapleural_fraction: share of nodules placed touching the pleura (default 0.2).
        bank_spacing_mm: spacing of the LIDC shape bank (default 0.5 mm).
        body_scale: in-plane size of the chest (default 1.0).
        image_suffix: ``".nii.gz"`` (default) or ``".nii"`` for the images (noisy float32 compresses
            poorly: the paper preset writes ``.nii`` to save time); masks are always ``.nii.gz``.
    """

    name: str = "cpu"
    seed: int = 0
    n_patients: int = 150
    malignant_fraction: float = 0.4
    shape: tuple[int, int, int] = (16, 96, 96)
    spacing_mm: tuple[float, float, float] = (2.0, 0.7, 0.7)
    crop: str = "nodule"
    centre_jitter_voxels: tuple[int, int, int] = (1, 8, 8)
    mark_error_sd_mm: tuple[float, float, float] = (2.0, 2.5, 2.5)
    n_timepoints: int = 3
    interval_days: float = 365.0
    interval_jitter_days: float = 30.0
    min_initial_diameter_mm: float = 3.0
    max_initial_diameter_mm: float = 16.0
    min_volume_mm3: float = 10.0
    max_diameter_mm: float = 30.0
    include_spiculation: bool = True
    spiculated_rating: float = 3.0
    clinical: ClinicalMarginals = field(default_factory=ClinicalMarginals)
    growth: GrowthModel = field(default_factory=GrowthModel)
    tissue: TissueHU = field(default_factory=TissueHU)
    solid_hu: float = 30.0
    ground_glass_hu_range: tuple[float, float] = (-700.0, -450.0)
    part_solid_core_fraction: float = 0.5
    nodule_texture_sd_hu: float = 15.0
    partial_volume_sigma_voxels: tuple[float, float, float] = (0.35, 0.5, 0.5)
    psf_sigma_voxels: tuple[float, float, float] = (0.3, 0.5, 0.5)
    noise_sd_hu_range: tuple[float, float] = (20.0, 45.0)
    noise_correlation_voxels: tuple[float, float, float] = (0.4, 0.8, 0.8)
    misregistration_sd_mm: tuple[float, float, float] = (1.0, 1.5, 1.5)
    breathing_scale_sd: float = 0.015
    rotation_sd_degrees: float = 6.0
    morphology_noise: float = 0.06
    juxtapleural_fraction: float = 0.2
    bank_spacing_mm: float = 0.5
    body_scale: float = 1.0
    image_suffix: str = ".nii.gz"

    def __post_init__(self) -> None:
        problems = []
        if self.n_patients < 1:
            problems.append(f"n_patients must be >= 1, got {self.n_patients}")
        if not 0.0 < self.malignant_fraction < 1.0:
            problems.append(f"malignant_fraction must lie in (0, 1), got {self.malignant_fraction}")
        if len(self.shape) != 3 or min(self.shape) < 4:
            problems.append(f"shape must be (D, H, W) with every size >= 4, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            problems.append(f"spacing_mm must be three positive numbers (z, y, x), got {self.spacing_mm}")
        if self.crop not in ("nodule", "thorax"):
            problems.append(f"crop must be 'nodule' or 'thorax', got {self.crop!r}")
        if len(self.mark_error_sd_mm) != 3 or min(self.mark_error_sd_mm) < 0:
            problems.append(f"mark_error_sd_mm must be three non-negative sds in mm (z, y, x), got {self.mark_error_sd_mm}")
        if self.image_suffix not in (".nii", ".nii.gz"):
            problems.append(f"image_suffix must be '.nii' or '.nii.gz', got {self.image_suffix!r}")
        if self.n_timepoints < 1:
            problems.append(f"n_timepoints must be >= 1, got {self.n_timepoints}")
        if self.min_initial_diameter_mm >= self.max_initial_diameter_mm:
            problems.append("min_initial_diameter_mm must be below max_initial_diameter_mm")
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        """Every parameter as JSON-ready values (nested dataclasses as dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """Hash of every parameter: a finished cohort folder is reused only for the same fingerprint."""
        text = json.dumps({"version": GENERATOR_VERSION, "config": self.to_json()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def timepoint_names(self) -> tuple[str, ...]:
        return tuple(f"T{i}" for i in range(self.n_timepoints))


def _coerce(value: Any, current: Any) -> Any:
    """Turn an override (possibly a string from the CLI) into the type of the current value."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"cannot read {value!r} as a value for a {type(current).__name__} parameter") from None
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(current, bool):
        return bool(value)
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    return value


def with_overrides(config: SynthConfig, overrides: dict[str, Any]) -> SynthConfig:
    """``config`` with parameters replaced; nested ones by dotted keys (``"growth.malignant_vdt_sigma"``).

    Values may be strings (from ``--set key=value``): they are parsed as JSON where the
    parameter is not a string.
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise KeyError(f"unknown synthetic-cohort parameter {key!r}; known: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = _coerce(value, getattr(config, head))
    for head, values in nested.items():
        inner = getattr(config, head)
        inner_names = {f.name for f in dataclasses.fields(inner)}
        unknown = set(values) - inner_names
        if unknown:
            raise KeyError(f"unknown parameters {sorted(unknown)} of {head!r}; known: {sorted(inner_names)}")
        top[head] = dataclasses.replace(inner, **{k: _coerce(v, getattr(inner, k)) for k, v in values.items()})
    return dataclasses.replace(config, **top)


# ----------------------------------------------------------------------------------------------- truth table


def eligible_bank_indices(bank: ShapeBank, config: SynthConfig) -> np.ndarray:
    """Bank entries whose diameter lies in the config's T0 range."""
    diameter = bank.column("diameter_mm")
    eligible = np.flatnonzero((diameter >= config.min_initial_diameter_mm) & (diameter <= config.max_initial_diameter_mm))
    if eligible.size == 0:
        raise ValueError(f"no LIDC nodule has a diameter within {config.min_initial_diameter_mm}-{config.max_initial_diameter_mm} mm")
    return eligible


def draw_cohort_table(config: SynthConfig, bank: ShapeBank) -> pd.DataFrame:
    """Steps 1-4, 6 and 7: one row per patient with every truth column, no images.

    Cheap (the oracle columns take most of it: about 0.5 s for 150 patients, 3-4 ms a patient
    on the full bank): use it to study the generator or the oracle on many patients.
    """
    table_seed, _ = np.random.SeedSequence(config.seed).spawn(2)
    rng = np.random.default_rng(table_seed)
    n = config.n_patients
    eligible = eligible_bank_indices(bank, config)
    chosen = rng.choice(eligible, size=n, replace=n > eligible.size)
    texture_rating = bank.column("texture")[chosen]
    spiculation_rating = bank.column("spiculation")[chosen]
    frame = pd.DataFrame({
        "patient_id": [f"SYN{i + 1:04d}" for i in range(n)],
        "bank_index": chosen,
        "lidc_scan_id": [bank[i].scan_id for i in chosen],
        "lidc_patient_id": [bank[i].patient_id for i in chosen],
        "lidc_readers": [bank[i].n_readers for i in chosen],
        "lidc_texture": texture_rating,
        "lidc_spiculation": spiculation_rating,
        "lidc_malignancy": bank.column("malignancy")[chosen],
        "texture": texture_class(texture_rating),
        "spiculated": (spiculation_rating >= config.spiculated_rating).astype(int),
    })
    clinical = config.clinical.draw(rng, n)
    for name, values in clinical.items():
        frame[name] = values
    diameter0 = bank.column("diameter_mm")[chosen]
    volume0 = bank.column("volume_mm3")[chosen]
    terms = brock_terms(clinical["age"], clinical["female"], clinical["family_history"], clinical["emphysema"],
                        clinical["upper_lobe"], clinical["nodule_count"], diameter0, frame["texture"].to_numpy(),
                        frame["spiculated"].to_numpy(), include_spiculation=config.include_spiculation)
    logit = np.asarray(brock_logit(terms), dtype=float)
    offset = solve_offset(logit, config.malignant_fraction)
    frame["brock_logit"] = logit
    frame["logit_offset"] = offset
    frame["true_risk"] = expit(logit + offset)
    frame["label"] = (rng.random(n) < frame["true_risk"].to_numpy()).astype(int)
    rate = config.growth.sample_rate(rng, frame["label"].to_numpy(), frame["texture"].to_numpy())
    frame["growth_rate_per_day"] = rate
    frame["vdt_days"] = vdt_days(rate)
    intervals = np.maximum(rng.normal(config.interval_days, config.interval_jitter_days, (n, max(config.n_timepoints - 1, 0))), 30.0)
    days = np.concatenate([np.zeros((n, 1)), np.cumsum(np.round(intervals), axis=1)], axis=1)
    # cap growth where the longest diameter would pass max_diameter_mm (never below the T0 volume)
    max_volume = volume0 * np.maximum(config.max_diameter_mm / diameter0, 1.0) ** 3
    for k, name in enumerate(config.timepoint_names):
        volume = np.clip(volume0 * np.exp(rate * days[:, k]), np.minimum(config.min_volume_mm3, volume0), max_volume)
        volume = np.where(k == 0, volume0, volume)
        frame[f"days_{name}"] = days[:, k]
        frame[f"volume_{name}_mm3"] = volume
        frame[f"diameter_{name}_mm"] = diameter0 * (volume / volume0) ** (1.0 / 3.0)
    positive = diameter0 >= 4.0
    frame["scr_res0"] = np.where(positive, 4, 2)
    frame["scr_iso0"] = np.where(positive, 4, 2)
    scores = oracle_scores(frame, config, bank)
    frame["oracle_posterior"] = scores["everything"].to_numpy()
    for key in ORACLE_KEYS[:-1]:  # every information set (mstnet.information): oracle_scans2+clinical, ...
        frame[f"oracle_{key}"] = scores[key].to_numpy()
    return frame


# ----------------------------------------------------------------------------------------------- images


def _axis(centre: float, size: int, spacing: float) -> np.ndarray:
    return centre + (np.arange(size) - (size - 1) / 2.0) * spacing


def _place_nodule(rng: np.random.Generator, anatomy, radius_mm: float, juxtapleural: bool) -> tuple[np.ndarray, float]:
    """A world centre (z, y, x) inside a lung: clear of the pleura by ``radius_mm`` or, if ``juxtapleural``, touching it."""
    ax, ay = anatomy.body_axes
    y = np.arange(-ay, ay, 1.0)
    x = np.arange(-ax, ax, 1.0)
    lung = lung_mask_2d(anatomy, y, x)
    distance = ndimage.distance_transform_edt(lung)
    if juxtapleural:
        candidates = np.argwhere((distance >= 0.3 * radius_mm) & (distance <= 0.9 * radius_mm + 1))
    else:
        candidates = np.argwhere(distance >= radius_mm + 3.0)
    if len(candidates) == 0:
        candidates = np.argwhere(distance == distance.max())
    row, column = candidates[rng.integers(len(candidates))]
    return np.array([rng.uniform(-4.0, 4.0), y[row], x[column]]), float(distance[row, column])


def _nodule_mask(field_bank: np.ndarray, bank_spacing: float, centre_voxel: np.ndarray, scale: float, angle: float,
                 target_voxels: int, shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator,
                 morphology_noise: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Boolean (D, H, W) mask: the bank field scaled by ``scale``, rotated in plane, at ``centre_voxel`` (z, y, x),
    thresholded so that it holds ``target_voxels`` voxels (fewer only when cut by the grid border).

    ``allowed`` (boolean (D, H, W), the lung field) confines the nodule: a juxtapleural nodule
    flattens against the pleura instead of growing into the chest wall, keeping its volume."""
    bank_centre = (np.asarray(field_bank.shape) - 1) / 2.0
    half_extent_mm = np.asarray(field_bank.shape) * bank_spacing * scale / 2.0
    reach = np.max(half_extent_mm) * np.sqrt(2) + 2.0 * spacing
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
        noise = ndimage.gaussian_filter(rng.standard_normal(values.shape), sigma=1.2)
        values = values + morphology_noise * noise / (noise.std() or 1.0) * (values > 0.02)
    if allowed is not None:
        # the lung field grown by one voxel, so a nodule may touch the pleura
        room = ndimage.binary_dilation(allowed[low[0]:high[0], low[1]:high[1], low[2]:high[2]])
        values = np.where(room, values, 0.0)
        # room to keep the volume when the pleura cuts the shape: a wider, flatter field inside the lung
        values = np.maximum(values, 1e-3 * np.exp(-np.sqrt(dz**2 + dy**2 + dx**2) / (scale * bank_spacing * 10)) * room)
    flat = values.ravel()
    count = int(min(max(target_voxels, 1), np.count_nonzero(flat > 0)))
    if count == 0:
        return mask
    threshold = np.partition(flat, flat.size - count)[flat.size - count]
    local = values >= threshold
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = local
    return mask


def _insert_nodule(image: np.ndarray, mask: np.ndarray, texture: str, ground_glass_hu: float, spacing: np.ndarray,
                   config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Blend the nodule's tissue into ``image`` (D, H, W) with partial-volume blur, working on the mask's padded box."""
    pad = 4
    found = np.argwhere(mask)
    low = np.maximum(found.min(0) - pad, 0)
    high = np.minimum(found.max(0) + pad + 1, mask.shape)
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
    inner = ndimage.gaussian_filter(rng.standard_normal(local.shape).astype(np.float32), 1.0)
    nodule_hu = nodule_hu + config.nodule_texture_sd_hu * inner / (inner.std() or 1.0)
    occupancy = ndimage.gaussian_filter(local.astype(np.float32), config.partial_volume_sigma_voxels)
    image = image.copy()
    image[box] = image[box] + (nodule_hu - image[box]) * occupancy
    return image


def render_patient(config: SynthConfig, record: dict[str, Any], bank_mask: np.ndarray, seed: np.random.SeedSequence,
                   folder: Path) -> dict[str, Any]:
    """Step 5 for one patient: write its images and masks (NIfTI) and return what the manifest needs.

    Args:
        config: the cohort's parameters.
        record: the patient's row of :func:`draw_cohort_table`.
        bank_mask: its boolean LIDC consensus shape at ``config.bank_spacing_mm``.
        seed: the patient's own seed sequence.
        folder: cohort folder (``images/`` and ``masks/`` inside).

    Returns:
        ``{"patient_id", "placement", "timepoints": [{timepoint, days, image, mask, x, y, z1, z2,
        centroid, mask_z, mask_volume_mm3, noise_sd_hu, shift_mm, breathing_scale}]}`` with paths
        relative to ``folder``: x, y, z1..z2 the reader's mark (:func:`reader_mark`), centroid
        (z, y, x) and mask_z (first, last slice) the mask's true position.
    """
    from mstnet.data.io import write_nifti

    rng = np.random.default_rng(seed)
    spacing = np.asarray(config.spacing_mm, dtype=float)
    shape = tuple(int(s) for s in config.shape)
    voxel_mm3 = float(np.prod(spacing))
    anatomy = make_anatomy(rng, config.body_scale)
    field_bank = ndimage.gaussian_filter(bank_mask.astype(np.float32), sigma=0.7)
    volume0 = float(record["volume_T0_mm3"])
    bank_volume = float(bank_mask.sum()) * config.bank_spacing_mm**3
    volumes = [float(record[f"volume_{tp}_mm3"]) for tp in config.timepoint_names]
    largest_scale = (max(volumes) / max(bank_volume, 1e-6)) ** (1.0 / 3.0)
    radius = 0.5 * max(bank_mask.shape[1:]) * config.bank_spacing_mm * largest_scale * 0.8
    juxtapleural = bool(rng.random() < config.juxtapleural_fraction)
    nodule_world, pleura_distance = _place_nodule(rng, anatomy, radius, juxtapleural)
    jitter = np.array([rng.integers(-j, j + 1) if j > 0 else 0 for j in config.centre_jitter_voxels], dtype=float) * spacing
    if config.crop == "nodule":
        grid_centre = nodule_world + jitter
    else:
        grid_centre = np.array([nodule_world[0] + jitter[0], 0.0, 0.0])
    transforms = []
    for k in range(config.n_timepoints):
        if k == 0:
            transforms.append((np.zeros(3), np.ones(3), 0.0))
        else:
            breathing = 1.0 + rng.normal(0.0, config.breathing_scale_sd)
            transforms.append((rng.normal(0.0, config.misregistration_sd_mm), np.array([1.0, breathing, breathing]),
                               np.deg2rad(rng.normal(0.0, config.rotation_sd_degrees))))
    scan_axes = [_axis(c, n, s) for c, n, s in zip(grid_centre, shape, spacing)]
    world_axes = [[(axis - shift[i]) / scale[i] for i, axis in enumerate(scan_axes)] for shift, scale, _ in transforms]
    low = np.min([[a.min() for a in axes] for axes in world_axes], axis=0)
    high = np.max([[a.max() for a in axes] for axes in world_axes], axis=0)
    texture = WorldTexture.draw(rng, low, high)
    ground_glass_hu = rng.uniform(*config.ground_glass_hu_range)
    texture_class_name = str(record["texture"])
    patient_id = str(record["patient_id"])
    timepoints = []
    for k, tp in enumerate(config.timepoint_names):
        shift, scale, angle = transforms[k]
        image, lung = render_thorax(anatomy, texture, *world_axes[k], hu=config.tissue)
        centre_scan = nodule_world * scale + shift
        centre_voxel = (centre_scan - np.array([a[0] for a in scan_axes])) / spacing
        size_scale = (volumes[k] / max(bank_volume, 1e-6)) ** (1.0 / 3.0)
        target = int(round(volumes[k] / voxel_mm3))
        mask = _nodule_mask(field_bank, config.bank_spacing_mm, centre_voxel, size_scale, angle, target, shape, spacing, rng,
                            config.morphology_noise, allowed=lung)
        if mask.any():
            image = _insert_nodule(image, mask, texture_class_name, ground_glass_hu, spacing, config, rng)
        image = ndimage.gaussian_filter(image, config.psf_sigma_voxels)
        noise_sd = float(rng.uniform(*config.noise_sd_hu_range))
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), config.noise_correlation_voxels)
        image = np.clip(image + noise * (noise_sd / (noise.std() or 1.0)), -1024.0, 3071.0).astype(np.float32)
        origin = (float(scan_axes[2][0]), float(scan_axes[1][0]), float(scan_axes[0][0]))
        image_name = f"images/{patient_id}_{tp}{config.image_suffix}"
        mask_name = f"masks/{patient_id}_{tp}.nii.gz"
        write_nifti(folder / image_name, image, spacing=tuple(spacing), origin=origin)
        write_nifti(folder / mask_name, mask.astype(np.uint8), spacing=tuple(spacing), origin=origin)
        location: dict[str, Any] = {"x": None, "y": None, "z1": None, "z2": None, "centroid": None, "mask_z": None}
        if mask.any():
            zs, ys, xs = np.nonzero(mask)
            centroid = np.array([zs.mean(), ys.mean(), xs.mean()])
            sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
            mark_rng = np.random.default_rng(np.random.SeedSequence(sequence.entropy, spawn_key=(*sequence.spawn_key, _MARK_STREAM, k)))
            location = {**reader_mark(centroid, (int(zs.min()), int(zs.max())), shape, spacing, config.mark_error_sd_mm, mark_rng),
                        "centroid": [float(c) for c in centroid], "mask_z": [int(zs.min()), int(zs.max())]}
        timepoints.append({
            "timepoint": tp,
            "days": float(record[f"days_{tp}"]),
            "image": image_name,
            "mask": mask_name,
            **location,
            "mask_volume_mm3": float(mask.sum()) * voxel_mm3,
            "noise_sd_hu": noise_sd,
            "shift_mm": [float(v) for v in shift],
            "breathing_scale": float(scale[1]),
        })
    return {
        "patient_id": patient_id,
        "placement": {"juxtapleural": juxtapleural, "pleura_distance_mm": pleura_distance, "volume0_mm3": volume0},
        "timepoints": timepoints,
    }


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


def _render_job(job: tuple) -> dict[str, Any]:
    config, record, bank_mask, seed, folder = job
    result = render_patient(config, record, bank_mask, seed, folder)
    write_text_atomic(folder / ".progress" / f"{result['patient_id']}.json", json.dumps(result) + "\n")
    return result


# ----------------------------------------------------------------------------------------------- cohort folder


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mstnet-bench")
    except Exception:  # noqa: BLE001 - metadata may be absent in a source checkout
        return "unknown"


def _build_cohort(config: SynthConfig, table: pd.DataFrame, results: dict[str, dict], folder: Path) -> Cohort:
    patients = []
    for record in table.to_dict("records"):
        result = results[record["patient_id"]]
        scans = []
        for tp in result["timepoints"]:
            nodule = NoduleLocation(tp["x"], tp["y"], tp["z1"], tp["z2"]) if tp["x"] is not None else None
            scans.append(Scan(tp["timepoint"], tp["days"], folder / tp["image"], folder / tp["mask"], nodule))
        # the radiologist's reading of the nodule (type, spiculation), as screening reports record it
        record = {**record, "nodule_type": record["texture"]}
        clinical = {name: record[name] for name in CLINICAL_SCHEMA.columns}
        patients.append(Patient(record["patient_id"], int(record["label"]), tuple(scans), clinical))
    schema = dataclasses.replace(CLINICAL_SCHEMA, categories=clinical_categories(config))
    return Cohort(tuple(patients), schema, root=folder, name=f"synthetic-{config.name}")


def _ground_truth(config: SynthConfig, table: pd.DataFrame, results: dict[str, dict]) -> pd.DataFrame:
    frame = table.copy()
    for tp in config.timepoint_names:
        frame[f"mask_volume_{tp}_mm3"] = [
            next(t["mask_volume_mm3"] for t in results[pid]["timepoints"] if t["timepoint"] == tp) for pid in frame["patient_id"]
        ]
    # the true nodule position (mask centroid and slice range, voxels), apart from the manifest's reader's mark
    for tp in config.timepoint_names:
        scans = [next(t for t in results[pid]["timepoints"] if t["timepoint"] == tp) for pid in frame["patient_id"]]
        for axis, name in enumerate("zyx"):
            frame[f"centroid_{name}_{tp}"] = [t["centroid"][axis] if t.get("centroid") is not None else np.nan for t in scans]
        for end, name in enumerate(("z1", "z2")):
            frame[f"mask_{name}_{tp}"] = [t["mask_z"][end] if t.get("mask_z") is not None else np.nan for t in scans]
    frame["juxtapleural"] = [int(results[pid]["placement"]["juxtapleural"]) for pid in frame["patient_id"]]
    first = ["patient_id", "label", "true_risk", "vdt_days", "oracle_posterior"]
    return frame[first + [c for c in frame.columns if c not in first]]


def synthesize_cohort(config: SynthConfig, out_dir: str | Path, workers: int | None = None, progress: bool = True,
                      bank: ShapeBank | None = None) -> Path:
    """Generate the cohort into ``out_dir`` and return it.

    A finished folder with the same parameters is returned as it is; one made with other
    parameters is refused. Work goes into ``<out_dir>.partial`` (resumed when present) and is
    renamed to ``out_dir`` at the end; ``<out_dir>.lock`` makes concurrent callers wait for
    one generator.

    Args:
        config: every parameter (:func:`mstnet.synth.presets.synth_config`).
        out_dir: the cohort folder to create.
        workers: processes rendering patients (default: CPU count); results do not depend on it.
        progress: show a progress bar.
        bank: the LIDC shape bank (default: the cached one).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # one generator per folder: concurrent callers (several ranks of one run) wait, then reuse it
    with open(out_dir.with_name(out_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _synthesize_locked(config, out_dir, workers, progress, bank)


def _synthesize_locked(config: SynthConfig, out_dir: Path, workers: int | None, progress: bool, bank: ShapeBank | None) -> Path:
    fingerprint = config.fingerprint()
    marker = out_dir / "cohort.json"
    if marker.exists():
        existing = json.loads(marker.read_text()).get("fingerprint")
        if existing == fingerprint:
            return out_dir
        raise FileExistsError(f"{out_dir} holds a synthetic cohort made with other parameters (fingerprint {existing}, "
                              f"wanted {fingerprint}); choose another folder or delete it")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a finished synthetic cohort; choose another folder or delete it")
    bank = bank or load_shape_bank(config.bank_spacing_mm, progress=progress)
    table = draw_cohort_table(config, bank)
    work = out_dir.with_name(out_dir.name + ".partial")
    stamp = work / ".progress" / "fingerprint"
    if work.exists() and (not stamp.exists() or stamp.read_text().strip() != fingerprint):
        shutil.rmtree(work)
    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "masks").mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, fingerprint + "\n")
    _, image_seed = np.random.SeedSequence(config.seed).spawn(2)
    seeds = image_seed.spawn(config.n_patients)
    results: dict[str, dict] = {}
    jobs = []
    for record, seed in zip(table.to_dict("records"), seeds):
        done = work / ".progress" / f"{record['patient_id']}.json"
        if done.exists():
            results[record["patient_id"]] = json.loads(done.read_text())
        else:
            jobs.append((config, record, bank[int(record["bank_index"])].mask, seed, work))
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    bar = tqdm(total=config.n_patients, initial=len(results), desc=f"synthetic cohort {config.name}", unit="patient", disable=not progress)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            result = _render_job(job)
            results[result["patient_id"]] = result
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_render_job, jobs, chunksize=2):
                results[result["patient_id"]] = result
                bar.update(1)
    bar.close()
    cohort = _build_cohort(config, table, results, work)
    cohort.write(work)
    truth = _ground_truth(config, table, results)
    write_text_atomic(work / "ground_truth.csv", truth.to_csv(index=False))
    report = oracle_report(table, config, bank, scores=stored_scores(table))
    write_oracle(work, report)
    write_text_atomic(work / "cohort.json", json.dumps({
        "name": f"synthetic-{config.name}",
        "synthetic": True,
        "fingerprint": fingerprint,
        "seed": config.seed,
        "generator_version": GENERATOR_VERSION,
        "package_version": _package_version(),
        "config": config.to_json(),
        "shape_bank": bank.summary,
        "patients": int(len(table)),
        "malignant": int(table["label"].sum()),
        "oracle_auc": report["auc"],
        "note": "Synthetic cohort with known ground truth on real LIDC-IDRI nodule shapes; results on it are not NLST results.",
    }, indent=2) + "\n")
    shutil.rmtree(work / ".progress")
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(work, out_dir)
    log.info("synthetic cohort %s: %d patients (%d malignant) in %s", config.name, len(table), int(table["label"].sum()), out_dir)
    return out_dir


def default_cohort_root() -> Path:
    """Where :func:`ensure_default_cohort` keeps its cohorts: ``<cache>/cohorts``."""
    from mstnet.synth.shape_bank import cache_root

    return cache_root() / "cohorts"


def ensure_default_cohort(preset: str = "cpu", root: str | Path | None = None, seed: int = 0, workers: int | None = None,
                          progress: bool = True, **overrides: Any) -> Path:
    """The cached synthetic cohort of ``preset`` and ``seed``, generated only when missing.

    Args:
        preset: ``tiny``, ``cpu`` or ``paper``.
        root: parent folder (default :func:`default_cohort_root`).
        seed: master seed.
        workers: processes when generating.
        progress: show a progress bar when generating.
        overrides: further parameters. The folder name carries the configuration's fingerprint,
            so another version of the generator or other overrides never reuse a stale cohort.
    """
    from mstnet.synth.presets import synth_config

    config = synth_config(preset, seed=seed, **overrides)
    # the fingerprint in the name: a changed generator (or override) makes a new folder, never a clash
    name = f"{preset}_seed{seed}_{config.fingerprint()}"
    folder = Path(root) if root is not None else default_cohort_root()
    return synthesize_cohort(config, folder / name, workers=workers, progress=progress)
