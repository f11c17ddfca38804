"""Masks drawn over photos, for the pictures the commands write beside their results."""

from __future__ import annotations

from typing import Any

import numpy as np


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """``image`` (``H×W×3`` uint8) with ``mask`` (``H×W`` bool) tinted in ``color`` (55%
    colour, 45% photo)."""
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.array(color, np.float32)
    return out.astype(np.uint8)


def annotation_overlay(image: np.ndarray, anns: list[dict[str, Any]]) -> np.ndarray:
    """The annotations' masks painted half-opaque over the photo in distinct colours
    (:func:`distinct_colors`, by annotation index), largest first so small ones stay visible.

    ``image`` is ``H×W×3`` uint8; each annotation's ``"segmentation"`` is an RLE of the
    image's size (COCO's compressed string or uncompressed counts, column-major) or an
    ``H×W`` bool mask, and its ``"area"`` orders the painting. Returns ``H×W×3`` uint8.

    The masks are painted from their runs: each one touches only its own pixels (found from
    the runs in a column-major copy of the photo), never a decoded full-size mask, so the
    cost grows with the masks' total area, not with their number times the photo's size.
    Each pixel goes through the same float32 steps, in the same order, as blending the
    decoded masks one by one (``0.5 * pixel + 0.5 * colour`` per mask covering it), so the
    picture is that blend exactly, bit for bit.

    Raises:
        ValueError: a segmentation whose size is not the image's.
    """
    from ..masks import rle_counts, rle_foreground_index

    h, w = image.shape[:2]
    # one float32 plane per channel, column-major (flat index x * h + y, the runs' order)
    planes = np.ascontiguousarray(image.transpose(2, 1, 0), dtype=np.float32).reshape(3, w * h)
    half = 0.5 * distinct_colors(len(anns)).astype(np.float32)
    for i in sorted(range(len(anns)), key=lambda i: -anns[i]["area"]):
        seg = anns[i]["segmentation"]
        if isinstance(seg, np.ndarray):
            if seg.shape != (h, w):
                raise ValueError(f"annotation {i}: mask of {seg.shape}, the image is {(h, w)}")
            index = np.flatnonzero(seg.T)
        else:
            if list(seg["size"]) != [h, w]:
                raise ValueError(
                    f"annotation {i}: segmentation of size {seg['size']}, the image is {[h, w]}"
                )
            index = rle_foreground_index(rle_counts(seg))
        for channel in range(3):  # 1-D gathers and scatters: the cheapest numpy has
            plane = planes[channel]
            values = plane.take(index)
            values *= np.float32(0.5)
            values += half[i, channel]
            plane[index] = values
    return np.ascontiguousarray(planes.reshape(3, w, h).transpose(2, 1, 0).astype(np.uint8))


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
