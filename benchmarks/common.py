"""Helpers shared by the benchmark scripts: timing, the matmul peak, machine info, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch

from mobilesam.timing import matmul_peak, time_fn  # noqa: F401 (re-exported for the scripts)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
RESULTS = Path(__file__).resolve().parent / "results"


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
