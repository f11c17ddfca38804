"""Helpers shared by the benchmark scripts: timing, the matmul peak, machine info, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
RESULTS = Path(__file__).resolve().parent / "results"


def time_fn(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls."""
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


def machine_info() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
    }


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def write_json(name: str, data: dict, out: str | None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path
