"""Non-deep references on per-patient tabular features: the Brock model, the screening growth
rule and two logistic regressions (``kind="tabular"``).

The harness builds each estimator with ``spec.build(context)``, calls
``fit(features, labels)`` on the fold's training patients and ``predict_proba(features)``
(malignancy probability, shape [N]) on the others. ``features`` is the frame of
:func:`mstnet.data.features.patient_features` (index ``patient_id``):

- the clinical record as given, NLST-style: ``race, cigsmok, gender, age, scr_res0,
  scr_iso0, pack_years, family_history, emphysema, nodule_count, upper_lobe, nodule_type``
  (whichever the cohort has), and possibly ``texture``, ``spiculation`` / ``spiculated``;
- per scan ``i = 0 .. T-1`` (oldest first): ``volume_mm3_t{i}``, ``diameter_mm_t{i}``
  (equivalent-sphere diameter) and ``days_t{i}``; and ``vdt_days`` (last two scans).

Codings accepted (anything else raises :class:`FeatureColumnError` naming patient, column and
value): ``gender`` 1/"M"/"male" or 2/"F"/"female" (NLST codes 1 = male, 2 = female); yes/no
columns (``family_history``, ``emphysema``, ``upper_lobe``, ``spiculated``) 0/1, booleans or
yes/no strings; ``nodule_type`` "solid", "part-solid" (also "part_solid", "partsolid",
"mixed", "subsolid") or "non-solid" (also "nonsolid", "ground-glass", "ggo", "ggn"); when it is
absent, ``texture`` as an LIDC rating (1-2 non-solid, 3 part-solid, 4-5 solid);
``spiculation`` an LIDC rating 1-5 (spiculated when >= 3).

Which clinical columns are categorical: ``features.attrs["clinical_schema"]`` (a dict with
"categorical" and "numeric" lists) when the frame carries it; otherwise the NLST categorical
columns and yes/no columns listed in :data:`KNOWN_CATEGORICAL`, plus any non-numeric column.

Which clinical columns a method sees: those whose source is one of its experiment's
``data_view.clinical_sources`` (:func:`clinical_columns`). A column's source is the schema's
``"sources"`` entry (``history`` when it has none); a frame without a schema uses
:data:`KNOWN_SOURCES`. The logistic regressions see history and screening columns (no
radiologist reads); Brock uses nodule type, emphysema, upper lobe and nodule count by
definition, so it declares the ``read`` source as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mstnet.brock import BROCK_AGE_CENTRE, BROCK_COEFFICIENTS, BROCK_NODULE_COUNT_CENTRE, BROCK_SIZE_CENTRE
from mstnet.data.cohort import DEFAULT_CLINICAL_SOURCE
from mstnet.experiments.registry import DEFAULT_CLINICAL_SOURCES, DataView, ModelContext, register_experiment, resolve_settings

IMAGING_COLUMN = re.compile(r"^(volume_mm3|diameter_mm|days)_t\d+$|^vdt_days$")
"""Columns measured on the scans; everything else in the frame is the clinical record."""

KNOWN_CATEGORICAL = frozenset({"race", "cigsmok", "gender", "scr_res0", "scr_iso0", "family_history", "emphysema",
                               "upper_lobe", "nodule_type", "texture", "spiculated"})

KNOWN_SOURCES: dict[str, str] = {"scr_res0": "screening", "scr_iso0": "screening", "emphysema": "read",
                                 "upper_lobe": "read", "nodule_count": "read", "nodule_type": "read", "texture": "read",
                                 "spiculated": "read", "spiculation": "read"}
"""Sources of known column names, for a frame without ``attrs["clinical_schema"]``; any other column is ``history``."""

GROWTH_THRESHOLD_DAYS = 400.0
"""Screening protocols (NELSON, Lung-RADS practice) call a VDT under 400 days suspicious."""

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_FEMALE = {"2", "f", "female", "woman"}
_MALE = {"1", "m", "male", "man"}
_PART_SOLID = {"part-solid", "part_solid", "partsolid", "part solid", "mixed", "subsolid"}
_NON_SOLID = {"non-solid", "nonsolid", "non_solid", "non solid", "ground-glass", "ground glass", "ggo", "ggn"}


class FeatureColumnError(ValueError):
    """A feature column is missing or holds a value the method cannot read."""


def require_columns(features: pd.DataFrame, columns: Iterable[str], method: str) -> None:
    """Raise :class:`FeatureColumnError` naming every column of ``columns`` missing from ``features``."""
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise FeatureColumnError(f"{method}: feature column(s) {missing} missing; the frame has {list(features.columns)}")


def scan_count(features: pd.DataFrame, method: str) -> int:
    """T: the number of scans described in the frame (``diameter_mm_t{i}`` columns)."""
    indices = [int(m.group(1)) for c in features.columns if (m := re.fullmatch(r"diameter_mm_t(\d+)", str(c)))]
    if not indices:
        raise FeatureColumnError(f"{method}: no 'diameter_mm_t{{i}}' column; the frame has {list(features.columns)}")
    return max(indices) + 1


def _token(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip().lower()


def _invalid(method: str, column: str, patient: Any, value: Any, expected: str) -> FeatureColumnError:
    return FeatureColumnError(f"{method}: patient {patient!r}, column {column!r}: cannot read {value!r} ({expected})")


def _indicator(features: pd.DataFrame, column: str, method: str, ones: Collection[str], zeros: Collection[str],
               expected: str) -> np.ndarray:
    """``column`` as 1.0 where its token (:func:`_token`) is one of ``ones``, 0.0 where one of ``zeros``;
    any other value raises, naming the patient and ``expected``."""
    out = np.empty(len(features))
    for i, (patient, value) in enumerate(features[column].items()):
        token = _token(value)
        if token in ones:
            out[i] = 1.0
        elif token in zeros:
            out[i] = 0.0
        else:
            raise _invalid(method, column, patient, value, expected)
    return out


def binary_column(features: pd.DataFrame, column: str, method: str) -> np.ndarray:
    """A yes/no column as 0.0 / 1.0."""
    return _indicator(features, column, method, _TRUE, _FALSE, "expected 0/1, yes/no or a boolean")


def female_indicator(features: pd.DataFrame, method: str) -> np.ndarray:
    """1.0 for women, 0.0 for men, from ``gender``."""
    return _indicator(features, "gender", method, _FEMALE, _MALE, "expected 1/M/male or 2/F/female")


def nodule_type_indicators(features: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(part-solid, non-solid) indicators from ``nodule_type``, else from the LIDC ``texture`` rating."""
    part_solid, non_solid = np.zeros(len(features)), np.zeros(len(features))
    column = "nodule_type" if "nodule_type" in features.columns else "texture"
    require_columns(features, [column], method)
    for i, (patient, value) in enumerate(features[column].items()):
        token = _token(value)
        if column == "texture":
            if token not in {"1", "2", "3", "4", "5"}:
                raise _invalid(method, column, patient, value, "expected an LIDC texture rating 1-5")
            rating = int(token)
            part_solid[i], non_solid[i] = float(rating == 3), float(rating <= 2)
        elif token in _PART_SOLID:
            part_solid[i] = 1.0
        elif token in _NON_SOLID:
            non_solid[i] = 1.0
        elif token != "solid":
            raise _invalid(method, column, patient, value, "expected solid, part-solid or non-solid")
    return part_solid, non_solid


def spiculation_indicator(features: pd.DataFrame, method: str) -> np.ndarray | None:
    """Spiculated (1.0) or not, from ``spiculated`` (yes/no) or ``spiculation`` (LIDC rating >= 3); None if neither."""
    if "spiculated" in features.columns:
        return binary_column(features, "spiculated", method)
    if "spiculation" not in features.columns:
        return None
    ratings = pd.to_numeric(features["spiculation"], errors="coerce")
    bad = ratings.isna() | (ratings < 1) | (ratings > 5)
    if bad.any():
        patient = features.index[int(np.argmax(bad.to_numpy()))]
        raise _invalid(method, "spiculation", patient, features.loc[patient, "spiculation"], "expected an LIDC rating 1-5")
    return (ratings.to_numpy(dtype=float) >= 3).astype(float)


def _numeric(features: pd.DataFrame, column: str, method: str) -> np.ndarray:
    values = pd.to_numeric(features[column], errors="coerce")
    if values.isna().any():
        patient = features.index[int(np.argmax(values.isna().to_numpy()))]
        raise _invalid(method, column, patient, features.loc[patient, column], "expected a number")
    return values.to_numpy(dtype=float)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class BrockModel:
    """The Brock (PanCan) malignancy model with its published coefficients; ``fit`` learns nothing.

    ``logit = -6.8071 + 0.0321 (age - 62) + 0.5635 [female] + 0.3013 [family history]
    + 0.3462 [emphysema] - 5.6693 ((d / 10) ^ -0.5 - 1.58113883) + 0.7116 [upper lobe]
    + 0.3395 [part-solid] - 0.3055 [non-solid] - 0.0803 (nodule count - 4)
    (+ 0.7729 [spiculated] when a spiculation column exists)``, with d the latest scan's
    nodule diameter in mm (``diameter_mm_t{T-1}``, the equivalent-sphere diameter of the
    reference mask, where Brock used the longest axial diameter).

    Args:
        allow_missing: treat an absent optional column (family_history, emphysema, upper_lobe,
            nodule_type/texture, nodule_count) as its reference value (no, no, no, solid, 4)
            instead of raising; ``age``, ``gender`` and the diameter are always required.
        use_spiculation: add the spiculation term when the frame has a spiculation column.
    """

    method = "brock"

    def __init__(self, allow_missing: bool = False, use_spiculation: bool = True) -> None:
        self.allow_missing = allow_missing
        self.use_spiculation = use_spiculation

    def fit(self, features: pd.DataFrame, labels: np.ndarray) -> "BrockModel":
        self.logit(features)
        return self

    def _optional(self, features: pd.DataFrame, column: str) -> bool:
        if column in features.columns:
            return True
        if column in ("nodule_type",) and "texture" in features.columns:
            return True
        if self.allow_missing:
            return False
        raise FeatureColumnError(f"{self.method}: feature column {column!r} missing (pass allow_missing=True to use "
                                 f"its reference value); the frame has {list(features.columns)}")

    def logit(self, features: pd.DataFrame) -> np.ndarray:
        """The Brock logit per patient, [N]."""
        last = scan_count(features, self.method) - 1
        diameter_column = f"diameter_mm_t{last}"
        require_columns(features, ["age", "gender", diameter_column], self.method)
        diameter = _numeric(features, diameter_column, self.method)
        if (diameter <= 0).any():
            patient = features.index[int(np.argmax(diameter <= 0))]
            raise _invalid(self.method, diameter_column, patient, diameter[diameter <= 0][0], "diameter must be > 0 mm")
        c = BROCK_COEFFICIENTS
        logit = (c["intercept"] + c["age"] * (_numeric(features, "age", self.method) - BROCK_AGE_CENTRE)
                 + c["female"] * female_indicator(features, self.method)
                 + c["size"] * ((diameter / 10.0) ** -0.5 - BROCK_SIZE_CENTRE))
        for column in ("family_history", "emphysema", "upper_lobe"):
            if self._optional(features, column):
                logit = logit + c[column] * binary_column(features, column, self.method)
        if self._optional(features, "nodule_type"):
            part_solid, non_solid = nodule_type_indicators(features, self.method)
            logit = logit + c["part_solid"] * part_solid + c["non_solid"] * non_solid
        if self._optional(features, "nodule_count"):
            logit = logit + c["nodule_count"] * (_numeric(features, "nodule_count", self.method) - BROCK_NODULE_COUNT_CENTRE)
        spiculated = spiculation_indicator(features, self.method) if self.use_spiculation else None
        if spiculated is not None:
            logit = logit + c["spiculation"] * spiculated
        return logit

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Malignancy probability per patient, [N]."""
        return sigmoid(self.logit(features))


def growth_rate_per_day(features: pd.DataFrame, method: str) -> np.ndarray:
    """``ln(V_last / V_previous) / dt`` = ln 2 / VDT, per day, from the last two scans.

    A nodule that appears (previous volume 0) grows at +inf; one that vanishes at -inf; both 0: 0.
    """
    scans = scan_count(features, method)
    if scans < 2:
        raise FeatureColumnError(f"{method}: needs two scans per patient (volume_mm3_t0, volume_mm3_t1, ...); "
                                 f"the frame has {list(features.columns)}")
    previous, last = scans - 2, scans - 1
    columns = [f"volume_mm3_t{previous}", f"volume_mm3_t{last}", f"days_t{previous}", f"days_t{last}"]
    require_columns(features, columns, method)
    v0, v1, d0, d1 = (_numeric(features, c, method) for c in columns)
    interval = d1 - d0
    if (interval <= 0).any():
        patient = features.index[int(np.argmax(interval <= 0))]
        raise _invalid(method, f"days_t{last}", patient, float(d1[interval <= 0][0]),
                       f"scan interval must be positive (days_t{previous} = {float(d0[interval <= 0][0])})")
    if (v0 < 0).any() or (v1 < 0).any():
        patient = features.index[int(np.argmax((v0 < 0) | (v1 < 0)))]
        raise _invalid(method, "volume_mm3", patient, "negative", "volumes must be >= 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.log(v1 / v0) / interval
    rate[(v0 == 0) & (v1 == 0)] = 0.0
    return rate


class GrowthRule:
    """The screening growth rule: malignant when the VDT of the last two scans is under 400 days.

    ``predict`` gives the rule's decision. ``predict_proba`` gives a monotone score so that AUC
    is defined: with growth rate r = ln 2 / VDT and r0 = ln 2 / 400 days,
    ``score = sigmoid(steepness * (r - r0) / r0)``: 0.5 exactly at VDT = 400 days, above for
    faster growth, ``sigmoid(-steepness)`` (0.12) for a stable nodule (VDT infinite), lower
    still for shrinking ones. It is a score, not a calibrated probability.

    Args:
        threshold_days: the VDT cut-off (400).
        steepness: slope of the score in units of r0 (2.0).
    """

    method = "growth-rule"

    def __init__(self, threshold_days: float = GROWTH_THRESHOLD_DAYS, steepness: float = 2.0) -> None:
        if threshold_days <= 0 or steepness <= 0:
            raise ValueError("threshold_days and steepness must be positive")
        self.threshold_days = threshold_days
        self.steepness = steepness

    def fit(self, features: pd.DataFrame, labels: np.ndarray) -> "GrowthRule":
        growth_rate_per_day(features, self.method)
        return self

    def threshold_rate(self) -> float:
        return math.log(2.0) / self.threshold_days

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """1 where 0 < VDT < threshold (growing faster than the cut-off), else 0."""
        return (growth_rate_per_day(features, self.method) > self.threshold_rate()).astype(int)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        r0 = self.threshold_rate()
        with np.errstate(over="ignore"):
            return sigmoid(self.steepness * (growth_rate_per_day(features, self.method) - r0) / r0)


def column_source(features: pd.DataFrame, column: str) -> str:
    """Where clinical ``column`` comes from: the ``"sources"`` of ``features.attrs["clinical_schema"]``
    (``history`` for a column it does not list), or :data:`KNOWN_SOURCES` for a frame without a schema."""
    schema = features.attrs.get("clinical_schema")
    if isinstance(schema, dict):
        return (schema.get("sources") or {}).get(column, DEFAULT_CLINICAL_SOURCE)
    return KNOWN_SOURCES.get(column, DEFAULT_CLINICAL_SOURCE)


def clinical_columns(features: pd.DataFrame, sources: Iterable[str] | None = None) -> list[str]:
    """Every column that is not measured on the scans and, when ``sources`` is given, whose source
    (:func:`column_source`) is one of them."""
    wanted = None if sources is None else set(sources)
    return [c for c in features.columns
            if not IMAGING_COLUMN.match(str(c)) and (wanted is None or column_source(features, c) in wanted)]


def split_categorical(features: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(categorical, numeric) among ``columns``: from ``features.attrs["clinical_schema"]`` if
    present, else :data:`KNOWN_CATEGORICAL` and non-numeric dtypes are categorical."""
    schema = features.attrs.get("clinical_schema")
    declared = set(schema.get("categorical", ())) if isinstance(schema, dict) else set()
    categorical, numeric = [], []
    for column in columns:
        is_categorical = (column in declared or (schema is None and column in KNOWN_CATEGORICAL)
                          or not pd.api.types.is_numeric_dtype(features[column]))
        (categorical if is_categorical else numeric).append(column)
    return categorical, numeric


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical codes as strings (missing kept as NaN) so the one-hot encoder sees one type."""
    return frame.apply(lambda column: column.map(lambda v: v if pd.isna(v) else _token(v))).astype(object)


class ClinicalLogisticRegression:
    """scikit-learn logistic regression on clinical columns (and optional derived columns).

    Categorical columns are imputed with their most frequent value and one-hot encoded
    (unknown levels ignored); numeric ones imputed with the median and standardised; then an
    L2-regularised logistic regression (``C``, balanced class weights off by default).

    Args:
        include_growth: add ``growth_rate_per_year`` (365.25 ln(V1/V0)/dt, clipped to +-10),
            ``log_volume_mm3`` and ``diameter_mm`` of the latest scan.
        C: inverse regularisation strength (1.0).
        class_weight: passed to LogisticRegression (None).
        seed: random state.
        sources: the clinical sources whose columns it sees (:func:`clinical_columns`); default
            history and screening, no radiologist reads (the registered experiments pass their
            ``data_view.clinical_sources``).
    """

    def __init__(self, include_growth: bool = False, C: float = 1.0, class_weight: str | None = None,
                 seed: int = 0, sources: Sequence[str] = DEFAULT_CLINICAL_SOURCES) -> None:
        self.include_growth = include_growth
        self.sources = tuple(sources)
        self.C = C
        self.class_weight = class_weight
        self.seed = seed
        self.method = "logreg-growth" if include_growth else "logreg-clinical"
        self.pipeline: Pipeline | None = None
        self.columns: tuple[list[str], list[str]] | None = None

    def design(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's input frame: clinical columns of its sources, plus the growth columns when asked."""
        frame = features[clinical_columns(features, self.sources)].copy()
        if self.include_growth:
            last = scan_count(features, self.method) - 1
            require_columns(features, [f"volume_mm3_t{last}", f"diameter_mm_t{last}"], self.method)
            rate = growth_rate_per_day(features, self.method) * 365.25
            frame["growth_rate_per_year"] = np.clip(rate, -10.0, 10.0)
            frame["log_volume_mm3"] = np.log1p(_numeric(features, f"volume_mm3_t{last}", self.method))
            frame["diameter_mm"] = _numeric(features, f"diameter_mm_t{last}", self.method)
        frame.attrs = dict(features.attrs)
        return frame

    def fit(self, features: pd.DataFrame, labels: np.ndarray) -> "ClinicalLogisticRegression":
        frame = self.design(features)
        if frame.shape[1] == 0:
            raise FeatureColumnError(f"{self.method}: no clinical columns in the frame {list(features.columns)}")
        categorical, numeric = split_categorical(frame, list(frame.columns))
        self.columns = (categorical, numeric)
        transformers = []
        if categorical:
            transformers.append(("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                              OneHotEncoder(handle_unknown="ignore")), categorical))
        if numeric:
            transformers.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
        self.pipeline = Pipeline([
            ("encode", ColumnTransformer(transformers)),
            ("classify", LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=2000,
                                            random_state=self.seed)),
        ])
        self.pipeline.fit(self._prepare(frame), np.asarray(labels).astype(int))
        return self

    def _prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        categorical, numeric = self.columns
        require_columns(frame, categorical + numeric, self.method)
        prepared = frame[categorical + numeric].copy()
        if categorical:
            prepared[categorical] = _as_strings(prepared[categorical])
        for column in numeric:
            prepared[column] = pd.to_numeric(prepared[column], errors="coerce")
        return prepared

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        if self.pipeline is None:
            raise RuntimeError(f"{self.method}: predict_proba called before fit")
        return self.pipeline.predict_proba(self._prepare(self.design(features)))[:, 1]


def _settings(method: str, context: ModelContext, **defaults: Any) -> dict[str, Any]:
    """The estimator's settings: ``defaults`` with the checked ``--set`` overrides (unknown keys refused)."""
    return resolve_settings(method, defaults, context)


LOGREG_CLINICAL_VIEW = DataView(timepoints=1, use_clinical=True)
"""logreg-clinical: the clinical record (history and screening columns), no images, no reads."""

BROCK_VIEW = DataView(timepoints=1, use_clinical=True, clinical_sources=("history", "screening", "read"))
"""Brock: the latest scan's size, the clinical record and the reads its formula is made of."""

LOGREG_GROWTH_VIEW = DataView(timepoints=2, use_clinical=True)
"""logreg-growth: sizes on the last two scans and the clinical record (history and screening columns)."""

register_experiment(
    "logreg-clinical",
    description="Logistic regression on the clinical record only (history and screening columns, no radiologist reads; "
                "one-hot categoricals, standardised numerics).",
    tasks=("classification",), group="reference", kind="tabular", information="clinical",
    data_view=LOGREG_CLINICAL_VIEW,
)(lambda context: ClinicalLogisticRegression(sources=LOGREG_CLINICAL_VIEW.clinical_sources,
                                             **_settings("logreg-clinical", context, C=1.0, seed=0)))

register_experiment(
    "brock",
    description="Brock (PanCan) model with published coefficients: clinical data + latest nodule size and type; no training.",
    tasks=("classification",), group="reference", kind="tabular",
    data_view=BROCK_VIEW,
    footnote="Size = equivalent-sphere diameter of the reference mask, not the longest axial diameter. Sees the "
             "radiologist's reads (nodule type, emphysema, upper lobe, nodule count; spiculation when present): "
             "the Brock model is made of them.",
)(lambda context: BrockModel(allow_missing=_settings("brock", context, brock_allow_missing=False)["brock_allow_missing"]))

register_experiment(
    "growth-rule",
    description="Screening growth rule: VDT of the last two scans < 400 days; score sigmoid(2 (r - r0) / r0).",
    tasks=("classification",), group="reference", kind="tabular",
    data_view=DataView(timepoints=2, use_clinical=False),
)(lambda context: GrowthRule(**_settings("growth-rule", context, threshold_days=GROWTH_THRESHOLD_DAYS)))

register_experiment(
    "logreg-growth",
    description="Logistic regression on growth rate, latest size and the clinical record (history and screening columns).",
    tasks=("classification",), group="reference", kind="tabular",
    data_view=LOGREG_GROWTH_VIEW,
)(lambda context: ClinicalLogisticRegression(include_growth=True, sources=LOGREG_GROWTH_VIEW.clinical_sources,
                                             **_settings("logreg-growth", context, C=1.0, seed=0)))
