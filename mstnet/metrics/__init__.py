"""Metrics as pure functions: segmentation, classification and the statistics of the table.

See ``shared/design/protocol.md`` ("Metrics, exactly", "Aggregation and statistics").
"""

from mstnet.metrics.classification import classification_metrics, roc_auc
from mstnet.metrics.segmentation import (
    directed_surface_distances,
    segmentation_metrics,
    segmentation_metrics_batch,
    surface_voxels,
    volume_diagonal,
)
from mstnet.metrics.statistics import (
    bootstrap_ci,
    bootstrap_mean_ci,
    delong_auc_variance,
    delong_test,
    mean_std,
    per_patient_means,
    wilcoxon_per_patient,
    wilcoxon_signed_rank,
)

__all__ = [
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "classification_metrics",
    "delong_auc_variance",
    "delong_test",
    "directed_surface_distances",
    "mean_std",
    "per_patient_means",
    "roc_auc",
    "segmentation_metrics",
    "segmentation_metrics_batch",
    "surface_voxels",
    "volume_diagonal",
    "wilcoxon_per_patient",
    "wilcoxon_signed_rank",
]
