"""``mobilesam serve``: the click-to-segment page and the HTTP API (FastAPI + uvicorn), bound
to 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from .common import CliError, add_model_args, add_precision_arg, load_model

EXAMPLES = """examples:
  mobilesam serve --checkpoint mobile_sam.pt     # page: http://127.0.0.1:8000/  API: /docs
  mobilesam serve --model mobilesam --port 9000 --max-upload-mb 10 --cache-images 32
"""


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ImportError(
            'serve needs fastapi and uvicorn: pip install "mobilesam[serve]"'
        ) from None
    from ..serve import ServerSettings, create_app

    if not 0 < args.port < 65536:
        raise CliError(f"--port must be 1-65535, got {args.port}")
    for name in ("max_upload_mb", "max_pixels", "cache_images"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive")
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
    from ..serve.app import LOOPBACK_HOSTS, host_name

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
    p = sub.add_parser(
        "serve",
        help="HTTP API: upload once, segment from prompts or everything",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument(
        "--max-pixels", type=int, default=16_000_000, help="decoded pixels per image (16 MP)"
    )
    p.add_argument("--cache-images", type=int, default=16, help="embeddings kept (LRU)")
    add_precision_arg(p)
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (repeatable; '*' for any), "
        "for a deliberate LAN set-up; by default only loopback names are answered, which "
        "keeps web pages from reaching the server through DNS rebinding",
    )
    p.set_defaults(func=cmd_serve)
