"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose internal width may be ``embedding_dim / downsample_rate``.

    Inputs ``q (Bq, Nq, C)``, ``k (Bk, Nk, C)``, ``v (Bk, Nk, C)`` with ``Bq`` and ``Bk`` equal
    or one of them 1 (many prompts against one image: shared inputs are projected once);
    output ``(max(Bq, Bk), Nq, C)``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim / downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` → ``(B, H, N, D/H)`` (a view where possible)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bq, bk = q.shape[0], k.shape[0]
        qh = self.split_heads(self.q_proj(q))
        kh = self.split_heads(self.k_proj(k))
        vh = self.split_heads(self.v_proj(v))
        if bk == 1 and bq > 1:
            # Every prompt's queries attend to the same keys: one call, queries stacked.
            _, h, n, c = qh.shape
            out = F.scaled_dot_product_attention(
                qh.transpose(0, 1).reshape(1, h, bq * n, c), kh, vh
            )
            out = out.reshape(h, bq, n, c).transpose(0, 1)
        else:
            if bq == 1 and bk > 1:
                qh = qh.expand(bk, -1, -1, -1)
            out = F.scaled_dot_product_attention(qh, kh, vh)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token→image cross-attention, MLP, image→token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.self_attend(queries, query_pe)
        keys_pe = keys + key_pe
        q = queries + query_pe
        queries = self.mlp_tokens(queries, self.cross_attn_token_to_image(q=q, k=keys_pe, v=keys))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=keys_pe, k=q, v=queries))
        return queries, keys

    # The two token-only steps, public so that an inference engine that evaluates the image
    # side in another order runs the prompt tokens through these same lines.

    def self_attend(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        """Step 1, on the prompt tokens ``(B, T, C)`` alone: self-attention (without
        positional encoding in the first layer) and ``norm1``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        return self.norm1(queries)

    def mlp_tokens(
        self,
        queries: torch.Tensor,
        attn: torch.Tensor,
        mlp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Steps 2-3 on the prompt tokens ``(B, T, C)`` given the token→image attention's
        output ``attn`` ``(B, T, C)``: residual and ``norm2``, then the MLP, residual and
        ``norm3``. ``mlp`` computes ``self.mlp``'s function another way (an inference
        engine's fused kernel); default ``self.mlp``."""
        queries = self.norm2(queries + attn)
        return self.norm3(queries + (mlp or self.mlp)(queries))


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token→image attention.

    Args of ``forward``:
        image_embedding: ``(B or 1, C, h, w)``; with batch 1 the image is shared by all ``B``
            prompts, and the first layer's image-side projections run once.
        image_pe: ``(1, C, h, w)`` positional encoding of the grid.
        point_embedding: ``(B, N, C)`` output and prompt tokens.

    Returns:
        ``(B, N, C)`` processed tokens and ``(B, h*w, C)`` processed image tokens.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Token-major copies once: every later op then reads contiguous memory.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        attn = self.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
        if keys.shape[0] != queries.shape[0]:  # depth 0: the image never met the prompts
            keys = keys.expand(queries.shape[0], -1, -1)
        return self.final_tokens(queries, attn), keys

    def final_tokens(self, queries: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The last step on the tokens ``(B, T, C)`` given the final token→image attention's
        output ``attn`` ``(B, T, C)``: residual and ``norm_final_attn`` (public for the same
        reason as :meth:`TwoWayAttentionBlock.self_attend`)."""
        return self.norm_final_attn(queries + attn)
