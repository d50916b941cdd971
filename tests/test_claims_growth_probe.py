"""scripts/claims_growth_probe.py reads each test scan's predicted volume from the run's own
``segmentation.csv`` when no ``mstnet predict`` folder is given."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from mstnet.reporting.results import load_results
from tests.fake_runs import write_fake_runs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "claims_growth_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("claims_growth_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_volumes_are_each_test_scans_predicted_volume(probe, tmp_path: Path) -> None:
    runs = write_fake_runs(tmp_path / "runs", timepoints=("T1", "T2"))
    volumes = probe.recorded_volumes(load_results(runs), "mstnet", ("T1", "T2"))
    written = pd.concat([pd.read_csv(path, dtype={"patient_id": str})
                         for path in sorted((runs / "mstnet").glob("fold*/segmentation.csv"))])
    assert len(volumes) == written["patient_id"].nunique() == 40
    for row in written.itertuples():
        assert volumes.loc[row.patient_id, f"predicted_{row.timepoint}"] == pytest.approx(row.predicted_volume_mm3)
        assert volumes.loc[row.patient_id, "fold"] == row.fold


def test_results_without_the_volume_column_ask_for_the_predict_masks(probe, tmp_path: Path) -> None:
    runs = write_fake_runs(tmp_path / "runs", timepoints=("T1", "T2"))
    for path in (runs / "mstnet").glob("fold*/segmentation.csv"):
        pd.read_csv(path).drop(columns=["reference_volume_mm3", "predicted_volume_mm3"]).to_csv(path, index=False)
    with pytest.raises(SystemExit, match="mstnet: its segmentation.csv has no predicted_volume_mm3 column"):
        probe.recorded_volumes(load_results(runs), "mstnet", ("T1", "T2"))
