"""Wall-clock timing and the machine's matmul peak, shared by ``mobilesam bench`` and the
scripts in ``benchmarks/`` (which report medians normalised by a peak from the same run)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_fn(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_peak(n: int = 2048, runs: int = 10) -> dict[str, float]:
    """fp32 ``n×n`` matmul throughput: best-of-``runs`` (the peak) and median, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = time_fn(lambda: a @ b, runs, warmup=2)
    flops = 2 * n**3
    return {
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / statistics.median(times) / 1e9,
    }
