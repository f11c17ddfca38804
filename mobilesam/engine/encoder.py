"""Fast TinyViT inference on a CPU: :func:`encode_fast`.

The same arithmetic as :class:`~mobilesam.modeling.tiny_vit.TinyViT`'s ``forward``, to float
rounding, computed for inference:

- every ``Conv2d_BN`` runs as one convolution with its BatchNorm folded in
  (:meth:`~mobilesam.modeling.tiny_vit.Conv2d_BN.folded`), folded once per call (never
  cached across calls, so a later ``load_state_dict`` or ``.to(dtype)`` is always honoured);
- every block runs in bands of rows (:mod:`mobilesam.engine.bands`): the convolutional blocks
  with a one-row halo for their 3×3 depthwise convolution, attention a band of whole window
  rows at a time, the MLP a band of tokens at a time into reused buffers, GELUs in place;
- in bfloat16, window attention is PyTorch's fused ``scaled_dot_product_attention`` (in
  float32 it is the explicit softmax, in the official order), and where oneDNN's fused
  convolution + GELU runs (:func:`gelu_conv_available`) each convolution followed by a GELU is
  one oneDNN call;
- the neck's LayerNorm2d is one channels-last ``F.layer_norm``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.common import LayerNorm2d, window_partition, window_unpartition
from ..modeling.tiny_vit import (
    Attention,
    Conv2d_BN,
    MBConv,
    Mlp,
    PatchEmbed,
    PatchMerging,
    TinyViT,
    TinyViTBlock,
    nchw,
    nhwc,
)
from . import tuning
from .bands import banded_rows, conv3x3_rows, conv_out, row_bands
from .ops import gelu_


def encode_fast(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The image embedding of ``x`` by ``encoder``, for inference.

    An eval-mode :class:`TinyViT` on a CPU runs band by band (module docstring), without
    recording gradients; its result equals ``encoder(x)`` to float rounding. Any other encoder
    (SAM's ViT), a TinyViT in training mode (batch statistics, stochastic depth) or on another
    device runs its own ``forward``: ``encoder(x)``.

    Args:
        encoder: the image encoder.
        x: ``(B, 3, S, S)`` preprocessed images in the encoder's dtype.

    Returns:
        ``(B, C, S/16, S/16)`` embeddings, contiguous.
    """
    if not isinstance(encoder, TinyViT) or encoder.training or x.device.type != "cpu":
        return encoder(x)
    with torch.no_grad():
        return _BandedTinyViT(x.dtype).encode(encoder, x)


@functools.cache
def gelu_conv_available() -> bool:
    """Whether oneDNN's bf16 convolution with a fused GELU runs here and agrees with
    ``gelu(conv2d(...))`` (checked once, on a small case).

    It is reached through ``torch.ops.mkldnn._convolution_pointwise``, a private PyTorch op
    with no public equivalent in eager mode; where it is missing or fails, the two steps run
    as ``F.conv2d`` and an in-place GELU instead.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 5, generator=gen).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, 1, 3, 3, generator=gen).bfloat16(), torch.randn(8, generator=gen)
    b = b.bfloat16()
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        got = op(x, w, b, [1, 1], [1, 1], [1, 1], 8, "gelu", [None], "none")
    except (AttributeError, RuntimeError, TypeError):
        return False
    want = F.gelu(F.conv2d(x.float(), w.float(), b.float(), 1, 1, 1, 8))
    return got.shape == want.shape and torch.allclose(got.float(), want, rtol=0.05, atol=0.05)


class _BandedTinyViT:
    """TinyViT's modules, computed band by band for inference in one ``dtype``. One instance
    serves one call: it holds the convolutions' folded weights for that call only."""

    def __init__(self, dtype: torch.dtype) -> None:
        bf16 = dtype == torch.bfloat16
        self.sdpa = bf16
        self.gelu_in_conv = bf16 and gelu_conv_available()
        self.folded: dict[Conv2d_BN, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(self, enc: TinyViT, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(enc.patch_embed, x.contiguous(memory_format=torch.channels_last))
        for layer in enc.layers:  # ConvLayer (MBConv blocks), then BasicLayers
            for blk in layer.blocks:
                x = self.mbconv(blk, x) if isinstance(blk, MBConv) else self.block(blk, x)
            if layer.downsample is not None:
                x = self.patch_merging(layer.downsample, x)
        return self.neck(enc.neck, nchw(x)).contiguous()

    def conv(
        self, m: Conv2d_BN, x: torch.Tensor, whole: bool = True, gelu: nn.GELU | None = None
    ) -> torch.Tensor:
        """``m`` (BatchNorm folded) on NCHW ``x``, then ``gelu`` if given. ``whole``: ``x``
        is the whole map (the layer's padding); otherwise its rows are padded already."""
        c: nn.Conv2d = m.c
        if m not in self.folded:  # once per call: every band reuses it
            self.folded[m] = m.folded()
        weight, bias = self.folded[m]
        pad = c.padding if whole else (0, c.padding[1])
        if gelu is not None and self.gelu_in_conv:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, list(pad), list(c.stride), list(c.dilation), c.groups,
                "gelu", [None], gelu.approximate,
            )  # fmt: skip
        y = F.conv2d(x, weight, bias, c.stride, pad, c.dilation, c.groups)
        return y if gelu is None else gelu_(y, gelu)

    def patch_embed(self, pe: PatchEmbed, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` channels_last → ``(B, S/4, S/4, C)``."""
        conv1, act, conv2 = pe.seq
        h = x.shape[2]
        s1, s2 = conv1.c.stride[0], conv2.c.stride[0]
        mid_h = conv_out(h, s1)

        def mid(a: int, z: int) -> torch.Tensor:  # rows a:z of GELU(conv1(x)), NCHW
            rows = lambda i, j: x[:, :, i:j]  # noqa: E731
            return conv3x3_rows(lambda y, w: self.conv(conv1, y, w, act), s1, rows, h, a, z)

        def band(o0: int, o1: int) -> torch.Tensor:
            return conv3x3_rows(lambda y, w: self.conv(conv2, y, w), s2, mid, mid_h, o0, o1)

        out_w = conv_out(conv_out(x.shape[3], s1), s2)
        return banded_rows(band, x.shape[0], conv_out(mid_h, s2), out_w)

    def inverted_bottleneck(
        self,
        x: torch.Tensor,
        conv1: Conv2d_BN,
        act1: nn.GELU,
        conv2: Conv2d_BN,
        act2: nn.GELU,
        conv3: Conv2d_BN,
    ) -> torch.Tensor:
        """``conv3(act2(conv2(act1(conv1(x)))))`` on ``(B, H, W, C)`` with pointwise
        ``conv1``/``conv3`` and a 3×3 ``conv2`` of stride ``s``: ``(B, H/s, W/s, C')``, in
        bands of output rows, each computing ``conv1`` on its input rows plus the halo."""
        b, h, w, _ = x.shape
        s = conv2.c.stride[0]

        def expanded(a: int, z: int) -> torch.Tensor:  # rows a:z of act1(conv1(x)), NCHW
            return self.conv(conv1, nchw(x[:, a:z]), gelu=act1)

        def band(o0: int, o1: int) -> torch.Tensor:
            mid = conv3x3_rows(lambda y, wh: self.conv(conv2, y, wh, act2), s, expanded, h, o0, o1)
            return self.conv(conv3, mid)

        return banded_rows(band, b, conv_out(h, s), conv_out(w, s))

    def mbconv(self, blk: MBConv, x: torch.Tensor) -> torch.Tensor:
        y = self.inverted_bottleneck(x, blk.conv1, blk.act1, blk.conv2, blk.act2, blk.conv3)
        return gelu_(y.add_(x), blk.act3)  # y is a fresh buffer: finish in place

    def patch_merging(self, pm: PatchMerging, x: torch.Tensor) -> torch.Tensor:
        return self.inverted_bottleneck(x, pm.conv1, pm.act, pm.conv2, pm.act, pm.conv3)

    def block(self, blk: TinyViTBlock, x: torch.Tensor) -> torch.Tensor:
        """Bands of whole window rows for attention, the local conv on the whole map, then
        bands of tokens for the MLP."""
        h, w = x.shape[1], x.shape[2]
        win = blk.window_size
        y = torch.empty_like(x)
        bands = row_bands(h, w, win, tuning.ATTN_BAND_TOKENS)
        for r0 in bands:
            band = x[:, r0 : r0 + bands.step]
            windows, padded = window_partition(band, win)
            attended = self.attention(blk.attn, windows)
            out = window_unpartition(attended, win, padded, band.shape[1:3])
            torch.add(band, out, out=y[:, r0 : r0 + bands.step])
        return self.mlp_add(blk.mlp, nhwc(self.conv(blk.local_conv, nchw(y))))

    def attention(self, attn: Attention, x: torch.Tensor) -> torch.Tensor:
        """:class:`Attention` on ``(B, N, C)`` windows."""
        b, n, _ = x.shape
        heads, d = attn.num_heads, attn.key_dim
        qkv = attn.qkv(attn.norm(x)).view(b, n, heads, 3 * d)
        q, k, v = qkv.permute(0, 2, 1, 3).split(d, dim=3)
        bias = attn.position_bias().to(q.dtype)
        if self.sdpa:
            # the bias as a mask expanded over the windows: a broadcast one takes a slower path
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(b, -1, -1, -1))
            return attn.proj(out.transpose(1, 2).reshape(b, n, -1))
        # the official order, (q·kᵀ)·scale + bias, with the scores scaled and biased in place
        scores = torch.bmm(q.reshape(-1, n, d), k.reshape(-1, n, d).transpose(1, 2))
        scores = scores.view(b, heads, n, n).mul_(attn.scale).add_(bias)
        probs = scores.softmax(dim=-1).view(-1, n, n)
        out = torch.bmm(probs, v.reshape(-1, n, d)).view(b, heads, n, d)
        return attn.proj(out.transpose(1, 2).reshape(b, n, -1))

    def mlp_add(self, mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(x)`` for ``(B, H, W, C)``, in bands of rows that reuse one hidden buffer,
        so the 4×-wide hidden layer is never a fresh whole-map allocation."""
        b, h, w, c = x.shape
        out = torch.empty_like(x)
        bands = row_bands(h, w)
        hidden = x.new_empty(b * min(h, bands.step) * w, mlp.fc1.out_features)
        y = x.new_empty(hidden.shape[0], c)
        for r0 in bands:
            band = x[:, r0 : r0 + bands.step]
            n = band.shape[0] * band.shape[1] * w
            t = mlp.norm(band).reshape(n, c)
            hb = torch.addmm(mlp.fc1.bias, t, mlp.fc1.weight.t(), out=hidden[:n])
            gelu_(hb, mlp.act)
            yb = torch.addmm(mlp.fc2.bias, hb, mlp.fc2.weight.t(), out=y[:n])
            torch.add(band, yb.view(band.shape), out=out[:, r0 : r0 + bands.step])
        return out

    def neck(self, neck: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Conv, LayerNorm2d, conv, LayerNorm2d on channels_last NCHW ``x``; each LayerNorm2d
        is one ``F.layer_norm`` over the channels-last view."""
        for m in neck:
            if isinstance(m, LayerNorm2d):
                x = nchw(F.layer_norm(nhwc(x), m.weight.shape, m.weight, m.bias, m.eps))
            else:
                x = m(x)
        return x
