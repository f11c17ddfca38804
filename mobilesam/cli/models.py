"""Which model a command runs: --checkpoint PATH (a file) or --model NAME (a model-zoo name,
downloaded once into the checksum-verified cache), and loading it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import existing_file, zoo_name


def add_model_args(
    parser: argparse.ArgumentParser,
    default: str | None = "mobilesam",
    prefix: str = "",
    what: str = "the model",
) -> None:
    """``--{prefix}checkpoint PATH`` or ``--{prefix}model NAME``, mutually exclusive; one of
    them is required when ``default`` (the zoo name used when neither is given) is None."""
    flag = f"--{prefix}-" if prefix else "--"
    group = parser.add_mutually_exclusive_group(required=default is None)
    group.add_argument(
        f"{flag}checkpoint",
        type=existing_file,
        metavar="PATH",
        help=f"{what}: a checkpoint file in the official format",
    )
    shown = f" (default {default})" if default is not None else ""
    group.add_argument(
        f"{flag}model",
        type=zoo_name(f"{flag}checkpoint"),
        default=default,
        metavar="NAME",
        help=f"{what}: a model-zoo name, downloaded once and checksum-verified{shown}",
    )


def checkpoint_path(args: argparse.Namespace, prefix: str = "") -> Path:
    """The checkpoint file named by the arguments :func:`add_model_args` added: the given
    file, or the zoo model's file (downloaded into the cache when it is not there yet)."""
    dest = f"{prefix}_" if prefix else ""
    path = getattr(args, f"{dest}checkpoint")
    if path is not None:
        return Path(path)
    flag = f"--{prefix}-checkpoint" if prefix else "--checkpoint"
    return download(getattr(args, f"{dest}model"), flag)


def download(name: str, checkpoint_flag: str) -> Path:
    """The zoo model ``name``'s checkpoint file. A failed or corrupt download (the library's
    DownloadError or ChecksumError) is raised again as the same error, reworded: the first
    line of the library's message and the hint in the command line's terms, where to save a
    copy fetched by hand, or ``checkpoint_flag`` to use a file one already has."""
    from ..hub import ChecksumError, DownloadError, download_weights

    try:
        return download_weights(name, progress=True)
    except (DownloadError, ChecksumError) as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0].rstrip(".:") if lines else type(exc).__name__
        raise type(exc)(
            f"{reason}. To install it by hand, download {exc.url} and save it as {exc.dest}; "
            f"or pass {checkpoint_flag} PATH with a checkpoint file you already have",
            exc.url,
            exc.dest,
        ) from exc


def load_model(args: argparse.Namespace) -> tuple[Any, Path]:
    """The model (:class:`~mobilesam.modeling.sam.Sam`) named by ``--checkpoint`` or
    ``--model``, and its checkpoint file."""
    from ..build import build_sam

    ckpt = checkpoint_path(args)
    return build_sam(ckpt), ckpt
