"""The performance table rendered from a pytest-benchmark JSON file."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from mstnet.cli import build_app
from mstnet.reporting.build import write_performance
from mstnet.reporting.performance import load_benchmarks, performance_frames
from mstnet.reporting.results import ResultsError


def _entry(name, group, median, **extra):
    return {"name": name, "group": group, "stats": {"median": median, "min": median * 0.9, "rounds": 5}, "extra_info": extra}


@pytest.fixture
def benchmark_json(tmp_path):
    data = {
        "datetime": "2026-11-24T00:00:00", "commit_info": {"id": "abcdef1234567"},
        "machine_info": {"cpu": {"brand_raw": "test cpu", "count": 2}},
        "benchmarks": [
            _entry("matmul", "ceiling", 0.5, flops=10e9, ceiling=True),
            _entry("step[mstnet]", "training", 2.0, flops=4e9, items_per_call=4, item="patient", peak_rss_mib=300.0,
                   baselines=["step[unetr]", "missing"]),
            _entry("step[unetr]", "training", 0.8, flops=2e9, items_per_call=4, item="patient"),
            _entry("matmul[cuda]", "ceiling", 0.01, flops=10e12, ceiling=True, device="cuda"),
            _entry("step[mstnet-cuda]", "training", 0.2, flops=40e12, device="cuda"),
        ],
    }
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps(data))
    return path


def test_fractions_throughput_and_ratios_against_hand_computation(benchmark_json):
    table, ratios = performance_frames(load_benchmarks(benchmark_json))
    mstnet = table.set_index("benchmark").loc["step[mstnet]"]
    ceiling_flops_per_s = 10e9 / (0.5 * 0.9)  # the ceiling's fastest round
    assert mstnet["achieved_gflops"] == pytest.approx(4e9 / 2.0 / 1e9)
    assert mstnet["fraction_of_ceiling"] == pytest.approx((4e9 / 2.0) / ceiling_flops_per_s)
    assert mstnet["throughput"] == "2 patient/s"
    assert table.set_index("benchmark").loc["matmul", "fraction_of_ceiling"] == pytest.approx(0.9)
    cuda = table.set_index("benchmark").loc["step[mstnet-cuda]"]
    assert cuda["fraction_of_ceiling"] == pytest.approx((40e12 / 0.2) / (10e12 / (0.01 * 0.9))), "its own device's ceiling"
    assert len(ratios) == 1, "a baseline missing from the file is left out"
    assert ratios.iloc[0]["time_ratio"] == pytest.approx(2.0 / 0.8)
    assert ratios.iloc[0]["speedup"] == pytest.approx(0.8 / 2.0)


def test_written_files_and_cli(benchmark_json, tmp_path):
    out = tmp_path / "perf"
    result = CliRunner().invoke(build_app(), ["report", "--benchmarks", str(benchmark_json), "--out", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (out / "performance.md").read_text()
    assert "## Ratios" in markdown and "step[mstnet]" in markdown and "2.5" in markdown
    assert list(pd.read_csv(out / "performance.csv")["benchmark"]) == [
        "matmul", "step[mstnet]", "step[unetr]", "matmul[cuda]", "step[mstnet-cuda]"]


def test_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="make bench"):
        load_benchmarks(tmp_path / "nothing.json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"results": []}))
    with pytest.raises(ResultsError, match="not a pytest-benchmark"):
        write_performance([foreign], tmp_path / "out")
    result = CliRunner().invoke(build_app(), ["report"])
    assert result.exit_code != 0 and "RUNS_DIR or --benchmarks" in result.output


def test_unreadable_json_and_missing_stats_name_file_and_benchmark(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ResultsError, match="broken.json: not JSON"):
        load_benchmarks(broken)
    no_median = tmp_path / "no_median.json"
    no_median.write_text(json.dumps({"benchmarks": [{"name": "step[mstnet]", "stats": {"min": 1.0}}]}))
    with pytest.raises(ResultsError, match=r"no_median.json: benchmark 'step\[mstnet\]' has no stats.median"):
        load_benchmarks(no_median)
