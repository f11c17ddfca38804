"""SAM's prompt encoder: points, boxes and low-res masks → sparse and dense embeddings.

Everything here is written as plain, traceable tensor code (no data-dependent Python branches
on tensor values) so that the predictor, the everything-mode generator and the ONNX decoder
all call the same functions.

Point labels: ``1`` foreground, ``0`` background, ``2`` / ``3`` the top-left / bottom-right box
corners, ``-1`` padding ("not a point"). Coordinates are (x, y) pixels in the model's input
frame (the image resized so its longest side is ``input_image_size``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..prompts import point_sequence
from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature positional encoding of (x, y) coordinates in ``[0, 1]``."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised (x, y) in ``[0, 1]`` → ``(..., 2 * num_pos_feats)``."""
        gauss = self.positional_encoding_gaussian_matrix
        coords = (2 * coords - 1).to(gauss.dtype) @ gauss
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``(h, w)`` grid: ``(C, h, w)``."""
        h, w = size
        gauss = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=gauss.device, dtype=gauss.dtype) + 0.5) / h
        xs = (torch.arange(w, device=gauss.device, dtype=gauss.dtype) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode ``(B, N, 2)`` (x, y) pixel coordinates of an ``(h, w)`` image."""
        size = coords_input.new_tensor([image_size[1], image_size[0]])
        return self._pe_encoding(coords_input / size)


class PromptEncoder(nn.Module):
    """Embeds prompts for SAM's mask decoder.

    Args:
        embed_dim: prompt embedding width (256).
        image_embedding_size: ``(h, w)`` of the image embedding grid (64, 64).
        input_image_size: ``(H, W)`` of the padded encoder input (1024, 1024).
        mask_in_chans: hidden channels of the mask downscaler (16).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # foreground, background, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embed labelled points.

        Args:
            coords: ``(B, N, 2)`` float (x, y) in the input frame (pixels, not yet centred).
            labels: ``(B, N)`` integer labels in ``{-1, 0, 1, 2, 3}`` (see module docstring).

        Returns:
            ``(B, N, embed_dim)``.
        """
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels[..., None]
        out = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        for i, emb in enumerate(self.point_embeddings):
            out = out + emb.weight * (labels == i).to(out.dtype)
        return out

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4h, 4w)`` low-res mask logits → ``(B, embed_dim, h, w)``."""
        return self.mask_downscaling(masks)

    def dense_from_mask_input(
        self, mask_input: torch.Tensor, has_mask_input: torch.Tensor
    ) -> torch.Tensor:
        """SAM's ONNX dense prompt: ``has_mask_input`` (``(1,)``, 1 or 0) blends the embedded
        ``mask_input`` ``(B, 1, 256, 256)`` with the no-mask embedding, without branching."""
        has = has_mask_input.reshape(-1, 1, 1, 1).to(mask_input.dtype)
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has * self.embed_masks(mask_input) + (1 - has) * no_mask

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        """Dense embedding used when no mask is given: ``(batch, embed_dim, h, w)``."""
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's prompt encoding.

        Args:
            points: ``(coords (B, N, 2), labels (B, N))`` or None. Without boxes, one padding
                point (label -1) is appended, as SAM does.
            boxes: ``(B, 4)`` XYXY or None.
            masks: ``(B, 1, 256, 256)`` logits or None.

        Returns:
            sparse ``(B, N', embed_dim)`` and dense ``(B, embed_dim, 64, 64)`` embeddings.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        if points is None and boxes is None:
            sparse = self.no_mask_embed.weight.new_empty((bs, 0, self.embed_dim))
        else:
            sparse = self.embed_points(*point_sequence(points, boxes, bs))
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(bs)
        return sparse, dense
