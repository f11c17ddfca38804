"""TinyViT image encoder as used by MobileSAM (``vit_t``).

The official ``tiny_vit_sam.py``'s arithmetic, with its parameter names and shapes, so official
checkpoints load unchanged. Differences from the official code, none of which changes a
result beyond float rounding:

- between stages, activations are channels-last maps ``(B, H, W, C)`` rather than token lists
  ``(B, H·W, C)`` with a fixed resolution: convolutions see them as channels_last NCHW views
  (:func:`nchw`, :func:`nhwc`), and the token grid is derived from the input, so any multiple
  of 32 works, not only the configured ``img_size``;
- attention gathers its learned relative-position bias on every call (the official code caches
  it at ``eval()``, which goes stale when weights are loaded afterwards);
- the unused ImageNet classifier head is not built.

Fast inference (folded BatchNorm, bands of rows, bf16 kernels) lives in
:mod:`mobilesam.engine.encoder`; the modules offer it only what it reads once
(:meth:`Conv2d_BN.folded`, :meth:`Attention.position_bias`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import LayerNorm2d, window_partition, window_unpartition


@dataclass(frozen=True)
class TinyViTConfig:
    """Architecture of a TinyViT SAM encoder. Defaults are MobileSAM's TinyViT-5M.

    Attributes:
        img_size: side of the square, padded input in pixels.
        embed_dims: channel width of each of the four stages.
        depths: blocks per stage (stage 0 is convolutional, MBConv).
        num_heads: attention heads per stage (stage 0's entry is unused).
        window_sizes: attention window side, in tokens, per stage (stage 0's entry is unused).
        last_downsample_stride: stride of the patch merging into the last stage; 1 keeps the
            output grid at ``img_size / 16``.
        out_chans: channels of the neck output (the image embedding).
    """

    img_size: int = 1024
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    last_downsample_stride: int = 1
    out_chans: int = 256
    drop_path_rate: float = 0.0


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` → channels_last ``(B, C, H, W)`` view (no copy)."""
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H, W, C)`` view (no copy for channels_last input)."""
    return x.permute(0, 2, 3, 1)


class Conv2d_BN(nn.Sequential):  # noqa: N801 - official module name, kept for key parity
    """Bias-free convolution ``c`` followed by BatchNorm ``bn``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, ks, stride, pad, groups=groups, bias=False)
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution with the BatchNorm's running statistics folded in (what this
        module computes in eval mode): weight ``(O, I/groups, k, k)`` and bias ``(O,)``, in the
        parameters' dtype. Computed afresh on each call, so it never goes stale."""
        bn: nn.BatchNorm2d = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return self.c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (identity in eval or at rate 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 convolutions: ``(B, 3, S, S)`` → ``(B, S/4, S/4, C)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nhwc(self.seq(x.contiguous(memory_format=torch.channels_last)))


class MBConv(nn.Module):
    """Inverted-residual block (1×1 expand, 3×3 depthwise, 1×1 project) on ``(B, H, W, C)``."""

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, dim, ks=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(nchw(x))))))
        return self.act3(x + self.drop_path(nhwc(y)))


class PatchMerging(nn.Module):
    """1×1 conv, strided depthwise 3×3 conv, 1×1 conv: ``(B, H, W, C)`` → ``(B, H/s, W/s, C')``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.act = nn.GELU()
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nhwc(self.conv3(self.act(self.conv2(self.act(self.conv1(nchw(x)))))))


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        expand_ratio: float,
        drop_path: list[float],
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, drop_path[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm feed-forward block: LayerNorm, fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def relative_offset_index(window: int) -> tuple[torch.Tensor, int]:
    """Index table of TinyViT's attention bias for a ``window``×``window`` window.

    Token pairs are mapped to their absolute (|dy|, |dx|) offset, numbered in order of first
    appearance in row-major order, as in the official code. The first token, (0, 0), meets
    every offset in row-major order, so that number is ``|dy|·window + |dx|``.

    Returns:
        ``(N, N)`` int64 indices with ``N = window**2``, and the number of distinct offsets.
    """
    y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y, x = y.flatten(), x.flatten()
    idxs = (y[:, None] - y[None, :]).abs() * window + (x[:, None] - x[None, :]).abs()
    return idxs, window * window


class Attention(nn.Module):
    """Windowed multi-head self-attention with a learned relative-position bias.

    Input and output: ``(B, N, C)`` tokens of one window, ``N = window**2``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.key_dim * num_heads)
        self.proj = nn.Linear(self.key_dim * num_heads, dim)
        idxs, n_offsets = relative_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        # Geometry only (no weights): recomputed from `window` at construction, never stale.
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def position_bias(self) -> torch.Tensor:
        """The learned relative-position bias of every token pair: ``(heads, N, N)``."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)  # (B, heads, N, d) each
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.position_bias()
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise 3×3 "local" conv, then the MLP, on ``(B, H, W, C)``.

    Windows are zero-padded at the bottom and right to whole windows, as in TinyViT.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(
            dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        windows, padded = window_partition(x, self.window_size)
        attn = window_unpartition(self.attn(windows), self.window_size, padded, (h, w))
        x = x + self.drop_path(attn)
        x = nhwc(self.local_conv(nchw(x)))
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: list[float],
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, drop_path[i], local_conv_size)
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT SAM image encoder.

    Input: ``(B, 3, S, S)`` normalised, padded images (``S = cfg.img_size``, 1024 by default).
    Output: ``(B, cfg.out_chans, S/16, S/16)`` image embeddings (``1×256×64×64`` for 1024).
    The grid is derived from the input: other multiples of 32 work as well.
    """

    def __init__(self, cfg: TinyViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TinyViTConfig()
        self.cfg = cfg
        self.img_size = cfg.img_size
        dims, depths = cfg.embed_dims, cfg.depths
        n = len(dims)
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0])
        total = sum(depths)
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i in range(n):
            dp = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            down = None
            if i < n - 1:
                stride = cfg.last_downsample_stride if i == n - 2 else 2
                down = PatchMerging(dims[i], dims[i + 1], stride)
            if i == 0:
                layer: nn.Module = ConvLayer(dims[0], depths[0], cfg.mbconv_expand_ratio, dp, down)
            else:
                layer = BasicLayer(
                    dims[i],
                    depths[i],
                    cfg.num_heads[i],
                    cfg.window_sizes[i],
                    cfg.mlp_ratio,
                    dp,
                    cfg.local_conv_size,
                    down,
                )
            self.layers.append(layer)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(nchw(x)).contiguous()


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
