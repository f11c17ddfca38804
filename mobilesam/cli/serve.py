"""``mobilesam serve``: the click-to-segment web page and the HTTP API."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from .common import (
    add_command,
    add_count_arg,
    add_precision_arg,
    number_at_least,
    require_extra,
)
from .models import add_model_args, load_model

EXAMPLES = """
mobilesam serve --checkpoint mobile_sam.pt     # page: http://127.0.0.1:8000/  API: /docs
mobilesam serve --model mobilesam --port 9000 --max-upload-mb 10 --cache-images 32
mobilesam serve --host 0.0.0.0 --allow-host box.lan    # a deliberate LAN set-up
"""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the click-to-segment web page and the HTTP API (FastAPI and uvicorn).

    The page at / segments a photo from clicks and boxes; the API (docs at /docs) embeds an
    uploaded photo once, keeps the embedding in a small cache, and segments it from prompts
    or everything. It binds to 127.0.0.1 and answers only requests addressed to a loopback
    name unless --host and --allow-host say otherwise; there is no authentication. Needs
    the serve extra (pip install "mobilesam[serve]"). Ctrl-C stops it.
    """
    require_extra("serve", "fastapi", "uvicorn")
    import uvicorn

    from ..serve import ServerSettings, create_app

    model, _ = load_model(args)
    settings = ServerSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        cache_images=args.cache_images,
        precision=args.precision,
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
    )
    if not _is_loopback(args.host):
        print(
            f"mobilesam: warning: listening on {args.host}: anyone who can reach this machine "
            "can upload images and use the model (there is no authentication)",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"mobilesam: page at http://{shown}:{args.port}/ , API docs at "
        f"http://{shown}:{args.port}/docs",
        file=sys.stderr,
    )
    uvicorn.run(create_app(model, settings), host=args.host, port=args.port)
    return 0


def allowed_hosts(bind: str, extra: list[str]) -> tuple[str, ...]:
    """Host names the server answers to: the loopback names, the bound address unless it is
    a wildcard, and ``--allow-host`` values (``*`` for any)."""
    from ..serve.middleware import host_name
    from ..serve.state import LOOPBACK_HOSTS

    hosts = list(LOOPBACK_HOSTS)
    if bind not in ("0.0.0.0", "::", ""):
        hosts.append(host_name(bind))
    hosts += [host_name(h) if h != "*" else "*" for h in extra]
    return tuple(dict.fromkeys(hosts))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", cmd_serve, EXAMPLES)
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=number_at_least(1, int, 65535), default=8000, help="port (default 8000)"
    )
    p.add_argument(
        "--max-upload-mb",
        metavar="MB",
        type=number_at_least(1e-3, float),
        default=20.0,
        help="largest upload in MiB (default 20)",
    )
    add_count_arg(p, "--max-pixels", 16_000_000, "largest decoded image in pixels")
    add_count_arg(p, "--cache-images", 16, "photo embeddings kept")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (repeatable; '*' for any), "
        "for a deliberate LAN set-up; by default only loopback names are answered, which "
        "keeps web pages from reaching the server through DNS rebinding",
    )
