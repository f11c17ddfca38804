"""The ``Sam`` module: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import PIXEL_MEAN, PIXEL_STD, normalize_and_pad
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "Sam"]


class Sam(nn.Module):
    """Segment Anything model with any image encoder (TinyViT for MobileSAM, ViT for SAM).

    Attributes:
        mask_threshold: logit above which a pixel is in the mask (0.0).
        image_format: channel order the model expects (``"RGB"``).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square, padded encoder input in pixels (1024)."""
        return int(self.image_encoder.img_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and pad: ``(B, 3, h, w)`` 0-255 RGB → ``(B, 3, S, S)`` float32.

        ``h, w <= S``; padding is zeros at the bottom and right (after normalisation).
        """
        return normalize_and_pad(x, self.pixel_mean, self.pixel_std, self.img_size)

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """SAM's: low-res logits ``(B, C, 256, 256)`` → logits ``(B, C, H, W)`` at the
        original size: bilinear to the padded input frame, crop the padding (``input_size``
        ``(h, w)``), bilinear to ``original_size`` ``(H, W)``. (Inference upsamples block by
        block with the same result: :func:`mobilesam.postprocess.upscale_masks`.)"""
        size = self.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(
            masks,
            (int(original_size[0]), int(original_size[1])),
            mode="bilinear",
            align_corners=False,
        )

    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """SAM's batched end-to-end call (same inputs and outputs as ``segment_anything``).

        Each input dict has ``image`` (``3×h×w`` already resized so the longest side is
        ``img_size``), ``original_size`` ``(H, W)``, and optional ``point_coords`` ``(B, N, 2)``,
        ``point_labels`` ``(B, N)``, ``boxes`` ``(B, 4)``, ``mask_inputs`` ``(B, 1, 256, 256)``,
        all in the resized frame. Each output dict has ``masks`` (bool ``B×C×H×W``),
        ``iou_predictions`` ``(B, C)`` and ``low_res_logits`` ``(B, C, 256, 256)``.
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input])
        embeddings = self.image_encoder(images)
        outputs = []
        for rec, emb in zip(batched_input, embeddings, strict=True):
            points = None
            if rec.get("point_coords") is not None:
                points = (rec["point_coords"], rec["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=emb.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, tuple(rec["image"].shape[-2:]), tuple(rec["original_size"])
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs
