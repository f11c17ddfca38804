"""SAM's mask decoder: image embedding + prompt embeddings → low-res masks and IoU scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks and an IoU estimate for each.

    Token 0 of the output is the single-mask answer; tokens 1.. are the multimask answers.
    Masks come out at 4× the embedding grid (``256×256`` for a 64×64 embedding), as logits.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's decoder call.

        Args:
            image_embeddings: ``(1 or B, C, h, w)``; a single embedding is shared by all prompts.
            image_pe: ``(1, C, h, w)``.
            sparse_prompt_embeddings: ``(B, N, C)``.
            dense_prompt_embeddings: ``(B, C, h, w)``.
            multimask_output: return the 3 multimask outputs instead of the single one.

        Returns:
            masks ``(B, M, 4h, 4w)`` logits and IoU predictions ``(B, M)``, ``M`` = 3 or 1.
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return select_outputs(masks, iou, multimask_output)

    def upscale(self, keys: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``output_upscaling`` on image tokens ``(B, h*w, C)`` → ``(B, 4h, 4w, C/8)``.

        Runs the layers of ``self.output_upscaling`` (kept as a Sequential for the official
        parameter names) channels-last, with the transposed convolutions as matrix products.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = keys.reshape(keys.shape[0], h, w, keys.shape[-1])
        x = _conv_transpose_2x2(x, up1)
        x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
        return act2(_conv_transpose_2x2(x, up2))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, T, 4h, 4w)`` and IoU scores ``(B, T)``."""
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([out_tokens, sparse_prompt_embeddings], dim=1)
        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or match the "
                f"{b} prompts"
            )
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != b:
            src = src.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        upscaled = self.upscale(keys, h, w)  # (B, 4h, 4w, C/8), channels-last
        masks = (upscaled.flatten(1, 2) @ hyper_in.transpose(1, 2)).transpose(1, 2)
        masks = masks.reshape(b, -1, upscaled.shape[1], upscaled.shape[2])
        return masks, self.iou_prediction_head(iou_token_out)


def _conv_transpose_2x2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A kernel-2, stride-2 transposed convolution on a channels-last ``(B, H, W, C)`` map.

    Each input pixel maps to its own 2×2 output patch, so the layer is one matrix product
    followed by a pixel shuffle: ``(B, H, W, C) @ (C, O·2·2)`` → ``(B, 2H, 2W, O)``. Same
    values as ``nn.ConvTranspose2d`` on NCHW, without its layout conversions.
    """
    b, h, w, c = x.shape
    o = conv.weight.shape[1]
    y = (x.reshape(b, h * w, c) @ conv.weight.reshape(c, o * 4)).reshape(b, h, w, o, 2, 2)
    y = y.permute(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, o)
    return y + conv.bias if conv.bias is not None else y


def select_outputs(
    masks: torch.Tensor, iou: torch.Tensor, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's output choice: tokens 1.. when ``multimask_output``, else token 0."""
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sl], iou[:, sl]
