"""Atomic file writes: write to a temporary sibling, then rename it over the target."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to write the file's content to ``tmp``, a sibling of ``path`` (same
    directory, so the same file system), then move it over ``path`` with :func:`os.replace`.
    Readers see the old file or the new one, never a partial one; if ``write`` fails, ``tmp``
    is removed and ``path`` is left as it was.

    Examples: ``atomic_write(p, lambda tmp: torch.save(obj, tmp))``,
    ``atomic_write(p, lambda tmp: tmp.write_text(text))``.
    """
    path = Path(path)
    # a name of its own: two writers of one path never share (or replace) a temporary file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
