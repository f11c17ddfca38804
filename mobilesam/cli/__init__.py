"""The ``mobilesam`` command line: one console script, one subcommand per job.

The library never imports this package.
"""

from __future__ import annotations

import argparse
import sys

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
        return int(args.func(args))
    except CliError as exc:
        print(f"mobilesam: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()
        print(
            f"mobilesam: error: {' '.join(first) if first else type(exc).__name__}", file=sys.stderr
        )
        return 1


__all__ = ["CliError", "build_parser", "main"]
