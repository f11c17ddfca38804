"""A static file server for an exported site, with the headers its threads need.

WebAssembly threads need ``SharedArrayBuffer``, which browsers give only to cross-origin
isolated pages: served with ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (and from a secure context: https, or
``localhost``). Any static host that sends these two headers does as well as this server;
without them the page runs on one thread.

    python -m mobilesam.web.server site/ --port 8000

It serves files only (no model, no upload endpoint), binds to 127.0.0.1 unless told
otherwise, and never lists folders.
"""

from __future__ import annotations

import argparse
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Headers on every response: cross-origin isolation (threads), and no stale page after a
#: new export.
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class SiteHandler(SimpleHTTPRequestHandler):
    """Files under the site folder with :data:`HEADERS` and the MIME types the page needs
    (``.mjs`` as JavaScript, ``.wasm`` for streaming compilation); no folder listings."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def end_headers(self) -> None:
        for key, value in HEADERS.items():
            self.send_header(key, value)
        super().end_headers()

    def list_directory(self, path):  # noqa: ANN001 (the base class's signature)
        self.send_error(404, "no folder listings")
        return None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: a page load is a few dozen requests


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for the folder ``root`` on ``host:port`` (0: a free port); not started.
    ``server.server_address`` gives the port it got."""
    folder = Path(root)
    if not (folder / "index.html").is_file():
        raise ValueError(f"{folder} has no index.html: export a site with `mobilesam export --web`")
    handler = functools.partial(SiteHandler, directory=str(folder))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class RunningSite:
    """:func:`make_server` on a background thread: ``url``, and ``close()`` (or use as a
    context manager). For tests and benchmarks."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make_server(root, host, port)
        address = self.server.server_address
        self.url = f"http://{address[0]}:{address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_site(root: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``root`` until interrupted (Ctrl+C), printing its address."""
    server = make_server(root, host, port)
    address = server.server_address
    print(f"serving {root} at http://{address[0]}:{address[1]}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobilesam.web.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("site", help="a folder written by `mobilesam export --web`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)
    try:
        serve_site(args.site, args.host, args.port)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
