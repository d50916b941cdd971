"""Has a fold's training reached its plateau? The verdict recorded in ``run.json``.

Each stage is judged on its own inner-validation metric: Dice for a stage that trains
segmentation, AUC for one that trains classification only (the validation score, the
negative loss, when neither is defined). The *gain* is the best value over the last third
of the stage's epochs minus the best value before it; the stage has reached its plateau
when the gain is below :data:`PLATEAU_GAIN` (one point of Dice or AUC). A still-rising
curve fails, a flat or falling one passes; a stage stopped early by its patience has, by
construction, gained nothing over its last epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PLATEAU_GAIN = 0.01
"""Largest inner-validation gain over the last third of a stage that still counts as a plateau (fraction)."""

MIN_EPOCHS = 3
"""A stage needs this many epochs for a verdict (one in its last third, two before)."""


def stage_metric(stage: str, rows: Sequence[dict[str, Any]]) -> str:
    """The metric a stage is judged on: ``val_dice``, ``val_auc`` or ``val_score``."""
    def defined(key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) for r in rows)

    if stage in ("segmentation", "joint") and defined("val_dice"):
        return "val_dice"
    if defined("val_auc"):
        return "val_auc"
    return "val_score"


def plateau_verdict(values: Sequence[float], threshold: float = PLATEAU_GAIN) -> dict[str, Any]:
    """``{"gain", "threshold", "reached"}`` for one curve (NaN values ignored).

    Raises:
        ValueError: a non-positive threshold.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < MIN_EPOCHS:
        return {"gain": None, "threshold": threshold, "reached": False, "reason": f"fewer than {MIN_EPOCHS} epochs"}
    split = len(finite) - max(1, len(finite) // 3)
    gain = max(finite[split:]) - max(finite[:split])
    return {"gain": gain, "threshold": threshold, "reached": gain < threshold}


def fold_plateau(history: Sequence[dict[str, Any]], threshold: float = PLATEAU_GAIN) -> dict[str, dict[str, Any]]:
    """The verdict of every stage of a fold's history (rows of ``history.csv``), keyed by stage,
    with the stage's epochs and optimizer steps."""
    verdicts: dict[str, dict[str, Any]] = {}
    steps_before = 0
    for stage in dict.fromkeys(row["stage"] for row in history):
        rows = [row for row in history if row["stage"] == stage]
        metric = stage_metric(stage, rows)
        last_step = int(rows[-1].get("step", 0) or 0)
        verdicts[stage] = {"metric": metric, "epochs": len(rows), "steps": last_step - steps_before,
                           **plateau_verdict([r[metric] for r in rows], threshold)}
        steps_before = last_step
    return verdicts


def short_of_plateau(verdicts: dict[str, dict[str, Any]]) -> str:
    """``""`` when every stage reached its plateau, else e.g. ``"segmentation: val_dice +0.052"``."""
    return "; ".join(f"{stage}: {v['metric']} " + (f"+{v['gain']:.3f}" if v["gain"] is not None else v.get("reason", ""))
                     for stage, v in verdicts.items() if not v["reached"])
