"""Folder jobs without waiting for the disk: photos are read ahead of the model and results
are written behind it, each on a :class:`~concurrent.futures.ThreadPoolExecutor`.

- :class:`ReadAhead` decodes the next :data:`READ_AHEAD` photos on one thread while the
  model works on the current one, and hands them over in their order. Decoding (Pillow) and
  file reads release the GIL, so they run beside the model's own threads.
- :class:`WriteBehind` runs the writing of results (painting an overlay, encoding PNG and
  JSON, the atomic renames) on :data:`WRITERS` threads, with at most :data:`WRITERS` jobs
  queued: when the writers fall behind, the model waits for the oldest job instead of
  piling results up in memory.

So at most ``1 + READ_AHEAD + WRITERS`` photos (with their results) are held at once. Each
photo is still checked against ``--max-pixels`` from its header before it is decoded.

Warnings raised while a photo is read ahead (a damaged EXIF block) are held and shown when
the photo's turn comes, so the lines on stderr keep the photos' order. One reading thread,
not several: :func:`mobilesam.image_io.read_rgb` uses :class:`warnings.catch_warnings`,
which is not safe in several threads at once.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")

#: Photos decoded ahead of the one the model works on.
READ_AHEAD = 2
#: Threads writing results, and the most write jobs waiting at once.
WRITERS = 2

_END = object()


@dataclass
class Loaded(Generic[T]):
    """One item read ahead: the ``image`` (``H×W×3`` uint8) or the ``error`` that reading
    it raised (an ``OSError`` or ``ValueError``: unreadable, undecodable, over the pixel
    cap)."""

    item: T
    image: np.ndarray | None = None
    error: Exception | None = None
    held_warnings: list[tuple] = field(default_factory=list)


class _WarningRelay:
    """While active, warnings shown on a thread that holds a list go to that list instead;
    :meth:`replay` shows them later (through the ``warnings.showwarning`` of before)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._previous: Callable[..., None] | None = None

    def __enter__(self) -> _WarningRelay:
        self._previous = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: object) -> None:
        if warnings.showwarning is self._show:
            warnings.showwarning = self._previous

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        held = getattr(self._local, "held", None)
        if held is None:
            self._previous(message, category, filename, lineno, file, line)
        else:
            held.append((message, category, filename, lineno, file, line))

    def hold(self, held: list[tuple] | None) -> None:
        """Hold this thread's warnings in ``held`` (None: show them again)."""
        self._local.held = held

    def replay(self, held: list[tuple]) -> None:
        for args in held:
            self._previous(*args)


class ReadAhead(Generic[T]):
    """Iterate over ``items`` as :class:`Loaded`, in order, ``read(item)`` having run on a
    background thread up to ``depth`` items ahead. Reading starts at construction (so it
    overlaps whatever the caller does next, e.g. loading the model). Use as a context
    manager: leaving it stops the reading (items not yet started are dropped)."""

    def __init__(
        self, items: Iterable[T], read: Callable[[T], np.ndarray], depth: int = READ_AHEAD
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._read = read
        self._items = iter(items)
        self._pending: deque[Future[Loaded[T]]] = deque()
        self._relay = _WarningRelay().__enter__()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mobilesam-read")
        for _ in range(depth):
            self._submit_next()

    def _submit_next(self) -> None:
        item = next(self._items, _END)
        if item is not _END:
            self._pending.append(self._pool.submit(self._load, item))

    def _load(self, item: T) -> Loaded[T]:
        loaded: Loaded[T] = Loaded(item)
        self._relay.hold(loaded.held_warnings)
        try:
            loaded.image = self._read(item)
        except (OSError, ValueError) as exc:
            loaded.error = exc
        finally:
            self._relay.hold(None)
        return loaded

    def __iter__(self) -> Iterator[Loaded[T]]:
        while self._pending:
            future = self._pending.popleft()
            self._submit_next()
            loaded = future.result()  # a bug in read (not OSError/ValueError) raises here
            self._relay.replay(loaded.held_warnings)
            yield loaded

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._relay.__exit__()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteBehind:
    """Run write jobs on ``workers`` threads, at most ``limit`` of them queued or running:
    :meth:`submit` waits for the oldest when the queue is full. A job's exception is raised
    by the next :meth:`submit` or by :meth:`drain`, so a failure to write stops the run."""

    def __init__(self, workers: int = WRITERS, limit: int = WRITERS) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mobilesam-write")
        self._pending: deque[Future[Any]] = deque()
        self._limit = max(1, limit)

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        while self._pending and (self._pending[0].done() or len(self._pending) >= self._limit):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job, *args))

    def drain(self) -> None:
        """Wait for every job (raising the first failure)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
