"""The ``mobilesam`` command line: one console script, one subcommand per job.

The library never imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import bench, distill, evaluate, everything, export, segment, serve
from .common import CliError

EXAMPLES = """examples:
  mobilesam segment --point 400,380                       # bundled photo, official weights
  mobilesam segment photo.jpg --checkpoint mobile_sam.pt --box 10,20,300,400 --out masks/
  mobilesam everything photos/ --checkpoint mobile_sam.pt --out masks/
  mobilesam export --checkpoint mobile_sam.pt --out onnx/ --quantize int8
  mobilesam distill train --cache cache/ --student vit_t --teacher-checkpoint t.pth --out run/

run 'mobilesam COMMAND --help' for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilesam",
        description="MobileSAM: fast promptable segmentation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"mobilesam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    segment.add_parser(sub)
    everything.add_parser(sub)
    export.add_parser(sub)
    distill.add_parser(sub)
    evaluate.add_parser(sub)
    bench.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = distill.apply_config(parser, argv)
    except (ValueError, OSError) as exc:
        print(f"mobilesam: error: {exc}", file=sys.stderr)
        return 2
    try:
        check_out_dir(args)
        return int(args.func(args))
    except CliError as exc:
        print(f"mobilesam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobilesam: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # files and folders: one line naming the path
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"mobilesam: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()
        print(
            f"mobilesam: error: {' '.join(first) if first else type(exc).__name__}", file=sys.stderr
        )
        return 1


def check_out_dir(args: argparse.Namespace) -> None:
    """Fail before any work when ``--out`` cannot be written (a file in the way, a read-only
    folder, a path under a file): :class:`CliError` naming it."""
    out = getattr(args, "out", None)
    if not out:
        return
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mobilesam-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"--out {out} is not a writable folder ({exc.strerror or exc})") from None


__all__ = ["CliError", "build_parser", "main"]
