"""The embedded synthetic longitudinal screening cohort on real LIDC-IDRI nodule shapes (``docs/cohort.md``).

- :func:`synth_config` / :data:`SYNTH_PRESETS`: parameters by preset (``tiny``, ``cpu``, ``paper``).
- :func:`synthesize_cohort`: write a cohort folder; :func:`ensure_default_cohort`: the cached one.
- :func:`draw_cohort_table`: the tabular truth without images (fast; for studying the oracle).
- :func:`load_shape_bank`: the LIDC consensus shapes; :mod:`mstnet.synth.oracle`: AUC ceilings.
"""

from mstnet.synth.cohort_folder import ensure_default_cohort, synthesize_cohort
from mstnet.synth.config import SynthConfig
from mstnet.synth.presets import SYNTH_PRESETS, synth_config
from mstnet.synth.shape_bank import ShapeBank, load_shape_bank
from mstnet.synth.truth_table import draw_cohort_table

__all__ = [
    "SYNTH_PRESETS",
    "ShapeBank",
    "SynthConfig",
    "draw_cohort_table",
    "ensure_default_cohort",
    "load_shape_bank",
    "synth_config",
    "synthesize_cohort",
]
