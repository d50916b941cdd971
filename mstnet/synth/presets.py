"""Named sizes of the synthetic cohort: ``tiny`` (tests, seconds), ``cpu`` (the CPU reproduction), ``paper`` (16 x 512 x 512).

All share the generative model; they differ in grid and patients:

- ``tiny``: 24 patients, 16 x 48 x 48 nodule-centred crops at 2.0 x 0.7 x 0.7 mm, T0
  nodules 3-12 mm.
- ``cpu``: 150 patients, 16 x 96 x 96 nodule-centred crops at 2.0 x 0.7 x 0.7 mm (32 x 67 x
  67 mm): in-plane spacing as in the paper's scans, so a typical 7 mm LIDC nodule spans about
  ten voxels in plane and three to four slices; T0 nodules 3-16 mm so that growth to the
  30 mm cap still fits the 32 mm slab.
- ``paper``: 150 patients, the full axial slab 16 x 512 x 512 at 2.0 x 0.7 x 0.7 mm (358 mm
  field of view), the slab's slices centred on the nodule; images as uncompressed ``.nii``
  (about 16 MB each, 7.5 GB for 150 x 3 scans).

- ``claims``: the signal-controlled cohort of the claims table (``mstnet reproduce claims``):
  the ``cpu`` grid, 200 patients, and a risk model built so that each claimed signal carries a
  known, detectable share of the outcome (``docs/cohort.md``, "The claims preset"):
  :data:`CLAIMS_EFFECTS` (the clinical record's Brock terms x 3.5; no risk from the T0 size,
  texture or spiculation, which every scan shows alike) and :data:`CLAIMS_GROWTH` (cancers grow
  steadily, VDT about 900 days; benign nodules are stable or grow slowly, so growth separates
  the classes only when two scans are compared). Its ceilings on a 12 000-patient draw: scans
  plus record 0.918, scans alone 0.854 (gap 6.4), the latest scan plus record 0.809 (gap 10.9),
  the record alone 0.776. 200 patients is the smallest of 150/200/250/300 at which the paired
  ceiling test finds both gaps in >= 80% of cohorts (``mstnet data power --preset claims``:
  0.90 and 1.00 at 200; 0.76 at 150).

``synth_config("cpu", n_patients=50, **{"growth.malignant_vdt_sigma": 0.6})`` overrides any
parameter (dotted keys reach nested ones).
"""

from __future__ import annotations

from typing import Any

from mstnet.synth.config import SynthConfig, with_overrides
from mstnet.synth.risk import BrockEffects, GrowthModel

CLAIMS_EFFECTS = BrockEffects(record=3.5, reads=1.0, size=0.0, appearance=0.0)
"""The ``claims`` preset's risk model: the record's terms (age, sex, family history) 3.5 x Brock, so the record
alone reaches an AUC near 0.78; the nodule's own size, texture and spiculation carry no risk, so a single scan says
little; the reads as published."""

CLAIMS_GROWTH = GrowthModel(
    malignant_vdt_median_days=(("solid", 900.0), ("part_solid", 900.0), ("non_solid", 900.0)), malignant_vdt_sigma=0.35,
    benign_stable_fraction=0.45, benign_growing_fraction=0.45, benign_growing_vdt_median_days=1200.0,
    benign_growing_vdt_sigma=0.5)
"""The ``claims`` preset's growth: cancers double in about 900 days (sd 0.35 in log), a steady growth a pair of
scans measures; 45% of benign nodules are stable, 45% grow slowly (about 1200 days) and 10% shrink, so the rate
separates the classes well while the size at any one round (the T0 sizes span 3-16 mm) separates them little."""

SYNTH_PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(name="tiny", n_patients=24, shape=(16, 48, 48), centre_jitter_voxels=(1, 4, 4), max_initial_diameter_mm=12.0,
                        max_diameter_mm=24.0),
    "cpu": SynthConfig(name="cpu", n_patients=150, shape=(16, 96, 96)),
    "claims": SynthConfig(name="claims", n_patients=200, shape=(16, 96, 96), effects=CLAIMS_EFFECTS, growth=CLAIMS_GROWTH),
    "paper": SynthConfig(name="paper", n_patients=150, shape=(16, 512, 512), crop="thorax", centre_jitter_voxels=(1, 0, 0),
                         image_suffix=".nii"),
}


def synth_config(preset: str = "cpu", **overrides: Any) -> SynthConfig:
    """The preset's :class:`SynthConfig` with ``overrides`` applied (dotted keys for nested parameters)."""
    try:
        base = SYNTH_PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown synthetic-cohort preset {preset!r}; choose one of {sorted(SYNTH_PRESETS)}") from None
    return with_overrides(base, overrides)
