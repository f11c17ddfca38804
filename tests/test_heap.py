"""``_heap.HeapTrimmer``: freed heap memory goes back to the OS once the resident size grows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mobilesam import _heap
from mobilesam._heap import HeapTrimmer


def test_trims_only_when_grown_past_the_budget(monkeypatch):
    """The policy, with a scripted resident size: a trim runs only after the size has grown
    more than the budget since the last trim (or construction), and resets the baseline."""
    sizes = iter([100, 110, 130, 90, 95, 140, 100])
    monkeypatch.setattr(_heap, "resident_bytes", lambda: next(sizes))
    calls = []
    monkeypatch.setattr(_heap, "_load_malloc_trim", lambda: calls.append)
    trimmer = HeapTrimmer(budget_bytes=20)  # baseline 100
    assert trimmer.trim_if_grown() is False  # 110: +10
    assert trimmer.trim_if_grown() is True and calls == [0]  # 130: +30, trims; baseline 90
    assert trimmer.trim_if_grown() is False  # 95: +5
    assert trimmer.trim_if_grown() is True and calls == [0, 0]  # 140: +50


def test_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(_heap, "_load_malloc_trim", lambda: None)
    assert HeapTrimmer(budget_bytes=0).trim_if_grown() is False


_REAL_TRIM = """
from mobilesam._heap import HeapTrimmer, resident_bytes
trimmer = HeapTrimmer(budget_bytes=16 * 2**20)
if trimmer._trim is None or resident_bytes() is None:
    print("skip")
    raise SystemExit
# 128 MiB in heap-sized pieces (under glibc's mmap threshold), pages touched; every other
# piece is freed, so the free memory lies in holes that only a trim gives back
chunks = [bytearray(b"x" * 65536) for _ in range(2048)]
kept = chunks[1::2]
del chunks
grown = resident_bytes()
print(trimmer.trim_if_grown(), (grown - resident_bytes()) // 2**20)
"""


def test_a_trim_gives_memory_back():
    """For real, in a fresh process (the test process's own heap history would blur it)."""
    out = subprocess.run(
        [sys.executable, "-c", _REAL_TRIM], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "skip":
        pytest.skip("no /proc or glibc here")
    trimmed, freed_mib = out.stdout.split()
    assert trimmed == "True" and int(freed_mib) > 32
