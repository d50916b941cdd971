"""The performance table: pytest-benchmark's JSON (``make bench``) rendered as Markdown and CSV.

Reads only the JSON file. Each benchmark's ``extra_info`` may carry (see
``benchmarks/_measure.py``): ``items_per_call`` and ``item`` (throughput), ``flops`` (per
call), ``peak_rss_mib``, ``cuda_max_allocated_mib``, ``parameters``, ``baselines`` (names of
benchmarks to compare with), ``device`` (default "cpu") and ``ceiling`` (the matmul benchmark
whose best FLOP/s is its device's ceiling). Times are medians over the benchmark's rounds.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

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

    ``fraction_of_ceiling`` is a benchmark's FLOP/s (``flops`` / median time) over the best
    FLOP/s (``flops`` / fastest round) of the ``ceiling`` benchmark of the same device;
    ``time_ratio`` is median time over the baseline's median time, ``speedup`` its inverse.
    """
    entries = {entry["name"]: entry for entry in data["benchmarks"]}
    ceilings = {entry["extra_info"].get("device", "cpu"): entry["extra_info"]["flops"] / entry["stats"]["min"]
                for entry in entries.values() if entry.get("extra_info", {}).get("ceiling")}
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
            "fraction_of_ceiling": achieved / ceilings.get(info.get("device", "cpu"), math.nan),
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
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


TABLE_HEADERS = {"benchmark": "benchmark", "median_s": "median (s)", "min_s": "min (s)", "throughput": "throughput",
                 "gflop_per_call": "GFLOP/call", "achieved_gflops": "GFLOP/s", "fraction_of_ceiling": "of ceiling",
                 "peak_rss_mib": "peak RSS (MiB)", "cuda_max_allocated_mib": "CUDA max (MiB)"}
RATIO_HEADERS = {"benchmark": "benchmark", "baseline": "baseline", "time_ratio": "time ratio", "speedup": "speed-up"}
EXPLANATION = ("Times are medians over the rounds; throughput = items per call / median; FLOP counts from "
               "torch.utils.flop_counter; *of ceiling* = achieved FLOP/s over the best measured matmul FLOP/s of the "
               "same device (fastest round; CPU float32, CUDA bfloat16); peak memory = resident size added during the warm-up and timed calls. *time ratio* = a benchmark's median time "
               "over its baseline's; *speed-up* = the inverse.")


def _markdown(frame: pd.DataFrame, headers: dict[str, str]) -> str:
    lines = ["| " + " | ".join(headers.values()) + " |", "|" + " --- |" * len(headers)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[column]) for column in headers) + " |")
    return "\n".join(lines)


def _source_line(path: Path, data: dict[str, Any]) -> str:
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    return (f"`{path.name}`: {data.get('datetime', '?')}, commit {str(data.get('commit_info', {}).get('id', '?'))[:10]}, "
            f"{cpu.get('brand_raw') or machine.get('processor') or '?'}, {cpu.get('count', '?')} cores")


def collect(paths: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Performance and ratio tables of several benchmark files (a ``file`` column added), and one
    source line per file (date, commit, CPU)."""
    tables, ratio_tables, sources = [], [], []
    for path in map(Path, paths):
        data = load_benchmarks(path)
        table, ratios = performance_frames(data)
        tables.append(table.assign(file=path.name))
        ratio_tables.append(ratios.assign(file=path.name))
        sources.append(_source_line(path, data))
    return pd.concat(tables, ignore_index=True), pd.concat(ratio_tables, ignore_index=True), sources


def performance_markdown(table: pd.DataFrame, ratios: pd.DataFrame, sources: Sequence[str]) -> str:
    """The performance report as Markdown: one table per benchmark group, then the ratios."""
    sections = ["# Performance\n", "\n".join(f"- {line}" for line in sources) + "\n", EXPLANATION + "\n"]
    for group, frame in table.groupby("group", sort=False):
        sections += [f"## {group or 'other'}\n", _markdown(frame, TABLE_HEADERS) + "\n"]
    if len(ratios):
        sections += ["## Ratios\n", _markdown(ratios, RATIO_HEADERS) + "\n"]
    return "\n".join(sections)


def performance_html(table: pd.DataFrame, ratios: pd.DataFrame, sources: Sequence[str]) -> str:
    """The performance report as HTML tables."""
    from mstnet.reporting.html import frame_table

    parts = [f"<p>{html.escape('; '.join(sources))}. {html.escape(EXPLANATION)}</p>"]
    for group, frame in table.groupby("group", sort=False):
        parts.append(frame_table(group or "other", list(TABLE_HEADERS.values()),
                                 [[_cell(row[c]) for c in TABLE_HEADERS] for _, row in frame.iterrows()]))
    if len(ratios):
        parts.append(frame_table("Ratios", list(RATIO_HEADERS.values()),
                                 [[_cell(row[c]) for c in RATIO_HEADERS] for _, row in ratios.iterrows()]))
    return "".join(parts)


def performance_texts(benchmark_files: Sequence[Path]) -> tuple[dict[str, str], str]:
    """({file name: text} of performance.md, performance.csv, performance_ratios.csv; HTML body)."""
    table, ratios, sources = collect(benchmark_files)
    texts = {"performance.md": performance_markdown(table, ratios, sources),
             "performance.csv": table.to_csv(index=False),
             "performance_ratios.csv": ratios.to_csv(index=False)}
    return texts, performance_html(table, ratios, sources)
