"""The per-image half of the CPU engine's decoder: every product of SAM's mask decoder that
does not depend on the prompt, computed once per image (:func:`prepare_image_cache`), and the
weight rearrangements every prompt uses (:class:`DecoderWeights`). Why the split is exact,
and how the per-prompt half uses these products: :mod:`~mobilesam.engine.factored_decode`.

Shapes: ``N = h·w`` image tokens (4096), ``C`` channels (256), ``H`` heads, ``d = D/H``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.transformer import Attention
from .interface import ImageState
from .ops import conv_transpose_matrix
from .token_linears import TokenLinears


def center_rows(rows: torch.Tensor) -> torch.Tensor:
    """Subtract each row's mean over the last (channel) axis."""
    return rows - rows.mean(-1, keepdim=True)


def _heads_nd(x: torch.Tensor, heads: int, channels_first: bool = False) -> torch.Tensor:
    """``(N, D)`` → ``(H, N, D/H)``, or ``(H, D/H, N)`` with ``channels_first``; contiguous."""
    n, d = x.shape
    x = x.view(n, heads, d // heads)
    return (x.permute(1, 2, 0) if channels_first else x.transpose(0, 1)).contiguous()


@dataclass
class AttnImageSide:
    """Per-image products for one cross-attention whose image side is ``K`` (+ ``PE``):
    ``img`` = ``X·diag(g)·Wᵀ`` and ``pe`` = ``PE·Wᵀ + b``, per head: ``(H, d, N)`` for keys
    and queries (the operand of a product with the prompt side), ``(H, N, d)`` for values.
    In the first layer ``img`` holds the sum and ``pe`` is None."""

    img: torch.Tensor
    pe: torch.Tensor | None


@dataclass
class LayerProducts:
    """Per-image products for one two-way block (see the module docstring)."""

    t2i_k: AttnImageSide  # token→image keys: (K + PE)·W_kᵀ
    t2i_v: AttnImageSide  # token→image values: K·W_vᵀ (bias added after pooling)
    i2t_q: AttnImageSide  # image→token queries: (K + PE)·W_qᵀ
    cross_u: list[torch.Tensor]  # per earlier update block k: (H, d, N) X·diag(g)·F̃_kᵀ
    cross_c: torch.Tensor  # (n_c, N) Ẽc·(X·diag(g))ᵀ for the fixed rows
    x_sum: torch.Tensor  # (N,) Σ_c (X·diag(g))
    x_sq: torch.Tensor  # (N,) ‖centred X·diag(g)‖²


@dataclass
class ImageCache(ImageState):
    """Everything the decoder computes from one image alone: the CPU engine's per-image
    state (with the plain order's inputs of :class:`~mobilesam.engine.interface.ImageState`,
    for a ``mask_input``). Built by :func:`prepare_image_cache`."""

    layers: list[LayerProducts]
    final_k: AttnImageSide
    final_v: AttnImageSide
    #: ``(N, 4·C/4)`` X·diag(g)·W_up1 (first transposed conv as a matrix), in the upscaling
    #: tail's dtype, which it defines (see :mod:`~mobilesam.engine.upscale_tail`); stored
    #: transposed, ``(4·C/4, N)`` contiguous, when :attr:`upscale_channels_first`
    upscale: torch.Tensor
    weights: DecoderWeights  # weight-derived constants, rebuilt with the cache
    #: whether :attr:`upscale` is stored channels first (the native tail's layout)
    upscale_channels_first: bool = False
    #: the transformer's linear layers packed for the native kernel (set by the CPU engine)
    linears: TokenLinears | None = None


@dataclass
class DecoderWeights:
    """Rearrangements of the decoder's weights that every prompt uses, made once per cache
    (so they follow the weights exactly as the cache does). The matrix of the upscaling
    tail's second product (``up2_w``) is in the tail's dtype; the biases stay in the
    decoder's."""

    tokens: torch.Tensor  # (1 + M, C) IoU token, then the M mask tokens
    hyper_w: list[torch.Tensor]  # per hypernetwork layer: (M, in, out) stacked Wᵀ
    hyper_b: list[torch.Tensor]  # per hypernetwork layer: (M, 1, out)
    up1_w: torch.Tensor  # (C, 4·C/4) first transposed convolution as a matrix
    up1_b: torch.Tensor  # (4·C/4,)
    up2_w: torch.Tensor  # (C/4, 4·C/8) second transposed convolution as a matrix, tail dtype
    up2_b: torch.Tensor  # (4·C/8,)

    @classmethod
    def of(cls, decoder: nn.Module, tail_dtype: torch.dtype | None = None) -> DecoderWeights:
        mlps = decoder.output_hypernetworks_mlps
        depth = len(mlps[0].layers)
        up1_w, up1_b = conv_transpose_matrix(decoder.output_upscaling[0])
        up2_w, up2_b = conv_transpose_matrix(decoder.output_upscaling[3])
        return cls(
            tokens=torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]),
            hyper_w=[torch.stack([m.layers[i].weight.t() for m in mlps]) for i in range(depth)],
            hyper_b=[torch.stack([m.layers[i].bias[None] for m in mlps]) for i in range(depth)],
            up1_w=up1_w,
            up1_b=up1_b,
            up2_w=up2_w.to(tail_dtype or up2_w.dtype),
            up2_b=up2_b,
        )

    def hypernetworks(self, tokens: torch.Tensor, which: range) -> torch.Tensor:
        """The hypernetwork MLPs ``which`` on their mask tokens ``(B, len(which), C)``, all
        at once: ``(B, len(which), C/8)``."""
        sel = slice(which.start, which.stop)
        x = tokens.transpose(0, 1)  # (T, B, C)
        last = len(self.hyper_w) - 1
        for i, (w, b) in enumerate(zip(self.hyper_w, self.hyper_b, strict=True)):
            x = torch.baddbmm(b[sel], x, w[sel])
            if i < last:
                x = x.relu_()
        return x.transpose(0, 1)


def _attn_side(
    attn: Attention,
    proj: nn.Linear,
    xg: torch.Tensor,
    pe: torch.Tensor | None,
    unscaled: bool = False,
) -> AttnImageSide:
    """Keys or queries (with ``pe``, channels first) or values (without). ``unscaled``: the
    image tokens have no per-token scale yet (the first layer), so the image and positional
    parts are stored as one sum."""
    h, first = attn.num_heads, pe is not None
    img = _heads_nd(xg @ proj.weight.t(), h, first)
    if pe is None:
        return AttnImageSide(img, None)
    pe_side = _heads_nd(F.linear(pe, proj.weight, proj.bias), h, first)
    return AttnImageSide(img + pe_side, None) if unscaled else AttnImageSide(img, pe_side)


@torch.no_grad()
def prepare_image_cache(
    model: nn.Module,
    embedding: torch.Tensor,
    tail_dtype: torch.dtype | None = None,
    upscale_channels_first: bool = False,
) -> ImageCache:
    """Compute the prompt-independent products of ``model``'s mask decoder (``model`` a
    :class:`~mobilesam.modeling.sam.Sam`) for one image.

    Args:
        embedding: ``(1, C, h, w)`` image embedding, in the decoder's dtype.
        tail_dtype: the upscaling tail's dtype (default: the decoder's). With
            ``torch.bfloat16`` the native tail (:mod:`mobilesam.engine.native`) takes bf16 products
            with float32 sums, and PyTorch's runs wholly in bf16; the transformer, the IoU
            scores and the returned logits stay in the decoder's dtype.
        upscale_channels_first: store the upscaling product channels first, the native
            tail's layout.

    The dense embedding is the prompt encoder's no-mask one, the same for every prompt.
    """
    decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
    image_embeddings, image_pe = embedding, prompt_encoder.get_dense_pe()
    dense_embedding = prompt_encoder.no_mask_dense(1)
    tf = decoder.transformer
    _, c, h, w = image_embeddings.shape
    x = (image_embeddings + dense_embedding)[0].flatten(1).t().contiguous()  # (N, C)
    pe = image_pe[0].flatten(1).t().contiguous()
    g = torch.ones(c, dtype=x.dtype, device=x.device)
    ec = x.new_zeros(0, c)
    out_weights: list[torch.Tensor] = []  # per update block: W_o of its attention
    scales: list[torch.Tensor] = []  # per update block: product of the later γ's
    layers = []
    for layer in tf.layers:
        xg = x * g
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        ec = torch.cat([ec, i2t.out_proj.bias[None]])  # this layer's b_o row
        out_weights.append(i2t.out_proj.weight)  # W_o (C, D) of this layer's update
        scales.append(torch.ones_like(g))
        blocks = [
            _heads_nd(xg @ center_rows(wo.t() * s).t(), i2t.num_heads, True)
            for wo, s in zip(out_weights, scales, strict=True)
        ]
        xc = center_rows(xg)
        layers.append(
            LayerProducts(
                t2i_k=_attn_side(t2i, t2i.k_proj, xg, pe, unscaled=not layers),
                t2i_v=_attn_side(t2i, t2i.v_proj, xg, None),
                i2t_q=_attn_side(i2t, i2t.q_proj, xg, pe, unscaled=not layers),
                cross_u=blocks,
                cross_c=center_rows(ec) @ xg.t(),
                x_sum=xg.sum(-1),
                x_sq=(xc * xc).sum(-1),
            )
        )
        gamma, beta = layer.norm4.weight, layer.norm4.bias
        ec = torch.cat([ec * gamma, gamma[None], beta[None]])
        scales = [s * gamma for s in scales]
        g = g * gamma
    xg = x * g
    fa = tf.final_attn_token_to_image
    weights = DecoderWeights.of(decoder, tail_dtype)
    return ImageCache(
        model=model,
        embedding=image_embeddings,
        image_pe=image_pe,
        no_mask=dense_embedding,
        layers=layers,
        final_k=_attn_side(fa, fa.k_proj, xg, pe),
        final_v=_attn_side(fa, fa.v_proj, xg, None),
        upscale=_upscale_product(xg, weights, upscale_channels_first),
        weights=weights,
        upscale_channels_first=upscale_channels_first,
    )


def _upscale_product(xg: torch.Tensor, weights: DecoderWeights, channels_first: bool) -> torch.Tensor:
    """``X·diag(g)·W_up1`` in the tail's dtype: ``(N, 4·C/4)``, or ``(4·C/4, N)`` contiguous."""
    if channels_first:
        return (weights.up1_w.t() @ xg.t()).to(weights.up2_w.dtype)
    return (xg @ weights.up1_w).to(weights.up2_w.dtype)
