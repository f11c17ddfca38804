"""Helpers shared by the benchmark scripts: timing, the matmul peak, machine info (CPU model
and its vector/matrix flags), the official ``mobile_sam`` package for same-run comparisons,
and output."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from mobilesam._atomic import atomic_write
from mobilesam.engine import native
from mobilesam.timing import matmul_peak, time_fn  # noqa: F401 (re-exported for the scripts)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
OFFICIAL = REFERENCE.parent / "official"
RESULTS = Path(__file__).resolve().parent / "results"
#: CPU flags that decide fp32/bf16 matmul speed, as /proc/cpuinfo names them
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_info() -> dict[str, object]:
    """The CPU model name and which of :data:`SPEED_FLAGS` it has (Linux; else what
    ``platform`` knows)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "flags": [f for f in SPEED_FLAGS if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine_info() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "native_kernels": native.status(),
    }


def describe_machine(threads: int, peak: float) -> str:
    """One line naming the CPU, its flags, the threads and the matmul peak."""
    cpu = cpu_info()
    return (
        f"CPU: {cpu['model']} [{' '.join(cpu['flags'])}; torch {cpu['torch_capability']}], "
        f"{threads} threads, fp32 matmul peak {peak:.0f} GFLOP/s (2048², best of 10); "
        f"native decoder kernels: {native.status()}"
    )


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=" ".join((doc or "").split("\n\n")[0].split()))


def add_official_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--official",
        default=str(OFFICIAL),
        help="a checkout holding the official mobile_sam package (default: %(default)s); "
        "'none' skips the comparison",
    )


def import_official(path: str) -> ModuleType | None:
    """The official ``mobile_sam`` package at ``path``, or None (and a printed reason) when it
    is absent. The torchvision/timm stand-ins in ``path/stubs`` go on the path only where the
    real packages do not import."""
    root = Path(path)
    if path == "none" or not (root / "mobile_sam").is_dir():
        print(f"official code not found at {path}: skipping the same-run comparison")
        return None
    extra = [str(root)]
    for name in ("torchvision", "timm"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (a broken install counts as missing)
            extra.append(str(root / "stubs"))
            break
    sys.path[:0] = extra
    return importlib.import_module("mobile_sam")


def official_model(mobile_sam: ModuleType, checkpoint: str | Path) -> torch.nn.Module:
    """The official ``vit_t`` with ``checkpoint`` loaded as its README says: build empty, load,
    then ``eval()`` (TinyViT caches its attention biases at ``eval()``)."""
    model = mobile_sam.sam_model_registry["vit_t"]()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, inner: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Per-call seconds of each of ``fns``, timed in turn round after round (each round calls
    every function ``inner`` times in a row), after ``warmup`` untimed rounds: on a noisy
    machine every side sees the same conditions."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append((time.perf_counter() - start) / inner)
    return out


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
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))  # an interrupted run keeps the old
    return path
