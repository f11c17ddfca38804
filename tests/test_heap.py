"""``_heap.HeapTrimmer``: freed heap memory goes back to the OS once the resident size grows."""

from __future__ import annotations

import pytest

from mobilesam._heap import HeapTrimmer, resident_bytes


def test_trims_only_past_the_budget():
    trimmer = HeapTrimmer(budget_bytes=16 * 2**20)
    if trimmer._trim is None or resident_bytes() is None:
        pytest.skip("no /proc or glibc here")
    # 128 MiB in heap-sized pieces (under glibc's mmap threshold), pages touched; every other
    # piece is freed, so the free memory lies in holes that only a trim gives back.
    chunks = [bytearray(b"x" * 65536) for _ in range(2048)]
    kept = chunks[1::2]
    del chunks
    grown = resident_bytes()
    assert trimmer.trim_if_grown() is True
    assert grown - resident_bytes() > 32 * 2**20
    assert trimmer.trim_if_grown() is False  # nothing grew since
    assert HeapTrimmer(budget_bytes=2**62).trim_if_grown() is False
    assert len(kept) == 1024
