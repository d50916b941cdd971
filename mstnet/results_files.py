"""The file names of a fold's results folder, ``RUNS_DIR/<experiment>/fold<k>/`` (docs/results-format.md).

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
