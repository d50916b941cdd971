"""Patient-level, label-stratified cross-validation folds with an inner validation split.

Every fold holds three disjoint patient lists: ``train`` (fits the weights), ``validation``
(the inner split, drawn from the training portion: the only data used for early stopping,
checkpoint, threshold and hyperparameter choices) and ``test`` (touched once, for the final
numbers). Every patient is in exactly one ``test`` list. The folds are written to
``splits.json`` with a SHA-256 hash that every result records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from mstnet.atomic import write_text_atomic

INNER_SPLIT_SEED_OFFSET = 1000
"""The inner validation split of outer fold k is drawn with seed + 1000 + k (the outer folds with
``seed`` itself): a seed of its own per fold, apart from the outer draw's."""


@dataclass(frozen=True)
class Fold:
    """One fold: disjoint patient-id lists."""

    fold: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """All folds of a cohort, with the seed that drew them and their hash."""

    folds: tuple[Fold, ...]
    seed: int

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def hash(self) -> str:
        canonical = json.dumps(
            [[f.fold, sorted(f.train), sorted(f.validation), sorted(f.test)] for f in self.folds], separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "n_folds": self.n_folds,
            "hash": self.hash,
            "folds": [
                {"fold": f.fold, "train": list(f.train), "validation": list(f.validation), "test": list(f.test)} for f in self.folds
            ],
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Splits":
        data = json.loads(Path(path).read_text())
        splits = cls(
            folds=tuple(Fold(f["fold"], tuple(f["train"]), tuple(f["validation"]), tuple(f["test"])) for f in data["folds"]),
            seed=int(data["seed"]),
        )
        if data.get("hash") not in (None, splits.hash):
            raise ValueError(f"{path}: the recorded hash does not match the folds (the file was edited)")
        return splits


def make_splits(
    patient_ids: Sequence[str],
    labels: Sequence[int],
    n_folds: int = 5,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Draw ``n_folds`` patient-level folds stratified by label, each with an inner validation split.

    Args:
        patient_ids: one id per patient (unique: folds are patient-level by construction).
        labels: 0/1 label per patient.
        n_folds: number of outer folds (5 = the paper's 4:1 split).
        validation_fraction: share of each training portion held out as inner validation.
        seed: fixes both the outer folds and the inner splits.
    """
    ids = np.asarray(list(patient_ids), dtype=object)
    y = np.asarray(list(labels), dtype=int)
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} patient ids but {len(y)} labels")
    if len(set(ids.tolist())) != len(ids):
        duplicated = sorted({p for p in ids.tolist() if (ids == p).sum() > 1})
        raise ValueError(f"patient ids must be unique; duplicated: {duplicated[:5]}")
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise ValueError(
            f"{n_folds}-fold stratified splits need at least {n_folds} patients of each label; "
            f"the cohort has {counts[0]} benign and {counts[1]} malignant"
        )
    outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (train_index, test_index) in enumerate(outer.split(ids, y)):
        train_ids, validation_ids = train_test_split(
            ids[train_index], test_size=validation_fraction, stratify=y[train_index],
            random_state=seed + INNER_SPLIT_SEED_OFFSET + k,
        )
        folds.append(
            Fold(
                fold=k,
                train=tuple(sorted(train_ids.tolist())),
                validation=tuple(sorted(validation_ids.tolist())),
                test=tuple(sorted(ids[test_index].tolist())),
            )
        )
    return Splits(folds=tuple(folds), seed=seed)
