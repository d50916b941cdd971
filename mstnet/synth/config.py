"""Every parameter of the synthetic cohort (``docs/cohort.md``) and how a cohort folder is recognised.

- :class:`SynthConfig`: the frozen parameters, recorded in ``cohort.json``; its
  :meth:`~SynthConfig.fingerprint` (with :data:`GENERATOR_VERSION`) decides when a finished
  folder is reused.
- :func:`with_overrides`: parameters replaced by name, nested ones by dotted keys, values from
  the command line parsed as JSON (``--set key=value``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mstnet.synth.risk import BrockEffects, ClinicalMarginals, GrowthModel
from mstnet.synth.thorax import TissueHU

GENERATOR_VERSION = 4
"""Part of every cohort's fingerprint: bumped when the same parameters give other files, so a
cached cohort is regenerated. 3: the manifest's nodule location is a reader's mark (mask
centroid plus a drawn error, ``mark_error_sd_mm``); ground_truth.csv gains the mask centroids.
4: oracle.json and the ``oracle_*`` columns hold the Bayes-optimal AUC of every information
set (:mod:`mstnet.synth.information_sets`); clinical_schema.json gains sources and categories."""


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
        effects: multipliers of the Brock coefficients in the malignancy logit (default: all 1, the
            published model; the ``claims`` preset sets them to control each signal's share).
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
    effects: BrockEffects = field(default_factory=BrockEffects)
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
