"""Synthetic cohort speed: shape-bank build and cache load, cpu preset generation, paper preset (slow).

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_synth.py --benchmark-enable -q -s``
(``MSTNET_SLOW=1`` adds the paper preset, 150 x 3 scans of 16 x 512 x 512).

Goals on a 2-core machine: bank built once in < 60 s and loaded from cache in < 2 s; the cpu
preset (150 patients x 3 time points of 16 x 96 x 96) in < 60 s with 2 workers; the paper
preset in < 10 min. Timings depend on what else runs on the cores: the load average is
printed with every figure, and the generation goals are asserted only on an idle machine
(load average below the core count) - otherwise they are reported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mstnet.synth import synth_config, synthesize_cohort
from mstnet.synth.shape_bank import ShapeBank, build_shape_bank, shape_bank_path

WORKERS = 2


def machine_is_idle() -> bool:
    return os.getloadavg()[0] < (os.cpu_count() or 1)


def report(name: str, seconds: float, goal: float) -> None:
    print(f"\n{name}: {seconds:.1f} s (goal < {goal:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


@pytest.fixture(scope="module")
def bank_cache(tmp_path_factory) -> dict:
    """Shared between the tests of this module: the bank the build benchmark made, and where it was saved."""
    return {"folder": tmp_path_factory.mktemp("cache")}


def built_bank(bank_cache: dict) -> tuple[ShapeBank, Path]:
    if "bank" not in bank_cache:
        bank_cache["bank"] = build_shape_bank(workers=WORKERS, progress=False)
    bank = bank_cache["bank"]
    return bank, bank.save(shape_bank_path(bank.spacing_mm, bank_cache["folder"]))


def test_shape_bank_build_under_a_minute(bank_cache, benchmark):
    benchmark.group = "synthetic cohort"
    started = time.perf_counter()
    bank_cache["bank"] = benchmark.pedantic(build_shape_bank, kwargs={"workers": WORKERS, "progress": False},
                                            rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    benchmark.extra_info.update(items_per_call=len(bank_cache["bank"]), item="shape", workers=WORKERS)
    report("shape bank build", seconds, 60)
    assert len(bank_cache["bank"]) > 2000
    if machine_is_idle():
        assert seconds < 60


def test_shape_bank_cache_load_under_two_seconds(bank_cache, benchmark):
    benchmark.group = "synthetic cohort"
    bank, path = built_bank(bank_cache)
    loaded = benchmark.pedantic(ShapeBank.load, args=(path,), rounds=3, iterations=1)
    benchmark.extra_info.update(items_per_call=len(bank), item="shape")
    seconds = benchmark.stats.stats.min
    report("shape bank cache load", seconds, 2)
    assert len(loaded) == len(bank)
    assert seconds < 2


def test_cpu_preset_generation(bank_cache, benchmark, tmp_path):
    benchmark.group = "synthetic cohort"
    bank, _ = built_bank(bank_cache)
    config = synth_config("cpu")
    started = time.perf_counter()
    benchmark.pedantic(synthesize_cohort, args=(config, tmp_path / "cpu"),
                       kwargs={"workers": WORKERS, "progress": False, "bank": bank}, rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    benchmark.extra_info.update(items_per_call=config.n_patients * config.n_timepoints, item="scan", workers=WORKERS)
    report(f"cpu preset ({config.n_patients} patients x {config.n_timepoints} of {config.shape})", seconds, 60)
    if machine_is_idle():
        assert seconds < 60


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MSTNET_SLOW") != "1", reason="paper preset takes minutes; set MSTNET_SLOW=1")
def test_paper_preset_generation(bank_cache, tmp_path):
    bank, _ = built_bank(bank_cache)
    config = synth_config("paper")
    started = time.perf_counter()
    synthesize_cohort(config, tmp_path / "paper", workers=WORKERS, progress=False, bank=bank)
    seconds = time.perf_counter() - started
    report(f"paper preset ({config.n_patients} patients x {config.n_timepoints} of {config.shape})", seconds, 600)
    if machine_is_idle():
        assert seconds < 600
