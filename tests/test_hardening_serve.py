"""The server's second hardening pass (issue 24), each attack reproduced against the real
app: concurrent uploads within a decode memory budget (row 2), slow and excess connections on
a real uvicorn (row 4), no third-party script on the API's origin and a strict CSP (row 12),
photos that fail to decode or orient (row 1), and any JSON body against the request schemas
(a property-based test)."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mobilesam.serve import ServerSettings, create_app, routes  # noqa: E402

BASE = "http://127.0.0.1:8000"


def _png(size: tuple[int, int], colour=(120, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _fast_encoder(app) -> None:
    """Replace the app's image encoder call by a fixed embedding (the encoder takes seconds
    on a CPU; what these tests check comes before it)."""
    predictor = app.state.server.predictor
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))

    def set_torch_image(image: torch.Tensor, original_size: tuple[int, ...]) -> None:
        assert image.dtype == torch.uint8 and max(image.shape[2:]) == 1024
        predictor.set_embedding(embedding, tuple(original_size))

    predictor.set_torch_image = set_torch_image


class _Concurrency:
    """Wraps a function: counts the calls running at once (and the most ever), each held
    ``hold`` seconds so that concurrent callers overlap."""

    def __init__(self, func, hold: float = 0.05, gate: threading.Event | None = None):
        self.func, self.hold, self.gate = func, hold, gate
        self.now = self.peak = self.calls = 0
        self.lock = threading.Lock()
        self.entered = threading.Event()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        self.entered.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(30), "the test never released the decode"
            time.sleep(self.hold)
            return self.func(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


# --------------------------------------------------------------------- row 2: decode budget


def test_default_decode_budget_fits_16_megapixel_photos():
    """The default: as many concurrent 16-MP decodes as fit 1.5 GiB at the per-pixel bound,
    and at least one whatever the pixel cap."""
    from mobilesam.serve.state import DECODE_BYTES_PER_PIXEL

    settings = ServerSettings()
    assert settings.max_pixels == 16_000_000
    slots = settings.decode_slots
    assert slots >= 2
    assert slots * settings.max_pixels * DECODE_BYTES_PER_PIXEL <= 1.5 * 2**30
    assert ServerSettings(max_pixels=10**9).decode_slots == 1
    assert ServerSettings(max_concurrent_decodes=3).decode_slots == 3
    with pytest.raises(ValueError, match="max_concurrent_decodes"):
        ServerSettings(max_concurrent_decodes=0)
    with pytest.raises(ValueError, match="max_queued_uploads"):
        ServerSettings(max_queued_uploads=-1)


def test_concurrent_uploads_decode_within_the_budget(fixture_model, monkeypatch):
    """20 concurrent uploads of small PNGs that decode to the pixel cap: never more decodes
    (and resizes) at once than the budget allows, all answered 200. The budget here is two
    decodes of 1 MP, from a lowered memory budget and pixel cap."""
    from mobilesam.serve.state import DECODE_BYTES_PER_PIXEL

    cap = 1_000_000
    settings = ServerSettings(
        max_pixels=cap, decode_memory_bytes=2 * cap * DECODE_BYTES_PER_PIXEL, max_queued_uploads=32
    )
    assert settings.decode_slots == 2
    app = create_app(fixture_model, settings)
    _fast_encoder(app)
    decode = _Concurrency(routes.read_rgb)
    monkeypatch.setattr(routes, "read_rgb", decode)
    resize = _Concurrency(routes.resize_to_input, hold=0.0)
    monkeypatch.setattr(routes, "resize_to_input", resize)
    client = TestClient(app, base_url=BASE)
    photo = _png((1000, 1000))
    assert len(photo) < 20_000  # small on the wire, 1 MP decoded

    def upload(i: int) -> int:
        return client.post("/v1/images", files={"file": (f"{i}.png", photo)}).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(upload, range(20)))
    assert codes == [200] * 20
    assert decode.calls == 20 and resize.calls == 20
    assert decode.peak == 2  # the budget is used, and never exceeded
    assert resize.peak <= 2
    assert app.state.server.uploads.pending == 0


def test_upload_queue_overflow_gives_503_with_retry_after(fixture_model, monkeypatch):
    """One decode at a time and one upload waiting: a third upload is refused at once with
    503 and ``Retry-After``; the other two complete when the decode is released, and the
    server takes uploads again afterwards."""
    app = create_app(fixture_model, ServerSettings(max_concurrent_decodes=1, max_queued_uploads=1))
    _fast_encoder(app)
    release = threading.Event()
    decode = _Concurrency(routes.read_rgb, hold=0.0, gate=release)
    monkeypatch.setattr(routes, "read_rgb", decode)
    client = TestClient(app, base_url=BASE)
    photo = _png((64, 48))
    uploads = app.state.server.uploads

    def upload() -> tuple[int, dict]:
        res = client.post("/v1/images", files={"file": ("a.png", photo)})
        return res.status_code, dict(res.headers)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(upload)
        assert decode.entered.wait(30)
        second = pool.submit(upload)
        deadline = time.monotonic() + 30
        while uploads.pending < 2:
            assert time.monotonic() < deadline, "the second upload was never queued"
            time.sleep(0.01)
        res = client.post("/v1/images", files={"file": ("c.png", photo)})
        assert res.status_code == 503
        assert int(res.headers["retry-after"]) >= 1
        assert "busy" in res.json()["detail"] and "retry" in res.json()["detail"]
        release.set()
        assert first.result(30)[0] == 200 and second.result(30)[0] == 200
    assert decode.peak == 1
    assert client.post("/v1/images", files={"file": ("d.png", photo)}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_waiting_uploads_hold_no_decoded_pixels(fixture_model, monkeypatch):
    """What waits for the model is the resized ``(1, 3, h, w)`` uint8 input, not the decoded
    photo: the decode slot is given back before the model gate is taken."""
    app = create_app(fixture_model, ServerSettings(max_concurrent_decodes=1))
    _fast_encoder(app)
    state = app.state.server
    seen: list[tuple[int, ...]] = []
    original = state.predictor.set_torch_image

    def record(image, size):
        seen.append((tuple(image.shape), state.uploads.decoding))
        original(image, size)

    state.predictor.set_torch_image = record
    client = TestClient(app, base_url=BASE)
    res = client.post("/v1/images", files={"file": ("a.png", _png((2000, 1000)))})
    assert res.status_code == 200 and (res.json()["width"], res.json()["height"]) == (2000, 1000)
    assert seen == [((1, 3, 512, 1024), 0)]


# -------------------------------------------------------------- row 1: photos that fail to read


def _jpeg_with_damaged_exif() -> bytes:
    """A JPEG whose EXIF has Orientation 6 and a RATIONAL tag whose id was changed into
    ImageDescription (one byte): Pillow's ``exif_transpose`` raised AttributeError."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = TiffImagePlugin.IFDRational(72, 1)  # XResolution
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    at = data.find(b"\x01\x1a\x00\x05")  # big-endian: tag 0x011A, type RATIONAL
    assert at > 0
    data[at + 1] = 0x0E  # 0x010E ImageDescription
    return bytes(data)


def test_photo_with_damaged_exif_is_never_a_500(fixture_model):
    """Depends on ``image_io.read_rgb`` reading damaged EXIF (issue 24, row 1): the server
    answers 200 with the photo's pixels, or a 400 with one clear line, never a 500
    (TestClient raises on a server error)."""
    app = create_app(fixture_model, ServerSettings())
    _fast_encoder(app)
    client = TestClient(app, base_url=BASE)
    res = client.post("/v1/images", files={"file": ("2.jpg", _jpeg_with_damaged_exif())})
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert {res.json()["width"], res.json()["height"]} == {40, 30}
    else:
        assert "\n" not in res.json()["detail"]


def test_any_read_failure_is_a_400_naming_the_reason(fixture_model, monkeypatch):
    """Whatever reading raises as ValueError (undecodable, over the pixel cap, damaged
    metadata) is a 400 whose detail is the reader's one line; the server carries on."""
    app = create_app(fixture_model, ServerSettings())
    _fast_encoder(app)
    client = TestClient(app, base_url=BASE)

    def broken(*args, **kwargs):
        raise ValueError("cannot decode the image: broken EXIF orientation")

    monkeypatch.setattr(routes, "read_rgb", broken)
    res = client.post("/v1/images", files={"file": ("x.jpg", b"\xff\xd8\xff")})
    assert res.status_code == 400
    assert res.json()["detail"] == "cannot decode the image: broken EXIF orientation"
    assert app.state.server.uploads.pending == 0 and app.state.server.uploads.decoding == 0
    monkeypatch.undo()
    res = client.post("/v1/images", files={"file": ("y.png", _png((30, 20)))})
    assert res.status_code == 200


# ------------------------------------------------------------- row 12: /docs and the headers


def test_docs_are_off_by_default_and_no_third_party_script_is_served(fixture_model):
    client = TestClient(create_app(fixture_model, ServerSettings()), base_url=BASE)
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path
    assert client.get("/openapi.json").status_code == 200  # data, not a page
    page = client.get("/").text
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert not re.match(r"(?i)^([a-z]+:)?//", url), url  # same-origin or data: only
    assert "<script>" not in page  # no inline script either


def _csp(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_strict_security_headers_on_the_page_and_the_api(fixture_model):
    client = TestClient(
        create_app(fixture_model, ServerSettings(max_upload_bytes=1000)), base_url=BASE
    )
    page = client.get("/")
    csp = _csp(page.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert set(csp["img-src"]) == {"'self'", "data:", "blob:"}
    assert not any("unsafe" in v for values in csp.values() for v in values)
    responses = {
        "page": page,
        "script": client.get("/static/app.js"),
        "health": client.get("/healthz"),
        "openapi": client.get("/openapi.json"),
        "404": client.get("/static/nope.js"),
        "422": client.post("/v1/images/x/segment", json={"points": "x"}),
        "403": client.get("/healthz", headers={"Host": "attacker.example"}),
        "413": client.post("/v1/images", files={"file": ("a.png", b"x" * 100_000)}),
    }
    for name, res in responses.items():
        headers = res.headers
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["referrer-policy"] == "no-referrer", name
        assert headers["x-frame-options"] == "DENY", name
        assert "frame-ancestors 'none'" in headers["content-security-policy"], name
    for name in ("health", "openapi", "404", "422", "403", "413"):
        assert _csp(responses[name].headers["content-security-policy"])["default-src"] == [
            "'none'"
        ], name
    assert responses["413"].status_code == 413 and responses["403"].status_code == 403


def test_docs_on_request_name_their_assets_in_the_csp(fixture_model):
    """``ServerSettings(docs=True)`` (``mobilesam serve --docs``): the page loads Swagger UI
    from the one origin the settings name, and its CSP allows that origin and the page's own
    inline script by hash, nothing else."""
    assets = "https://assets.example/swagger-ui-dist@5.17.14"
    client = TestClient(
        create_app(fixture_model, ServerSettings(docs=True, docs_assets_url=assets)),
        base_url=BASE,
    )
    res = client.get("/docs")
    assert res.status_code == 200
    csp = _csp(res.headers["content-security-policy"])
    scripts = re.findall(r'<script src="([^"]+)"', res.text)
    assert scripts == [f"{assets}/swagger-ui-bundle.js"]
    inline = re.findall(r"<script>(.*?)</script>", res.text, flags=re.S)
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    }
    assert inline and set(csp["script-src"]) == {"https://assets.example", *hashes}
    assert "'unsafe-eval'" not in csp["script-src"] and "'unsafe-inline'" not in csp["script-src"]
    assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    for url in re.findall(r'(?:src|href)="([^"]+)"', res.text):
        assert url.startswith(assets + "/") or url.startswith("data:"), url
    assert client.get("/redoc").status_code == 404


# ----------------------------------------------------- row 4: slow and excess connections


@contextmanager
def _uvicorn(app, limits, log_records: list[logging.LogRecord] | None = None):
    """``app`` on a real uvicorn at 127.0.0.1 (a free port) with ``limits``, as ``mobilesam
    serve`` runs it; yields ``(host, port)``. Overload log records go to ``log_records``."""
    from mobilesam.serve.server import make_server, quiet_overload_logs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(app, "127.0.0.1", port, limits, log_level="warning")
    handler = _ListHandler(log_records if log_records is not None else [])
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "asyncio", "mobilesam.serve")]
    for lg in loggers:
        lg.addHandler(handler)
    with quiet_overload_logs():
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "no server"
                time.sleep(0.02)
            yield "127.0.0.1", port
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            for lg in loggers:
                lg.removeHandler(handler)


class _ListHandler(logging.Handler):
    def __init__(self, records: list) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _get(port: int, path: str = "/healthz", timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """A plain HTTP/1.1 GET on a fresh connection: status, headers (lower case), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (``sock``'s timeout bounds each read)."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock`` (it must within ``seconds``), and what it
    sent before closing."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        data = _read_all(sock)
    except TimeoutError:
        pytest.fail(f"the server kept a slow connection open over {seconds} s")
    except ConnectionResetError:
        data = b""
    return time.monotonic() - start, data


def _slow_header(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def _slow_body(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: 100000\r\n\r\n--abc"
    )
    return sock


def test_slow_clients_are_closed_within_the_read_timeouts(fixture_model):
    """Headers sent slowly, no bytes at all, a body sent slowly: each connection is closed
    within its timeout (1 s here, 60 s at most by default), and the server carries on."""
    from mobilesam.serve.server import ConnectionLimits

    defaults = ConnectionLimits()
    assert defaults.header_timeout <= 60 and defaults.body_timeout <= 60
    limits = ConnectionLimits(max_connections=16, header_timeout=1.0, body_timeout=1.0)
    records: list[logging.LogRecord] = []
    with _uvicorn(create_app(fixture_model), limits, records) as (_, port):
        header = _slow_header(port)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        body = _slow_body(port)
        for sock, what in ((header, "headers"), (idle, "nothing"), (body, "body")):
            with sock:
                seconds, data = _closed_within(sock, 4.0)
            assert seconds < 3.0, (what, seconds)
            if what == "headers":
                assert data.startswith(b"HTTP/1.1 408"), data[:100]
        # a byte now and then does not keep a connection open past the header timeout
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                for _ in range(40):
                    time.sleep(0.1)
                    sock.sendall(b"X")
                    assert time.monotonic() - start < 3.0, "kept open by a trickle"
        assert _get(port)[0] == 200
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]


def test_connections_past_the_limit_are_refused_and_healthz_still_works(fixture_model):
    """With the connection limit reached by clients that have not sent their headers, a new
    connection takes the place of the oldest of them (``/healthz`` answers at once); with the
    limit reached by requests in progress, new connections get 503 with ``Retry-After``,
    and are served again once those are closed. No traceback is logged, and the refusals
    log a bounded number of lines."""
    from mobilesam.serve.server import ConnectionLimits

    limits = ConnectionLimits(max_connections=4, header_timeout=5.0, body_timeout=1.5)
    records: list[logging.LogRecord] = []
    with _uvicorn(create_app(fixture_model), limits, records) as (_, port):
        slow = [_slow_header(port) for _ in range(4)]
        time.sleep(0.2)
        start = time.monotonic()
        status, _, body = _get(port)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert time.monotonic() - start < 2.0
        seconds, data = _closed_within(slow[0], 2.0)  # the oldest made room
        for sock in slow:
            sock.close()

        busy = [_slow_body(port) for _ in range(4)]
        time.sleep(0.2)
        refused = [_get(port) for _ in range(5)]
        assert all(code == 503 for code, _, _ in refused), [c for c, _, _ in refused]
        assert all(int(h["retry-after"]) >= 1 for _, h, _ in refused)
        for _ in range(25):  # a flood: refused with a 503, or at once (a reset) past a few
            with suppress(ConnectionResetError):
                assert _get(port)[0] == 503
        for sock in busy:
            with sock:
                _closed_within(sock, 4.0)
        deadline = time.monotonic() + 5
        while (status := _get(port)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200
    assert not [r for r in records if r.exc_info]
    assert len(records) <= 5, [r.getMessage() for r in records]


def test_overload_logs_are_rate_limited_without_tracebacks():
    """Out of file descriptors, every refused connection used to log a traceback: under
    :func:`quiet_overload_logs` each kind of overload message is logged once per interval,
    as one line, and counted."""
    from mobilesam.serve.server import quiet_overload_logs

    records: list[logging.LogRecord] = []
    handler = _ListHandler(records)
    asyncio_log, uvicorn_log = logging.getLogger("asyncio"), logging.getLogger("uvicorn.error")
    for lg in (asyncio_log, uvicorn_log):
        lg.addHandler(handler)
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        with quiet_overload_logs(interval=60.0):
            for _ in range(1000):
                asyncio_log.error(
                    "socket.accept() out of system resource\nsocket: <socket>",
                    exc_info=(OSError, emfile, None),
                )
                uvicorn_log.error("Exception in ASGI application\n", exc_info=emfile)
                uvicorn_log.warning("Exceeded concurrency limit.")
                uvicorn_log.warning("Invalid HTTP request received.")
            uvicorn_log.error("something else")  # other messages pass untouched
        asyncio_log.error("socket.accept() out of system resource")  # filter removed
    finally:
        for lg in (asyncio_log, uvicorn_log):
            lg.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert len(records) == 6, messages
    assert not any(r.exc_info for r in records)
    assert all("\n" not in m for m in messages)
    assert "Too many open files" in messages[0] and "rate-limited" in messages[0]
    assert messages[-2:] == ["something else", "socket.accept() out of system resource"]


def test_the_cli_passes_the_limits_to_uvicorn():
    """``mobilesam serve``'s options become the app's settings and uvicorn's own: the
    connection limit, keep-alive, h11's header size, the read timeouts; docs off unless
    ``--docs``."""
    import uvicorn

    from mobilesam.cli import build_parser
    from mobilesam.cli.serve import connection_limits, server_settings
    from mobilesam.serve.server import ConnectionLimits, uvicorn_config

    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "mobilesam"])
    settings, limits = server_settings(args), connection_limits(args)
    assert settings.docs is False and settings.max_concurrent_decodes is None
    assert limits == ConnectionLimits()
    args = parser.parse_args(
        ["serve", "--model", "mobilesam", "--docs", "--max-connections", "50"]
        + ["--header-timeout", "7", "--body-timeout", "30", "--keep-alive-timeout", "3"]
        + ["--max-concurrent-decodes", "2", "--max-queued-uploads", "5"]
    )
    settings, limits = server_settings(args), connection_limits(args)
    assert settings.docs and settings.decode_slots == 2 and settings.max_queued_uploads == 5
    assert (limits.max_connections, limits.header_timeout, limits.body_timeout) == (50, 7, 30)
    config = uvicorn_config(object(), "127.0.0.1", 8000, limits)
    assert isinstance(config, uvicorn.Config)
    assert config.limit_concurrency == 51  # uvicorn counts the asking connection too
    assert config.timeout_keep_alive == 3
    assert config.h11_max_incomplete_event_size == limits.max_header_bytes
    assert ConnectionLimits().connections() <= 512
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model", "mobilesam", "--header-timeout", "0"])


# ------------------------------------------------- the request schemas, property-based


def _json_values():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=8)
        | st.sampled_from(["png", "rle", "", "x" * 100])
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(
                st.sampled_from(
                    ["points", "labels", "box", "mask_input", "multimask", "format"]
                    + ["points_per_side", "pred_iou_thresh", "stability_score_thresh", "x"]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )


SEGMENT_FIELDS = ["points", "labels", "box", "mask_input", "multimask", "format"]
EVERYTHING_FIELDS = ["points_per_side", "pred_iou_thresh", "stability_score_thresh"]


def _near_valid(fields: list[str], valid):
    """Bodies drawn from ``valid`` (mostly valid requests), then maybe with one field, or
    ``"x"``, set to any JSON value: each of the schema's checks is reached."""
    from hypothesis import strategies as st

    @st.composite
    def body(draw):
        out = draw(valid)
        if draw(st.booleans()):
            out[draw(st.sampled_from([*fields, "x"]))] = draw(_json_values())
        return out

    return body()


def _segment_bodies():
    from hypothesis import strategies as st

    coord = st.integers(-10, 80) | st.floats(-50.0, 150.0)

    @st.composite
    def valid(draw):
        out = {}
        n = draw(st.integers(0, 5))  # the app under test takes at most 4 points
        if draw(st.booleans()):
            out["points"] = draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n))
            out["labels"] = draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
        if draw(st.booleans()):
            out["box"] = draw(st.tuples(coord, coord, coord, coord))
        for key, values in (
            ("multimask", st.booleans()),
            ("format", st.sampled_from(["png", "rle"])),
            ("mask_input", st.none() | st.text(max_size=4)),
        ):
            if draw(st.booleans()):
                out[key] = draw(values)
        return out

    return _near_valid(SEGMENT_FIELDS, valid())


def _everything_bodies():
    from hypothesis import strategies as st

    valid = st.fixed_dictionaries(
        {},
        optional={
            "points_per_side": st.integers(0, 3),  # the app under test takes at most 2
            "pred_iou_thresh": st.floats(-0.5, 1.5),
            "stability_score_thresh": st.floats(-0.5, 1.5),
        },
    )
    return _near_valid(EVERYTHING_FIELDS, valid)


def _check_answer(res, body: str) -> None:
    """200, or a 4xx whose ``detail`` is one line, or a list of ``{loc, msg, type}`` each
    with a one-line message; never a 500 (TestClient raises on server errors)."""
    assert res.status_code in (200, 404, 422, 400), (res.status_code, body, res.text)
    if res.status_code == 200:
        return
    detail = res.json()["detail"]
    if isinstance(detail, str):
        assert detail and "\n" not in detail and len(detail) < 300, detail
        return
    assert isinstance(detail, list) and detail, detail
    for error in detail:
        assert set(error) == {"loc", "msg", "type"}, error
        assert error["msg"] and "\n" not in error["msg"] and len(error["msg"]) < 300, error


def test_any_json_body_gives_a_request_or_one_clear_4xx(fixture_model):
    """Property-based (Hypothesis, derandomized): arbitrary JSON and near-valid bodies sent to
    the segment and everything endpoints of the real app give a valid request (200) or a 4xx
    with clear messages, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    app = create_app(fixture_model, ServerSettings(max_points=4, max_points_per_side=2))
    _fast_encoder(app)
    client = TestClient(app, base_url=BASE)
    image_id = client.post("/v1/images", files={"file": ("a.png", _png((64, 48)))}).json()["id"]
    segment, everything = f"/v1/images/{image_id}/segment", f"/v1/images/{image_id}/everything"
    raw = st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
    requests = (
        st.tuples(st.just(segment), _segment_bodies().map(json.dumps))
        | st.tuples(st.just(everything), _everything_bodies().map(json.dumps))
        # any JSON (NaN as the token NaN) or bytes, to either endpoint
        | st.tuples(st.sampled_from([segment, everything]), _json_values().map(json.dumps) | raw)
    )
    answers: list[int] = []

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests)
    def check(request: tuple[str, str]) -> None:
        path, body = request
        res = client.post(path, content=body, headers={"content-type": "application/json"})
        _check_answer(res, body)
        answers.append(res.status_code)

    check()
    assert {200, 404, 422} <= set(answers)  # valid requests, unknown handles, invalid ones
    # deep nesting (the JSON parser's recursion limit) is a 4xx too
    deep = "[" * 100_000 + "]" * 100_000
    _check_answer(
        client.post(segment, content=deep, headers={"content-type": "application/json"}), deep
    )
    assert np.isfinite(client.post(segment, json={"box": [1, 1, 30, 30]}).json()["scores"]).all()


def test_oversized_headers_are_refused_however_sent(fixture_model):
    """The header limit holds whether the headers arrive in one piece (h11 alone let those
    through) or in many; headers under it are served."""
    from mobilesam.serve.server import ConnectionLimits

    limits = ConnectionLimits(max_connections=8, max_header_bytes=4096, header_timeout=5.0)
    with _uvicorn(create_app(fixture_model), limits) as (_, port):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head + b"X-Big: " + b"a" * 8000 + b"\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(head)
            reply = b""
            try:
                for _ in range(20):
                    sock.sendall(b"X-Part: " + b"b" * 500 + b"\r\n")
                    time.sleep(0.02)
                reply = _read_all(sock)  # a timeout here (header_timeout is 5 s) fails
            except (ConnectionResetError, BrokenPipeError):
                pass  # refused while the client was still sending
            assert reply == b"" or reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), reply
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head + b"X-Fine: " + b"c" * 3000 + b"\r\nConnection: close\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 200")


def test_serve_under_a_low_file_limit_survives_a_slow_connection_flood(tmp_path):
    """Issue 24's row 4 as a user meets it: ``mobilesam serve`` with 128 file descriptors
    and 160 clients that send their headers slowly. The server never runs out of descriptors
    (it used to log a traceback per refused ``accept``), ``/healthz`` answers at once, the
    slow connections are closed within the header timeout, and nothing is logged but the
    start and the stop."""
    resource = pytest.importorskip("resource")
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from .helpers import FIXTURE_CKPT

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to count the server's descriptors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def few_descriptors() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))

    argv = [sys.executable, "-m", "mobilesam", "serve", "--checkpoint", str(FIXTURE_CKPT)]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--header-timeout", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=few_descriptors,
    )
    base = f"http://127.0.0.1:{port}"

    def slow(_: int) -> socket.socket | None:
        try:
            return _slow_header(port)
        except OSError:  # the kernel's queue was full: refused before the server saw it
            return None

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(16) as pool:
            socks = [s for s in pool.map(slow, range(160)) if s is not None]
        assert len(socks) > 128
        descriptors = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert descriptors < 100, descriptors
        start = time.monotonic()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - start < 3.0  # not after the slow clients' timeout
        time.sleep(1.5)  # the header timeout and a margin
        still_open = 0
        for sock in socks:
            with sock:
                sock.settimeout(0.05)
                try:
                    while sock.recv(4096):
                        pass
                except TimeoutError:
                    still_open += 1
                except OSError:
                    pass
        assert still_open == 0
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "Too many open files" not in err, err[-2000:]
    assert len(err.splitlines()) < 20, err[-2000:]
