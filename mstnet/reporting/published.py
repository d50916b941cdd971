"""Table 1 of the MST-Net paper as published on NLST (``shared/design/protocol.md``).

Cohort: NLST, 150 participants with at least two longitudinal low-dose CT scans and clinical
data, malignancy confirmed by pathology, five-fold cross-validation (4:1). Dice, Jaccard,
accuracy, precision and F1 are percentages; HD95 and ASD are in the paper's distance unit,
which it does not state. The paper reports no recall, specificity or AUC, and no spread.

A RUNS_DIR may carry its own ``published.json`` (same shape as :func:`published_table_json`),
which then takes the place of these numbers.
"""

from __future__ import annotations

from typing import Any

PUBLISHED_LABEL = "published (NLST)"
PUBLISHED_SOURCE = ("MST-Net paper, Table 1: NLST, 150 participants, >= 2 longitudinal LDCT scans each, "
                    "five-fold cross-validation; distance unit not stated")
PUBLISHED_COLUMNS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd", "accuracy", "precision", "f1")

TABLE1: dict[str, dict[str, float | None]] = {
    "NASLung": {"dice": None, "jaccard": None, "hd95": None, "asd": None,
                "accuracy": 71.92, "precision": 75.78, "f1": 69.99},
    "SCAN": {"dice": None, "jaccard": None, "hd95": None, "asd": None,
             "accuracy": 72.07, "precision": 63.21, "f1": 66.66},
    "DeepCAD": {"dice": None, "jaccard": None, "hd95": None, "asd": None,
                "accuracy": 65.22, "precision": 70.96, "f1": 60.11},
    "UNETR": {"dice": 78.66, "jaccard": 69.40, "hd95": 37.62, "asd": 5.86,
              "accuracy": None, "precision": None, "f1": None},
    "MLTN": {"dice": 34.62, "jaccard": 24.08, "hd95": 103.06, "asd": 36.83,
             "accuracy": 65.25, "precision": 62.74, "f1": 61.48},
    "ACSNet": {"dice": 53.32, "jaccard": 40.12, "hd95": 57.44, "asd": 22.38,
               "accuracy": 70.00, "precision": 70.65, "f1": 70.25},
    "MST-Net": {"dice": 78.66, "jaccard": 71.93, "hd95": 33.60, "asd": 5.27,
                "accuracy": 75.00, "precision": 78.02, "f1": 72.12},
}
"""Row name -> metric -> published value (percent for fractions, paper unit for distances); None = "-"."""

ROW_ORDER: tuple[str, ...] = tuple(TABLE1)
"""The order of the rows in the paper."""


def published_table_json() -> dict[str, Any]:
    """Table 1 in the ``published.json`` shape: ``{"source", "units", "rows": {row: {metric: value}}}``."""
    return {"source": PUBLISHED_SOURCE, "units": {"fractions": "percent", "distances": "not stated"},
            "rows": {row: dict(values) for row, values in TABLE1.items()}}


def published_rows(override: dict[str, Any] | None = None) -> dict[str, dict[str, float | None]]:
    """The published rows: ``override["rows"]`` (a RUNS_DIR's ``published.json``) when given, else :data:`TABLE1`.

    Raises ``ValueError`` when ``override`` has no ``rows`` object.
    """
    if override is None:
        return {row: dict(values) for row, values in TABLE1.items()}
    rows = override.get("rows") if isinstance(override, dict) else None
    if not isinstance(rows, dict):
        raise ValueError("published.json: expected {'rows': {row name: {metric: value or null}}}")
    return {str(row): {key: (None if value is None else float(value)) for key, value in values.items()}
            for row, values in rows.items()}
