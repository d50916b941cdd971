"""Clinical table encoding, fitted on training patients only.

:class:`ClinicalCoder` turns a patient's clinical record into

- ``categorical``: one integer code per categorical column; code 0 is reserved for
  "unknown" (missing, or a category not seen among the training patients), seen categories
  get codes 1..K in sorted order. :attr:`ClinicalCoder.cardinalities` gives K + 1 per
  column, the size of each embedding table.
- ``numeric``: each numeric column standardised with the training mean and standard
  deviation; a missing value becomes the training mean (0 after standardising) and is
  flagged in ``numeric_missing``.

The network module that embeds these codes is :class:`mstnet.models.clinical.ClinicalEncoder`.

Categories are compared as normalised strings (:func:`normalise_category`), so ``1``,
``1.0`` and ``"1"`` are one category: CSV round trips cannot split a category in two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mstnet.data.cohort import ClinicalSchema, Cohort, Patient

UNKNOWN_CATEGORY_SPELLINGS: frozenset[str] = frozenset({"", "nan", "none", "null", "na", "n/a", "unknown", "?"})
"""Values of a categorical column that mean "not known" (compared lower-case)."""


def normalise_category(value: object) -> str | None:
    """A categorical value as a canonical string, or ``None`` when it is missing / unknown.

    Integral floats lose their ``.0`` (``2.0`` -> ``"2"``); strings are stripped.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    if isinstance(value, (np.integer, np.floating)):
        return normalise_category(value.item())
    text = str(value).strip()
    if text.lower() in UNKNOWN_CATEGORY_SPELLINGS:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "." in text else text


def to_float(value: object) -> float:
    """A numeric clinical value as float; missing -> NaN. Raises ValueError for non-numbers."""
    if value is None:
        return math.nan
    if isinstance(value, str) and value.strip().lower() in UNKNOWN_CATEGORY_SPELLINGS:
        return math.nan
    return float(value)


@dataclass(frozen=True)
class EncodedClinical:
    """One patient's encoded record: ``categorical`` int64 [C], ``numeric`` float32 [N], ``numeric_missing`` bool [N]."""

    categorical: np.ndarray
    numeric: np.ndarray
    numeric_missing: np.ndarray


class ClinicalCoder:
    """Categorical codes (0 = unknown) and standardised numerics, fitted on training patients.

    Args:
        schema: which columns are categorical and which numeric; only its columns are encoded
            (the harness passes ``cohort.clinical_schema.restricted_to(spec.data_view.clinical_sources)``).

    Example:
        >>> coder = ClinicalCoder(cohort.clinical_schema).fit(cohort.subset(train_ids))
        >>> coder.encode(cohort["P001"]).categorical   # array([2, 1, 3, ...])
    """

    def __init__(self, schema: ClinicalSchema):
        self.schema = schema
        self.categories: dict[str, list[str]] | None = None
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}

    def fit(self, patients: Cohort | Iterable[Patient]) -> "ClinicalCoder":
        """Learn categories and numeric statistics from ``patients`` (the training portion only)."""
        patients = list(patients)
        self.categories = {}
        for column in self.schema.categorical:
            seen = {normalise_category(p.clinical.get(column)) for p in patients} - {None}
            self.categories[column] = sorted(seen, key=_category_sort_key)
        for column in self.schema.numeric:
            values = np.array([to_float(p.clinical.get(column)) for p in patients], dtype=float)
            values = values[~np.isnan(values)]
            mean = float(values.mean()) if len(values) else 0.0
            std = float(values.std()) if len(values) > 1 else 0.0
            self.means[column] = mean
            self.stds[column] = std if std > 0 else 1.0
        return self

    def _require_fitted(self) -> dict[str, list[str]]:
        if self.categories is None:
            raise RuntimeError("ClinicalCoder is not fitted: call fit(training_patients) first")
        return self.categories

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, the unknown code 0 included (K seen categories -> K + 1)."""
        return [len(values) + 1 for values in self._require_fitted().values()]

    @property
    def columns(self) -> tuple[str, ...]:
        """The clinical columns it encodes: the categorical ones, then the numeric ones (its schema's)."""
        return self.schema.columns

    @property
    def num_categorical(self) -> int:
        return len(self.schema.categorical)

    @property
    def num_numeric(self) -> int:
        return len(self.schema.numeric)

    def code(self, column: str, value: object) -> int:
        """The code of ``value`` in categorical ``column``: 1..K for training categories, else 0."""
        category = normalise_category(value)
        values = self._require_fitted()[column]
        return values.index(category) + 1 if category in values else 0

    def encode(self, patient: Patient) -> EncodedClinical:
        """Encode one patient's clinical record."""
        categorical = np.array([self.code(c, patient.clinical.get(c)) for c in self.schema.categorical], dtype=np.int64)
        raw = np.array([to_float(patient.clinical.get(c)) for c in self.schema.numeric], dtype=float)
        missing = np.isnan(raw)
        means = np.array([self.means[c] for c in self.schema.numeric], dtype=float)
        stds = np.array([self.stds[c] for c in self.schema.numeric], dtype=float)
        numeric = (np.where(missing, means, raw) - means) / stds
        return EncodedClinical(categorical, numeric.astype(np.float32), missing)

    def state_dict(self) -> dict:
        """Everything needed to rebuild the fitted coder (JSON-serialisable)."""
        return {"schema": self.schema.to_json(), "categories": self._require_fitted(), "means": self.means, "stds": self.stds}

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "ClinicalCoder":
        coder = cls(ClinicalSchema.from_json(state["schema"]))
        coder.categories = {k: list(v) for k, v in state["categories"].items()}
        coder.means = dict(state["means"])
        coder.stds = dict(state["stds"])
        return coder


def _category_sort_key(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order first, then text, so codes do not depend on string sorting of numbers."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
