"""Metrics as pure functions: segmentation, classification and the statistics of the table.

See ``shared/design/protocol.md`` ("Metrics, exactly", "Aggregation and statistics").
"""

from mstnet.metrics.classification import classification_metrics, roc_auc
from mstnet.metrics.segmentation import (
    directed_surface_distances,
    mask_volumes,
    segmentation_metrics,
    segmentation_metrics_batch,
    surface_voxels,
    volume_diagonal,
)
from mstnet.metrics.statistics import (
    bootstrap_ci,
    bootstrap_mean_ci,
    bootstrap_p_value,
    classification_metric_samples,
    delong_auc_variance,
    delong_test,
    mcnemar_exact,
    mean_std,
    patient_draws,
    per_patient_means,
    percentile_interval,
    seed_statistics,
    wilcoxon_per_patient,
    wilcoxon_signed_rank,
)
from mstnet.metrics.thresholds import DECISION_THRESHOLD

__all__ = [
    "DECISION_THRESHOLD",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "bootstrap_p_value",
    "classification_metric_samples",
    "classification_metrics",
    "delong_auc_variance",
    "delong_test",
    "directed_surface_distances",
    "mask_volumes",
    "mcnemar_exact",
    "mean_std",
    "patient_draws",
    "per_patient_means",
    "percentile_interval",
    "roc_auc",
    "seed_statistics",
    "segmentation_metrics",
    "segmentation_metrics_batch",
    "surface_voxels",
    "volume_diagonal",
    "wilcoxon_per_patient",
    "wilcoxon_signed_rank",
]
