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
    x = F.interpolate(
        low_res_masks, (padded_size, padded_size), mode="bilinear", align_corners=False
    )
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(
        x, (original_size[0], original_size[1]), mode="bilinear", align_corners=False
    )
