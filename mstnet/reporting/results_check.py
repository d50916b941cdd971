"""The contract problems of a RUNS_DIR (``docs/results-format.md``), as readable lines."""

from __future__ import annotations

from pathlib import Path

from mstnet.reporting.results import ResultsError, load_results, read_json


def check_runs_dir(runs_dir: str | Path) -> list[str]:
    """Contract problems of a RUNS_DIR, as readable lines (empty when it follows ``docs/results-format.md``).

    Beyond what :func:`load_results` enforces, checks that ``splits.json`` and ``cohort.json``
    exist, that every complete fold's test patients are the ones in ``splits.json``, and that
    segmentation experiments wrote ``segmentation.csv`` and ``gallery.npz``.
    """
    runs_dir = Path(runs_dir)
    problems = []
    for name in ("splits.json", "cohort.json"):
        if not (runs_dir / name).exists():
            problems.append(f"{runs_dir / name}: missing")
    try:
        results = load_results(runs_dir)
    except ResultsError as error:
        return [*problems, str(error)]
    test_of = {}
    if (runs_dir / "splits.json").exists():
        test_of = {f["fold"]: set(map(str, f["test"])) for f in read_json(runs_dir / "splits.json").get("folds", [])}
    predictions = results.seed_predictions
    for name, meta in results.experiments.iterrows():
        rows = results.seed_fold_metrics[results.seed_fold_metrics["experiment"] == name]
        for seed, k in zip(rows["seed"].astype(int), rows["fold"].astype(int)):
            fold_dir = (meta["folder"] / f"seed{seed}" if seed else meta["folder"]) / f"fold{k}"
            if "segmentation" in meta["tasks"]:
                for file in ("segmentation.csv", "gallery.npz"):
                    if not (fold_dir / file).exists():
                        problems.append(f"{fold_dir / file}: missing (experiment {name!r} declares segmentation)")
            if "classification" in meta["tasks"] and k in test_of:
                patients = set(predictions.loc[(predictions["experiment"] == name) & (predictions["seed"] == seed)
                                               & (predictions["fold"] == k), "patient_id"])
                if patients != test_of[k]:
                    problems.append(f"{fold_dir / 'predictions.csv'}: patients differ from splits.json fold {k} test "
                                    f"({len(patients - test_of[k])} extra, {len(test_of[k] - patients)} missing)")
    return problems
