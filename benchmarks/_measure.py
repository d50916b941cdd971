"""Measurement helpers shared by the benchmarks: peak memory, FLOP counts, matmul ceiling.

Every benchmark stores what the performance report needs in pytest-benchmark's
``extra_info`` under these keys (``mstnet report --benchmarks`` reads them):

- ``items_per_call`` and ``item``: how many patients / volumes / scans one timed call
  handles, for a throughput column;
- ``flops``: floating-point operations of one timed call (torch.utils.flop_counter);
- ``peak_rss_mib``: peak resident memory of the process during the warm-up and timed calls,
  above the resident size just before them; ``cuda_max_allocated_mib`` on CUDA;
- ``baselines``: names of the benchmarks this one is compared with (time ratios in the report);
- ``device``: "cpu" (the default) or "cuda";
- ``ceiling``: true for the matmul benchmark whose best FLOP/s (fastest round) is the
  ceiling of its device.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024**2


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return 0


class PeakMemory:
    """Peak resident size (and CUDA max allocated) while the ``with`` block runs.

    A thread samples /proc/self/statm every ``interval`` seconds; ``peak_rss_mib`` is the
    highest sample minus the resident size at entry, i.e. what the measured work added.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_rss_mib = 0.0
        self.cuda_max_allocated_mib: float | None = None
        self._stop = threading.Event()

    def _sample(self, start: int) -> None:
        peak = start
        while not self._stop.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(self.interval)
        self.peak_rss_mib = (max(peak, resident_bytes()) - start) / MIB

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, args=(resident_bytes(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.cuda_max_allocated_mib = torch.cuda.max_memory_allocated() / MIB

    def info(self) -> dict[str, float]:
        info = {"peak_rss_mib": round(self.peak_rss_mib, 1)}
        if self.cuda_max_allocated_mib is not None:
            info["cuda_max_allocated_mib"] = round(self.cuda_max_allocated_mib, 1)
        return info


def count_flops(function: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``function`` (matmuls and convolutions, as
    torch.utils.flop_counter counts them: 2 per multiply-add, backward included)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def release_free_memory() -> None:
    """Hand memory freed by earlier work back to the OS (glibc ``malloc_trim``), so that the
    next resident-size baseline is not inflated; a no-op where glibc is absent."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_measured(benchmark, function: Callable[[], Any], rounds: int, **extra: Any) -> PeakMemory:
    """Benchmark ``function`` for ``rounds`` rounds after one warm-up call; the peak memory
    covers the warm-up too (it is where buffers and caches are allocated). Stores the memory
    figures and ``extra`` in ``benchmark.extra_info``."""
    release_free_memory()
    with PeakMemory() as memory:
        function()
        benchmark.pedantic(function, rounds=rounds, iterations=1)
    benchmark.extra_info.update(memory.info())
    benchmark.extra_info.update(extra)
    return memory
