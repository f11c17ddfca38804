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


#: The web decoder's inputs and outputs (:class:`SamOnnxWebDecoder`).
WEB_INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "orig_im_size", "multimask")
WEB_OUTPUT_NAMES = ("mask", "score")


class SamOnnxWebDecoder(SamOnnxDecoder):
    """The decoder for clients that should do no arithmetic (the in-browser page): prompts
    in the photo's own pixels in, the thresholded mask at the photo's size out.

    inputs
        ``image_embeddings`` ``(1, 256, 64, 64)``; ``point_coords`` ``(1, N, 2)`` float32, (x, y)
        in the original photo's pixels, in SAM's layout (points, then a box's two corners
        labelled 2 and 3, or one padding point ``(0, 0)`` labelled -1 when there is no box);
        ``point_labels`` ``(1, N)`` float32; ``orig_im_size`` ``(2,)`` float32 ``(H, W)``;
        ``multimask`` ``(1,)`` float32: 1 picks the best-scoring of the three multimask
        tokens, 0 token 0 (``SamPredictor.predict(multimask_output=...)`` followed by the
        highest score).
    outputs
        ``mask`` ``(H, W)`` uint8, 1 where the chosen logits exceed the model's
        ``mask_threshold``; ``score`` ``(1,)`` float32, its predicted IoU.

    Coordinates move to the input frame as ``ResizeLongestSide.apply_coords`` moves them (in
    float64, then float32); the mask is upsampled by :func:`upscale_masks_graph`, as in
    ``decoder.onnx``. No mask input: the page starts every answer from its prompts.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__(model, return_single_mask=False)
        self.mask_threshold = float(model.mask_threshold)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        orig_im_size: torch.Tensor,
        multimask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        orig = orig_im_size.to(torch.int64)
        input_size = resize_longest_size(orig_im_size, self.img_size)
        # (x, y) × (w / W, h / H) in float64, as apply_coords scales them
        ratio = (input_size.to(torch.float64) / orig_im_size.to(torch.float64)).flip(0)
        coords = (point_coords.to(torch.float64) * ratio).to(torch.float32)
        pe = self.prompt_encoder
        sparse = pe.embed_points(coords, point_labels)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings, pe.get_dense_pe(), sparse, pe.no_mask_dense(1)
        )
        # multimask: the best of tokens 1.. (SAM's multimask outputs); else token 0
        best_multi = torch.argmax(iou[:, 1:], dim=1) + 1
        best = torch.where(multimask.reshape(1) > 0, best_multi, torch.zeros_like(best_multi))
        low = low_res.index_select(1, best)
        score = iou.index_select(1, best).reshape(1)
        logits = upscale_masks_graph(
            low, (input_size[0], input_size[1]), (orig[0], orig[1]), self.img_size
        )
        return (logits[0, 0] > self.mask_threshold).to(torch.uint8), score
