"""Helpers shared by the ``mobilesam`` subcommands: errors, argument parsing, image I/O,
model loading and overlays."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def example_image() -> Path:
    """Path of the bundled example photo (769×770, from the MobileSAM repository)."""
    return Path(str(resources.files("mobilesam") / "assets" / "example.jpg"))


def parse_floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    """``"1,2.5"`` → ``[1.0, 2.5]``, requiring one of the counts in ``n``."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if len(vals) not in n:
        raise CliError(f"{what} takes {' or '.join(map(str, n))} numbers, got {text!r}")
    return vals


def read_rgb(path: Path) -> np.ndarray:
    """``H×W×3`` uint8 RGB in display (EXIF) orientation; raises :class:`CliError` naming
    the file if it cannot be read."""
    from ..image_io import read_rgb as decode

    if Path(path).is_dir():
        raise CliError(f"cannot read image {path}: it is a folder (give a photo)")
    if not Path(path).is_file():
        raise CliError(f"cannot read image {path}: no such file")
    try:
        return decode(path)
    except ValueError as exc:
        raise CliError(f"cannot read image {path}: {exc}") from None


def require_extra(extra: str, *modules: str) -> None:
    """Stop before any work when an optional dependency is missing, with the install line."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f'this command needs {", ".join(missing)}: pip install "mobilesam[{extra}]"')


def add_model_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="path to an official-format checkpoint")
    src.add_argument(
        "--model",
        default="mobilesam",
        help="model-zoo name, downloaded and checksum-verified (default mobilesam)",
    )


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="image encoder precision: fp32 (default, reproducible), bf16, or auto (bf16 "
        "where the CPU has bf16 units and it is faster); the decoder runs in fp32",
    )


def load_model(args: argparse.Namespace):  # noqa: ANN201 (Sam, imported lazily)
    """The model named by ``--checkpoint`` or ``--model``, and the checkpoint path."""
    from ..build import build_sam
    from ..hub import DownloadError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(args.checkpoint or args.model, progress=True)
    except DownloadError as exc:  # the library's hint, in the command's terms
        message = str(exc).replace("build the model from", "pass --checkpoint PATH with")
        raise DownloadError(message.replace(": build_sam(path)", "")) from None
    return build_sam(ckpt), ckpt


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """``image`` with ``mask`` tinted in ``color`` (55% colour, 45% photo)."""
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.array(color, np.float32)
    return out.astype(np.uint8)


def distinct_colors(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 colours with well-spread hues (golden-ratio steps), bright enough
    to read over a photo."""
    rng = np.random.default_rng(seed)
    hues = (rng.random() + np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.65 + 0.3 * ((np.arange(n) * 7) % 3) / 2
    val = np.full(n, 0.95)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = np.stack(
        [
            np.stack([val, t, p], 1),
            np.stack([q, val, p], 1),
            np.stack([p, val, t], 1),
            np.stack([p, q, val], 1),
            np.stack([t, p, val], 1),
            np.stack([val, p, q], 1),
        ]
    )
    return (table[i, np.arange(n)] * 255).astype(np.uint8)
