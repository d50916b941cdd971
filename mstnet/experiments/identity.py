"""Run identity: one results folder holds one configuration.

Every fold records its full resolved configuration in ``config.json`` (experiment, model
settings, recipe, preset, data view, cohort fingerprint, splits hash) with its SHA-256,
``identity``. Before anything is written, a run into a folder whose fold holds another
identity is refused, naming the fields that differ; ``--overwrite`` removes those folds
first. A resume therefore only ever continues the same configuration.

What is *not* part of the identity, because it does not change results: the number of
parallel jobs, DataLoader workers, progress bars, and where the cohort cache lives.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mstnet.data.cohort import Cohort
from mstnet.errors import UsageError
from mstnet.results_files import CONFIG_FILE

IDENTITY_KEY = "identity"
PRESET_FIELDS_OUTSIDE_IDENTITY = ("jobs",)
"""Preset fields that change how a run is scheduled, not what it computes."""
RECIPE_FIELDS_RECORDED_WHEN_SET = {"large_nodule_weight": 1.0}
"""Recipe fields added after results were first recorded, with the value that trains as before they
existed: ``config.json`` holds one only when it differs from that value, so finished results keep
their identity (and resume) across the upgrade that added it."""


def recorded_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` (a :class:`mstnet.experiments.registry.Recipe` as a dict) as ``config.json`` records it:
    without the fields of :data:`RECIPE_FIELDS_RECORDED_WHEN_SET` at their neutral values."""
    return {key: value for key, value in recipe.items()
            if not (key in RECIPE_FIELDS_RECORDED_WHEN_SET and value == RECIPE_FIELDS_RECORDED_WHEN_SET[key])}


def _file_size(path: Path) -> int | None:
    """Size in bytes of a file, or of the files of a folder (a DICOM series); None when absent."""
    try:
        if path.is_dir():
            return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
        return path.stat().st_size
    except OSError:
        return None


def cohort_fingerprint(cohort: Cohort) -> str:
    """SHA-256 of what a run reads of ``cohort``: patients, labels, scans (time point, days,
    file names and sizes, nodule location), clinical records, schema and mask rule.

    File contents are represented by their sizes, so the fingerprint costs no image reads;
    moving the cohort folder keeps it, regenerating the cohort with other settings changes it.
    """
    patients = []
    for patient in cohort:
        scans = [[scan.timepoint, float(scan.days), Path(scan.image).name, _file_size(Path(scan.image)),
                  Path(scan.mask).name if scan.mask is not None else None,
                  _file_size(Path(scan.mask)) if scan.mask is not None else None,
                  None if scan.nodule is None else [scan.nodule.x, scan.nodule.y, scan.nodule.z1, scan.nodule.z2]]
                 for scan in patient.scans]
        patients.append([patient.patient_id, patient.label, scans,
                         sorted((str(k), str(v)) for k, v in patient.clinical.items())])
    schema = cohort.clinical_schema
    payload = {"patients": patients, "categorical": list(schema.categorical), "numeric": list(schema.numeric),
               "mask_binarization": getattr(cohort, "mask_binarization", None)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def configuration_hash(configuration: Mapping[str, Any]) -> str:
    """SHA-256 of a configuration (canonical JSON, keys sorted; the ``identity`` key itself excluded)."""
    body = {k: v for k, v in configuration.items() if k != IDENTITY_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def differing_fields(recorded: Mapping[str, Any], wanted: Mapping[str, Any], limit: int = 6) -> list[str]:
    """``"recipe.learning_rate: 0.001 -> 0.01"`` for each leaf field that differs (at most ``limit``)."""
    old, new = _flatten(json.loads(json.dumps(recorded, default=str))), _flatten(json.loads(json.dumps(wanted, default=str)))
    keys = sorted(k for k in set(old) | set(new) if k != IDENTITY_KEY and old.get(k, "<absent>") != new.get(k, "<absent>"))
    lines = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"and {len(keys) - limit} more")
    return lines


def recorded_configuration(fold_dir: Path) -> dict[str, Any] | None:
    """The configuration a fold folder holds, ``{}`` for results without one, None for no results."""
    path = Path(fold_dir) / CONFIG_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    if Path(fold_dir).is_dir() and any(Path(fold_dir).iterdir()):
        return {}
    return None


def identity_conflict(fold_dir: Path, configuration: Mapping[str, Any]) -> str | None:
    """Why ``fold_dir`` cannot take a run of ``configuration`` (None when it can: empty, or the same identity)."""
    recorded = recorded_configuration(fold_dir)
    if recorded is None or recorded.get(IDENTITY_KEY) == configuration[IDENTITY_KEY]:
        return None
    if IDENTITY_KEY not in recorded:
        return f"{fold_dir} holds results without a configuration identity (an older or damaged run)"
    changes = "; ".join(differing_fields(recorded, configuration)) or "the configuration hash"
    return f"{fold_dir} holds another configuration ({changes})"


def refuse_conflicts(conflicts: list[str]) -> None:
    """Raise one :class:`UsageError` naming every conflicting fold, or nothing."""
    if not conflicts:
        return
    head = conflicts[0] if len(conflicts) == 1 else f"{len(conflicts)} folds hold other configurations: " + " | ".join(conflicts)
    raise UsageError(f"{head}; pass --overwrite to replace those results, or use another --out")
