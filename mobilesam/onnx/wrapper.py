"""SAM's public ONNX decoder interface, composed from the library's own functions.

Existing SAM ONNX clients and web demos call this graph unchanged:

inputs
    ``image_embeddings`` ``(1, 256, 64, 64)`` float32;
    ``point_coords`` ``(1, N, 2)`` float32, (x, y) pixels in the 1024 input frame;
    ``point_labels`` ``(1, N)`` float32: 1 foreground, 0 background, 2/3 box corners, -1 padding;
    ``mask_input`` ``(1, 1, 256, 256)`` float32 low-res logits;
    ``has_mask_input`` ``(1,)`` float32, 1 or 0;
    ``orig_im_size`` ``(2,)`` float32, (H, W) of the original image.
outputs
    ``masks`` ``(1, M, H, W)`` logits at the original size; ``iou_predictions`` ``(1, M)``;
    ``low_res_masks`` ``(1, M, 256, 256)``. ``M`` is 1 (``return_single_mask``, SAM's
    choice by point count) or 4 (all tokens, token 0 the single-mask answer).

:class:`SamOnnxTokenDecoder` is the same graph without ``orig_im_size``, selection or
upsampling (all tokens, low-res), used by :class:`~mobilesam.onnx.OnnxPredictor`.

Nothing depends on the sizes used at export: the number of points and ``orig_im_size`` stay
dynamic (the resize and crop sizes are computed in the graph).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.mask_decoder import select_by_point_count
from ..modeling.sam import Sam
from ..postprocess import upscale_masks_graph
from ..transforms import resize_longest_size

INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
TOKEN_OUTPUT_NAMES = ("iou_predictions", "low_res_masks")


class SamOnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + upsampling behind SAM's ONNX signature."""

    def __init__(self, model: Sam, return_single_mask: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = model.img_size
        self.return_single_mask = return_single_mask

    def all_tokens(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``(1, T, 256, 256)`` and IoU predictions ``(1, T)`` of all tokens."""
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels)
        dense = pe.dense_from_mask_input(mask_input, has_mask_input)
        return self.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low_res, iou = self.all_tokens(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )
        if self.return_single_mask:
            low_res, iou = select_by_point_count(low_res, iou, point_coords.shape[1])
        orig = orig_im_size.to(torch.int64)
        input_size = resize_longest_size(orig_im_size, self.img_size)
        masks = upscale_masks_graph(
            low_res, (input_size[0], input_size[1]), (orig[0], orig[1]), self.img_size
        )
        return masks, iou, low_res


class SamOnnxTokenDecoder(SamOnnxDecoder):
    """The decoder without selection or upsampling, for :class:`~mobilesam.onnx.OnnxPredictor`:
    SAM's first five inputs → ``iou_predictions`` ``(1, 4)`` and ``low_res_masks``
    ``(1, 4, 256, 256)`` of all tokens. The predictor selects the outputs it returns and
    upsamples only those, with the same ``upscale_masks`` as the torch predictor."""

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low_res, iou = self.all_tokens(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )
        return iou, low_res


class SamOnnxEncoder(nn.Module):
    """``image`` ``(1, 3, S, S)`` float32, already resized, normalized and padded →
    ``image_embeddings`` ``(1, 256, S/16, S/16)``. ``dtype`` runs the encoder in reduced
    precision behind a float32 interface."""

    def __init__(self, model: Sam, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image.to(self.dtype)).to(torch.float32)
