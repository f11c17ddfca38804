"""Banded inference for the TinyViT encoder: run each block a band of rows at a time.

In eval mode without autograd, the wide intermediates of a block (4× expanded channels,
attention scores) are computed for a band of rows and consumed at once, so they stay a few MB
in cache instead of being freshly paged in by the OS on every call (on a VM, page faults cost
as much as the arithmetic). Each output value is the same arithmetic as the whole map's: 3×3
convolutions get a one-row halo and zero padding only at the map's own edges.

Maps are channels-last ``(B, H, W, C)`` tensors; convolutions see them as channels_last NCHW
views (:func:`nchw`, :func:`nhwc`), so there are no layout copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .tiny_vit import Conv2d_BN


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` → channels_last ``(B, C, H, W)`` view (no copy)."""
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H, W, C)`` view (no copy for channels_last input)."""
    return x.permute(0, 2, 3, 1)


#: Tokens per band in the banded inference path (a cache-size tuning constant).
BAND_TOKENS = 8192


def banded(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` runs band by band: eager inference in eval mode (no autograd graph
    to keep, no batch statistics or stochastic depth, which bands would change, and no trace,
    which wants one whole-map graph)."""
    if module.training or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and x.requires_grad)


#: Tokens per band of window attention (its score maps grow with the window area).
ATTN_BAND_TOKENS = 2048


def row_bands(height: int, width: int, multiple: int = 1, tokens: int | None = None) -> range:
    """Start rows of bands of about ``tokens`` (default :data:`BAND_TOKENS`) tokens, a
    multiple of ``multiple`` rows each; band ``i`` covers ``[r[i], r[i] + step)`` clipped to
    ``height``."""
    tokens = BAND_TOKENS if tokens is None else tokens
    rows = max(1, tokens // max(width, 1)) // multiple * multiple or multiple
    return range(0, height, rows)


def inverted_bottleneck(
    x: torch.Tensor,
    conv1: Conv2d_BN,
    act1: nn.GELU,
    conv2: Conv2d_BN,
    act2: nn.GELU,
    conv3: Conv2d_BN,
) -> torch.Tensor:
    """``conv3(act2(conv2(act1(conv1(x)))))`` on ``(B, H, W, C)``, where ``conv1``/``conv3``
    are pointwise and ``conv2`` a 3×3 (depthwise) convolution with padding 1 and stride
    ``s``: ``(B, H/s, W/s, C')``. Inference runs in bands of output rows, each computing
    ``conv1`` on its input rows plus a one-row halo and zero-padding only at the map's own
    top and bottom edges, so every output value is the same arithmetic as the full map's."""
    if not banded(x, conv2):
        return nhwc(conv3(act2(conv2(act1(conv1(nchw(x)))))))
    h = x.shape[1]

    def expanded(a: int, z: int) -> torch.Tensor:  # rows a:z of act1(conv1(x)), NCHW
        return conv1.fused(nchw(x[:, a:z]), gelu=act1)

    def band(o0: int, o1: int) -> torch.Tensor:
        return conv3(conv3x3_rows(conv2, expanded, h, o0, o1, gelu=act2))

    b, _, w, _ = x.shape
    return banded_rows(band, b, conv_out(h, conv2), conv_out(w, conv2))


def conv_out(size: int, conv: Conv2d_BN) -> int:
    """Output size of a 3×3, padding-1 convolution along one axis."""
    return (size - 1) // conv.c.stride[0] + 1


def conv3x3_rows(
    conv: Conv2d_BN,
    rows: Callable[[int, int], torch.Tensor],
    height: int,
    o0: int,
    o1: int,
    gelu: nn.GELU | None = None,
) -> torch.Tensor:
    """Output rows ``o0:o1`` of ``conv`` (3×3, padding 1, stride ``s``, BatchNorm folded) on
    a map of ``height`` rows, whose input rows ``a:z`` come from ``rows(a, z)`` (NCHW). Only
    the needed input rows plus a one-row halo are computed; the zero padding is added only at
    the map's own top and bottom, so each output value is the full map's arithmetic. A
    ``gelu`` follows (see :meth:`Conv2d_BN.fused`)."""
    s = conv.c.stride[0]
    lo, hi = s * o0 - 1, s * (o1 - 1) + 2
    y = rows(max(lo, 0), min(hi, height))
    top, bottom = max(-lo, 0), max(hi - height, 0)
    if top and bottom:  # the whole map: the layer's own padding
        return conv.fused(y, gelu=gelu)
    if top or bottom:
        y = F.pad(y, (0, 0, top, bottom))
    return conv.fused(y, padding=(0, conv.c.padding[1]), gelu=gelu)


def banded_rows(
    band: Callable[[int, int], torch.Tensor], batch: int, out_h: int, out_w: int
) -> torch.Tensor:
    """Assemble a ``(B, H', W', C')`` map from ``band(o0, o1)``, its output rows ``o0:o1``
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
