"""The in-memory cohort every data source is turned into, and its on-disk format.

A :class:`Cohort` is a list of :class:`Patient` records, each holding its ordered
:class:`Scan` list (time point, days since T0, image source, optional mask source, optional
nodule location), a typed clinical record and one benign/malignant label. Images are not
read here: a scan holds the *path* of its image (NIfTI file, DICOM series folder or .npy
file); :mod:`mstnet.data.io` reads them.

On disk (``../shared/design/protocol.md``, "Cohort format"):

- ``manifest.csv``: one row per (patient, time point) with the columns of
  :data:`MANIFEST_COLUMNS`; paths may be relative to the manifest's folder.
- ``clinical.csv``: one row per patient, ``patient_id`` plus clinical columns.
- ``clinical_schema.json``: ``{"categorical": [...], "numeric": [...]}``, the type of each
  clinical column (the "small sidecar file" of the protocol), optionally with
  ``"categories": {column: [allowed values, ...]}`` for categorical columns and
  ``"sources": {column: "history" | "screening" | "read"}``, where each column comes from
  (:data:`CLINICAL_SOURCES`; a column not listed is ``history``).

How mask files are binarised (:data:`mstnet.data.io.MASK_BINARIZATIONS`) is a property of a
loaded :class:`Cohort` (``mask_binarization``, set by the loader's ``binarize_masks``), not of
the files: it is not written to disk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from mstnet.atomic import write_text_atomic
from mstnet.errors import DataError

MANIFEST_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "timepoint",
    "days",
    "image",
    "mask",
    "nodule_x",
    "nodule_y",
    "nodule_z1",
    "nodule_z2",
    "label",
)
"""Columns of ``manifest.csv``, in order."""

NLST_CLINICAL_CATEGORICAL: tuple[str, ...] = ("race", "cigsmok", "gender", "scr_res0", "scr_iso0")
"""NLST clinical columns that are categorical."""

NLST_CLINICAL_NUMERIC: tuple[str, ...] = ("age",)
"""NLST clinical columns that are numeric (the release label-encoded age; we keep it numeric)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort, located as precisely as possible."""

    message: str
    patient_id: str | None = None
    timepoint: str | None = None
    file: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [
            f"{name} {value!s}"
            for name, value in (
                ("patient", self.patient_id),
                ("time point", self.timepoint),
                ("column", self.column),
                ("file", self.file),
            )
            if value is not None
        ]
        return f"{', '.join(where)}: {self.message}" if where else self.message


class CohortError(DataError):
    """Raised for bad cohort input; carries every :class:`Problem` found, not only the first."""

    def __init__(self, problems: Problem | Sequence[Problem]):
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        lines = [str(p) for p in self.problems]
        summary = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(summary)


@dataclass(frozen=True)
class NoduleLocation:
    """Nodule centre (x, y) in voxels and its slice range z1..z2 (inclusive), all in the image grid."""

    x: float
    y: float
    z1: int
    z2: int


@dataclass(frozen=True)
class Scan:
    """One CT scan of a patient at one screening round.

    ``image`` and ``mask`` are absolute paths (NIfTI file, DICOM series folder or .npy file).
    """

    timepoint: str
    days: float
    image: Path
    mask: Path | None = None
    nodule: NoduleLocation | None = None


@dataclass(frozen=True)
class Patient:
    """A patient: ordered scans (by ``days``), clinical record, label (0 benign, 1 malignant)."""

    patient_id: str
    label: int
    scans: tuple[Scan, ...]
    clinical: dict[str, object] = field(default_factory=dict)

    @property
    def timepoints(self) -> tuple[str, ...]:
        return tuple(scan.timepoint for scan in self.scans)


CLINICAL_SOURCES: tuple[str, ...] = ("history", "screening", "read")
"""Where a clinical column comes from: ``history`` (demographics and history: age, sex, smoking,
family history), ``screening`` (the result of a screening round, e.g. NLST ``scr_res0``) or
``read`` (a radiologist's read of the nodule or the CT: nodule type, spiculation, emphysema,
upper lobe, nodule count). Experiments declare which sources they see
(:attr:`mstnet.experiments.registry.DataView.clinical_sources`)."""

DEFAULT_CLINICAL_SOURCE = "history"
"""The source of a column the schema gives none for."""


@dataclass(frozen=True)
class ClinicalSchema:
    """The type of every clinical column: categorical (codes) or numeric (floats), and its source.

    ``categories`` optionally lists, per categorical column, the values it may take (as
    strings); :func:`mstnet.data.validate.validate_cohort` reports values outside the list.
    ``sources`` optionally gives, per column, where it comes from (one of
    :data:`CLINICAL_SOURCES`); a column it does not list is :data:`DEFAULT_CLINICAL_SOURCE`
    (``history``). :meth:`restricted_to` keeps the columns of some sources.
    """

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    def source_of(self, column: str) -> str:
        """Where ``column`` comes from: its declared source, else ``history``."""
        return self.sources.get(column, DEFAULT_CLINICAL_SOURCE)

    def columns_from(self, sources: Iterable[str]) -> tuple[str, ...]:
        """The columns (categorical first, schema order) whose source is one of ``sources``."""
        return self.restricted_to(sources).columns

    def restricted_to(self, sources: Iterable[str]) -> "ClinicalSchema":
        """The schema of the columns whose source is one of ``sources`` (their categories and sources kept).

        Raises:
            ValueError: a source that is not one of :data:`CLINICAL_SOURCES`.
        """
        wanted = tuple(sources) if not isinstance(sources, str) else (sources,)
        unknown = [s for s in wanted if s not in CLINICAL_SOURCES]
        if unknown:
            raise ValueError(f"unknown clinical source(s) {unknown}; the sources are {', '.join(CLINICAL_SOURCES)}")
        keep = {column for column in self.columns if self.source_of(column) in wanted}
        return ClinicalSchema(tuple(c for c in self.categorical if c in keep), tuple(c for c in self.numeric if c in keep),
                              {c: v for c, v in self.categories.items() if c in keep},
                              {c: v for c, v in self.sources.items() if c in keep})

    def problems(self, file: str | Path | None = None) -> list[Problem]:
        """What is inconsistent in the schema itself: a column listed as both categorical and
        numeric (or twice), categories given for a column that is not categorical, a source given
        for a column not in the schema or not one of :data:`CLINICAL_SOURCES`. Located at ``file``."""
        where = str(file) if file is not None else None
        found = []
        for column in dict.fromkeys(self.columns):
            if column in self.categorical and column in self.numeric:
                found.append(Problem("listed as both categorical and numeric in the clinical schema; a column has one type",
                                     column=column, file=where))
            elif self.columns.count(column) > 1:
                found.append(Problem(f"listed {self.columns.count(column)} times in the clinical schema", column=column, file=where))
        for column in self.categories:
            if column not in self.categorical:
                found.append(Problem("the clinical schema gives categories for this column but it is not in its categorical list",
                                     column=column, file=where))
        for column, source in self.sources.items():
            if column not in self.columns:
                found.append(Problem("the clinical schema gives a source for this column but it is neither in its "
                                     "categorical nor in its numeric list", column=column, file=where))
            elif source not in CLINICAL_SOURCES:
                found.append(Problem(f"unknown source {source!r} in the clinical schema; a column's source is one of "
                                     f"{', '.join(CLINICAL_SOURCES)}", column=column, file=where))
        return found

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"categorical": list(self.categorical), "numeric": list(self.numeric)}
        if self.categories:
            data["categories"] = {column: list(values) for column, values in self.categories.items()}
        if self.sources:
            data["sources"] = dict(self.sources)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ClinicalSchema":
        unknown = set(data) - {"categorical", "numeric", "categories", "sources"}
        if unknown:
            raise CohortError(Problem(f"unknown keys {sorted(unknown)} in clinical schema; expected 'categorical', "
                                      "'numeric' and optionally 'categories' and 'sources'"))
        categories = data.get("categories") or {}
        if not isinstance(categories, Mapping) or not all(
                isinstance(values, (list, tuple)) for values in categories.values()):
            raise CohortError(Problem("'categories' of the clinical schema must map each categorical column to a list "
                                      "of allowed values"))
        sources = data.get("sources") or {}
        if not isinstance(sources, Mapping) or not all(isinstance(source, str) for source in sources.values()):
            raise CohortError(Problem(f"'sources' of the clinical schema must map each column to one of "
                                      f"{', '.join(map(repr, CLINICAL_SOURCES))}"))
        return cls(tuple(data.get("categorical", ())), tuple(data.get("numeric", ())),
                   {str(column): tuple(str(v) for v in values) for column, values in categories.items()},
                   {str(column): source for column, source in sources.items()})


@dataclass(frozen=True)
class Cohort:
    """A list of patients with a shared clinical schema. ``root`` is where it was read from.

    ``mask_binarization`` is how every reader of the cohort's masks binarises them (the
    ``binarize`` argument of :func:`mstnet.data.io.read_mask`): ``None`` (strict, only 0 and
    1 allowed), ``"nonzero"`` or ``"half"``. It is set when loading and not written to disk.
    """

    patients: tuple[Patient, ...]
    clinical_schema: ClinicalSchema = ClinicalSchema()
    root: Path | None = None
    name: str = "cohort"
    mask_binarization: str | None = None

    def __len__(self) -> int:
        return len(self.patients)

    def __iter__(self) -> Iterator[Patient]:
        return iter(self.patients)

    def __getitem__(self, patient_id: str) -> Patient:
        for patient in self.patients:
            if patient.patient_id == patient_id:
                return patient
        raise KeyError(f"patient {patient_id!r} is not in cohort {self.name!r}")

    @property
    def patient_ids(self) -> list[str]:
        return [p.patient_id for p in self.patients]

    @property
    def labels(self) -> list[int]:
        return [p.label for p in self.patients]

    def subset(self, patient_ids: Iterable[str]) -> "Cohort":
        """The cohort restricted to ``patient_ids`` (kept in the cohort's order)."""
        wanted = set(patient_ids)
        missing = wanted - set(self.patient_ids)
        if missing:
            raise KeyError(f"patients not in cohort {self.name!r}: {sorted(missing)[:5]}")
        return replace(self, patients=tuple(p for p in self.patients if p.patient_id in wanted))

    def manifest_frame(self, relative_to: Path | None = None) -> pd.DataFrame:
        """The manifest as a DataFrame; paths relative to ``relative_to`` when given."""

        def rel(path: Path | None) -> str:
            if path is None:
                return ""
            if relative_to is not None:
                try:
                    return os.path.relpath(path, relative_to)
                except ValueError:
                    return str(path)
            return str(path)

        rows = []
        for patient in self.patients:
            for scan in patient.scans:
                loc = scan.nodule
                rows.append(
                    {
                        "patient_id": patient.patient_id,
                        "timepoint": scan.timepoint,
                        "days": scan.days,
                        "image": rel(scan.image),
                        "mask": rel(scan.mask),
                        "nodule_x": loc.x if loc else math.nan,
                        "nodule_y": loc.y if loc else math.nan,
                        "nodule_z1": loc.z1 if loc else pd.NA,
                        "nodule_z2": loc.z2 if loc else pd.NA,
                        "label": patient.label,
                    }
                )
        frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        return frame.astype({"nodule_z1": "Int64", "nodule_z2": "Int64"})

    def clinical_frame(self) -> pd.DataFrame:
        """One row per patient: ``patient_id`` then the schema's columns."""
        columns = ["patient_id", *self.clinical_schema.columns]
        rows = [{"patient_id": p.patient_id, **{c: p.clinical.get(c) for c in self.clinical_schema.columns}} for p in self.patients]
        return pd.DataFrame(rows, columns=columns)

    def write(self, folder: str | Path) -> Path:
        """Write ``manifest.csv``, ``clinical.csv`` and ``clinical_schema.json`` to ``folder``.

        Image and mask paths are written relative to ``folder``. Each file is written to a
        temporary name and renamed, so a crash never leaves a half-written file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "manifest.csv", self.manifest_frame(relative_to=folder).to_csv(index=False))
        write_text_atomic(folder / "clinical.csv", self.clinical_frame().to_csv(index=False))
        write_text_atomic(folder / "clinical_schema.json", json.dumps(self.clinical_schema.to_json(), indent=2) + "\n")
        return folder
