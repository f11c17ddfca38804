"""The ``mobilesam`` command line: one console script, one subcommand per job.

Exit codes: 0 done, 1 a failure while working (an unreadable file, a failed download, a
model that cannot be loaded), 2 a usage error (one line, before any work), 130 Ctrl-C.
Expected errors (see :func:`user_facing`) are one line; any other exception is a bug and
keeps its traceback. ``--debug`` or ``MOBILESAM_DEBUG=1`` shows the traceback of every error.
The library never imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

from . import bench, distill, evaluate, everything, export, finetune, segment, serve
from .common import CliError, CliParser, describe

COMMANDS = (segment, everything, export, distill, finetune, evaluate, bench, serve)

DESCRIPTION = """\
MobileSAM: fast promptable segmentation. Segment a photo from points and boxes, segment
everything in folders of photos, export ONNX models, distill and evaluate encoders, time
this machine, or serve a click-to-segment web page and an HTTP API.
"""

EXAMPLES = """examples:
  mobilesam segment --point 400,380                       # bundled photo, official weights
  mobilesam segment photo.jpg --checkpoint mobile_sam.pt --box 10,20,300,400 --out masks/
  mobilesam everything photos/ --checkpoint mobile_sam.pt --out masks/
  mobilesam export --checkpoint mobile_sam.pt --out onnx/ --quantize int8
  mobilesam distill train --cache cache/ --teacher-checkpoint t.pth --out run/

run 'mobilesam COMMAND --help' for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``mobilesam COMMAND ...``; ``parse_args`` of it gives the
    namespace that ``args.func(args)`` runs (``--config`` files already applied)."""
    from .. import __version__

    parser = CliParser(prog="mobilesam", description=DESCRIPTION, epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"mobilesam {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on any error, show Python's full traceback (also MOBILESAM_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mobilesam argv...`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 0
    debug = args.debug or debug_from_env()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            check_out_dir(args)
            return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("mobilesam: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report(exc, debug)


def debug_from_env() -> bool:
    """Whether ``MOBILESAM_DEBUG`` asks for tracebacks (anything but unset, 0, false, no, off)."""
    value = os.environ.get("MOBILESAM_DEBUG", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def user_facing(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user can act on (printed as one line) rather than a bug.

    User-facing: the project's own exception classes and their subclasses (CliError,
    CheckpointError, ImageTooLarge, DownloadError, ChecksumError, DegenerateEmbeddingError,
    NonFiniteOutputError, TrainingDiverged, CocoFileError, CacheDamaged, ...), which it raises
    on purpose; ``ValueError`` (the library's input checks), ``OSError`` (files, folders,
    sockets), ``ImportError`` (a missing optional package) and ``MemoryError``. Anything else
    (``TypeError``, ``KeyError``, ``AttributeError``, a plain ``RuntimeError`` from torch) is
    a bug.
    """
    if isinstance(exc, (ValueError, OSError, ImportError, MemoryError)):
        return True
    return any(cls.__module__.partition(".")[0] == "mobilesam" for cls in type(exc).__mro__)


def report(exc: Exception, debug: bool) -> int:
    """Print ``exc`` and return the exit code: a user-facing error (see :func:`user_facing`)
    as one line (exit 2 for a CliError, else 1), after its traceback with ``debug``; a bug
    with its traceback and a last line asking for a report (exit 1)."""
    expected = user_facing(exc)
    if debug or not expected:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, CliError):
        return fail(str(exc), 2)
    if expected:
        return fail(describe(exc), 1)
    message = describe(exc)
    name = type(exc).__name__
    detail = f"{name}: {message}" if message != name else name
    print(f"mobilesam: internal error, please report: {detail}", file=sys.stderr)
    return 1


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user (:class:`~mobilesam.image_io.ImageWarning`) as one line
    ``mobilesam: warning: ...``; others as Python prints them."""
    from ..image_io import ImageWarning

    if issubclass(category, ImageWarning):
        print(f"mobilesam: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def fail(message: str, code: int) -> int:
    print(f"mobilesam: error: {message}", file=sys.stderr)
    return code


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


__all__ = ["CliError", "build_parser", "main", "user_facing"]
