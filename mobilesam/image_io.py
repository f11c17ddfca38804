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
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from .transforms import to_rgb_uint8

#: The default cap on a decoded photo's pixels (width × height), shared by the CLI and the
#: server: about a 16-megapixel photo. Decoding one takes ~48 MB as RGB.
DEFAULT_MAX_PIXELS = 16_000_000

#: Pillow's own decompression-bomb cap (twice ``Image.MAX_IMAGE_PIXELS``): the largest cap a
#: caller can ask for without changing Pillow's process-wide setting.
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS

#: File suffixes (lower case) read as photos when a folder is listed.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(folder: str | Path) -> list[Path]:
    """The photos under ``folder``, recursively: files whose suffix is in
    :data:`IMAGE_SUFFIXES` (any case), sorted by path so every listing is the same."""
    return sorted(
        f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )


class ImageTooLarge(ValueError):
    """The photo has more pixels than the ``max_pixels`` it was read with."""


class ImageWarning(UserWarning):
    """A photo was read, but not all of it as written: today, EXIF metadata too damaged to
    read its orientation, so the pixels are used as stored (unrotated)."""


#: EXIF Orientation value → the transpose that shows the photo as viewers display it
#: (the table of :func:`PIL.ImageOps.exif_transpose`); 1 and unknown values: as stored.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def read_rgb(
    source: str | os.PathLike[str] | bytes | BinaryIO, max_pixels: int | None = None
) -> np.ndarray:
    """Decode ``source`` (a path, the file's bytes, or a binary file object).

    Args:
        source: the encoded image.
        max_pixels: refuse images with more pixels than this, checked from the header before
            the pixels are decoded (a guard against decompression bombs); ``None`` keeps
            Pillow's own limit. :data:`DEFAULT_MAX_PIXELS` is the CLI's and the server's.

    Returns:
        ``H×W×3`` uint8 RGB in display orientation. High-bit-depth images are scaled as the
        array path (:func:`~mobilesam.transforms.to_rgb_uint8`) scales them: 16-bit
        (``I;16``, or ``I`` holding 0-65535) by 255/65535, floats (``F``) from [0, 1];
        palette, grey+alpha and CMYK images are converted to RGB.

    Warns:
        ImageWarning: the pixels decoded but the EXIF metadata did not; they are returned
            as stored, unrotated.

    Raises:
        FileNotFoundError, IsADirectoryError: ``source`` is a path with no file behind it
            (the exception's ``filename`` is the path).
        ValueError: undecodable data (whatever the decoder raised); the message names the
            path when ``source`` is one.
        ImageTooLarge: over ``max_pixels`` (a ValueError too).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "cannot read an image from a folder", str(path))
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such image file", str(path))
        with open(path, "rb") as f:
            try:
                return _decode(f, max_pixels, name=str(path))
            except ValueError as exc:  # keeps the type (ImageTooLarge), names the file
                raise type(exc)(f"{path}: {exc}") from None
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    return _decode(data, max_pixels, name="the image")


def _decode(data: BinaryIO, max_pixels: int | None, name: str) -> np.ndarray:
    """:func:`read_rgb` of an open binary stream; ``name`` names it in warnings."""
    try:
        with Image.open(data) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(f"image has {w}×{h} pixels; the limit is {max_pixels}")
            transpose = _orientation(im, name)
            im.load()
            return _to_rgb(im.transpose(transpose) if transpose is not None else im)
    except ImageTooLarge:
        raise
    except Image.UnidentifiedImageError:
        raise ValueError(
            "cannot decode the image: not a recognised image format (PNG, JPEG, WebP, TIFF, ...)"
        ) from None
    except MemoryError:
        raise ValueError("cannot decode the image: not enough memory") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's failure on hostile bytes, any type
        raise ValueError(f"cannot decode the image: {_reason(exc)}") from None


def _orientation(im: Image.Image, name: str) -> Image.Transpose | None:
    """The transpose that EXIF Orientation asks for, or ``None``. Damaged EXIF is not a
    damaged photo: it warns (:class:`ImageWarning`) and leaves the pixels as stored."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own "Metadata Warning" per odd tag
            value = im.getexif().get(0x0112)
    except Exception as exc:  # noqa: BLE001 - Pillow's EXIF parser raises many types
        warnings.warn(
            f"{name}: EXIF metadata is damaged ({_reason(exc)}); using the pixels unrotated",
            ImageWarning,
            stacklevel=4,
        )
        return None
    return _ORIENTATION.get(value) if isinstance(value, int) else None


def _reason(exc: BaseException) -> str:
    """``exc`` in a few words, without object reprs (``<_io.BytesIO object at 0x...>``)."""
    text = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the data", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
