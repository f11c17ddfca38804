"""Mask postprocessing: low-res decoder logits → logits at the original image size.

SAM upsamples the ``256×256`` logits to the padded ``S×S`` encoder frame (``S = 1024``), crops
the padding away, then resizes to the original ``(H, W)``, each time with bilinear
interpolation (``align_corners=False``). This is the one implementation of that step: the
predictor, the everything-mode generator and the ONNX decoder all call it. Sizes may be Python
ints or 0-d int64 tensors, so the ONNX export keeps the original size dynamic.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

SizeLike = int | torch.Tensor


def upscale_masks(
    low_res_masks: torch.Tensor,
    input_size: tuple[SizeLike, SizeLike],
    original_size: tuple[SizeLike, SizeLike],
    padded_size: int,
    threshold: float | None = None,
) -> torch.Tensor:
    """SAM's ``postprocess_masks``.

    Args:
        low_res_masks: ``(B, C, h, w)`` logits from the decoder (``256×256``).
        input_size: ``(h_in, w_in)`` of the resized image before padding.
        original_size: ``(H, W)`` of the original image.
        padded_size: side of the padded encoder input (1024).
        threshold: return the binary masks ``logits > threshold`` instead.

    Returns:
        ``(B, C, H, W)`` logits, same dtype as the input (bool with ``threshold``).
    """
    if torch.jit.is_tracing():
        x = bilinear_graph(low_res_masks, padded_size, padded_size)
        x = x[..., : input_size[0], : input_size[1]]
        x = bilinear_graph(x, original_size[0], original_size[1])
        return x if threshold is None else x > threshold
    *lead, h, w = low_res_masks.shape
    dt = low_res_masks.dtype
    rows = composite_resize_matrix(h, padded_size, int(input_size[0]), int(original_size[0]), dt)
    cols = composite_resize_matrix(w, padded_size, int(input_size[1]), int(original_size[1]), dt)
    x = low_res_masks.reshape(-1, h, w)
    out = _resize_both_axes(x, rows, cols)
    out = out.reshape(*lead, *out.shape[-2:])
    return out if threshold is None else out > threshold


#: Output samples per block of the banded products (a cache-size tuning constant).
BAND_BLOCK = 64


class _Band(NamedTuple):
    matrix: torch.Tensor  # (out, low) CPU
    blocks: tuple[tuple[int, int, int, int], ...]  # (start, stop, lo, hi) per output block


@functools.lru_cache(maxsize=64)
def composite_resize_matrix(
    low: int, padded: int, valid: int, out: int, dtype: torch.dtype = torch.float64
) -> _Band:
    """SAM's three steps along one axis as one banded ``(out, low)`` matrix: bilinear resize
    ``low → padded``, keep the first ``valid`` samples, bilinear resize ``valid → out``.

    Each output sample is a convex combination of at most four adjacent low-res samples.
    Applying the matrix is the same arithmetic as the two resizes in another order: results
    agree to float32 rounding, without the ``padded²`` intermediate. Weights are built in
    float64, then cast to ``dtype`` (memoised per size and dtype; treat as read-only).
    """
    i0, i1, w0, w1 = _source_index(padded, low, torch.device("cpu"))
    j0, j1, v0, v1 = _source_index(out, valid, torch.device("cpu"))
    m = torch.zeros(out, low, dtype=torch.float64)
    rows = torch.arange(out)
    for j, v in ((j0, v0), (j1, v1)):
        for i, wt in ((i0, w0), (i1, w1)):
            m.index_put_((rows, i[j]), v.double() * wt[j].double(), accumulate=True)
    nonzero = m != 0
    first = nonzero.to(torch.int8).argmax(1)
    last = low - 1 - nonzero.flip(1).to(torch.int8).argmax(1)
    blocks = []
    for s in range(0, out, BAND_BLOCK):
        e = min(s + BAND_BLOCK, out)
        blocks.append((s, e, int(first[s:e].min()), int(last[s:e].max()) + 1))
    return _Band(m.to(dtype), tuple(blocks))


def _resize_both_axes(x: torch.Tensor, rows: _Band, cols: _Band) -> torch.Tensor:
    """``rows.matrix @ x[b] @ cols.matrixᵀ`` for each ``x[b]`` ``(h, w)``, one block of output
    samples at a time, each reading only the input samples inside its band. Matrix products
    write straight into their output (no temporaries)."""
    n, h, w = x.shape
    out_h, out_w = rows.matrix.shape[0], cols.matrix.shape[0]
    rm, cm = rows.matrix.to(x.device), cols.matrix.to(x.device)
    # columns first, transposed: t[j, b·h + i] = Σ_k cm[j, k] x[b, i, k]
    x2 = x.reshape(n * h, w)
    t = x.new_empty(out_w, n * h)
    for s, e, lo, hi in cols.blocks:
        torch.mm(cm[s:e, lo:hi], x2[:, lo:hi].t(), out=t[s:e])
    t = t.view(out_w, n, h)
    out = x.new_empty(n, out_h, out_w)
    for b in range(n):
        tb = t[:, b]  # (out_w, h)
        for s, e, lo, hi in rows.blocks:
            torch.mm(rm[s:e, lo:hi], tb[:, lo:hi].t(), out=out[b, s:e])
    return out


def _source_index(
    out_size: SizeLike, in_size: SizeLike, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's half-pixel rule as its CPU kernel evaluates it: ``scale = in / out`` in
    float32, then ``src = scale * (dst + 0.5) - 0.5`` fused (one float32 rounding, emulated
    exactly in float64), clamped at 0. Returns the two source indices and their float32
    weights per output index."""
    out_i = torch.as_tensor(out_size, device=device).to(torch.int64)
    in_i = torch.as_tensor(in_size, device=device).to(torch.int64)
    scale = (in_i.to(torch.float32) / out_i.to(torch.float32)).to(torch.float64)
    dst = torch.arange(out_i, device=device).to(torch.float64)
    src = ((dst + 0.5) * scale - 0.5).to(torch.float32).clamp(min=0)
    i0 = src.to(torch.int64)
    i1 = torch.minimum(i0 + 1, in_i - 1)
    w1 = src - i0.to(torch.float32)
    return i0, i1, 1 - w1, w1


def bilinear_graph(x: torch.Tensor, out_h: SizeLike, out_w: SizeLike) -> torch.Tensor:
    """``F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)`` written as
    gathers and weighted sums, with PyTorch's float32 coordinate arithmetic and order of
    operations (columns, then rows).

    Used when tracing for ONNX: ONNX Runtime's ``Resize`` computes source coordinates with a
    different rounding, which at ~1000-pixel coordinates moves steep logits by up to 1e-2;
    this graph agrees with PyTorch to float32 rounding instead.
    """
    h_in, w_in = x.shape[-2], x.shape[-1]
    c0, c1, cw0, cw1 = _source_index(out_w, w_in, x.device)
    t = x.index_select(-1, c0) * cw0 + x.index_select(-1, c1) * cw1
    r0, r1, rw0, rw1 = _source_index(out_h, h_in, x.device)
    return t.index_select(-2, r0) * rw0[:, None] + t.index_select(-2, r1) * rw1[:, None]
