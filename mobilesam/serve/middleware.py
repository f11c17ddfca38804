"""The server's gatekeepers, run before any endpoint, and the headers of every response.

- :class:`SecurityHeaders` (outermost, plain ASGI): a strict Content-Security-Policy and the
  other browser protections on every response, refusals included.
- :class:`BodyLimit` (plain ASGI): request bodies over the upload limit get 413 before any of
  it is parsed or spooled to disk.
- :class:`AccessRules` (an HTTP middleware): 403 for a ``Host`` the server does not answer to
  (DNS rebinding) and for cross-origin state-changing requests (CSRF).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import JSONResponse

#: Methods that change state (a cross-origin page must not send them).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Bytes a multipart request may carry beyond its file: boundaries, part headers, file name.
MULTIPART_SLACK = 64 * 2**10

#: The API's answers are data: as a document they may load nothing, run nothing and be framed
#: nowhere. Pages (``/``, ``/docs``) set their own policy, which is kept.
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

#: Headers every response carries (unless the endpoint set its own): no MIME sniffing, no
#: Referer to other sites, no framing (for browsers without ``frame-ancestors``), and no
#: reading of the API's answers by other origins' ``<img>``/``<script>`` tags.
SECURITY_HEADERS = (
    (b"content-security-policy", API_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def host_name(host_header: str) -> str:
    """The host name of a ``Host`` header (or an ``Origin``'s netloc), without port or
    brackets, lower case: ``"[::1]:8000"`` → ``"::1"``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessRules:
    """HTTP middleware (``app.middleware("http")(AccessRules(hosts))``) enforcing
    ``allowed_hosts`` (``"*"`` for any) and same-origin state changes: 403 with the reason
    otherwise. Clients without browser headers (curl, scripts) pass the second rule;
    browsers always send ``Sec-Fetch-Site`` or ``Origin`` on cross-origin requests."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self.allowed_hosts = allowed_hosts

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        reason = self.refusal(request.method, request.headers)
        if reason is None:
            return await call_next(request)
        return JSONResponse({"detail": reason}, status_code=403)

    def refusal(self, method: str, headers: Mapping[str, str]) -> str | None:
        """Why a request with this method and (lower-case) headers is refused, or ``None``."""
        host_header = headers.get("host", "")
        host = host_name(host_header)
        if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            return (
                f"this server does not answer to host {host!r} (allowed: "
                f"{', '.join(self.allowed_hosts)}; see ServerSettings.allowed_hosts or "
                "`mobilesam serve --allow-host`)"
            )
        reason = cross_origin(headers, host_header) if method in UNSAFE_METHODS else None
        return None if reason is None else f"cross-origin {method} refused ({reason})"


def cross_origin(headers: Mapping[str, str], host_header: str) -> str | None:
    """Why the browser headers say a request comes from another origin than ``host_header``
    (another site, another port, an opaque origin), or ``None``."""
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None and (
        origin == "null" or urlsplit(origin).netloc.lower() != host_header.lower()
    ):
        return f"Origin {origin!r} is not this server ({host_header!r})"
    return None


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response that does not
    already carry them (the page's own Content-Security-Policy is kept)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware: request bodies over ``upload_limit`` bytes (plus
    :data:`MULTIPART_SLACK` for the multipart framing) get 413. A ``Content-Length`` over the
    limit is refused before reading; a body without one (chunked) is counted as it arrives
    and cut off at the limit, so nothing larger is ever buffered or spooled."""

    def __init__(self, app: Any, upload_limit: int) -> None:
        self.app, self.limit = app, upload_limit + MULTIPART_SLACK
        self.detail = f"request body over the {upload_limit}-byte upload limit"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = self.detail
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _refuse(send, detail)
        stream = _CountedStream(receive, send, self.limit, detail)
        try:
            await self.app(scope, stream.receive, stream.send)
        except _TooLarge:
            await stream.refuse_once()


class _CountedStream:
    """One request's ``receive`` and ``send`` as :class:`BodyLimit` hands them to the app:
    ``receive`` counts body bytes and raises :class:`_TooLarge` past the limit; from then on
    the app's reply (if it still makes one) is replaced by the 413."""

    def __init__(self, receive: Any, send: Any, limit: int, detail: str) -> None:
        self._receive, self._send = receive, send
        self.limit, self.detail = limit, detail
        self.seen, self.over, self.refused = 0, False, False

    async def receive(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.over = True  # the app fails to read the body; its reply becomes a 413
                raise _TooLarge
        return message

    async def send(self, message: dict) -> None:
        if not self.over:
            return await self._send(message)
        if message["type"] == "http.response.start":
            await self.refuse_once()

    async def refuse_once(self) -> None:
        if not self.refused:
            self.refused = True
            await _refuse(self._send, self.detail)


async def _refuse(send: Any, detail: str) -> None:
    """Send a 413 with ``detail`` and close the connection (the rest of the body is unread)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """A request body passed :class:`BodyLimit`'s limit while streaming."""
