"""``mstnet predict RUN_DIR --data NEW --out DIR``: masks and probabilities for new cases from trained folds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("predict")
    def predict_command(
        run_dir: Path = typer.Argument(..., help="results folder of `mstnet run` (or one experiment's folder in it)"),
        data: Path = typer.Option(..., "--data", help="cohort folder of the cases to predict (labels and masks "
                                  "may be left out)"),
        out: Path = typer.Option(..., "--out", help="folder for {patient_id}_{timepoint}.nii.gz masks, "
                                 "probabilities.csv and prediction.json"),
        experiment: str | None = typer.Option(None, "--experiment", help="which experiment of RUN_DIR (needed when "
                                              "it holds several)"),
        fold: int | None = typer.Option(None, "--fold", min=0, help="predict with this fold only"),
        ensemble: bool = typer.Option(False, "--ensemble", help="mean of every trained fold (the default)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        train_data: Path | None = typer.Option(None, "--train-data", help="the cohort RUN_DIR was trained on, when it "
                                               "moved from RUN_DIR/cohort.json's source (the clinical encoder is "
                                               "refitted on each fold's training patients)"),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", help="how masks of the new cases are "
                                                  "read, if they have any: 'nonzero' or 'half'"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier predictions in --out"),
    ) -> None:
        """Predict new cases with the fold checkpoints of a results folder: the mean of the folds
        (default) or one fold; masks in each source image's geometry and patient probabilities."""
        from mstnet.errors import UsageError
        from mstnet.experiments.prediction import load_unlabelled_cohort, predict_cohort
        from mstnet.experiments.training import resolve_device

        if fold is not None and ensemble:
            raise UsageError("--fold and --ensemble exclude each other: one fold, or the mean of all folds")
        cohort = load_unlabelled_cohort(data, binarize_masks=binarize_masks)
        result = predict_cohort(run_dir, cohort, out, experiment=experiment, fold=fold, device=resolve_device(device),
                                train_data=train_data, overwrite=overwrite)
        folds = ", ".join(map(str, result.folds))
        console.print(f"{result.experiment} ({'fold ' + folds if len(result.folds) == 1 else 'mean of folds ' + folds}): "
                      f"{result.masks} masks, {len(result.probabilities)} probabilities in {out}",
                      markup=False, highlight=False)
