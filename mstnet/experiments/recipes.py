"""Training recipes for the short ``cpu`` preset, beyond the releases' recipes.

The published recipes (the ``paper`` preset and ``default``) start every output layer at
logit 0 and decay the learning rate per epoch. On a 2-core CPU a fold affords a few hundred
optimizer steps, and there the start matters: a segmentation output at logit 0 predicts
p = 0.5 on the ~97 % background voxels of a crop, and Adam moves a bias by about the learning
rate per step, so most of the budget is spent unlearning that start. :func:`short_run` gives
a recipe what an nnU-Net or MONAI user would set for such a run, as named
:class:`~mstnet.experiments.registry.Recipe` fields:

- ``output_bias_init``: segmentation and classification output biases at the training
  priors (:mod:`mstnet.experiments.initialisation`);
- ``lr_schedule="warmup_cosine"``: a linear warm-up over the first 5 % of a stage's steps,
  then cosine decay per optimizer step to 0.1 x the rate;
- a learning rate per architecture family (:data:`CNN_LEARNING_RATE`, :data:`VIT_LEARNING_RATE`);
- ``test_time_mirroring``: predictions averaged over the 8 flips of the input
  (:mod:`mstnet.experiments.test_time`; evidence in :data:`TEST_TIME_MIRRORING`);
- for MST-Net's two-stage recipe, the classification stage on cached frozen outputs
  (:mod:`mstnet.experiments.frozen_stage`), set by its registration.

The evidence for each choice (inner validation only, on a development cohort that no
reported fold contains) is in the docstrings of the constants below and of the recipes that
use them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mstnet.experiments.registry import Recipe

WARMUP_FRACTION = 0.05
"""Share of a stage's optimizer steps spent warming the learning rate up linearly."""

CNN_LEARNING_RATE = 3e-3
"""Adam learning rate of the convolutional rows (ACSNet, MLTN, NASLung, SCAN, DeepCAD, MONAI and
smp references) at the cpu preset.

Evidence (development cohort DEV, fold 0's inner validation, batch 4, twelve epochs:
``mstnet reproduce paper-table --data DEV --preset cpu --folds 0 --epochs 12``): with the
short-run recipe at 3e-3, ACSNet's validation Dice rose 0.00 -> 0.59 and its AUC 0.46 -> 0.92,
MLTN's Dice 0.00 -> 0.50 (AUC 0.89), NASLung's AUC 0.50 -> 0.91, SCAN's 0.30 -> 0.96, DeepCAD's
0.64 -> 0.91. Not compared with 1e-3 for these rows: 3e-3 is the rate the ViT rows needed,
kept for one rate across the table; a per-row search is ``mstnet tune`` (nested)."""

VIT_LEARNING_RATE = 3e-3
"""Adam learning rate of the ViT-based rows (MST-Net, UNETR) at the cpu preset.

Evidence (development cohort: ``mstnet data synth --preset cpu --seed 1 --out DEV``; fold 0's
inner validation; segmentation stage only, six epochs of 24 steps,
``mstnet run mstnet --data DEV --preset cpu --folds 0 --set 'stages=["segmentation"]'
--set output_bias_init=true [--set learning_rate=...]``): with the output bias at the
prior, validation Dice stays 0.000 in all six epochs at 1e-3 (validation loss 1.111 ->
1.085), and reaches 0.161 at 3e-3 (loss 1.075 -> 0.941)."""


CLASSIFIER_EPOCHS = 16
"""Epochs at the cpu preset of what is cheap to train: the classification-only rows (NASLung,
SCAN, DeepCAD and the MONAI classifiers, about 0.03 s per step of two patients on one core
against 0.14-0.20 s for the segmentation rows). MST-Net's cached classification stage has a length of
its own (:data:`mstnet.experiments.catalog.CLASSIFICATION_STAGE_EPOCHS`). The preset's own 12 epochs
apply to everything else; the whole table then
fits in the preset's half hour on two cores (README)."""


TEST_TIME_MIRRORING = True
"""Whether the cpu recipes average their predictions over the 8 flips of D, H and W (nnU-Net's
test-time mirroring; training flips every axis, so every flip is an input the model was trained on).

Evidence (development cohort DEV, ``mstnet data synth --preset cpu --seed 1 --out DEV``; the
cpu table trained on its folds 0 and 1, ``mstnet reproduce paper-table --data DEV --preset cpu
--folds 0,1``; each fold's selected weights scored on its own inner-validation patients, 96 scans
and 48 patients over the two folds, with and without mirroring; ad-hoc script not kept): Dice
(crop) MST-Net 0.509 -> 0.509, UNETR 0.472 -> 0.484, ACSNet 0.507 -> 0.511, MLTN 0.435 -> 0.454;
AUC MST-Net 0.927 -> 0.920, ACSNet 0.782 -> 0.789, MLTN 0.873 -> 0.882, NASLung 0.852 -> 0.904,
SCAN 0.880 -> 0.841, DeepCAD 0.864 -> 0.889. MST-Net's segmentation stage alone on DEV (the six
learning-rate runs of docs/training.md, folds 0 and 1): Dice -0.4 to +1.1 points. Dice never
lower by more than half a point, +0.9 points on average over the four rows; AUC +0.8 points on
average, within the noise of 48 patients either way. Cost: 8 forward passes per test and
inner-validation batch instead of one."""


def short_run(recipe: Recipe, learning_rate: float, **changes: Any) -> Recipe:
    """``recipe`` with the short-run improvements, ``learning_rate`` and ``changes`` applied."""
    return replace(recipe, learning_rate=learning_rate, output_bias_init=True, lr_schedule="warmup_cosine",
                   warmup_fraction=WARMUP_FRACTION, test_time_mirroring=TEST_TIME_MIRRORING, **changes)


def own_length(epochs: int | None = None, stage_epochs: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Recipe fields of a training length of its own (``epochs`` per stage, or ``stage_epochs``),
    with early stopping off within it (patience = the longest stage)."""
    longest = max(stage_epochs) if stage_epochs else epochs
    return {"budget_from_preset": False, "epochs": epochs or longest, "stage_epochs": stage_epochs,
            "early_stopping_patience": longest}


def with_cpu_recipe(default: Recipe, learning_rate: float = CNN_LEARNING_RATE, epochs: int | None = None,
                    **changes: Any) -> dict[str, Recipe]:
    """``{"default": default, "cpu": short_run(default, ...)}``: the release's recipe everywhere
    (the ``paper`` and ``tiny`` presets) except the cpu preset, there with ``epochs`` of its
    own when given (:func:`own_length`)."""
    length = own_length(epochs) if epochs is not None else {}
    return {"default": default, "cpu": short_run(default, learning_rate, **length, **changes)}
