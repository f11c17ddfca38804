"""The CPU engine's upscaling tail: the mask decoder's ``output_upscaling`` and hypernetwork
product, from the factored image tokens, as matrix products in a sub-pixel layout.

``output_upscaling`` (a Sequential, for the official parameter names) is two kernel-2
stride-2 transposed convolutions, so every image token owns a ``4×4`` output patch and the
whole tail (both layers, LayerNorm, GELUs, the hypernetwork product) is independent per
token. It runs as matrix products on tokens in rows, without shuffling pixels; only the
``T``-channel result is rearranged into an image. On CPU each prompt goes through in chunks
of whole grid rows, about :data:`~mobilesam.engine.tuning.UPSCALE_CHUNK_TOKENS` tokens, so
the ``C/4``- and ``C/8``-channel intermediates stay in cache; per-pixel arithmetic is the
same either way. Where the native kernels apply, the whole tail is one fused native call.

Inference only: intermediates are modified in place and buffers reused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import native, tuning
from .factored_decode import DecodedTokens, first_conv_factors
from .image_products import ImageCache
from .ops import conv_transpose_matrix, gelu_
from .workspace import Workspace

#: ``(prompts, start, stop, workspace)`` → the first transposed convolution of image tokens
#: ``start:stop`` of the prompts in the slice ``prompts``: ``(b, stop - start, 4·C/4)``.
FirstConv = Callable[[slice, int, int, Workspace | None], torch.Tensor]


def native_tail(
    decoder: nn.Module, device: torch.device, tail_dtype: torch.dtype
) -> native.DecoderKernels | None:
    """The native kernels where their fused tail applies to ``decoder``: CPU, the decoder's
    exact-erf GELUs, and a float32 tail, or a bf16 one where the kernels take bf16 products
    (:attr:`~mobilesam.engine.native.DecoderKernels.bf16`); else None."""
    ups = decoder.output_upscaling
    exact = all(isinstance(act, nn.GELU) and act.approximate == "none" for act in (ups[2], ups[4]))
    if not exact or device.type != "cpu":
        return None
    kernels = native.kernels()
    if kernels is None:
        return None
    if tail_dtype == torch.float32 or (tail_dtype == torch.bfloat16 and kernels.bf16):
        return kernels
    return None


def masks_from_decoded(
    cache: ImageCache,
    decoded: DecodedTokens,
    hyper_in: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Low-res logits ``(B, T, 4h, 4w)`` of the prompts in ``decoded`` for the mask tokens
    whose hypernetwork outputs are ``hyper_in`` ``(B, T, C/8)`` (a selection or subset of
    ``decoded.hyper``, prompts included); written into ``out`` (contiguous, that shape and
    dtype) if given. The tail's dtype is ``cache.upscale``'s (see
    :func:`~mobilesam.engine.image_products.prepare_image_cache`)."""
    decoder = cache.model.mask_decoder
    dtype = cache.upscale.dtype
    a, z, ew, bias = first_conv_factors(cache, decoded.image)
    h, w = cache.size
    w2, b2 = cache.weights.up2_w, cache.weights.up2_b
    kernels = native_tail(decoder, hyper_in.device, dtype) if native.applicable(hyper_in) else None
    if kernels is not None:  # the same tail, fused per chunk of tokens (mobilesam.engine.native)
        norm = decoder.output_upscaling[1]
        shared = cache.upscale if cache.upscale_channels_first else cache.upscale.t().contiguous()
        return kernels.upscale_tail(shared, a, z, ew, bias, norm, w2, b2, hyper_in, (h, w), out)
    # PyTorch's tail runs wholly in the tail's dtype
    a, z, ew, bias, b2 = (None if t is None else t.to(dtype) for t in (a, z, ew, bias, b2))
    by_token = cache.upscale.t() if cache.upscale_channels_first else cache.upscale  # (N, 4·C/4)

    def first_conv(rows: slice, start: int, stop: int, ws: Workspace | None = None) -> torch.Tensor:
        shared = by_token[start:stop]
        if z is None:
            return (shared + bias).expand(hyper_in[rows].shape[0], -1, -1)
        zr = z[rows, :, start:stop]
        buf = None if ws is None else ws.get("first", (zr.shape[0], *shared.shape), shared)
        y = torch.baddbmm(shared, zr.transpose(1, 2), ew[rows], out=buf)
        return torch.addcmul(bias, y, a[rows, start:stop, None], out=y)

    masks = upscale(decoder, first_conv, hyper_in.to(dtype), h, w, (w2, b2))
    if out is None:
        return masks.to(hyper_in.dtype)
    return out.copy_(masks)


def masks_from_tokens(
    decoder: nn.Module, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """The tail on plain image tokens ``keys`` ``(B, h·w, C)`` with hypernetwork outputs
    ``hyper_in`` ``(B, T, C/8)``: mask logits ``(B, T, 4h, 4w)``, as SAM's
    ``output_upscaling`` and product give them (to rounding)."""
    w1, bias = conv_transpose_matrix(decoder.output_upscaling[0])

    def first_conv(rows: slice, start: int, stop: int, ws: Workspace | None = None) -> torch.Tensor:
        return keys[rows, start:stop] @ w1 + bias

    return upscale(decoder, first_conv, hyper_in, h, w)


def upscale(
    decoder: nn.Module,
    first_conv: FirstConv,
    hyper_in: torch.Tensor,
    h: int,
    w: int,
    second: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The upscaling tail from the first transposed convolution's output.

    Args:
        first_conv: that convolution (bias included), per prompts and image tokens (see
            :data:`FirstConv`); each token's ``4·C/4`` values are sub-pixel-major. It may
            write into the workspace it is given.
        hyper_in: ``(B, T, C/8)`` hypernetwork outputs of the wanted mask tokens.
        second: the second transposed convolution as ``(weight matrix, bias)`` (see
            :class:`~mobilesam.engine.image_products.DecoderWeights`), when prepared.

    Returns:
        ``(B, T, 4h, 4w)`` mask logits.
    """
    w2, bias2 = second or conv_transpose_matrix(decoder.output_upscaling[3])
    batch, t = hyper_in.shape[:2]
    if hyper_in.device.type != "cpu":  # one pass over every prompt and token
        x = first_conv(slice(None), 0, h * w, None)
        return _subpixel_image(_tail(decoder, x, hyper_in, (w2, bias2), None), h, w)
    rows_per_chunk = max(1, tuning.UPSCALE_CHUNK_TOKENS // w)
    masks = hyper_in.new_empty(batch, t, 4 * h, 4 * w)
    # one set of buffers for every chunk and prompt: fresh allocations of this size cost
    # page faults on every call
    ws = Workspace()
    for i in range(batch):
        rows = slice(i, i + 1)
        for r0 in range(0, h, rows_per_chunk):
            r1 = min(h, r0 + rows_per_chunk)
            x = first_conv(rows, r0 * w, r1 * w, ws)  # (1, p, 4·C/4)
            x = _tail(decoder, x, hyper_in[rows], (w2, bias2), ws)  # (1, T, 16p)
            _write_subpixel_rows(masks[rows, :, 4 * r0 : 4 * r1], x, w)
    return masks


def _tail(
    decoder: nn.Module,
    x: torch.Tensor,
    hyper: torch.Tensor,
    second: tuple[torch.Tensor, torch.Tensor],
    ws: Workspace | None,
) -> torch.Tensor:
    """First transposed convolution's output ``(b, p, 4·C/4)`` → mask logits ``(b, T, 16p)``
    in sub-pixel layout: LayerNorm, GELU, second convolution, GELU, and the product with the
    hypernetwork outputs ``hyper`` ``(b, T, C/8)``."""
    _, norm, act1, _, act2 = decoder.output_upscaling
    b = x.shape[0]
    x = x.reshape(b, -1, norm.weight.shape[0])  # (b, 4p, C/4)
    x = F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps)
    x = gelu_(x, act1)
    x = _conv_transpose_2x2(x, *second, ws)  # (b, 16p, C/8)
    x = gelu_(x, act2)
    if ws is None:
        return hyper @ x.transpose(1, 2)
    # one 2-D product per prompt: a batched one copies the transposed operand in bf16
    out = ws.get("hyper", (b, hyper.shape[1], x.shape[1]), x)
    for i in range(b):
        torch.mm(hyper[i], x[i].t(), out=out[i])
    return out


#: Integer types that hold two adjacent values of a float type of each byte size (for moves).
_PAIR_DTYPES = {4: torch.int64, 2: torch.int32, 8: torch.complex128}


def _subpixel_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Mask logits ``(b, T, 16·h·w)`` in sub-pixel layout → images ``(b, T, 4h, 4w)``."""
    b, t = x.shape[:2]
    # (b, T, i, j, a, b, c, d) → pixel (4i + 2a + c, 4j + 2b + d) of mask T
    x = x.view(b, t, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return x.reshape(b, t, 4 * h, 4 * w)


def _write_subpixel_rows(dst: torch.Tensor, x: torch.Tensor, w: int) -> None:
    """Write mask logits ``x`` ``(b, T, 16·r·w)`` (sub-pixel layout, ``r`` grid rows) into
    image rows ``dst`` ``(b, T, 4r, 4w)``."""
    b, t = x.shape[:2]
    r = dst.shape[2] // 4
    # moving each (d = 0, 1) pair as one integer is several times faster
    pair = _PAIR_DTYPES[x.element_size()]
    src = x.view(pair).view(b, t, r, w, 2, 2, 2)  # (b, T, i, j, a, b, c)
    dst = dst.view(pair).view(b, t, r, 2, 2, w, 2)
    dst.copy_(src.permute(0, 1, 2, 4, 6, 3, 5))


def _conv_transpose_2x2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ws: Workspace | None = None
) -> torch.Tensor:
    """A kernel-2, stride-2 transposed convolution on pixels in rows: ``(B, P, C)`` →
    ``(B, 4P, O)``, where output row ``4p + 2a + b`` is sub-pixel ``(a, b)`` (row, column)
    of input pixel ``p``. Each input pixel owns its 2×2 output patch, so the layer is one
    matrix product with the :func:`~mobilesam.modeling.common.conv_transpose_matrix`
    weight and bias."""
    b, p, c = x.shape
    x = x.reshape(b * p, c)
    out = None if ws is None else ws.get("second", (b * p, weight.shape[1]), x)
    y = torch.mm(x, weight, out=out) if bias is None else torch.addmm(bias, x, weight, out=out)
    return y.reshape(b, 4 * p, weight.shape[1] // 4)
