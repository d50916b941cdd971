"""The file names of a fold's results folder, ``RUNS_DIR/<experiment>/fold<k>/``, and the columns its
files hold (docs/results-format.md).

One home for the names the experiments layer writes and the reports read: a leaf module, so
both layers import it without the reports importing the experiments.
"""

CONFIG_FILE = "config.json"
"""The fold's resolved configuration and its identity; written when the fold starts."""
ATTEMPTS_FILE = "attempts.json"
"""One entry per attempt at the fold (first run, each resume)."""
METRICS_FILE = "metrics.json"
"""The fold's test metrics per task (null for a task the experiment does not have)."""
PREDICTIONS_FILE = "predictions.csv"
"""One row per test patient (classification experiments)."""
SEGMENTATION_FILE = "segmentation.csv"
"""One row per test scan (segmentation experiments)."""
HISTORY_FILE = "history.csv"
"""One row per epoch: losses, inner-validation scores, optimizer steps."""
TIMING_FILE = "timing.csv"
"""Per epoch: stage, epoch, optimizer step and cumulative wall seconds (the learning curve's time axis)."""
RUN_FILE = "run.json"
"""Written last: its presence marks the fold complete."""

ORACLE_POSTERIORS_FILE = "oracle_posteriors.csv"
"""In RUNS_DIR itself (a synthetic cohort only): each patient's label and oracle posterior per information set
(``oracle_<key>`` columns), read by the claims table for the ceilings of the very patients it compares."""

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
"""The per-scan segmentation metrics of ``segmentation.csv``, whose means ``metrics.json`` holds."""
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "brier")
PREDICTION_COLUMNS: tuple[str, ...] = ("patient_id", "fold", "label", "probability")
"""The columns every ``predictions.csv`` must hold."""
SEGMENTATION_COLUMNS: tuple[str, ...] = ("patient_id", "timepoint", "fold", *SEGMENTATION_METRICS)
"""The columns every ``segmentation.csv`` must hold."""
VOLUME_COLUMNS: tuple[str, ...] = ("reference_volume_mm3", "predicted_volume_mm3")
"""Optional ``segmentation.csv`` columns (results written before they existed lack them): each scan's
reference and predicted mask volume on its whole field, mm^3."""
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss")
"""The columns every ``history.csv`` must hold."""
