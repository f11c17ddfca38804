"""A model gate that serves interactive requests first.

One model serves every request, one call at a time (the model and predictors are not
thread-safe, and two calls at once would only share the same cores). A plain lock is first
come, first served: a click sent while segment-everything runs (tens of seconds) would wait for
all of it. :class:`ModelGate` lets long jobs hold the model in slices instead: a background
job calls its ``yield_point`` between slices (between batches of prompt points), and gives
the model to any waiting interactive request before going on.
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
