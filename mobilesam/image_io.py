"""Reading photos as the ``H×W×3`` uint8 RGB arrays the predictors take.

One rule for every front door (CLI, HTTP API, web page): the EXIF orientation tag is applied,
so the pixel frame, and with it every ``(x, y)`` prompt and every mask, is the one that image
viewers and browsers display. Without it, a phone photo stored sideways would be segmented
in a frame the user never sees.
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .transforms import to_rgb_uint8

#: The default cap on a decoded photo's pixels (width × height), shared by the CLI and the
#: server: about a 16-megapixel photo. Decoding one takes ~48 MB as RGB.
DEFAULT_MAX_PIXELS = 16_000_000

#: File suffixes (lower case) read as photos when a folder is listed.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(folder: str | Path) -> list[Path]:
    """The photos under ``folder``, recursively: files whose suffix is in
    :data:`IMAGE_SUFFIXES` (any case), sorted by path so every listing is the same."""
    return sorted(
        f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )


def read_rgb(
    source: str | os.PathLike[str] | bytes | BinaryIO, max_pixels: int | None = None
) -> np.ndarray:
    """Decode ``source`` (a path, the file's bytes, or a binary file object).

    Args:
        source: the encoded image.
        max_pixels: refuse images with more pixels than this, checked from the header before
            the pixels are decoded (a guard against decompression bombs); ``None`` keeps
            Pillow's own limit.

    Returns:
        ``H×W×3`` uint8 RGB in display orientation. High-bit-depth images are scaled as the
        array path (:func:`~mobilesam.transforms.to_rgb_uint8`) scales them: 16-bit
        (``I;16``, or ``I`` holding 0-65535) by 255/65535, floats (``F``) from [0, 1];
        palette, grey+alpha and CMYK images are converted to RGB.

    Raises:
        FileNotFoundError, IsADirectoryError: ``source`` is a path with no file behind it
            (the exception's ``filename`` is the path).
        ValueError: undecodable data, or over ``max_pixels``; the message says which, and
            names the path when ``source`` is one.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "cannot read an image from a folder", str(path))
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such image file", str(path))
        with open(path, "rb") as f:
            try:
                return _decode(f, max_pixels)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    return _decode(io.BytesIO(source) if isinstance(source, bytes) else source, max_pixels)


def _decode(data: BinaryIO, max_pixels: int | None) -> np.ndarray:
    """:func:`read_rgb` of an open binary stream."""
    try:
        with Image.open(data) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"image has {w}×{h} pixels; the limit is {max_pixels}")
            return _to_rgb(ImageOps.exif_transpose(im))
    except Image.UnidentifiedImageError:
        raise ValueError(
            "cannot decode the image: not a recognised image format (PNG, JPEG, WebP, TIFF, ...)"
        ) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the data", str(exc))
        raise ValueError(f"cannot decode the image: {reason}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """``im`` as ``H×W×3`` uint8 RGB, without clipping high-bit-depth modes."""
    if im.mode.startswith("I;16"):
        return to_rgb_uint8(np.array(im).astype(np.uint16))
    if im.mode == "I":  # 32-bit integers (older Pillow decodes 16-bit PNGs to this): 16-bit
        values = np.array(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"32-bit integer image with values {values.min()}..{values.max()}; "
                "expected 0..65535"
            )
        return to_rgb_uint8(values.astype(np.uint16))  # one scale, whatever the values
    if im.mode == "F":
        return to_rgb_uint8(np.array(im))
    return np.array(im.convert("RGB"))
