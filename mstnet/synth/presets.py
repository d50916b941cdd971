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

``synth_config("cpu", n_patients=50, **{"growth.malignant_vdt_sigma": 0.6})`` overrides any
parameter (dotted keys reach nested ones).
"""

from __future__ import annotations

from typing import Any

from mstnet.synth.config import SynthConfig, with_overrides

SYNTH_PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(name="tiny", n_patients=24, shape=(16, 48, 48), centre_jitter_voxels=(1, 4, 4), max_initial_diameter_mm=12.0,
                        max_diameter_mm=24.0),
    "cpu": SynthConfig(name="cpu", n_patients=150, shape=(16, 96, 96)),
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
