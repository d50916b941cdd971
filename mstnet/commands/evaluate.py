"""``mstnet evaluate PRED --data COHORT --name NAME --out RUNS_DIR``: score another tool's masks and probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()

PATTERN_HELP = ("how masks in PRED are named; {patient_id} and {timepoint} are replaced by each scan's "
                "(e.g. '{patient_id}/{timepoint}.nii.gz', '{patient_id}_{timepoint}.npy', or "
                "'{patient_id}_{timepoint}' for DICOM series folders)")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("evaluate")
    def evaluate_command(
        predictions: Path = typer.Argument(..., help="folder of predicted masks (and maybe probabilities.csv), "
                                           "or a CSV of patient probabilities (patient_id,probability)"),
        name: str = typer.Option(..., "--name", help="the method's name in the results (OUT/<name>/)"),
        out: Path = typer.Option(..., "--out", help="results folder to write into (may be the --folds-from folder)"),
        data: Path | None = typer.Option(None, "--data", help="the cohort the predictions are for (default: the "
                                         "cohort of --folds-from, its cohort.json 'source')"),
        folds_from: Path | None = typer.Option(None, "--folds-from", help="score on the folds of this results folder "
                                               "(its splits.json; each test patient in its fold); default: one fold "
                                               "holding every patient"),
        folds: str | None = typer.Option(None, help="comma-separated folds to score (default: every fold with a "
                                         "prediction for one of its test patients)"),
        probabilities: Path | None = typer.Option(None, "--probabilities", help="CSV of patient probabilities "
                                                  "(default: PRED/probabilities.csv when present)"),
        pattern: str | None = typer.Option(None, "--pattern", help=PATTERN_HELP + "; default {patient_id}_{timepoint}.nii.gz"),
        timepoints: int | None = typer.Option(None, "--timepoints", min=1, help="score the latest K scans of each "
                                              "patient (default: every scan, or what PRED/prediction.json records)"),
        resample: bool = typer.Option(False, "--resample", help="resample masks on another grid than their image's "
                                      "onto it (nearest neighbour) instead of refusing them"),
        binarize_predictions: str | None = typer.Option(None, "--binarize-predictions", help="accept predicted masks "
                                                        "with other values: 'nonzero' or 'half' (value >= 0.5)"),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", help="the same for the cohort's "
                                                  "reference masks"),
        description: str | None = typer.Option(None, help="one line describing the method (experiment.json)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier `mstnet evaluate` results of NAME"),
    ) -> None:
        """Score predicted masks and/or probabilities with the suite's metrics, on the suite's folds, into a
        results folder that `mstnet report` reads like the suite's own."""
        from mstnet.data.sources import load_cohort
        from mstnet.errors import UsageError
        from mstnet.commands.experiments import parse_folds
        from mstnet.experiments.evaluation import evaluate_predictions
        from mstnet.experiments.prediction_folder import DEFAULT_PATTERN

        if data is None:
            source = None
            if folds_from is not None and (folds_from / "cohort.json").exists():
                source = json.loads((folds_from / "cohort.json").read_text()).get("source")
            if not source:
                raise UsageError("give --data COHORT (the cohort the predictions are for)")
            data = Path(source)
        cohort = load_cohort(data, binarize_masks=binarize_masks)
        evaluation = evaluate_predictions(
            predictions, cohort, out, name, cohort_dir=data, folds_from=folds_from, folds=parse_folds(folds),
            probabilities=probabilities, pattern=pattern or DEFAULT_PATTERN, timepoints=timepoints, resample=resample,
            binarize_predictions=binarize_predictions, description=description, overwrite=overwrite)
        _print_evaluation(evaluation, out)


def _print_evaluation(evaluation, out: Path) -> None:
    """One line per scored fold (Dice and HD95, AUC), the resampled masks, and where the results are."""
    for k, metrics in evaluation.metrics.items():
        parts = [f"fold {k}:"]
        if metrics["segmentation"]:
            seg = metrics["segmentation"]
            parts.append(f"Dice {seg['dice']:.4f}, HD95 {seg['hd95']:.2f} mm over {len(evaluation.scans[k])} scans")
        if metrics["classification"]:
            auc = metrics["classification"]["auc"]
            parts.append(f"AUC {'undefined' if auc is None else f'{auc:.4f}'} over {len(evaluation.patients[k])} patients")
        console.print(" ".join(parts), markup=False, highlight=False)
    resampled = sum(len(v) for v in evaluation.resampled.values())
    if resampled:
        console.print(f"{resampled} mask(s) resampled onto their image's grid", markup=False)
    console.print(f"results in {evaluation.folder} (mstnet report {out})", markup=False, highlight=False)
