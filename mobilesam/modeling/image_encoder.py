"""SAM's ViT image encoder (the ``vit_b`` / ``vit_l`` / ``vit_h`` teachers), at any size.

Parameter names and shapes follow ``segment_anything.modeling.image_encoder`` so that official
SAM checkpoints load unchanged. Attention runs through ``scaled_dot_product_attention`` with the
decomposed relative-position bias passed as an additive mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, window_partition, window_unpartition


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a SAM ViT encoder.

    Attributes:
        img_size: side of the square padded input, in pixels.
        patch_size: patch side in pixels; the token grid is ``img_size / patch_size``.
        embed_dim, depth, num_heads: transformer width, number of blocks, attention heads.
        window_size: side of the attention windows in tokens for non-global blocks.
        global_attn_indexes: blocks that attend over the whole grid.
        out_chans: channels of the output embedding.
    """

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    layer_norm_eps: float = 1e-6


VIT_PRESETS: dict[str, ViTConfig] = {
    "vit_b": ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, 3, S, S)`` → ``(B, S/p, S/p, C)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: number of query and key positions.
        rel_pos: ``(L, C)`` table; linearly resampled when ``L != 2 * max(q, k) - 1``.

    Returns:
        ``(q_size, k_size, C)``.
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_dist, mode="linear"
        )
        rel_pos = resized.reshape(-1, max_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]


class Attention(nn.Module):
    """Multi-head attention over a ``(B, H, W, C)`` grid with decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        mask = None
        if self.use_rel_pos:
            rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
            rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
            r_q = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
            mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(
                b, self.num_heads, h * w, h * w
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, h, w, -1))


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(self, cfg: ViTConfig, window_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(
            dim,
            cfg.num_heads,
            cfg.qkv_bias,
            cfg.use_rel_pos,
            grid if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            h, w = y.shape[1], y.shape[2]
            wins, padded = window_partition(y, self.window_size)
            wins = wins.view(-1, self.window_size, self.window_size, wins.shape[-1])
            y = self.attn(wins).reshape(-1, self.window_size**2, wins.shape[-1])
            y = window_unpartition(y, self.window_size, padded, (h, w))
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT image encoder.

    Input: ``(B, 3, S, S)`` normalised, padded images. Output: ``(B, out_chans, S/p, S/p)``.
    A grid other than the checkpoint's has its absolute position table resampled bicubically.
    """

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or VIT_PRESETS["vit_b"]
        self.cfg = cfg
        self.img_size = cfg.img_size
        grid = (cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if cfg.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size, grid)
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False
                ).permute(0, 2, 3, 1)
            x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()
