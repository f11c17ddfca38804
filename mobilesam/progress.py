"""Progress bars on stderr: tqdm when it is installed, else a small text bar.

``progress_bar(total, desc, unit="img")`` counts items (``3/10 img``). Both expose
``update(n)`` and ``close()``. (Downloads use it too, counting bytes.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def _load_tqdm() -> Callable[..., Any] | None:
    """Return ``tqdm.tqdm`` if it is importable, else ``None``."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class TextBar:
    """Minimal stderr progress bar used when tqdm is not installed."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", stream: TextIO | None = None
    ) -> None:
        self.total = total if total and total > 0 else None
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._last_draw = 0.0
        self._last_pct = -1
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.total:
            pct = min(100, int(self.n * 100 / self.total))
            if not force and pct == self._last_pct and now - self._last_draw < 0.5:
                return
            self._last_pct = pct
            filled = 30 * pct // 100
            bar = "#" * filled + "-" * (30 - filled)
            amount = f"{int(self.n + 1e-6)}/{self.total} {self.unit}"  # updates may be fractional
            line = f"\r{self.desc}: {pct:3d}% [{bar}] {amount}"
        else:
            if not force and now - self._last_draw < 0.5:
                return
            line = f"\r{self.desc}: {int(self.n + 1e-6)} {self.unit}"
        self._last_draw = now
        self.stream.write(line)
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def close(self) -> None:
        self._draw(force=True)
        self.stream.write("\n")
        self.stream.flush()


class NullBar:
    """Progress sink that prints nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool = True) -> Any:
    """A progress bar over ``total`` items of ``unit`` on stderr, or a silent one."""
    if not enabled:
        return NullBar()
    tqdm = _load_tqdm()
    if tqdm is not None:
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True)
    return TextBar(total, desc, unit)
