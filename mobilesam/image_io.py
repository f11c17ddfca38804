"""Reading photos as the ``H×W×3`` uint8 RGB arrays the predictors take.

One rule for every front door (CLI, HTTP API, web page): the EXIF orientation tag is applied,
so the pixel frame, and with it every ``(x, y)`` prompt and every mask, is the one that image
viewers and browsers display. Without it, a phone photo stored sideways would be segmented
in a frame the user never sees.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps


def read_rgb(source: str | Path | bytes | BinaryIO, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``source`` (a path, the file's bytes, or a binary file object).

    Args:
        source: the encoded image.
        max_pixels: refuse images with more pixels than this, checked from the header before
            the pixels are decoded (a guard against decompression bombs); ``None`` keeps
            Pillow's own limit.

    Returns:
        ``H×W×3`` uint8 RGB in display orientation.

    Raises:
        ValueError: undecodable data, or over ``max_pixels``; the message says which.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"image has {w}×{h} pixels; the limit is {max_pixels}")
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode the image: {exc}") from None
