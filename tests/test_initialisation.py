"""Output-bias initialisation: every deep model of the suite starts at the priors it is given.

For each registered torch experiment (tiny size), the biases are set on one batch; the mean
foreground probability of the whole model's segmentation output, and its mean malignancy
probability, are then measured on that batch and on a second one and must equal the priors
within 10% (relative). The training schedule with warm-up is checked against its formula.
"""

from __future__ import annotations

import math

import pytest
import torch

from mstnet.experiments.initialisation import initialise_output_biases
from mstnet.experiments.registry import ModelContext, Recipe, get_experiment, list_experiments
from mstnet.experiments.optimisation import stage_scheduler
from mstnet.experiments.training import malignancy_probability
from mstnet.models.output import foreground_map

FOREGROUND_PRIOR = 0.02
CLASS_PRIOR = 0.3
DEEP = [s.name for g in ("paper-table", "reference", "ablation") for s in list_experiments(group=g)
        if s.kind == "torch" and s.name not in ("monai-swinunetr",)]


def _inputs(t: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(3, t, 1, 8, 32, 32, generator=generator),
            "clinical_categorical": torch.ones(3, 2, dtype=torch.long),
            "clinical_numeric": torch.randn(3, 1, generator=generator), "days": torch.tensor([[0.0, 365.0][:t]] * 3)
            if t <= 2 else torch.zeros(3, t)}


@pytest.mark.parametrize("name", DEEP)
def test_initial_mean_probabilities_equal_the_priors(name):
    spec = get_experiment(name)
    t = spec.data_view.timepoints
    context = ModelContext(image_size=(8, 32, 32), num_timepoints=t, clinical_cardinalities=(3, 3), num_numeric=1,
                           use_clinical=spec.data_view.use_clinical, preset="tiny")
    torch.manual_seed(0)
    model = spec.build(context)
    first, second = _inputs(t, 1), _inputs(t, 2)
    segmentation, classification = "segmentation" in spec.tasks, "classification" in spec.tasks
    result = initialise_output_biases(model, lambda: model(**first), FOREGROUND_PRIOR if segmentation else None,
                                      CLASS_PRIOR if classification else None)
    model.eval()
    with torch.no_grad():
        outputs = [model(**first), model(**second)]
    if segmentation:
        assert result.segmentation_layer is not None
        assert abs(result.segmentation_before - FOREGROUND_PRIOR) > 0.1 * FOREGROUND_PRIOR  # it had to move
        for output in outputs:
            assert float(foreground_map(output.seg_logits.float()).mean()) == pytest.approx(FOREGROUND_PRIOR, rel=0.1)
    if classification:
        assert result.classification_layer is not None
        for output in outputs[:1]:
            assert float(malignancy_probability(output.cls_logits).mean()) == pytest.approx(CLASS_PRIOR, rel=0.1)


def test_warmup_cosine_schedule_follows_its_formula():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    recipe = Recipe(learning_rate=1e-3, lr_schedule="warmup_cosine", warmup_fraction=0.1, final_lr_fraction=0.1)
    scheduler, per_step = stage_scheduler(optimizer, recipe, epochs=5, steps_per_epoch=20)
    assert per_step
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    warmup = 10
    assert rates[0] == pytest.approx(1e-3 / (warmup + 1))
    assert rates[warmup - 1] == pytest.approx(1e-3 * warmup / (warmup + 1))
    assert rates[warmup] == pytest.approx(1e-3)
    middle = warmup + 45
    assert rates[middle] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90))))
    assert rates[-1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90))))
    assert max(rates) == pytest.approx(1e-3)
