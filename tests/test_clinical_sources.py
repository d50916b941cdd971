"""Clinical columns declare their source (history, screening, read) and experiments see only the
sources they declare: radiologist reads stay out of clinical-only, logreg-clinical and MST-Net's
clinical branch unless an experiment (with-reads, brock) asks for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mstnet.data.cohort import CLINICAL_SOURCES, ClinicalSchema, CohortError
from mstnet.data.features import patient_features
from mstnet.data.sources import load_cohort, load_nlst_cohort, write_nlst_layout
from mstnet.data.validate import validate_cohort
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import DataView, get_experiment
from mstnet.experiments.runner import FoldData, RunOptions, fold_configuration, tabular_context
from mstnet.experiments.splits import Fold, Splits
from mstnet.synth import synth_config, synthesize_cohort
from mstnet.synth.cohort_folder import CLINICAL_SCHEMA
from mstnet.synth.shape_bank import build_shape_bank

READS = {"emphysema", "upper_lobe", "nodule_count", "nodule_type", "spiculated"}
HISTORY = {"race", "cigsmok", "gender", "age", "pack_years", "family_history"}
SCREENING = {"scr_res0", "scr_iso0"}


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory):
    bank = build_shape_bank(scan_ids=tuple(range(1, 11)), workers=1, progress=False)
    folder = synthesize_cohort(synth_config("tiny", n_patients=12, seed=3), tmp_path_factory.mktemp("synth") / "tiny",
                               workers=1, progress=False, bank=bank)
    return load_cohort(folder)


@pytest.fixture(scope="module")
def fold(synth_cohort) -> Fold:
    ids, labels = synth_cohort.patient_ids, synth_cohort.labels
    benign = [p for p, y in zip(ids, labels) if y == 0]
    malignant = [p for p, y in zip(ids, labels) if y == 1]
    assert len(benign) >= 3 and len(malignant) >= 3, "the tiny cohort needs both labels in every portion"
    test = (benign[0], malignant[0])
    validation = (benign[1], malignant[1])
    train = tuple(p for p in ids if p not in test + validation)
    return Fold(0, train, validation, test)


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> RunOptions:
    return RunOptions(preset=run_preset("tiny", epochs=1), device=torch.device("cpu"),
                      cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _encoder_columns(name: str, cohort, fold: Fold, options: RunOptions) -> tuple[str, ...]:
    """The clinical columns the harness's fold encoder feeds experiment ``name`` (runner code path)."""
    return FoldData(cohort, fold, get_experiment(name), options).encoder.columns


def test_every_column_of_the_synthetic_cohort_has_its_source(synth_cohort):
    schema = synth_cohort.clinical_schema
    assert set(schema.sources) == set(schema.columns) == HISTORY | SCREENING | READS
    assert set(schema.sources.values()) <= set(CLINICAL_SOURCES)
    assert {c for c in schema.columns if schema.source_of(c) == "read"} == READS
    assert {c for c in schema.columns if schema.source_of(c) == "screening"} == SCREENING
    assert {c for c in schema.columns if schema.source_of(c) == "history"} == HISTORY
    assert schema.problems() == []
    assert dict(schema.sources) == dict(CLINICAL_SCHEMA.sources)
    raw = json.loads((Path(synth_cohort.root) / "clinical_schema.json").read_text())
    assert raw["sources"]["nodule_type"] == "read" and raw["sources"]["scr_res0"] == "screening"
    assert "categories" in raw  # the categories are still written beside the sources


def test_deep_clinical_only_and_mstnet_see_no_read_column(synth_cohort, fold, options):
    expected = set(synth_cohort.clinical_schema.columns_from(("history", "screening")))
    assert expected == HISTORY | SCREENING
    for name in ("clinical-only", "mstnet", "single-timepoint"):
        columns = _encoder_columns(name, synth_cohort, fold, options)
        assert set(columns) == expected, name
        assert not set(columns) & READS, name


def test_with_reads_ablation_feeds_the_reads(synth_cohort, fold, options):
    columns = _encoder_columns("with-reads", synth_cohort, fold, options)
    assert set(columns) == HISTORY | SCREENING | READS
    spec = get_experiment("with-reads")
    assert spec.group == "ablation" and "read" in spec.data_view.clinical_sources
    assert spec.information == "scans2+clinical+reads"


def test_fold_configuration_sizes_the_model_to_the_sources(synth_cohort, fold, options):
    splits = Splits((fold,), seed=0)
    schema = synth_cohort.clinical_schema
    for name, sources in (("mstnet", ("history", "screening")), ("with-reads", ("history", "screening", "read"))):
        context = fold_configuration(get_experiment(name), synth_cohort, splits, 0, options)["context"]
        restricted = schema.restricted_to(sources)
        assert len(context["clinical_cardinalities"]) == len(restricted.categorical), name
        assert context["num_numeric"] == len(restricted.numeric), name
    default = fold_configuration(get_experiment("mstnet"), synth_cohort, splits, 0, options)
    assert default["experiment"]["data_view"]["clinical_sources"] == ["history", "screening"]


def _fitted_tabular(name: str, cohort, fold: Fold, options: RunOptions):
    """The tabular estimator of ``name`` fitted as the runner fits it (same features, same context)."""
    spec = get_experiment(name)
    features = patient_features(cohort, timepoints=spec.data_view.timepoints)
    labels = dict(zip(cohort.patient_ids, cohort.labels))
    estimator = spec.build(tabular_context(spec, options))
    estimator.fit(features.loc[list(fold.train)], np.array([labels[p] for p in fold.train]))
    return estimator, features


def test_logreg_clinical_design_matrix_has_no_read_column(synth_cohort, fold, options):
    for name in ("logreg-clinical", "logreg-growth"):
        estimator, features = _fitted_tabular(name, synth_cohort, fold, options)
        assert READS <= set(features.columns)  # the frame carries them; the method does not use them
        categorical, numeric = estimator.columns
        fed = set(categorical) | set(numeric)
        assert not fed & READS, name
        assert HISTORY | SCREENING <= fed, name
        assert not set(estimator.design(features).columns) & READS, name
        assert len(estimator.predict_proba(features.loc[list(fold.test)])) == len(fold.test)
    assert get_experiment("logreg-clinical").information == "clinical"


def test_brock_declares_the_reads_it_is_made_of():
    spec = get_experiment("brock")
    assert spec.data_view.clinical_sources == ("history", "screening", "read")
    assert spec.information == "scans1+clinical+reads"
    assert "reads" in spec.footnote


def test_frames_without_a_schema_use_known_sources():
    from baselines.nondeep import ClinicalLogisticRegression, clinical_columns

    frame = pd.DataFrame({"age": [60.0, 70.0], "nodule_type": ["solid", "non-solid"], "scr_res0": [2, 4],
                          "diameter_mm_t0": [5.0, 6.0]}, index=["a", "b"])
    assert clinical_columns(frame, ("history", "screening")) == ["age", "scr_res0"]
    assert clinical_columns(frame) == ["age", "nodule_type", "scr_res0"]
    frame.attrs["clinical_schema"] = {"categorical": ["nodule_type"], "numeric": ["age", "scr_res0"]}
    assert clinical_columns(frame, ("history",)) == ["age", "nodule_type", "scr_res0"]  # a schema without sources: history
    frame.attrs["clinical_schema"]["sources"] = {"nodule_type": "read"}
    assert ClinicalLogisticRegression().design(frame).columns.tolist() == ["age", "scr_res0"]


def test_sources_round_trip_through_clinical_schema_json(tiny_cohort, tmp_path):
    schema = ClinicalSchema(("gender", "cigsmok"), ("age",), {"gender": ("1", "2")}, {"cigsmok": "screening", "age": "read"})
    assert ClinicalSchema.from_json(json.loads(json.dumps(schema.to_json()))) == schema
    assert schema.to_json()["sources"] == {"cigsmok": "screening", "age": "read"}
    from dataclasses import replace

    folder = replace(tiny_cohort, clinical_schema=schema).write(tmp_path / "written")
    loaded = load_cohort(folder)
    assert loaded.clinical_schema == schema
    assert loaded.clinical_schema.source_of("gender") == "history"
    assert loaded.clinical_schema.restricted_to(("history", "screening")) == ClinicalSchema(
        ("gender", "cigsmok"), (), {"gender": ("1", "2")}, {"cigsmok": "screening"})


def test_a_schema_without_sources_is_all_history(tiny_cohort):
    schema = tiny_cohort.clinical_schema
    assert "sources" not in schema.to_json()
    assert all(schema.source_of(c) == "history" for c in schema.columns)
    assert schema.restricted_to(("history", "screening")) == schema
    assert schema.restricted_to(("read",)).columns == ()


def test_nlst_loader_marks_the_screening_result(tiny_cohort, tmp_path):
    folder = write_nlst_layout(tiny_cohort, tmp_path / "nlst")
    clinical = pd.read_csv(folder / "clinical.csv")
    clinical["scr_res0"] = 2
    clinical.to_csv(folder / "clinical.csv", index=False)
    schema = load_nlst_cohort(folder).clinical_schema
    assert "scr_res0" in schema.categorical
    assert dict(schema.sources) == {"scr_res0": "screening"}
    assert schema.source_of("gender") == "history"


def test_bad_sources_are_located_problems(tiny_cohort, tmp_path):
    schema = ClinicalSchema(("gender",), ("age",), sources={"gender": "radiology", "nodule": "read"})
    problems = schema.problems("clinical_schema.json")
    assert [(p.column, p.file) for p in problems] == [("gender", "clinical_schema.json"), ("nodule", "clinical_schema.json")]
    assert "radiology" in problems[0].message and "history, screening, read" in problems[0].message
    assert "not in" in problems[1].message or "neither" in problems[1].message

    folder = tiny_cohort.root
    raw = json.loads((folder / "clinical_schema.json").read_text())
    (folder / "clinical_schema.json").write_text(json.dumps({**raw, "sources": {"age": "reads"}}))
    with pytest.raises(CohortError) as caught:
        load_cohort(folder)
    [problem] = [p for p in caught.value.problems if p.column == "age"]
    assert "reads" in problem.message and problem.file.endswith("clinical_schema.json")

    (folder / "clinical_schema.json").write_text(json.dumps({**raw, "sources": {"age": 3}}))
    with pytest.raises(CohortError, match="sources"):
        load_cohort(folder)


def test_validate_reports_a_bad_source(tiny_cohort):
    from dataclasses import replace

    cohort = replace(tiny_cohort, clinical_schema=replace(tiny_cohort.clinical_schema, sources={"age": "lab"}))
    assert any(p.column == "age" and "lab" in p.message for p in validate_cohort(cohort))


def test_unknown_sources_are_refused_by_data_views_and_restriction():
    with pytest.raises(ValueError, match="clinical_sources"):
        DataView(clinical_sources=("history", "reads"))
    with pytest.raises(ValueError, match="unknown clinical source"):
        CLINICAL_SCHEMA.restricted_to(("lab",))
    assert DataView().clinical_sources == ("history", "screening")
    assert DataView(timepoints=1, use_clinical=False, clinical_sources=("history", "read")).information() == "scans1"
