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
    """The annotations' masks (COCO RLE in ``"segmentation"``) painted half-opaque over the
    photo in distinct colours, largest first so small ones stay visible; one mask is decoded
    at a time."""
    from pycocotools import mask as mask_utils

    out = image.astype(np.float32)
    colors = distinct_colors(len(anns)).astype(np.float32)
    for i in sorted(range(len(anns)), key=lambda i: -anns[i]["area"]):
        m = mask_utils.decode(anns[i]["segmentation"]).astype(bool)
        out[m] = 0.5 * out[m] + 0.5 * colors[i]
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
