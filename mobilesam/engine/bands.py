"""Bands of rows: the geometry of the encoder's banded inference.

A block's wide intermediates (4× expanded channels, attention scores) are computed for a band
of rows and consumed at once, so they stay a few MB in cache instead of being freshly paged in
by the OS on every call. Every output value is the same arithmetic as the whole map's: a 3×3
convolution gets a one-row halo, and zero padding only at the map's own top and bottom.

Maps are channels-last ``(B, H, W, C)`` tensors; convolutions see them as channels_last NCHW
views (:func:`~mobilesam.modeling.tiny_vit.nchw`), so there are no layout copies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..modeling.tiny_vit import nhwc
from . import tuning

#: ``conv(x, whole)``: a 3×3 convolution of NCHW rows ``x``; ``whole`` means that ``x`` is the
#: whole map (the layer's own padding), otherwise its rows are padded already (columns only).
RowConv = Callable[[torch.Tensor, bool], torch.Tensor]


def row_bands(height: int, width: int, multiple: int = 1, tokens: int | None = None) -> range:
    """Start rows of bands of about ``tokens`` (default :data:`tuning.BAND_TOKENS`) tokens, a
    multiple of ``multiple`` rows each; band ``i`` covers ``[r[i], r[i] + step)`` clipped to
    ``height``."""
    tokens = tuning.BAND_TOKENS if tokens is None else tokens
    rows = max(1, tokens // max(width, 1)) // multiple * multiple or multiple
    return range(0, height, rows)


def conv_out(size: int, stride: int) -> int:
    """Output size along one axis of a 3×3, padding-1 convolution of ``stride``."""
    return (size - 1) // stride + 1


def conv3x3_rows(
    conv: RowConv,
    stride: int,
    rows: Callable[[int, int], torch.Tensor],
    height: int,
    o0: int,
    o1: int,
) -> torch.Tensor:
    """Output rows ``o0:o1`` (NCHW) of ``conv`` (3×3, padding 1, ``stride``) on a map of
    ``height`` rows whose input rows ``a:z`` come from ``rows(a, z)`` (NCHW). Only the needed
    input rows plus a one-row halo are computed, and zero rows are added only beyond the
    map's own top and bottom, so each output value is the whole map's arithmetic."""
    lo, hi = stride * o0 - 1, stride * (o1 - 1) + 2
    y = rows(max(lo, 0), min(hi, height))
    top, bottom = max(-lo, 0), max(hi - height, 0)
    if top and bottom:  # the whole map: the layer's own padding
        return conv(y, True)
    if top or bottom:
        y = F.pad(y, (0, 0, top, bottom))
    return conv(y, False)


def banded_rows(
    band: Callable[[int, int], torch.Tensor], batch: int, out_h: int, out_w: int
) -> torch.Tensor:
    """A ``(B, H', W', C')`` map assembled from ``band(o0, o1)``, its output rows ``o0:o1``
    (NCHW), band by band."""
    out = None
    bands = row_bands(out_h, out_w)
    for o0 in bands:
        o1 = min(out_h, o0 + bands.step)
        y = nhwc(band(o0, o1))
        if out is None:
            out = y.new_empty(batch, out_h, out_w, y.shape[-1])
        out[:, o0:o1] = y
    return out
