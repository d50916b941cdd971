"""The columns of the frames of :class:`~mstnet.reporting.results.Results`: the metrics of each task and the
columns every ``predictions.csv``, ``segmentation.csv`` and ``history.csv`` must hold (docs/results-format.md)."""

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "brier")
PREDICTION_COLUMNS: tuple[str, ...] = ("patient_id", "fold", "label", "probability")
SEGMENTATION_COLUMNS: tuple[str, ...] = ("patient_id", "timepoint", "fold", *SEGMENTATION_METRICS)
VOLUME_COLUMNS: tuple[str, ...] = ("reference_volume_mm3", "predicted_volume_mm3")
"""Optional ``segmentation.csv`` columns (results written before they existed lack them): each scan's
reference and predicted mask volume on its whole field, mm^3."""
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss")
