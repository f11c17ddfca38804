"""TinyViT image encoder as used by MobileSAM (``vit_t``).

Parameter names and shapes follow the official ``tiny_vit_sam.py`` exactly, so official
checkpoints load unchanged. Differences from the official code, none of which change results
beyond float rounding:

- activations stay channels-last ``(B, H, W, C)`` between stages; convolutions see them as
  channels_last NCHW views, so there are no layout copies;
- in ``eval()`` each ``Conv2d_BN`` folds its BatchNorm into the convolution on every call
  (nothing is cached, so a later ``load_state_dict`` or ``.to(dtype)`` is always honoured);
- attention is an explicit ``bmm`` softmax with the learned relative-position bias gathered
  on every call (the official code caches it in ``train(False)``, which goes stale when
  weights are loaded afterwards);
- in eval mode without autograd (inference; :func:`banded`), every block runs in bands of
  rows (:func:`row_bands`): the convolutional blocks with a one-row halo for their 3×3
  depthwise convolution, attention a band of whole windows at a time, the MLP a band of
  tokens at a time. Each pixel's arithmetic is the same; only the wide intermediates (4×
  expanded channels) stay a few MB, so they stay in cache and are not freshly paged in by the
  OS on every call, which on a VM costs as much as the arithmetic;
- the token grid is derived from the input instead of being hard-coded to 64×64, and the
  unused ImageNet classifier head is not built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import banding
from .banding import (
    banded,
    banded_rows,
    conv3x3_rows,
    conv_out,
    inverted_bottleneck,
    nchw,
    nhwc,
    row_bands,
)
from .common import LayerNorm2d, gelu_, window_partition, window_unpartition


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


class Conv2d_BN(nn.Sequential):  # noqa: N801 - official module name, kept for key parity
    """Bias-free convolution ``c`` followed by BatchNorm ``bn`` (folded on the fly in eval)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        return self.fused(x)

    def fused(
        self,
        x: torch.Tensor,
        padding: tuple[int, int] | None = None,
        gelu: nn.GELU | None = None,
    ) -> torch.Tensor:
        """The convolution with the BatchNorm (running statistics) folded in, optionally with
        another ``padding`` (rows, columns) than the layer's own, and followed by ``gelu``
        in place (inference only). In bf16 on a CPU the GELU runs inside oneDNN's
        convolution: the whole bf16 encoder 8% faster (0.305 → 0.280 s on a 2-core Xeon with
        AMX), and the convolution's output is rounded to bf16 once instead of twice. In
        float32 the fused form was no faster in these bands, so it keeps the two steps."""
        conv: nn.Conv2d = self.c
        bn: nn.BatchNorm2d = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        pad = conv.padding if padding is None else padding
        if gelu is not None and _fused_gelu_conv(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, list(pad), list(conv.stride), list(conv.dilation),
                conv.groups, "gelu", [None], gelu.approximate,
            )  # fmt: skip
        y = F.conv2d(x, weight, bias, conv.stride, pad, conv.dilation, conv.groups)
        return y if gelu is None else gelu_(y, gelu)


def _bf16_eager(x: torch.Tensor) -> bool:
    """Whether ``x`` is in bf16 eager inference (no gradient recorded, not tracing), where
    the encoder takes its fused kernels."""
    return x.dtype == torch.bfloat16 and not torch.is_grad_enabled() and not torch.jit.is_tracing()


def _fused_gelu_conv(x: torch.Tensor) -> bool:
    """Whether oneDNN's convolution + GELU applies: bf16 CPU inference with oneDNN built in."""
    return _bf16_eager(x) and x.device.type == "cpu" and torch.backends.mkldnn.is_available()


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
        x = x.contiguous(memory_format=torch.channels_last)
        if not banded(x, self):
            return nhwc(self.seq(x))
        conv1, act, conv2 = self.seq
        h = x.shape[2]
        mid_h = conv_out(h, conv1)

        def mid(a: int, z: int) -> torch.Tensor:  # rows a:z of GELU(conv1(x)), NCHW
            return conv3x3_rows(conv1, lambda i, j: x[:, :, i:j], h, a, z, gelu=act)

        def band(o0: int, o1: int) -> torch.Tensor:
            return conv3x3_rows(conv2, mid, mid_h, o0, o1)

        out_w = conv_out(conv_out(x.shape[3], conv1), conv2)
        return banded_rows(band, x.shape[0], conv_out(mid_h, conv2), out_w)


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
        y = inverted_bottleneck(x, self.conv1, self.act1, self.conv2, self.act2, self.conv3)
        if banded(x, self):  # y is a fresh buffer: finish in place
            return gelu_(y.add_(x), self.act3)
        return self.act3(x + self.drop_path(y))


class PatchMerging(nn.Module):
    """1×1 conv, strided depthwise 3×3 conv, 1×1 conv: ``(B, H, W, C)`` → ``(B, H/s, W/s, C')``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.act = nn.GELU()
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return inverted_bottleneck(x, self.conv1, self.act, self.conv2, self.act, self.conv3)


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

    def add_banded(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: ``x + self(x)`` for ``(B, H, W, C)``, in bands of rows that reuse one
        hidden buffer (GELU in place), so the 4×-wide hidden layer is never a fresh
        full-map allocation."""
        b, h, w, c = x.shape
        out = torch.empty_like(x)
        bands = row_bands(h, w)
        hidden = x.new_empty(b * min(h, bands.step) * w, self.fc1.out_features)
        y = x.new_empty(hidden.shape[0], c)
        for r0 in bands:
            band = x[:, r0 : r0 + bands.step]
            n = band.shape[0] * band.shape[1] * w
            t = self.norm(band).reshape(n, c)
            hb = torch.addmm(self.fc1.bias, t, self.fc1.weight.t(), out=hidden[:n])
            gelu_(hb, self.act)
            yb = torch.addmm(self.fc2.bias, hb, self.fc2.weight.t(), out=y[:n])
            torch.add(band, yb.view(band.shape), out=out[:, r0 : r0 + bands.step])
        return out


def relative_offset_index(window: int) -> tuple[torch.Tensor, int]:
    """Index table of TinyViT's attention bias for a ``window``×``window`` window.

    Token pairs are mapped to their absolute (|dy|, |dx|) offset, numbered in order of first
    appearance in row-major order, as in the official code.

    Returns:
        ``(N, N)`` int64 indices with ``N = window**2``, and the number of distinct offsets.
    """
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


class Attention(nn.Module):
    """Windowed multi-head self-attention with a learned relative-position bias.

    Input and output: ``(B, N, C)`` tokens of one window, ``N = window**2``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.key_dim * num_heads)
        self.proj = nn.Linear(self.key_dim * num_heads, dim)
        idxs, n_offsets = relative_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        # Geometry only (no weights): recomputed from `window` at construction, never stale.
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        if _bf16_eager(q):
            # bf16: SDPA's fused kernel, the bias as a mask expanded over the windows (a
            # broadcast one takes a slower path). The whole bf16 encoder is 4-6% faster on a
            # 2-core Xeon (AMX); its online softmax's drift (~1e-4) is far below bf16's own
            # rounding. (Exports keep the explicit graph.)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(b, -1, -1, -1))
            return self.proj(out.transpose(1, 2).reshape(b, n, -1))
        # Explicit softmax attention, in the official order ((q·kᵀ)·scale + bias). On CPU, SDPA
        # with a float mask takes a slower, mask-validating path, and its fused kernel's
        # online softmax drifts ~1e-4 from the official embedding over the 10 blocks. The
        # bias is gathered each call (never stale) and broadcast-added in place.
        scores = torch.bmm(
            q.reshape(-1, n, self.key_dim), k.reshape(-1, n, self.key_dim).transpose(1, 2)
        )
        scores = scores.view(b, self.num_heads, n, n).mul_(self.key_dim**-0.5).add_(bias)
        attn = scores.softmax(dim=-1).view(-1, n, n)
        out = torch.bmm(attn, v.reshape(-1, n, self.key_dim)).view(b, self.num_heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise 3×3 "local" conv, then the MLP, on ``(B, H, W, C)``."""

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
        if not banded(x, self):
            x = x + self.drop_path(self._window_attention(x))
            x = nhwc(self.local_conv(nchw(x)))
            return x + self.drop_path(self.mlp(x))
        # inference: bands of whole window rows for attention, bands of tokens for the MLP
        h, w = x.shape[1], x.shape[2]
        y = torch.empty_like(x)
        bands = row_bands(h, w, self.window_size, banding.ATTN_BAND_TOKENS)
        for r0 in bands:
            band = x[:, r0 : r0 + bands.step]
            torch.add(band, self._window_attention(band), out=y[:, r0 : r0 + bands.step])
        return self.mlp.add_banded(nhwc(self.local_conv(nchw(y))))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention within each window of ``(B, H, W, C)`` (zero-padded at the bottom and
        right to whole windows, as in TinyViT): ``(B, H, W, C)``. Bands of whole window rows
        give the same windows as the full map."""
        h, w = x.shape[1], x.shape[2]
        windows, padded = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, padded, (h, w))


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
            LayerNorm2d(cfg.out_chans, fused=True),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans, fused=True),
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
