"""Does a trained model's own segmentation carry the growth signal the spatiotemporal claim rests on?

For every patient of a synthetic cohort, the volume of the predicted mask at the two latest
rounds, read out-of-fold (fold k's checkpoint for fold k's test patients), gives a growth estimate
log(V_T2 / V_T1). The volumes come from the run's own ``segmentation.csv`` (its
``predicted_volume_mm3`` column, written by runs made since it exists), or, for older runs, from
the masks that ``mstnet predict`` of each fold wrote. Its AUC is printed beside the AUC of the
true growth, of the ground-truth masks' growth and of the oracle ceilings, with the error of the
estimate. If the predicted growth separates the classes much worse than the true growth, no
classifier on that segmentation can show the spatiotemporal claim: the volume measurement is
too imprecise, whatever the fusion does.

It then asks how much a simple fusion could make of those measurements: a logistic regression,
cross-validated on the run's own outer folds, of the clinical record at its best (the logit of the
oracle posterior given the record alone, ``oracle_clinical`` of ``oracle_posteriors.csv``) with the
latest predicted volume and the predicted growth; the same with the true volumes; and the model's
own out-of-fold AUC (``predictions.csv``). A diagnostic bound, not a benchmark row: it reads the
generator's posterior.

Usage (after ``mstnet reproduce claims``)::

    python scripts/claims_growth_probe.py runs/claims-cpu-claims COHORT

and, for results without the volume columns::

    for k in 0 1 2 3 4; do
      mstnet predict runs/claims-cpu-claims --experiment mstnet --fold $k --data COHORT --out pred/fold$k
    done
    python scripts/claims_growth_probe.py runs/claims-cpu-claims COHORT --predictions pred
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mstnet.reporting.results import Results, load_results
from mstnet.reporting.table_data import pooled_predictions
from mstnet.results_files import VOLUME_COLUMNS

EMPTY_MASK_VOLUME_MM3 = 1.0
"""Added to both volumes of the predicted growth, so an empty prediction gives a finite ratio."""


def predicted_volumes(runs_dir: Path, predictions: Path, rounds: tuple[str, str]) -> pd.DataFrame:
    """Out-of-fold predicted mask volume (mm^3) of each test patient at the two rounds, for the folds
    that have a ``predictions/fold<k>`` folder."""
    splits = json.loads((runs_dir / "splits.json").read_text())
    rows = []
    for fold in splits["folds"]:
        if not (predictions / f"fold{fold['fold']}").is_dir():
            continue
        for patient in fold["test"]:
            row = {"patient_id": patient, "fold": fold["fold"]}
            for timepoint in rounds:
                image = nib.load(predictions / f"fold{fold['fold']}" / f"{patient}_{timepoint}.nii.gz")
                voxel = float(np.prod(image.header.get_zooms()[:3]))
                row[f"predicted_{timepoint}"] = float(np.asarray(image.dataobj).astype(bool).sum()) * voxel
            rows.append(row)
    return pd.DataFrame(rows).set_index("patient_id")


def recorded_volumes(results: Results, experiment: str, rounds: tuple[str, str]) -> pd.DataFrame:
    """Out-of-fold predicted mask volume (mm^3) of each test patient at the two rounds, from the
    experiment's ``segmentation.csv`` (mean over training seeds when there are several)."""
    scans = results.segmentation[results.segmentation["experiment"] == experiment]
    if scans.empty or VOLUME_COLUMNS[1] not in scans.columns or scans[VOLUME_COLUMNS[1]].isna().any():
        raise SystemExit(f"{experiment}: its segmentation.csv has no {VOLUME_COLUMNS[1]} column (results older than "
                         "the column); give --predictions with the masks of mstnet predict --fold k")
    scans = scans[scans["timepoint"].isin(rounds)]
    volumes = scans.pivot_table(index=["patient_id", "fold"], columns="timepoint", values=VOLUME_COLUMNS[1],
                                aggfunc="mean")
    return volumes.rename(columns={t: f"predicted_{t}" for t in rounds}).reset_index("fold")


def out_of_fold_fusion(frame: pd.DataFrame, columns: list[str]) -> float:
    """Pooled AUC of a logistic regression on ``columns``, each fold scored by a fit on the other folds."""
    scores = pd.Series(np.nan, index=frame.index)
    for fold in frame["fold"].unique():
        test = frame["fold"] == fold
        model = LogisticRegression().fit(frame.loc[~test, columns], frame.loc[~test, "label"])
        scores[test] = model.predict_proba(frame.loc[test, columns])[:, 1]
    return float(roc_auc_score(frame["label"], scores))


def model_auc(results: Results, experiment: str, patients: pd.Index) -> float:
    """The experiment's pooled out-of-fold AUC on ``patients`` (the report's reading of its ``predictions.csv``)."""
    predictions = pooled_predictions(results, experiment).set_index("patient_id").loc[patients]
    return float(roc_auc_score(predictions["label"], predictions["probability"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("cohort", type=Path, help="the synthetic cohort folder (ground_truth.csv)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="folder with fold<k>/ outputs of mstnet predict --fold k (default: the volumes "
                             "recorded in the run's segmentation.csv)")
    parser.add_argument("--rounds", default="T1,T2", help="the two rounds compared (default T1,T2)")
    parser.add_argument("--experiment", default="mstnet", help="whose segmentation and predictions are read")
    args = parser.parse_args()
    first, last = args.rounds.split(",")
    results = load_results(args.runs_dir)
    truth = pd.read_csv(args.cohort / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    volumes = (predicted_volumes(args.runs_dir, args.predictions, (first, last)) if args.predictions is not None
               else recorded_volumes(results, args.experiment, (first, last)))
    frame = volumes.join(truth)
    frame["predicted_growth"] = np.log((frame[f"predicted_{last}"] + EMPTY_MASK_VOLUME_MM3)
                                       / (frame[f"predicted_{first}"] + EMPTY_MASK_VOLUME_MM3))
    frame["mask_growth"] = np.log(frame[f"mask_volume_{last}_mm3"] / frame[f"mask_volume_{first}_mm3"])
    frame["true_growth"] = np.log(frame[f"volume_{last}_mm3"] / frame[f"volume_{first}_mm3"])
    labels = frame["label"]
    print(f"{len(frame)} patients, {int(labels.sum())} malignant")
    for column in ("true_growth", "mask_growth", "predicted_growth", "oracle_scans2", "oracle_scans1"):
        print(f"AUC of {column:17s} {roc_auc_score(labels, frame[column]):.3f}")
    error = frame["predicted_growth"] - frame["true_growth"]
    print(f"Spearman (predicted, true growth) {spearmanr(frame['predicted_growth'], frame['true_growth']).statistic:.3f}")
    print(f"sd of the growth error {error.std():.3f} (log), sd of the true growth {frame['true_growth'].std():.3f}")
    print(f"empty predicted masks: {int((frame[f'predicted_{first}'] == 0).sum())} at {first}, "
          f"{int((frame[f'predicted_{last}'] == 0).sum())} at {last}")
    posteriors = pd.read_csv(args.runs_dir / "oracle_posteriors.csv", dtype={"patient_id": str}).set_index("patient_id")
    clinical = posteriors.loc[frame.index, "oracle_clinical"].clip(1e-6, 1 - 1e-6)
    frame["record_logit"] = np.log(clinical / (1 - clinical))
    frame["predicted_log_volume"] = np.log(frame[f"predicted_{last}"] + EMPTY_MASK_VOLUME_MM3)
    frame["true_log_volume"] = np.log(frame[f"volume_{last}_mm3"])
    print(f"AUC of the record at its best (oracle_clinical) {roc_auc_score(labels, clinical):.3f}")
    print("out-of-fold logistic fusion of the record with the latest volume and the growth:")
    print(f"  predicted volumes {out_of_fold_fusion(frame, ['record_logit', 'predicted_log_volume', 'predicted_growth']):.3f}")
    print(f"  true volumes      {out_of_fold_fusion(frame, ['record_logit', 'true_log_volume', 'true_growth']):.3f}")
    print(f"the model's own AUC on these patients {model_auc(results, args.experiment, frame.index):.3f}")


if __name__ == "__main__":
    main()
