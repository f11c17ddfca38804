"""Tests for mobilesam.hub: model zoo lookup, cache dir, and verified downloads.

Downloads are served by a real HTTP server bound to 127.0.0.1 (port 0) in a
background thread; nothing here touches the real network.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mobilesam.hub import (
    MODEL_ZOO,
    ChecksumError,
    DownloadError,
    ZooEntry,
    default_cache_dir,
    download_weights,
    resolve_checkpoint,
    resolve_entry,
    sha256_file,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FIXTURE_CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
CKPT_ROUTE = "/ckpt/mobile_sam_fixture.pt"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def payload() -> bytes:
    """Bytes of the reference fixture checkpoint (tests needing it skip if absent)."""
    if not FIXTURE_CKPT.is_file():
        pytest.skip(f"reference fixture checkpoint not found at {FIXTURE_CKPT}")
    return FIXTURE_CKPT.read_bytes()


@pytest.fixture(scope="module")
def payload_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass
class LocalServer:
    """Handle on the background test HTTP server."""

    base_url: str
    paths: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.paths)

    def url(self, route: str = CKPT_ROUTE) -> str:
        return self.base_url + route


@pytest.fixture
def server(payload: bytes) -> Iterator[LocalServer]:
    """Serve ``payload`` on 127.0.0.1; count every request; stop in teardown.

    Routes: ``/ckpt/...`` -> the fixture bytes, ``/missing`` -> 404,
    ``/stall`` -> headers and 1 KiB of body, then silence (to trigger read timeouts),
    ``/truncated`` -> the full Content-Length but only half the body, then the connection closes.
    """
    stop = threading.Event()
    paths: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        # the server's own sockets keep a timeout of their own: a test may set a tiny process
        # default (socket.setdefaulttimeout), which accepted sockets would otherwise inherit
        timeout = 30.0

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            with lock:
                paths.append(self.path)
            try:
                if self.path.startswith("/ckpt/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    view = memoryview(payload)
                    for start in range(0, len(view), 1 << 20):
                        self.wfile.write(view[start : start + (1 << 20)])
                elif self.path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[:1024])
                    self.wfile.flush()
                    stop.wait(5.0)
                elif self.path == "/truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                else:
                    self.send_error(404, "Not Found")
            except (ConnectionError, OSError):
                pass  # client went away (e.g. after its own timeout)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield LocalServer(base_url=f"http://{host}:{port}", paths=paths)
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5.0)


@pytest.fixture
def entry(server: LocalServer, payload: bytes, payload_sha256: str) -> ZooEntry:
    """A zoo entry for the fixture checkpoint, pointing at the local server."""
    return ZooEntry(
        name="fixture",
        model_type="vit_fixture",
        url=server.url(),
        filename="mobile_sam_fixture.pt",
        sha256=payload_sha256,
        size_bytes=len(payload),
        note="test fixture",
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _closed_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------- zoo


def test_zoo_entries_are_well_formed() -> None:
    assert set(MODEL_ZOO) == {"mobilesam", "sam_vit_b", "sam_vit_l", "sam_vit_h"}
    for key, e in MODEL_ZOO.items():
        assert e.name == key
        assert e.url.rsplit("/", 1)[-1] == e.filename
        assert e.url.startswith("https://")
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert e.size_bytes is None or e.size_bytes > 0
        assert e.note
    assert MODEL_ZOO["mobilesam"].model_type == "vit_t"
    assert MODEL_ZOO["mobilesam"].filename == "mobile_sam.pt"
    for size in ("b", "l", "h"):
        e = MODEL_ZOO[f"sam_vit_{size}"]
        assert e.model_type == f"vit_{size}"
        assert e.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        # The hex tag in SAM's file names is an MD5 prefix, not a SHA-256 prefix.
        tag = e.filename.removesuffix(".pth").rsplit("_", 1)[-1]
        assert e.sha256 is not None and not e.sha256.startswith(tag)
        assert "MD5" in e.note and tag in e.note


def test_zoo_entry_is_frozen() -> None:
    with pytest.raises(AttributeError):
        MODEL_ZOO["mobilesam"].sha256 = None  # type: ignore[misc]


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("vit_t", "mobilesam"),
        ("vit_b", "sam_vit_b"),
        ("vit_l", "sam_vit_l"),
        ("vit_h", "sam_vit_h"),
        ("mobilesam", "mobilesam"),
        ("MobileSAM", "mobilesam"),
        ("sam_vit_h", "sam_vit_h"),
    ],
)
def test_resolve_entry_names_and_aliases(alias: str, key: str) -> None:
    assert resolve_entry(alias) is MODEL_ZOO[key]


def test_resolve_entry_passes_entries_through() -> None:
    custom = replace(MODEL_ZOO["mobilesam"], name="custom")
    assert resolve_entry(custom) is custom


def test_resolve_entry_unknown_lists_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        resolve_entry("vit_xxl")
    message = str(info.value)
    for name in ("mobilesam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "vit_t", "vit_h"):
        assert name in message


def test_aliases_follow_a_patched_zoo(monkeypatch: pytest.MonkeyPatch, entry: ZooEntry) -> None:
    monkeypatch.setitem(MODEL_ZOO, "fixture", entry)
    assert resolve_entry("fixture") is entry
    assert resolve_entry("vit_fixture") is entry


# --------------------------------------------------------------------------- cache dir


def test_default_cache_dir_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOBILESAM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mobilesam"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mobilesam"

    monkeypatch.setenv("MOBILESAM_CACHE", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"

    monkeypatch.setenv("MOBILESAM_CACHE", "")  # empty counts as unset
    assert default_cache_dir() == tmp_path / "xdg" / "mobilesam"


def test_download_uses_mobilesam_cache_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entry: ZooEntry, server: LocalServer
) -> None:
    monkeypatch.setenv("MOBILESAM_CACHE", str(tmp_path / "envcache"))
    path = download_weights(entry, progress=False)
    assert path == tmp_path / "envcache" / entry.filename
    assert path.is_file()
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- hashing


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(f) == expected
    assert sha256_file(str(f), chunk=7) == expected


def test_fixture_sha256_matches(payload_sha256: str) -> None:
    assert sha256_file(FIXTURE_CKPT) == payload_sha256


# --------------------------------------------------------------------------- downloads


def test_download_verifies_then_uses_cache_without_network(
    entry: ZooEntry, server: LocalServer, cache: Path, payload_sha256: str
) -> None:
    path = download_weights(entry, cache_dir=cache, progress=False)
    assert path == cache / entry.filename
    assert sha256_file(path) == payload_sha256
    assert _leftovers(cache) == [entry.filename]  # no .part left behind
    assert server.count == 1
    assert server.paths == [CKPT_ROUTE]

    again = download_weights(entry, cache_dir=cache, progress=False)
    assert again == path
    assert server.count == 1  # served from the cache: no request made


def test_download_by_name_from_patched_zoo(
    monkeypatch: pytest.MonkeyPatch, entry: ZooEntry, server: LocalServer, cache: Path
) -> None:
    monkeypatch.setitem(MODEL_ZOO, "fixture", entry)
    path = download_weights("fixture", cache_dir=str(cache), progress=False)
    assert path == cache / entry.filename
    assert resolve_checkpoint("vit_fixture", cache_dir=cache, progress=False) == path
    assert server.count == 1


def test_url_override_is_used(
    entry: ZooEntry, server: LocalServer, cache: Path, payload: bytes
) -> None:
    broken = replace(entry, url=f"http://127.0.0.1:{_closed_port()}/nothing-here")
    path = download_weights(broken, cache_dir=cache, progress=False, url=server.url())
    assert path.read_bytes() == payload
    assert server.count == 1


def test_checksum_mismatch_raises_and_leaves_nothing(
    entry: ZooEntry, server: LocalServer, cache: Path, payload_sha256: str
) -> None:
    wrong = "0" * 64
    bad = replace(entry, sha256=wrong)
    with pytest.raises(ChecksumError) as info:
        download_weights(bad, cache_dir=cache, progress=False)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert wrong in message
    assert payload_sha256 in message
    assert server.url() in message
    assert str(cache / entry.filename) in message
    assert "build_sam(path)" in message and "--" not in message
    assert not (cache / entry.filename).exists()
    assert not list(cache.glob("*.part"))
    assert _leftovers(cache) == []


def test_size_only_verification_when_sha256_unknown(
    entry: ZooEntry, server: LocalServer, cache: Path, payload: bytes
) -> None:
    size_only = replace(entry, sha256=None)
    path = download_weights(size_only, cache_dir=cache, progress=False)
    assert path.stat().st_size == len(payload)
    assert server.count == 1
    assert download_weights(size_only, cache_dir=cache, progress=False) == path
    assert server.count == 1  # cached file accepted on size alone


def test_size_mismatch_raises_when_sha256_unknown(
    entry: ZooEntry, server: LocalServer, cache: Path, payload: bytes
) -> None:
    wrong_size = replace(entry, sha256=None, size_bytes=len(payload) + 1)
    with pytest.raises(ChecksumError) as info:
        download_weights(wrong_size, cache_dir=cache, progress=False)
    message = str(info.value)
    assert str(len(payload) + 1) in message
    assert str(len(payload)) in message
    assert str(cache / entry.filename) in message
    assert _leftovers(cache) == []


def test_corrupt_cached_file_is_redownloaded(
    entry: ZooEntry, server: LocalServer, cache: Path, payload_sha256: str
) -> None:
    cache.mkdir(parents=True)
    (cache / entry.filename).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="failed verification"):
        path = download_weights(entry, cache_dir=cache, progress=False)
    assert sha256_file(path) == payload_sha256
    assert server.count == 1


def test_offline_raises_download_error_with_manual_instructions(cache: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/mobile_sam.pt"
    with pytest.raises(DownloadError) as info:
        download_weights("mobilesam", cache_dir=cache, progress=False, url=url, timeout=2.0)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert url in message
    assert str(cache / "mobile_sam.pt") in message
    assert "offline" in message
    assert "build_sam(path)" in message and "--" not in message  # the library's terms
    assert (info.value.url, info.value.dest) == (url, cache / "mobile_sam.pt")
    assert _leftovers(cache) == []


def test_http_error_raises_download_error(
    entry: ZooEntry, server: LocalServer, cache: Path
) -> None:
    url = server.url("/missing")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_weights(entry, cache_dir=cache, progress=False, url=url)
    assert url in str(info.value)
    assert str(cache / entry.filename) in str(info.value)
    assert _leftovers(cache) == []


def test_stalled_transfer_times_out_and_cleans_up(
    entry: ZooEntry, server: LocalServer, cache: Path
) -> None:
    with pytest.raises(DownloadError, match="timed out"):
        download_weights(
            entry, cache_dir=cache, progress=False, url=server.url("/stall"), timeout=0.3
        )
    assert _leftovers(cache) == []


def test_server_that_never_answers_times_out(entry: ZooEntry, cache: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mobile_sam_fixture.pt"
        with pytest.raises(DownloadError, match=r"timed out after 0\.3 s") as info:
            download_weights(entry, cache_dir=cache, progress=False, url=url, timeout=0.3)
    assert url in str(info.value)
    assert _leftovers(cache) == []


def test_timeout_leaves_the_process_default_as_it_was(
    entry: ZooEntry, server: LocalServer, cache: Path
) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.0)
    try:
        download_weights(entry, cache_dir=cache, progress=False, timeout=5.0)
        assert socket.getdefaulttimeout() == 7.0
        with pytest.raises(DownloadError):
            download_weights(
                entry, cache_dir=cache / "b", progress=False, url=server.url("/stall"), timeout=0.2
            )
        assert socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(previous)


def test_download_leaves_other_threads_default_timeout_alone(
    entry: ZooEntry, server: LocalServer, cache: Path
) -> None:
    """While a download is stalled mid-transfer, another thread still sees the process-wide
    default it had before (the download's timeout belongs to its own connection)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.0)
    failures: list[BaseException] = []

    def stalled_download() -> None:
        try:
            download_weights(
                entry, cache_dir=cache, progress=False, url=server.url("/stall"), timeout=1.0
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    downloader = threading.Thread(target=stalled_download)
    try:
        downloader.start()
        seen: list[float | None] = []
        checker = threading.Thread(target=lambda: seen.append(socket.getdefaulttimeout()))
        for _ in range(200):  # the request has reached the server: the download is running
            if server.count:
                break
            downloader.join(0.01)
        assert server.count == 1 and downloader.is_alive()
        checker.start()
        checker.join()
        assert seen == [7.0]
        downloader.join(10.0)
        assert len(failures) == 1 and isinstance(failures[0], DownloadError)
        assert "timed out after 1 s" in str(failures[0])
    finally:
        downloader.join(10.0)
        socket.setdefaulttimeout(previous)


def test_download_keeps_its_timeout_whatever_the_default(
    entry: ZooEntry, server: LocalServer, cache: Path, payload: bytes
) -> None:
    """A tiny process default does not cut a download short, nor does a stall outlast the
    download's own timeout under a default of none."""
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(1e-6)
        assert download_weights(entry, cache_dir=cache, progress=False).read_bytes() == payload
        socket.setdefaulttimeout(None)
        with pytest.raises(DownloadError, match=r"timed out after 0\.3 s"):
            download_weights(
                entry, cache_dir=cache / "b", progress=False, url=server.url("/stall"), timeout=0.3
            )
    finally:
        socket.setdefaulttimeout(previous)


def test_truncated_body_is_rejected(entry: ZooEntry, server: LocalServer, cache: Path) -> None:
    # urllib returns a short body without complaint (ChecksumError: size); a Python that
    # raises IncompleteRead instead gives DownloadError. Either way nothing is kept.
    with pytest.raises((ChecksumError, DownloadError)) as info:
        download_weights(entry, cache_dir=cache, progress=False, url=server.url("/truncated"))
    assert str(cache / entry.filename) in str(info.value)
    assert _leftovers(cache) == []


def test_unwritable_cache_dir_raises_download_error(
    entry: ZooEntry, server: LocalServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_bytes(b"a file where the cache directory should be")
    with pytest.raises(DownloadError) as info:
        download_weights(entry, cache_dir=blocker, progress=False)
    message = str(info.value)
    assert str(blocker) in message and "cache_dir" in message
    assert str(blocker / entry.filename) in message
    assert server.count == 0  # failed before touching the network
    assert _leftovers(tmp_path) == ["not_a_dir"]


# --------------------------------------------------------------------------- progress


def test_progress_false_prints_nothing(
    entry: ZooEntry, server: LocalServer, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download_weights(entry, cache_dir=cache, progress=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_progress_true_writes_a_bar_to_stderr(
    entry: ZooEntry, server: LocalServer, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download_weights(entry, cache_dir=cache, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert server.url() in captured.err
    assert str(cache / entry.filename) in captured.err
    assert re.search(r"100(\.0)?%", captured.err)  # torch.hub's bar: tqdm, or its own


# --------------------------------------------------------------------------- resolve_checkpoint


def test_resolve_checkpoint_existing_path_is_returned_as_is(tmp_path: Path) -> None:
    ckpt = tmp_path / "my_weights.pt"
    ckpt.write_bytes(b"whatever")
    assert resolve_checkpoint(str(ckpt), cache_dir=tmp_path / "cache") == ckpt
    assert resolve_checkpoint(ckpt) == ckpt
    assert not (tmp_path / "cache").exists()


def test_resolve_checkpoint_unknown_name_lists_zoo(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint("no_such_model", cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "no_such_model" in message
    for name in MODEL_ZOO:
        assert name in message
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "missing.pt"), cache_dir=tmp_path, progress=False)
