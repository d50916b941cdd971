"""A small synthetic RUNS_DIR in the documented results format (``docs/results-format.md``).

:func:`write_fake_runs` writes what ``mstnet run`` / ``reproduce`` / ``ablate`` write, with
random but seeded numbers, so the reports can be tested without training anything. Real runs
are checked against the same contract with
:func:`mstnet.reporting.results_check.check_runs_dir`.

Layout written::

    RUNS_DIR/splits.json, cohort.json, oracle.json
    RUNS_DIR/<experiment with "/" replaced by "__">/experiment.json
    RUNS_DIR/<experiment>/fold<k>/{config.json, run.json, metrics.json, history.csv,
                                   predictions.csv (classification), segmentation.csv and
                                   gallery.npz (segmentation)}
    RUNS_DIR/<experiment>/tuning/study.db, best_params.json   (with_study=True, first experiment)
    RUNS_DIR/benchmark.json                                     (with_benchmark=True)

``metrics.json`` of a fold is computed from that fold's ``predictions.csv`` and
``segmentation.csv`` with :mod:`mstnet.metrics`, exactly as the harness does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mstnet.metrics import classification_metrics


@dataclass(frozen=True)
class FakeExperiment:
    """One synthetic experiment.

    Attributes:
        name: registry name (may contain "/"; its folder replaces "/" by "__").
        tasks: subset of ("segmentation", "classification").
        group: "paper-table", "reference", "ablation" or "extra".
        table_row: the Table-1 row it fills, or None.
        information: the key of ``oracle.json`` its inputs match.
        footnote: deviation note shown under the table.
        separation: how far apart the malignant and benign logits are (larger = better AUC).
        dice_level: typical per-scan Dice (segmentation experiments).
    """

    name: str
    tasks: tuple[str, ...]
    group: str = "paper-table"
    table_row: str | None = None
    information: str = "scans2+clinical"
    footnote: str = ""
    separation: float = 1.5
    dice_level: float = 0.75


DEFAULT_EXPERIMENTS: tuple[FakeExperiment, ...] = (
    FakeExperiment("mstnet", ("segmentation", "classification"), table_row="MST-Net", separation=2.2, dice_level=0.80),
    FakeExperiment("unetr", ("segmentation",), table_row="UNETR", information="scans2", dice_level=0.74,
                   footnote="MONAI UNETR; narrower ViT on the cpu preset."),
    FakeExperiment("naslung", ("classification",), table_row="NASLung", information="scans1", separation=1.4,
                   footnote="(re-impl.) one fixed configuration instead of the architecture search."),
    FakeExperiment("ablation/single-timepoint", ("segmentation", "classification"), group="ablation",
                   information="scans1+clinical", separation=1.2, dice_level=0.76),
    FakeExperiment("ref/logistic-clinical", ("classification",), group="reference", information="clinical",
                   separation=0.8),
)

ORACLE = {"everything": 0.93, "scans2+clinical+reads": 0.93, "scans2+clinical": 0.91, "scans2": 0.89,
          "scans1+clinical": 0.81, "scans1": 0.78, "clinical+reads": 0.70, "clinical": 0.62}
GALLERY_SHAPE = (24, 24)


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _splits(patient_ids: list[str], labels: np.ndarray, n_folds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(patient_ids), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(members.size) % n_folds
    folds = []
    for k in range(n_folds):
        test = [p for p, f in zip(patient_ids, fold_of) if f == k]
        rest = [p for p, f in zip(patient_ids, fold_of) if f != k]
        folds.append({"fold": k, "train": rest[: int(len(rest) * 0.8)], "validation": rest[int(len(rest) * 0.8):],
                      "test": test})
    canonical = json.dumps([[f["fold"], sorted(f["train"]), sorted(f["validation"]), sorted(f["test"])] for f in folds],
                           separators=(",", ":"))
    return {"seed": seed, "n_folds": n_folds, "hash": hashlib.sha256(canonical.encode()).hexdigest(), "folds": folds}


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _gallery(rng: np.random.Generator, scans: pd.DataFrame, timepoints: list[str]) -> dict[str, np.ndarray]:
    """Best, median and worst patients of the fold by mean Dice; a disc nodule per time point."""
    dice_by_patient = scans.groupby("patient_id", sort=False)["dice"].mean().sort_values()
    picks = sorted({0, len(dice_by_patient) // 2, len(dice_by_patient) - 1})
    images, masks, preds = [], [], []
    for index in picks:
        dice = float(dice_by_patient.iloc[index])
        image_t, mask_t, pred_t = [], [], []
        for t in range(len(timepoints)):
            radius = 4.0 + t
            centre = (12.0 + rng.normal(0, 1), 12.0 + rng.normal(0, 1))
            mask = _disc(GALLERY_SHAPE, centre, radius)
            shift = (1.0 - dice) * 2 * radius
            pred = _disc(GALLERY_SHAPE, (centre[0], centre[1] + shift), radius)
            image_t.append((-850.0 + 890.0 * mask + 30.0 * rng.standard_normal(GALLERY_SHAPE)).astype(np.float32))
            mask_t.append(mask), pred_t.append(pred)
        images.append(image_t), masks.append(mask_t), preds.append(pred_t)
    return {"image": np.array(images, np.float32), "mask": np.array(masks, bool), "pred": np.array(preds, bool),
            "patient_id": dice_by_patient.index[picks].to_numpy().astype(str),
            "dice": dice_by_patient.iloc[picks].to_numpy(np.float64), "timepoints": np.array(timepoints)}


def _history(rng: np.random.Generator, epochs: int) -> pd.DataFrame:
    epoch = np.arange(epochs)
    train = 1.0 * np.exp(-epoch / 4) + 0.2 + 0.02 * rng.standard_normal(epochs)
    val = 1.1 * np.exp(-epoch / 5) + 0.3 + 0.04 * rng.standard_normal(epochs)
    return pd.DataFrame({"epoch": epoch, "train_loss": train, "val_loss": val,
                         "val_score": 1.0 - val / 2, "lr": 1e-4 * (0.1 + 0.9 * np.cos(epoch / epochs * np.pi / 2))})


def _write_study(folder: Path, seed: int, n_trials: int = 8) -> None:
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="fake", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(lambda trial: -(np.log10(trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)) + 3.5) ** 2
                   - 0.1 * trial.suggest_float("dropout", 0.0, 0.3), n_trials=n_trials)
    _write_json(folder / "best_params.json", study.best_params)


def _write_benchmark(path: Path) -> None:
    benchmarks = [{"name": name, "fullname": f"benchmarks/test_speed.py::{name}", "group": None,
                   "stats": {"min": mean * 0.9, "max": mean * 1.2, "mean": mean, "stddev": mean * 0.05,
                             "median": mean, "rounds": 5, "ops": 1.0 / mean}}
                  for name, mean in (("test_forward_tiny", 0.012), ("test_segmentation_metrics", 0.0031))]
    _write_json(path, {"machine_info": {"node": "fake", "python_version": "3.12"}, "commit_info": {},
                       "benchmarks": benchmarks, "datetime": "2025-01-01T00:00:00", "version": "5.1.0"})


def write_fake_runs(
    runs_dir: Path,
    experiments: tuple[FakeExperiment, ...] = DEFAULT_EXPERIMENTS,
    n_patients: int = 40,
    n_folds: int = 5,
    timepoints: tuple[str, ...] = ("T0", "T1"),
    epochs: int = 12,
    seed: int = 0,
    with_oracle: bool = True,
    with_study: bool = False,
    with_benchmark: bool = False,
) -> Path:
    """Write a synthetic RUNS_DIR and return its path.

    Args:
        runs_dir: folder to create (or fill).
        experiments: the experiments to write; defaults to :data:`DEFAULT_EXPERIMENTS` (MST-Net
            with both tasks, a segmentation-only and a classification-only Table-1 row, an
            ablation and a reference).
        n_patients: patients (alternately benign and malignant).
        n_folds: folds; every patient is in exactly one test fold.
        timepoints: time-point names of every patient's scans.
        epochs: rows of each ``history.csv``.
        seed: seed of every random draw.
        with_oracle: write ``oracle.json``.
        with_study: write an Optuna study for the first experiment (``tuning/study.db``).
        with_benchmark: write a pytest-benchmark JSON as ``RUNS_DIR/benchmark.json``.
    """
    runs_dir = Path(runs_dir)
    rng = np.random.default_rng(seed)
    patient_ids = [f"P{i:03d}" for i in range(n_patients)]
    labels = np.arange(n_patients) % 2
    splits = _splits(patient_ids, labels, n_folds, seed)
    _write_json(runs_dir / "splits.json", splits)
    _write_json(runs_dir / "cohort.json", {
        "name": "fake-cohort", "source": "synthetic (tests/fake_runs.py)", "patients": n_patients,
        "malignant": int(labels.sum()), "synthetic": True, "preset": "tiny", "splits_hash": splits["hash"],
        "note": "synthetic cohort with known ground truth (not NLST)"})
    if with_oracle:
        _write_json(runs_dir / "oracle.json", ORACLE)
    label_of = dict(zip(patient_ids, labels.tolist()))
    patient_difficulty = dict(zip(patient_ids, rng.normal(0.0, 0.06, n_patients)))
    for experiment in experiments:
        folder = runs_dir / experiment.name.replace("/", "__")
        _write_json(folder / "experiment.json", {
            "name": experiment.name, "description": f"synthetic {experiment.name}", "tasks": list(experiment.tasks),
            "group": experiment.group, "table_row": experiment.table_row, "information": experiment.information,
            "footnote": experiment.footnote, "kind": "torch", "data_view": {"timepoints": len(timepoints),
                                                                             "use_clinical": True}})
        for fold in splits["folds"]:
            k = fold["fold"]
            fold_dir = folder / f"fold{k}"
            test = fold["test"]
            metrics: dict = {"segmentation": None, "classification": None, "convention": "monai",
                             "average": "binary", "threshold": 0.5}
            if "classification" in experiment.tasks:
                y = np.array([label_of[p] for p in test])
                logits = experiment.separation * (y - 0.5) + rng.normal(0.0, 1.0, y.size)
                probability = 1.0 / (1.0 + np.exp(-logits))
                predictions = pd.DataFrame({"patient_id": test, "fold": k, "label": y, "probability": probability})
                fold_dir.mkdir(parents=True, exist_ok=True)
                predictions.to_csv(fold_dir / "predictions.csv", index=False)
                metrics["classification"] = classification_metrics(y, probability)
                validation_threshold = 0.3 + 0.05 * k  # stands in for the fold's inner-validation choice
                metrics["classification_at_validation_threshold"] = classification_metrics(
                    y, probability, threshold=validation_threshold)
                metrics["validation_threshold"] = validation_threshold
            if "segmentation" in experiment.tasks:
                rows = []
                for p in test:
                    for t in timepoints:
                        dice = float(np.clip(experiment.dice_level + patient_difficulty[p] + rng.normal(0, 0.05), 0.05, 0.99))
                        hd95 = float(2.0 + 40.0 * (1.0 - dice) + abs(rng.normal(0, 1.5)))
                        reference = 15.0 * 1.6 ** (sum(map(ord, p + t)) % 14)  # about 3 to 30 mm across
                        rows.append({"patient_id": p, "timepoint": t, "fold": k, "dice": dice,
                                     "jaccard": dice / (2.0 - dice), "hd95": hd95, "asd": hd95 / 5.0,
                                     "reference_volume_mm3": reference, "predicted_volume_mm3": reference * dice})
                scans = pd.DataFrame(rows)
                fold_dir.mkdir(parents=True, exist_ok=True)
                scans.to_csv(fold_dir / "segmentation.csv", index=False)
                metrics["segmentation"] = {key: float(scans[key].mean()) for key in ("dice", "jaccard", "hd95", "asd")}
                np.savez_compressed(fold_dir / "gallery.npz", **_gallery(rng, scans, list(timepoints)))
            _history(rng, epochs).to_csv(fold_dir / "history.csv", index=False)
            _write_json(fold_dir / "metrics.json", metrics)
            _write_json(fold_dir / "config.json", {"experiment": experiment.name, "fold": k, "preset": "tiny"})
            _write_json(fold_dir / "run.json", {
                "status": "complete", "experiment": experiment.name, "fold": k, "splits_hash": splits["hash"],
                "git_commit": "0" * 40, "python": "3.12", "torch": "2.x", "cuda": None, "device": "cpu",
                "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:00+00:00",
                "wall_s": 60.0 + k, "selected_epoch": epochs - 2, "threshold": 0.5})
    if with_study and experiments:
        _write_study(runs_dir / experiments[0].name.replace("/", "__") / "tuning", seed)
    if with_benchmark:
        _write_benchmark(runs_dir / "benchmark.json")
    return runs_dir
