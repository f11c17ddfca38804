"""How every mobilesam command is declared: its parser (one-line usage errors), its help
texts, and the arguments several commands share, each checked when it is parsed.

Usage errors (a missing option, a bad value, a path that does not exist, options that
conflict) exit 2 with one line; CliError is the same kind of error found by a command's own
code. Argument types raise argparse.ArgumentTypeError, which argparse reports as
"argument --flag: <message>".
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

Command = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A usage error found by a command's code: printed as one line, exit code 2."""


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``mobilesam: error: ...``, with
    a pointer to the command's help, and exit code 2. Help keeps the description's and the
    examples' line breaks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mobilesam: error: {message} (see '{self.prog} --help')\n")


def add_command(
    sub: argparse._SubParsersAction, name: str, func: Command, examples: str, **kwargs: Any
) -> CliParser:
    """Add the subcommand ``name`` that runs ``func(args)``.

    ``func``'s docstring is the help: its first paragraph is the summary in the parent's
    command list, the whole of it the description of ``mobilesam ... name --help``.
    ``examples`` (shell lines) become the epilog. Other keyword arguments go to the parser's
    constructor.
    """
    parser = described_parser(sub, name, func.__doc__ or "", examples, **kwargs)
    parser.set_defaults(func=func)
    return parser


def add_group(
    sub: argparse._SubParsersAction,
    name: str,
    doc: str,
    examples: str,
    metavar: str,
    parser_class: type[CliParser] = CliParser,
) -> argparse._SubParsersAction:
    """Add ``name``, a command made of subcommands (``metavar`` in the usage line), described
    by ``doc`` as :func:`add_command` describes commands; returns the action to add the
    subcommands, parsers of ``parser_class``, to."""
    parser = described_parser(sub, name, doc, examples)
    return parser.add_subparsers(
        dest=f"{name}_command", required=True, metavar=metavar, parser_class=parser_class
    )


def described_parser(
    sub: argparse._SubParsersAction, name: str, doc: str, examples: str, **kwargs: Any
) -> CliParser:
    """The parser of ``name``: help from ``doc`` (summary: its first paragraph on one line)
    and ``examples`` (shell lines, indented under an ``examples:`` heading)."""
    doc = inspect.cleandoc(doc)
    lines = inspect.cleandoc(examples).splitlines()
    return sub.add_parser(
        name,
        help=" ".join(doc.split("\n\n")[0].split()).rstrip("."),
        description=doc,
        epilog="examples:\n" + "\n".join(f"  {line}" if line else "" for line in lines),
        **kwargs,
    )


# --------------------------------------------------------------------------- argument types


def existing_file(text: str) -> Path:
    """Argument type: a path to an existing file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def existing_folder(text: str) -> Path:
    """Argument type: a path to an existing folder."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return path


def existing_path(text: str) -> Path:
    """Argument type: a path to an existing file or folder."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def number_at_least(minimum: float, kind: type = int, maximum: float | None = None) -> Callable:
    """Argument type: a number of ``kind`` (int or float) in ``[minimum, maximum]``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum:g}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}{upper}, got {text}")
        return value

    return parse


def numbers(counts: tuple[int, ...]) -> Callable[[str], list[float]]:
    """Argument type: comma-separated numbers, ``"1,2.5"`` → ``[1.0, 2.5]``, as many as one of
    ``counts``."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {text!r}"
            ) from None
        if len(values) not in counts:
            expected = " or ".join(map(str, counts))
            raise argparse.ArgumentTypeError(f"takes {expected} numbers, got {text!r}")
        return values

    return parse


def zoo_name(checkpoint_flag: str) -> Callable[[str], str]:
    """Argument type: a model-zoo name (see :func:`mobilesam.hub.valid_names`); a file path
    is refused with a pointer to ``checkpoint_flag``."""

    def parse(text: str) -> str:
        from ..hub import resolve_entry, valid_names

        try:
            resolve_entry(text)
        except KeyError:
            looks_like_path = Path(text).exists() or Path(text).suffix or "/" in text
            hint = f"; for a checkpoint file use {checkpoint_flag}" if looks_like_path else ""
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a model-zoo name ({', '.join(valid_names())}){hint}"
            ) from None
        return text

    return parse


# --------------------------------------------------------------------------- shared arguments


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="precision of the image encoder (and with bf16 of the products of the "
        "decoder's upscaling tail): fp32 (default, reproducible), bf16, fp16 (for GPUs: "
        "mixed precision there, slow on CPUs), or auto (bf16 where the device has bf16 "
        "units); scores and logits stay fp32",
    )


def device_name(text: str) -> str:
    """A ``--device`` value that this machine has (argparse type): one line naming the
    devices it has otherwise (exit 2)."""
    from ..device import DeviceUnavailable, resolve_device

    try:
        resolve_device(text)
    except DeviceUnavailable as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs (``auto`` takes CUDA where available)."""
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        metavar="DEVICE",
        help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA where available, else CPU)",
    )


def add_out_arg(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--out FOLDER`` (checked to be writable before the command starts); required when
    ``default`` is None."""
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument(
        "--out", default=default, required=default is None, metavar="FOLDER", help=what + shown
    )


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N``: the decoded-photo cap, the server's by default."""
    from ..image_io import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS

    parser.add_argument(
        "--max-pixels",
        type=number_at_least(1, int, PILLOW_MAX_PIXELS),
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse photos of more than N pixels (width × height), checked before decoding "
        f"(default {DEFAULT_MAX_PIXELS:,}; at most {PILLOW_MAX_PIXELS:,}, Pillow's own cap)",
    )


def read_photo(path: Path, max_pixels: int) -> Any:
    """:func:`~mobilesam.image_io.read_rgb` of ``path`` (``H×W×3`` uint8 RGB); a photo over
    the cap raises a ValueError that says how to raise it."""
    from ..image_io import ImageTooLarge, read_rgb

    try:
        return read_rgb(path, max_pixels)
    except ImageTooLarge as exc:
        raise ImageTooLarge(f"{exc} (raise it with --max-pixels)") from None


def add_quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_count_arg(
    parser: argparse.ArgumentParser, flag: str, default: int | None, what: str
) -> None:
    """``flag N``, a whole number of at least 1, with its default named in the help."""
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument(
        flag, type=number_at_least(1), default=default, metavar="N", help=what + shown
    )


def describe(exc: BaseException) -> str:
    """``exc`` in one line: a file error as ``reason: path``, others as their message with
    its lines joined (or the exception's type when it has no message)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def require_extra(extra: str, *modules: str) -> None:
    """Stop before any work when an optional dependency is missing, with the install line."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f'this command needs {", ".join(missing)}: pip install "mobilesam[{extra}]"')


def example_image() -> Path:
    """Path of the bundled example photo (769×770, from the MobileSAM repository)."""
    return Path(str(resources.files("mobilesam") / "assets" / "example.jpg"))
