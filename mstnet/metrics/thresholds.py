"""The one decision threshold of the project."""

from __future__ import annotations

DECISION_THRESHOLD = 0.5
"""Where a probability becomes a decision: a voxel is foreground when its probability is above it
(:func:`mstnet.metrics.segmentation.to_binary_mask`), a patient is predicted malignant when its
probability reaches it (:func:`mstnet.metrics.classification.classification_metrics`); the
threshold of ``metrics.json`` and the fallback where an inner-validation threshold is undefined."""
