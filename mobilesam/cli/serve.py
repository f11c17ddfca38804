"""``mobilesam serve``: the HTTP API (FastAPI + uvicorn), bound to 127.0.0.1 by default."""

from __future__ import annotations

import argparse

from .common import add_model_args, load_model

EXAMPLES = """examples:
  mobilesam serve --checkpoint mobile_sam.pt                 # http://127.0.0.1:8000/docs
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

    model, _ = load_model(args)
    settings = ServerSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        cache_images=args.cache_images,
    )
    uvicorn.run(create_app(model, settings), host=args.host, port=args.port)
    return 0


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
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--cache-images", type=int, default=16, help="embeddings kept (LRU)")
    p.set_defaults(func=cmd_serve)
