"""Mask postprocessing: low-res decoder logits → logits at the original image size.

SAM upsamples the ``256×256`` logits to the padded ``1024×1024`` frame, crops away the padding,
then resizes to the original ``(H, W)``, with bilinear interpolation (``align_corners=False``)
each time. Both steps are linear and separable, so here they are composed into one ``(H, 256)``
and one ``(W, 256)`` matrix and applied as two small matrix products: the same values (to float
rounding) without ever materialising the ``1024×1024`` intermediate.

The functions are plain tensor code: sizes may be Python ints or 0-d int tensors, so the ONNX
decoder traces them with a dynamic original size.
"""

from __future__ import annotations

import torch

SizeLike = int | torch.Tensor


def bilinear_matrix(
    in_len: SizeLike, out_len: SizeLike, device: torch.device | None = None
) -> torch.Tensor:
    """Weights of 1-D bilinear resampling with ``align_corners=False`` (PyTorch's rule).

    Returns:
        ``(out_len, in_len)`` float64 matrix ``R`` with ``resize(x) = R @ x``.
    """
    in_len_t = torch.as_tensor(in_len, device=device).to(torch.float64)
    out_len_t = torch.as_tensor(out_len, device=device).to(torch.float64)
    dst = torch.arange(out_len, device=device, dtype=torch.float64)
    src = ((dst + 0.5) * (in_len_t / out_len_t) - 0.5).clamp(min=0.0)
    i0 = torch.floor(src)
    lam = src - i0
    last = in_len_t - 1
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    cols = torch.arange(in_len, device=device, dtype=torch.float64)[None, :]
    w0 = (cols == i0[:, None]).to(torch.float64) * (1.0 - lam)[:, None]
    w1 = (cols == i1[:, None]).to(torch.float64) * lam[:, None]
    return w0 + w1


def upscale_matrix(
    low_res: int, padded: int, valid: SizeLike, original: SizeLike, device: torch.device | None
) -> torch.Tensor:
    """One axis of SAM's postprocessing as a matrix.

    ``low_res`` → ``padded`` (bilinear), keep the first ``valid`` rows, → ``original``.

    Returns:
        ``(original, low_res)`` float64.
    """
    up = bilinear_matrix(low_res, padded, device)[:valid]
    return bilinear_matrix(valid, original, device) @ up


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
    dev = low_res_masks.device
    rows = upscale_matrix(
        low_res_masks.shape[-2], padded_size, input_size[0], original_size[0], dev
    )
    cols = upscale_matrix(
        low_res_masks.shape[-1], padded_size, input_size[1], original_size[1], dev
    )
    compute = torch.float32 if low_res_masks.dtype in (torch.float16, torch.bfloat16) else None
    x = low_res_masks.to(compute) if compute else low_res_masks
    rows = rows.to(x.dtype)
    cols = cols.to(x.dtype)
    out = rows @ x @ cols.transpose(0, 1)
    return out.to(low_res_masks.dtype)
