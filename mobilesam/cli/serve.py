"""``mobilesam serve``: the click-to-segment web page and the HTTP API."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING

from .common import (
    add_command,
    add_count_arg,
    add_device_arg,
    add_max_pixels_arg,
    add_precision_arg,
    number_at_least,
    require_extra,
)
from .models import add_model_args, load_model

if TYPE_CHECKING:
    from ..serve import ServerSettings
    from ..serve.server import ConnectionLimits

EXAMPLES = """
mobilesam serve --checkpoint mobile_sam.pt     # page: http://127.0.0.1:8000/
mobilesam serve --model mobilesam --port 9000 --max-upload-mb 10 --cache-images 32
mobilesam serve --host 0.0.0.0 --allow-host box.lan    # a deliberate LAN set-up
mobilesam serve --model mobilesam --docs       # Swagger UI at /docs (loads it from a CDN)
mobilesam serve --model mobilesam --max-connections 100 --header-timeout 5
mobilesam serve --model mobilesam --device cuda:1      # the model on the second GPU
mobilesam serve --web site/    # a site from mobilesam export --web: the model in the browser
"""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the click-to-segment web page and the HTTP API (FastAPI and uvicorn).

    The page at / segments a photo from clicks and boxes; the API (schema at /openapi.json,
    interactive docs at /docs with --docs) embeds an uploaded photo once, keeps the embedding
    in a small cache, and segments it from prompts or everything. It binds to 127.0.0.1 and
    answers only requests addressed to a loopback name unless --host and --allow-host say
    otherwise; there is no authentication. Uploads are decoded a few at a time within a
    memory budget, slow clients are closed after the read timeouts, and connections are
    capped. Needs the serve extra (pip install "mobilesam[serve]"). Ctrl-C stops it.

    With --web DIR it serves instead the static site that mobilesam export --web DIR wrote
    (the page running the whole model in the browser; no model is loaded here), with the
    cross-origin-isolation headers WebAssembly threads need.
    """
    if args.web is not None:
        return _serve_web(args)
    require_extra("serve", "fastapi", "uvicorn")
    from ..device import resolve_device
    from ..serve import create_app
    from ..serve.server import serve

    settings, limits = server_settings(args), connection_limits(args)
    model, _ = load_model(args)
    model.to(resolve_device(args.device))
    if not _is_loopback(args.host):
        print(
            f"mobilesam: warning: listening on {args.host}: anyone who can reach this machine "
            "can upload images and use the model (there is no authentication)",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    docs = "docs" if settings.docs else "openapi.json"
    print(
        f"mobilesam: page at http://{shown}:{args.port}/ , API at "
        f"http://{shown}:{args.port}/{docs} (model on {model.device})",
        file=sys.stderr,
    )
    serve(create_app(model, settings), args.host, args.port, limits)
    return 0


def _serve_web(args: argparse.Namespace) -> int:
    """``--web DIR``: the exported in-browser site as static files (:mod:`mobilesam.web.server`)."""
    from ..web.server import serve_site

    if not _is_loopback(args.host):
        print(
            f"mobilesam: note: on {args.host} over plain http, browsers run the page on one "
            "thread and without WebGPU (both need https or localhost)",
            file=sys.stderr,
        )
    serve_site(args.web, args.host, args.port)
    return 0


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """The app's settings from ``mobilesam serve``'s options."""
    from ..serve import ServerSettings

    return ServerSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        cache_images=args.cache_images,
        precision=args.precision,
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
        max_concurrent_decodes=args.max_concurrent_decodes,
        max_queued_uploads=args.max_queued_uploads,
        docs=args.docs,
    )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """uvicorn's connection limits from ``mobilesam serve``'s options."""
    from ..serve.server import ConnectionLimits

    return ConnectionLimits(
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
    )


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
    add_device_arg(p)
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
    add_max_pixels_arg(p)
    add_count_arg(p, "--cache-images", 16, "photo embeddings kept")
    p.add_argument(
        "--max-concurrent-decodes",
        metavar="N",
        type=number_at_least(1),
        default=None,
        help="uploads decoded and resized at once (default: as many photos at --max-pixels "
        "as fit in 1.5 GiB, 5 at the default cap)",
    )
    p.add_argument(
        "--max-queued-uploads",
        metavar="N",
        type=number_at_least(0),
        default=16,
        help="uploads that may wait beyond those decoding; more get 503 with Retry-After "
        "(default 16)",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=number_at_least(1),
        default=None,
        help="connections held open at once; past it the oldest connection that has not sent "
        "a request is closed, or the new one gets 503 (default: a quarter of the open-file "
        "limit, at most 512)",
    )
    for flag, default, what in (
        ("--header-timeout", 10.0, "close a connection whose request headers take longer"),
        ("--body-timeout", 60.0, "close a connection whose request body takes longer"),
        ("--keep-alive-timeout", 5.0, "close a connection idle this long between requests"),
    ):
        p.add_argument(
            flag,
            metavar="S",
            type=number_at_least(0.1, float, 3600),
            default=default,
            help=f"{what} (seconds, default {default:g})",
        )
    p.add_argument(
        "--docs",
        action="store_true",
        help="serve interactive API docs (Swagger UI) at /docs; the page loads its script "
        "from cdn.jsdelivr.net, so it is off by default",
    )
    p.add_argument(
        "--web",
        metavar="DIR",
        help="serve the site that mobilesam export --web DIR wrote (the model runs in the "
        "browser; static files with the cross-origin-isolation headers threads need) instead "
        "of the model and its API",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (repeatable; '*' for any), "
        "for a deliberate LAN set-up; by default only loopback names are answered, which "
        "keeps web pages from reaching the server through DNS rebinding",
    )
