"""``_atomic.atomic_write``: a file is either its old content or its new one, never half."""

from __future__ import annotations

import pytest

from mobilesam._atomic import atomic_write


def test_atomic_write(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
