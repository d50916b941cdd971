"""Write the synthetic cohort into a folder (``docs/cohort.md``): :func:`synthesize_cohort`, :func:`ensure_default_cohort`.

The tabular truth (:mod:`mstnet.synth.truth_table`) first, then the images, one patient per
task (:mod:`mstnet.synth.rendering`). Output: ``images/`` and ``masks/`` (NIfTI), the cohort
files (``manifest.csv``, ``clinical.csv``, ``clinical_schema.json``), ``ground_truth.csv``,
``oracle.json`` and ``cohort.json``. Generation goes into ``<out>.partial`` with a per-patient
completion record, so an interrupted run resumes; the folder is renamed at the end, and a lock
file ``<out>.lock`` makes concurrent callers wait for one generator.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mstnet.atomic import write_text_atomic
from mstnet.data.cohort import ClinicalSchema, Cohort, NoduleLocation, Patient, Scan
from mstnet.synth.config import GENERATOR_VERSION, SynthConfig
from mstnet.synth.oracle import oracle_report, stored_scores, write_oracle
from mstnet.synth.presets import synth_config
from mstnet.synth.rendering import render_patient
from mstnet.synth.risk import TEXTURES
from mstnet.synth.shape_bank import ShapeBank, cache_root, load_shape_bank
from mstnet.synth.truth_table import draw_cohort_table

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
    if _is_finished(out_dir, fingerprint):
        return out_dir
    bank = bank or load_shape_bank(config.bank_spacing_mm, progress=progress)
    table = draw_cohort_table(config, bank)
    work = _work_folder(out_dir, fingerprint)
    results = _render_patients(config, table, bank, work, workers, progress)
    _write_cohort_files(config, table, results, bank, work)
    shutil.rmtree(work / ".progress")
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(work, out_dir)
    log.info("synthetic cohort %s: %d patients (%d malignant) in %s", config.name, len(table), int(table["label"].sum()), out_dir)
    return out_dir


def _is_finished(out_dir: Path, fingerprint: str) -> bool:
    """Whether ``out_dir`` is a finished cohort of ``fingerprint``; raises if it holds anything else."""
    marker = out_dir / "cohort.json"
    if marker.exists():
        existing = json.loads(marker.read_text()).get("fingerprint")
        if existing == fingerprint:
            return True
        raise FileExistsError(f"{out_dir} holds a synthetic cohort made with other parameters (fingerprint {existing}, "
                              f"wanted {fingerprint}); choose another folder or delete it")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a finished synthetic cohort; choose another folder or delete it")
    return False


def _work_folder(out_dir: Path, fingerprint: str) -> Path:
    """``<out_dir>.partial``, kept when an earlier run of the same ``fingerprint`` left it, else started afresh."""
    work = out_dir.with_name(out_dir.name + ".partial")
    stamp = work / ".progress" / "fingerprint"
    if work.exists() and (not stamp.exists() or stamp.read_text().strip() != fingerprint):
        shutil.rmtree(work)
    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "masks").mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, fingerprint + "\n")
    return work


def _render_patients(config: SynthConfig, table: pd.DataFrame, bank: ShapeBank, work: Path, workers: int | None,
                     progress: bool) -> dict[str, dict]:
    """Every patient's :func:`render_patient` result by id: read back where a previous run finished it, else rendered."""
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
    return results


def _render_job(job: tuple) -> dict[str, Any]:
    config, record, bank_mask, seed, folder = job
    result = render_patient(config, record, bank_mask, seed, folder)
    write_text_atomic(folder / ".progress" / f"{result['patient_id']}.json", json.dumps(result) + "\n")
    return result


def _write_cohort_files(config: SynthConfig, table: pd.DataFrame, results: dict[str, dict], bank: ShapeBank, work: Path) -> None:
    """The cohort files, ``ground_truth.csv``, ``oracle.json`` and, last, ``cohort.json`` (the mark of a finished folder)."""
    cohort = _build_cohort(config, table, results, work)
    cohort.write(work)
    truth = _ground_truth(config, table, results)
    write_text_atomic(work / "ground_truth.csv", truth.to_csv(index=False))
    report = oracle_report(table, config, bank, scores=stored_scores(table))
    write_oracle(work, report)
    write_text_atomic(work / "cohort.json", json.dumps({
        "name": f"synthetic-{config.name}",
        "synthetic": True,
        "fingerprint": config.fingerprint(),
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


def default_cohort_root() -> Path:
    """Where :func:`ensure_default_cohort` keeps its cohorts: ``<cache>/cohorts``."""
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
    config = synth_config(preset, seed=seed, **overrides)
    # the fingerprint in the name: a changed generator (or override) makes a new folder, never a clash
    name = f"{preset}_seed{seed}_{config.fingerprint()}"
    folder = Path(root) if root is not None else default_cohort_root()
    return synthesize_cohort(config, folder / name, workers=workers, progress=progress)
