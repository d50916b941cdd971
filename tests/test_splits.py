"""Folds are patient-level, stratified, disjoint, reproducible, and hashed."""

import json

import numpy as np
import pytest

from mstnet.experiments.splits import Splits, make_splits


def _cohort(n=60, malignant=24):
    ids = [f"P{i:03d}" for i in range(n)]
    labels = [1] * malignant + [0] * (n - malignant)
    return ids, labels


def test_every_patient_is_tested_exactly_once_and_sets_are_disjoint():
    ids, labels = _cohort()
    splits = make_splits(ids, labels, n_folds=5, seed=3)
    tested = [p for fold in splits.folds for p in fold.test]
    assert sorted(tested) == sorted(ids)
    for fold in splits.folds:
        train, val, test = set(fold.train), set(fold.validation), set(fold.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(ids)


def test_folds_are_stratified_by_label():
    ids, labels = _cohort(100, 40)
    label_of = dict(zip(ids, labels))
    for fold in make_splits(ids, labels, seed=0).folds:
        assert sum(label_of[p] for p in fold.test) == 8  # 40 malignant / 5 folds
        val_rate = np.mean([label_of[p] for p in fold.validation])
        assert abs(val_rate - 0.4) < 0.07


def test_same_seed_same_hash_and_other_seed_other_hash(tmp_path):
    ids, labels = _cohort()
    a, b, c = make_splits(ids, labels, seed=1), make_splits(ids, labels, seed=1), make_splits(ids, labels, seed=2)
    assert a.hash == b.hash and a.hash != c.hash
    path = a.write(tmp_path / "splits.json")
    assert Splits.read(path) == a
    data = json.loads(path.read_text())
    data["folds"][0]["test"][0], data["folds"][1]["test"][0] = data["folds"][1]["test"][0], data["folds"][0]["test"][0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hash does not match"):
        Splits.read(path)


def test_too_few_patients_of_a_label_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 5 patients of each label.*3 malignant"):
        make_splits([f"P{i}" for i in range(20)], [1] * 3 + [0] * 17)


def test_duplicate_patient_ids_are_rejected():
    with pytest.raises(ValueError, match="duplicated: \\['P1'\\]"):
        make_splits(["P1", "P1", "P2"], [0, 0, 1], n_folds=2)
