"""Running the app on uvicorn as ``mobilesam serve`` does, with limits on connections.

uvicorn alone keeps a connection open for as long as its client takes to send the headers or
the body, so a thousand slow clients hold a thousand file descriptors; once descriptors run
out, every refused ``accept`` used to log a traceback. Here:

- :class:`ConnectionLimits` are passed to uvicorn's own settings where they serve
  (``limit_concurrency``, ``timeout_keep_alive``, h11's ``max_incomplete_event_size`` for the
  header block, ``backlog``), and :class:`GuardedH11Protocol` (uvicorn's h11 protocol) adds
  what uvicorn lacks:

  - a deadline for the request headers (``header_timeout``, then 408) and one for the body
    (``body_timeout``), counted from the start of each, however slowly bytes trickle in;
  - the header size limit however the headers arrive (h11's applies to headers that arrive
    in pieces): 431;
  - a cap on open connections (``max_connections``, a quarter of the open-file limit by
    default): past it, a new connection takes the place of the oldest one that has not sent
    a request yet, or gets 503 with ``Retry-After`` when every connection is serving one.

- :func:`quiet_overload_logs`: overload messages (out of descriptors, concurrency limit,
  malformed requests) are logged once a minute, one line each, with a count of the rest.

Needs uvicorn (the CLI's ``serve`` extra); :func:`~mobilesam.serve.create_app` does not.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .middleware import SECURITY_HEADERS

__all__ = [
    "ConnectionLimits",
    "GuardedH11Protocol",
    "make_server",
    "quiet_overload_logs",
    "serve",
    "uvicorn_config",
]

logger = logging.getLogger("mobilesam.serve")

#: The blank line that ends request headers (h11 also accepts a bare LF).
_END_OF_HEADERS = re.compile(rb"\n\r?\n")

#: The most connections held open by default (fewer when the open-file limit is low).
MAX_CONNECTIONS = 512


def default_max_connections() -> int:
    """A quarter of the process's open-file limit, at most :data:`MAX_CONNECTIONS` and at
    least 8. Each connection holds a descriptor; asyncio accepts a few batches of new ones
    (see :func:`uvicorn_config`'s ``backlog``) before the cap can close any, and the rest
    serve the model's files, uploads spooled to disk and the listening socket."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no `resource` module on Windows
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits on the server's connections (times in seconds).

    ``max_connections``: connections held open at once (``None``:
    :func:`default_max_connections`). ``header_timeout``: time from a connection's start (or
    its previous response) to the end of its request headers. ``body_timeout``: time from the
    end of the headers to the end of the body (uploads are at most 20 MiB by default).
    ``keep_alive_timeout``: an idle connection between requests. ``max_header_bytes``: the
    request line and headers together (over it: 431, or h11's 400). ``retry_after``: the
    ``Retry-After`` of a 503 when every connection is busy."""

    max_connections: int | None = None
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 16 * 2**10
    retry_after: int = 2

    def __post_init__(self) -> None:
        for name in ("max_connections", "header_timeout", "body_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ConnectionLimits.{name} must be positive, not {value!r}")
        for name in ("keep_alive_timeout", "max_header_bytes", "retry_after"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionLimits.{name} must be positive")

    def connections(self) -> int:
        """``max_connections``, or the default for this process's open-file limit."""
        return self.max_connections or default_max_connections()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and a connection cap (``limits``, set on a
    subclass by :func:`uvicorn_config`).

    Each connection is in one phase at a time: waiting for request headers (a fresh
    connection, or one between requests), receiving a body, or being answered (no deadline:
    segment-everything may take minutes). Entering the first two starts a timer that closes
    the connection when it expires; leaving them cancels it."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _cap: ClassVar[int] = MAX_CONNECTIONS
    _lingering: ClassVar[int] = 0  # refused connections still open (per server's subclass)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: Any = None  # asyncio.TimerHandle of the current phase's deadline
        self._phase: tuple[str, Any] | None = None  # (phase, request cycle)
        self._phase_started = 0.0
        self._got_bytes = False  # bytes arrived in the current phase
        self._header_bytes = 0  # bytes received while waiting for the current headers
        self._tail = b""  # their last two bytes (an end of headers may span two reads)
        self._refused = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._cap:
            waiting = [c for c in self.connections if c is not self and _awaits_request(c)]
            if not waiting:
                busy = "server busy: too many connections"
                return self._refuse(503, busy, self.limits.retry_after)
            # the oldest connection without a request gives way (a slow or idle client)
            min(waiting, key=lambda c: c._phase_started)._expire()
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already; the rest of the request is not read
        if self._phase is not None and self._phase[0] == "headers":
            # h11 bounds only headers that arrive in pieces; this bounds them however sent
            limit = self.limits.max_header_bytes
            if self._header_bytes + len(data) > limit:
                window = self._tail + data[: max(0, limit - self._header_bytes)]
                if not _END_OF_HEADERS.search(window):
                    return self._refuse(431, f"request headers over {limit} bytes")
            self._header_bytes += len(data)
            self._tail = (self._tail + data)[-2:]
        self._got_bytes = True
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start the deadline of the phase the connection is in, if it just entered it."""
        if self.transport is None or self.transport.is_closing():
            return self._cancel_timer()
        state = self.conn.their_state
        if state is h11.IDLE:
            phase, seconds = "headers", self.limits.header_timeout
        elif state is h11.SEND_BODY:
            phase, seconds = "body", self.limits.body_timeout
        else:  # being answered, or closing
            self._phase = None
            return self._cancel_timer()
        if self._phase != (phase, self.cycle):
            self._cancel_timer()
            self._phase = (phase, self.cycle)
            self._phase_started = self.loop.time()
            self._got_bytes = False
            self._header_bytes, self._tail = 0, b""
            self._timer = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        """Close the connection: its phase's deadline passed, or it made room for another.
        A request whose headers were begun gets 408; one whose body was begun is cut off
        (its endpoint sees the client disconnect)."""
        self._cancel_timer()
        if self.transport.is_closing():
            return
        if self._phase is not None and self._phase[0] == "headers" and self._got_bytes:
            self.transport.write(_plain_response(408, "request headers not received in time"))
        logger.debug("closed a connection: %s not received in time", self._phase)
        self.transport.close()

    def _refuse(self, status: int, detail: str, retry_after: int | None = None) -> None:
        """Answer ``status`` at once and close. The connection no longer counts: it is gone
        within a second (what the client still sends is read and dropped meanwhile, so that
        it reads the answer rather than a reset), at once when many refused ones linger."""
        self._refused = True
        self._cancel_timer()
        self.connections.discard(self)
        self.transport.write(_plain_response(status, detail, retry_after))
        cls = type(self)
        if cls._lingering >= max(8, self._cap // 4) or not self.transport.can_write_eof():
            return self.transport.close()
        try:
            self.transport.write_eof()
        except OSError:  # the client is gone already
            return self.transport.close()
        cls._lingering += 1

        def close() -> None:
            cls._lingering -= 1
            self.transport.close()

        self.loop.call_later(1.0, close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _awaits_request(conn: Any) -> bool:
    """Whether ``conn`` is one of ours, still open, and has no request in progress."""
    return (
        isinstance(conn, GuardedH11Protocol)
        and not conn._refused
        and conn._phase is not None
        and conn._phase[0] == "headers"
        and not conn.transport.is_closing()
    )


def _plain_response(status: int, detail: str, retry_after: int | None = None) -> bytes:
    """A complete ``Connection: close`` JSON response with the app's security headers,
    written outside h11 (no request was read, or none will be)."""
    body = json.dumps({"detail": detail}).encode()
    reason = {
        408: "Request Timeout",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }[status]
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    head += [f"{name.decode()}: {value.decode()}" for name, value in SECURITY_HEADERS]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def uvicorn_config(
    app: Any, host: str, port: int, limits: ConnectionLimits, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn's config for ``app`` at ``host:port`` under ``limits`` (other uvicorn settings
    in ``kwargs``): h11 with :class:`GuardedH11Protocol`, no WebSocket."""
    cap = limits.connections()
    protocol = type("MobilesamH11Protocol", (GuardedH11Protocol,), {"limits": limits, "_cap": cap})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        # uvicorn answers 503 once connections *including the asking one* reach this, and
        # also counts requests still running for clients that left
        limit_concurrency=cap + 1,
        # asyncio accepts up to `backlog` connections per wake-up, before the cap sees any:
        # batches of half the cap keep a burst's descriptors within a few times the cap
        backlog=max(8, cap // 2),
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=limits.max_header_bytes,
        **kwargs,
    )


def make_server(
    app: Any, host: str, port: int, limits: ConnectionLimits, **kwargs: Any
) -> uvicorn.Server:
    """A uvicorn server for ``app`` (see :func:`uvicorn_config`); ``run()`` serves."""
    return uvicorn.Server(uvicorn_config(app, host, port, limits, **kwargs))


def serve(app: Any, host: str, port: int, limits: ConnectionLimits, **kwargs: Any) -> None:
    """Serve ``app`` until interrupted, with :func:`quiet_overload_logs`."""
    with quiet_overload_logs():
        make_server(app, host, port, limits, **kwargs).run()


#: The starts of messages logged for each refused connection or request under overload.
OVERLOAD_MESSAGES = (
    # asyncio out of descriptors: logged for each pending connection, and each retry it
    # schedules fails once the server has closed (CPython 3.11)
    "socket.accept() out of system resource",
    "Exception in callback BaseSelectorEventLoop._start_serving",
    "Exceeded concurrency limit.",  # uvicorn's limit_concurrency
    "Invalid HTTP request received.",  # uvicorn: malformed, or headers over the limit
)
#: Errors that mean the process is out of descriptors or buffers.
OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Loggers that report overload.
OVERLOAD_LOGGERS = ("asyncio", "uvicorn.error")


class OverloadLogFilter(logging.Filter):
    """Lets through one record per kind of overload message per ``interval`` seconds,
    rewritten as one line (the message's first line, the error, how many were dropped);
    other records pass unchanged."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[tuple, tuple[float, int]] = {}  # kind → (time logged, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            first = str(record.getMessage()).strip().splitlines()[0]
        except (IndexError, TypeError, ValueError):
            first = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        out_of_resources = isinstance(exc, OSError) and exc.errno in OVERLOAD_ERRNOS
        known = next((m for m in OVERLOAD_MESSAGES if first.startswith(m)), None)
        if known is None and not out_of_resources:
            return True
        kind = (record.name, known or first, getattr(exc, "errno", None))
        now = time.monotonic()
        with self._lock:
            logged, dropped = self._last.get(kind, (None, 0))
            if logged is not None and now - logged < self.interval:
                self._last[kind] = (logged, dropped + 1)
                return False
            self._last[kind] = (now, 0)
        words = [(known or first).rstrip()]
        if exc is not None:
            words.append(f"({type(exc).__name__}: {exc})")
        words.append(f"[rate-limited: one a {self.interval:g} s; {dropped} dropped before]")
        record.msg, record.args = " ".join(words), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


@contextmanager
def quiet_overload_logs(interval: float = 60.0) -> Iterator[OverloadLogFilter]:
    """For the block, :class:`OverloadLogFilter` on the loggers that report overload (the
    filter is removed afterwards)."""
    log_filter = OverloadLogFilter(interval)
    loggers = [logging.getLogger(name) for name in OVERLOAD_LOGGERS]
    for lg in loggers:
        lg.addFilter(log_filter)
    try:
        yield log_filter
    finally:
        for lg in loggers:
            lg.removeFilter(log_filter)
