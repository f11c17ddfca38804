"""The server's two gates: :class:`ModelGate` for the model, :class:`UploadBudget` for
decoding uploads.

One model serves every request, one call at a time (the model and predictors are not
thread-safe, and two calls at once would only share the same cores). A plain lock is first
come, first served: a click sent while segment-everything runs (tens of seconds) would wait for
all of it. :class:`ModelGate` lets long jobs hold the model in slices instead: a background
job calls its ``yield_point`` between slices (between batches of prompt points), and gives
the model to any waiting interactive request before going on.

Decoding is the other large cost: a photo at the pixel cap takes hundreds of MB while it is
decoded and resized, outside the model gate. :class:`UploadBudget` runs a fixed number of
decodes at once and lets a bounded number of uploads wait; the rest are told to come back
later (:class:`UploadsBusy`, a 503 with ``Retry-After``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelGate:
    """Exclusive use of the model; interactive requests go before background slices, and
    among themselves in arrival order (tickets), so none starves under load."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._busy = False
        self._waiting = 0  # interactive requests waiting for the model
        self._next_ticket = 0
        self._now_serving = 0

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Hold the model for one short request."""
        with self._cv:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting += 1
            try:
                self._cv.wait_for(lambda: not self._busy and self._now_serving == ticket)
            finally:
                self._waiting -= 1
                self._now_serving += 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self) -> Iterator[Callable[[], None]]:
        """Hold the model for a long job; the job calls the yielded function between slices,
        which lets every waiting interactive request run first."""
        self._acquire_background()
        try:
            yield self._yield_point
        finally:
            self._release()

    def _yield_point(self) -> None:
        with self._cv:
            if not self._waiting:
                return
            self._busy = False
            self._cv.notify_all()
        self._acquire_background()

    def _acquire_background(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: not self._busy and not self._waiting)
            self._busy = True

    def _release(self) -> None:
        with self._cv:
            self._busy = False
            self._cv.notify_all()


class UploadsBusy(Exception):
    """More uploads are in progress than :class:`UploadBudget` admits; ``retry_after`` is
    the suggested wait in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UploadBudget:
    """Bounds the memory that uploads take before they reach the model.

    ``decodes`` uploads are decoded and resized at once (:meth:`decoding_slot`, a semaphore);
    :meth:`admit` lets in at most ``decodes + queue`` uploads in all (waiting to decode,
    decoding, waiting for or using the model) and raises :class:`UploadsBusy` for more, so
    neither memory nor the worker threads that waiting uploads hold grow with the number of
    clients. ``pending`` and ``decoding`` count them now. Thread-safe."""

    def __init__(self, decodes: int, queue: int, retry_after: int = 2) -> None:
        self.decodes, self.queue, self.retry_after = decodes, queue, retry_after
        self._slots = threading.BoundedSemaphore(decodes)
        self._lock = threading.Lock()
        self.pending = 0
        self.decoding = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one upload in for the block; :class:`UploadsBusy` when the queue is full."""
        with self._lock:
            if self.pending >= self.decodes + self.queue:
                raise UploadsBusy(
                    f"server busy: {self.pending} uploads in progress (at most "
                    f"{self.decodes} decoding and {self.queue} waiting); retry in "
                    f"{self.retry_after} s",
                    self.retry_after,
                )
            self.pending += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1

    @contextmanager
    def decoding_slot(self) -> Iterator[None]:
        """Hold one of the ``decodes`` slots for the block (waiting for one if need be)."""
        with self._slots:
            with self._lock:
                self.decoding += 1
            try:
                yield
            finally:
                with self._lock:
                    self.decoding -= 1
