"""The performance table: pytest-benchmark's JSON (``make bench``) rendered as Markdown and CSV.

Reads only the JSON file. Each benchmark's ``extra_info`` may carry (see
``benchmarks/_measure.py``): ``items_per_call`` and ``item`` (throughput), ``flops`` (per
call), ``peak_rss_mib``, ``cuda_max_allocated_mib``, ``parameters``, ``baselines`` (names of
benchmarks to compare with) and ``ceiling`` (the matmul benchmark whose FLOP/s is the
machine's ceiling). Times are medians over the benchmark's rounds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mstnet.data.cohort import write_text_atomic
from mstnet.reporting.results import ResultsError

PERFORMANCE_COLUMNS = ("group", "benchmark", "median_s", "min_s", "rounds", "throughput", "gflop_per_call",
                       "achieved_gflops", "fraction_of_ceiling", "peak_rss_mib", "cuda_max_allocated_mib", "parameters")
RATIO_COLUMNS = ("benchmark", "baseline", "time_ratio", "speedup")


def load_benchmarks(path: Path) -> dict[str, Any]:
    """The pytest-benchmark JSON at ``path``; a clear error when it is missing or not that format."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no benchmark results; run `make bench` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ResultsError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for entry in data["benchmarks"]:
        if "stats" not in entry or "median" not in entry["stats"]:
            raise ResultsError(f"{path}: benchmark {entry.get('name', '?')!r} has no stats.median")
    return data


def performance_frames(data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(performance table, ratio table) of a pytest-benchmark result.

    ``fraction_of_ceiling`` is a benchmark's FLOP/s (``flops`` / median time) over the
    FLOP/s of the benchmark marked ``ceiling``; ``time_ratio`` is median time over the
    baseline's median time, ``speedup`` its inverse.
    """
    entries = {entry["name"]: entry for entry in data["benchmarks"]}
    ceiling = next((e for e in entries.values() if e.get("extra_info", {}).get("ceiling")), None)
    ceiling_flops_per_s = (ceiling["extra_info"]["flops"] / ceiling["stats"]["median"]) if ceiling else math.nan
    rows, ratios = [], []
    for name, entry in entries.items():
        info, median = entry.get("extra_info", {}), entry["stats"]["median"]
        flops = info.get("flops")
        achieved = flops / median if flops else math.nan
        items = info.get("items_per_call")
        rows.append({
            "group": entry.get("group") or "",
            "benchmark": name,
            "median_s": median,
            "min_s": entry["stats"]["min"],
            "rounds": entry["stats"].get("rounds"),
            "throughput": f"{items / median:.3g} {info.get('item', 'item')}/s" if items else "",
            "gflop_per_call": flops / 1e9 if flops else math.nan,
            "achieved_gflops": achieved / 1e9,
            "fraction_of_ceiling": achieved / ceiling_flops_per_s,
            "peak_rss_mib": info.get("peak_rss_mib", math.nan),
            "cuda_max_allocated_mib": info.get("cuda_max_allocated_mib", math.nan),
            "parameters": info.get("parameters", math.nan),
        })
        for baseline in info.get("baselines", []):
            if baseline not in entries:
                continue
            base_median = entries[baseline]["stats"]["median"]
            ratios.append({"benchmark": name, "baseline": baseline, "time_ratio": median / base_median,
                           "speedup": base_median / median})
    return pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS), pd.DataFrame(ratios, columns=RATIO_COLUMNS)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _markdown(frame: pd.DataFrame, headers: dict[str, str]) -> str:
    lines = ["| " + " | ".join(headers.values()) + " |", "|" + " --- |" * len(headers)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[column]) for column in headers) + " |")
    return "\n".join(lines)


def write_performance_report(benchmarks_json: Path, out_dir: Path) -> Path:
    """Write ``performance.md``, ``performance.csv`` and ``performance_ratios.csv`` into ``out_dir``."""
    data = load_benchmarks(benchmarks_json)
    table, ratios = performance_frames(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "performance.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / "performance_ratios.csv", ratios.to_csv(index=False))
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {}).get("id", "?")
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "?"
    header = (f"# Performance\n\nFrom `{Path(benchmarks_json).name}` ({data.get('datetime', '?')}, commit "
              f"{str(commit)[:10]}, {cpu}, {machine.get('cpu', {}).get('count', '?')} cores). Times are medians "
              "over the rounds; throughput = items per call / median; FLOP counts from "
              "torch.utils.flop_counter; *of ceiling* = achieved FLOP/s over the measured float32 matmul "
              "FLOP/s; peak memory = resident size added during the timed calls.\n")
    sections = [header]
    for group, frame in table.groupby("group", sort=False):
        sections.append(f"## {group or 'other'}\n")
        sections.append(_markdown(frame, {"benchmark": "benchmark", "median_s": "median (s)", "min_s": "min (s)",
                                          "throughput": "throughput", "gflop_per_call": "GFLOP/call",
                                          "achieved_gflops": "GFLOP/s", "fraction_of_ceiling": "of ceiling",
                                          "peak_rss_mib": "peak RSS (MiB)",
                                          "cuda_max_allocated_mib": "CUDA max (MiB)"}) + "\n")
    if len(ratios):
        sections.append("## Ratios\n\n`time ratio` = this benchmark's median time / the baseline's; "
                        "`speed-up` = its inverse.\n")
        sections.append(_markdown(ratios, {"benchmark": "benchmark", "baseline": "baseline",
                                           "time_ratio": "time ratio", "speedup": "speed-up"}) + "\n")
    path = out_dir / "performance.md"
    write_text_atomic(path, "\n".join(sections))
    return path
