"""Run presets: which synthetic cohort, crop size and training length go with a size preset.

``tiny`` is for tests (seconds), ``cpu`` reproduces the paper table on a 2-core CPU in under
half an hour (16 x 48 x 48 crops centred on the nodule's location, a reader's mark, at 2.0 x
0.7 x 0.7 mm, i.e. 32 x 34 x 34 mm, two patients per step, twelve epochs per stage unless a
recipe has a length of its own (:mod:`mstnet.experiments.recipes`), two folds at a time), ``paper`` is the
published setting for CUDA machines: the full 16 x 512 x 512 slab (``crop_mode="slab"``: the
whole field in plane, the slices centred on the mark's z1..z2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mstnet.errors import UnknownNameError, choices


@dataclass(frozen=True)
class RunPreset:
    """Sizes and training length of one preset.

    Attributes:
        name: preset name, also the model and synthetic-cohort preset.
        crop_size: (D, H, W) of the crop fed to every model.
        crop_mode: ``"nodule"`` (default: centred on the nodule location) or ``"slab"`` (depth
            centred on the location's z1..z2, in plane the whole field; see
            :class:`mstnet.data.transforms.PreprocessConfig`).
        epochs: default epochs per training stage.
        batch_size: patients per batch.
        patience: early-stopping patience in epochs (on inner validation).
        n_folds: outer cross-validation folds.
        validation_fraction: share of each training portion held out as inner validation.
        jobs: (experiment, fold) pairs trained in parallel processes by ``mstnet reproduce``.
        epochs_given: ``epochs`` was asked for (``--epochs``): it then applies to every stage
            of every experiment, also to recipes with a length of their own
            (``Recipe.budget_from_preset=False``).
    """

    name: str
    crop_size: tuple[int, int, int]
    epochs: int
    batch_size: int
    patience: int
    n_folds: int = 5
    validation_fraction: float = 0.2
    jobs: int = 1
    crop_mode: str = "nodule"
    epochs_given: bool = False

    def with_overrides(self, **overrides: Any) -> "RunPreset":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


RUN_PRESETS: dict[str, RunPreset] = {
    "tiny": RunPreset("tiny", crop_size=(8, 32, 32), epochs=2, batch_size=4, patience=5),
    "cpu": RunPreset("cpu", crop_size=(16, 48, 48), epochs=12, batch_size=2, patience=12, jobs=2),
    "paper": RunPreset("paper", crop_size=(16, 512, 512), epochs=100, batch_size=1, patience=20, crop_mode="slab"),
}
"""The ``cpu`` preset's two patients per step (nnU-Net's 3D default) and twelve epochs: on a
development cohort no reported fold contains (``mstnet data synth --preset cpu --seed 1 --out
DEV``), fold 0's inner validation, short-run recipe, MST-Net's segmentation stage reached
validation Dice 0.49 after seven epochs of two patients per step (``mstnet run mstnet --data DEV
--preset cpu --folds 0 --set 'stages=["segmentation"]' --set batch_size=2 --epochs 15``) against
0.18-0.39 after seven epochs of four; ACSNet 0.44 after five epochs of two against 0.35 of four.
One step of two patients costs 0.54-0.59 of a step of four (one core), so an epoch costs about
1.1x. Twelve epochs (576 steps; eight until MLTN's training steps ran in bf16, which halved its
cost) are what the whole table affords in the half hour (README); every segmenting row's
inner-validation Dice was still rising at eight (the table footnote's plateau verdict)."""


def run_preset(name: str, **overrides: Any) -> RunPreset:
    try:
        preset = RUN_PRESETS[name].with_overrides(**overrides)
    except KeyError:
        raise UnknownNameError(f"unknown preset {name!r}; choose one of {choices(sorted(RUN_PRESETS))}") from None
    return replace(preset, epochs_given=True) if overrides.get("epochs") is not None else preset
