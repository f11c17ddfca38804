"""SAM's mask decoder: image embedding + prompt embeddings → low-res masks and IoU scores."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks and an IoU estimate for each.

    Token 0 of the output is the single-mask answer; tokens 1.. are the multimask answers.
    Masks come out at 4× the embedding grid (``256×256`` for a 64×64 embedding), as logits.
    This is SAM's arithmetic in SAM's order, for training, export and reference; fast
    inference runs the same weights in other orders (:mod:`mobilesam.engine`).
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
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        return select_outputs(masks, iou, multimask_output)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, T, 4h, 4w)`` and IoU scores ``(B, T)``.

        SAM's order. ``image_embeddings`` ``(1 or B, C, h, w)``: with batch 1 and one dense
        prompt for all (no mask input), the image enters the transformer once instead of
        ``B`` copies (the same values: each prompt's copy would be identical).
        """
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)
        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or match the "
                f"{b} prompts"
            )
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0):
            src = image_embeddings + dense[:1]
        else:
            src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        # Upscale mask embeddings and predict masks using the mask tokens
        src = src.transpose(1, 2).reshape(src.shape[0], c, h, w)
        upscaled_embedding = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled_embedding.shape
        masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)

        # Generate mask quality predictions
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred


def select_outputs(
    masks: torch.Tensor, iou: torch.Tensor, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's output choice: tokens 1.. when ``multimask_output``, else token 0."""
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sl], iou[:, sl]


def select_by_point_count(
    masks: torch.Tensor, iou: torch.Tensor, num_points: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ONNX single-mask choice: with fewer than 3 prompt points (padding included)
    the best-scoring multimask output, otherwise the single-mask token 0.

    Args:
        masks: ``(B, T, h, w)`` all tokens; iou: ``(B, T)``; num_points: prompt points,
            including padding and box corners.

    Returns:
        ``(B, 1, h, w)`` masks and ``(B, 1)`` scores.
    """
    reweight = torch.zeros(iou.shape[-1], dtype=iou.dtype, device=iou.device)
    reweight[0] = 1000.0
    score = iou + (num_points - 2.5) * reweight
    best = torch.argmax(score, dim=1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    return masks[rows, best].unsqueeze(1), iou[rows, best].unsqueeze(1)
