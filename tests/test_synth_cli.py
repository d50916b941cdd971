"""``mstnet data synth / oracle / preview`` end to end on a few tiny patients."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
from typer.testing import CliRunner

from mstnet.cli import build_app
from mstnet.synth.shape_bank import build_shape_bank, shape_bank_path


@pytest.fixture(scope="module")
def small_bank():
    return build_shape_bank(scan_ids=tuple(range(1, 21)), workers=1, progress=False)


@pytest.fixture
def cache(small_bank, tmp_path, monkeypatch):
    monkeypatch.setenv("MSTNET_CACHE_DIR", str(tmp_path / "cache"))
    small_bank.save(shape_bank_path(small_bank.spacing_mm))
    return tmp_path


def test_synth_then_oracle_then_preview(cache):
    runner = CliRunner()
    app = build_app()
    out = cache / "cohort"
    result = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", str(out), "--patients", "4", "--seed", "2",
                                 "--malignant-fraction", "0.5", "--workers", "1", "--set", "noise_sd_hu_range=[25,30]",
                                 "--set", "growth.malignant_vdt_sigma=0.55"])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "cohort.json").read_text())
    assert stored["config"]["n_patients"] == 4 and stored["config"]["malignant_fraction"] == 0.5
    assert stored["config"]["noise_sd_hu_range"] == [25, 30] and stored["config"]["growth"]["malignant_vdt_sigma"] == 0.55
    assert len(pd.read_csv(out / "manifest.csv")) == 12
    generated = json.loads((out / "oracle.json").read_text())["auc"]
    (out / "oracle.json").unlink()
    result = runner.invoke(app, ["data", "oracle", str(out)])
    assert result.exit_code == 0, result.output
    assert "everything" in result.output
    assert json.loads((out / "oracle.json").read_text())["auc"] == generated
    png = cache / "preview.png"
    result = runner.invoke(app, ["data", "preview", str(out), "--out", str(png), "--patients", "2"])
    assert result.exit_code == 0, result.output
    assert mpimg.imread(png).shape[0] > 100


def test_bad_setting_is_reported_with_its_name(cache):
    result = CliRunner().invoke(build_app(), ["data", "synth", "--preset", "tiny", "--out", str(cache / "x"), "--set", "colour=red"])
    assert result.exit_code != 0
    assert "colour" in result.output
