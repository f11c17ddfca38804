"""Mask postprocessing: low-res decoder logits → logits at the original image size.

SAM upsamples the ``256×256`` logits to the padded ``S×S`` encoder frame (``S = 1024``), crops
the padding away, then resizes to the original ``(H, W)``, each time with bilinear
interpolation (``align_corners=False``). This is the one implementation of that step: the
predictor, the everything-mode generator and the ONNX decoder all call it. Sizes may be Python
ints or 0-d int64 tensors, so the ONNX export keeps the original size dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SizeLike = int | torch.Tensor


def upscale_masks(
    low_res_masks: torch.Tensor,
    input_size: tuple[SizeLike, SizeLike],
    original_size: tuple[SizeLike, SizeLike],
    padded_size: int,
) -> torch.Tensor:
    """SAM's ``postprocess_masks``.

    Args:
        low_res_masks: ``(B, C, h, w)`` logits from the decoder (``256×256``).
        input_size: ``(h_in, w_in)`` of the resized image before padding.
        original_size: ``(H, W)`` of the original image.
        padded_size: side of the padded encoder input (1024).

    Returns:
        ``(B, C, H, W)`` logits, same dtype as the input.
    """
    resize = bilinear_graph if torch.jit.is_tracing() else _interpolate
    x = resize(low_res_masks, padded_size, padded_size)
    x = x[..., : input_size[0], : input_size[1]]
    return resize(x, original_size[0], original_size[1])


def _interpolate(x: torch.Tensor, out_h: SizeLike, out_w: SizeLike) -> torch.Tensor:
    return F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)


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
