"""The CPU engine's per-prompt decoding: SAM's mask decoder with every prompt-independent
product computed once per image (:mod:`~mobilesam.engine.image_products`).

Why it is exact
---------------
In the two-way transformer the image tokens ``K`` (``N×C``, ``N = 64·64``, ``C = 256``) change
only through image→token attention and a LayerNorm:

- the attention adds ``U = R·V + 1·b_oᵀ``, where ``R`` (``N × H·T``) are the attention weights
  over the ``T`` prompt tokens of each of the ``H`` heads and ``V = blockdiag(v_h)·W_oᵀ``
  (``H·T × C``) are the projected token values: a low-rank, prompt-dependent update;
- the LayerNorm then scales each token by ``r = 1/σ`` after subtracting its mean ``μ``, and
  applies the fixed ``γ``, ``β``.

So after any number of layers the image tokens have the *factored form*

    K = a ⊙ (X·diag(g) + Zu·Eu + Zc·Ec)

with ``X`` the shared image (embedding + no-mask embedding), ``a`` a per-token scale (``∏ r``),
``g`` a fixed channel scale (``∏ γ``), ``Zu`` the attention weights of every earlier layer
divided by the ``a`` of their time, ``Eu`` their value rows (scaled by later ``γ``), and
``Zc·Ec`` rank-one terms with fixed rows (biases, ``γ``, ``β``) and per-token coefficients.
Keeping the coefficients relative to ``a`` means a LayerNorm only rescales ``a`` and adds
rows; earlier coefficients never change. Every product of ``K`` with a fixed weight matrix
``W`` splits into

- ``(X·diag(g))·W``: computed once per image, in
  :func:`~mobilesam.engine.image_products.prepare_image_cache`;
- ``Z·(E·W)``: per prompt, rank ``H·(T−1) + 1`` per layer instead of ``C`` (each head's
  weights sum to one over the ``T`` tokens, so its first token's follow from the others', see
  :func:`_image_to_token`);
- per-token scalars ``a``.

The LayerNorm statistics need no materialised ``K`` either: the mean is linear, and the
variance of the centred form expands into cached image norms, cached cross products with
the centred weight rows, and a Gram matrix of the (few) per-prompt rows, all accumulated into
one ``m × N`` matrix and read once. Centring all rows first keeps the variance a sum of
squares-like terms, without the ``E[x²] - μ²`` cancellation.

The upscaling's first transposed convolution is linear in ``K`` and splits the same way; its
LayerNorm, GELUs and second convolution run per prompt.

Cost per prompt (1 point, multimask, so ``T = 7``) drops from 3.55 GFLOP to 0.80
(``benchmarks/encoder.py``); the cache costs 4.84 GFLOP once per image. On CPU, in eager
float32 inference, the cross-attentions, the LayerNorm statistics and the upscaling tail run
as fused native kernels (:mod:`mobilesam.engine.native`) where they can be built: the same algebra,
one pass over the image each.

SAM's plain order (``MaskDecoder.predict_masks``, the plain engine) stays for training
(gradients), for a per-prompt dense input (``mask_input``), for other devices and for the
ONNX graph with SAM's public interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..modeling.transformer import Attention
from . import native
from .image_products import AttnImageSide, ImageCache, LayerProducts, center_rows
from .interface import Tokens, token_range
from .workspace import Workspace


class TermRows(NamedTuple):
    """A run of rows ``start:stop`` of the factored image tokens: fixed rows (``values``
    None), an update's rows (``values`` ``(B, H, T', d)``, one row per head and token), or
    with ``summed`` one row per token summed over the heads (``values`` ``(B, H, T', d)``)."""

    start: int
    stop: int
    values: torch.Tensor | None
    summed: bool = False


class _ImageTokens:
    """The factored image tokens of ``B`` prompts (module docstring):
    ``K = a ⊙ (X·diag(g) + zᵀ·e)``.

    :attr:`z` ``(B, m, N)`` holds the per-token coefficients of the low-rank terms, relative
    to ``a`` and transposed, and :attr:`e` ``(B, m, C)`` their rows, in the order the terms
    arise (an update's attention weights, its bias row, then each LayerNorm's mean and
    ``β`` rows). Both live in buffers sized for the whole decoder, so adding terms copies
    only the new rows. :attr:`a` ``(B, N)`` scales everything; it and ``z`` are ``None``
    before the first update (``a = 1``). With a ``workspace`` the buffers are its (see
    :class:`~mobilesam.engine.workspace.Workspace`)."""

    def __init__(
        self,
        like: torch.Tensor,
        batch: int,
        rows: int,
        tokens: int,
        workspace: Workspace | None = None,
    ) -> None:
        c = like.shape[-1]
        self.a: torch.Tensor | None = None
        ws = workspace or Workspace()
        self._z = ws.get("image_tokens_z", (batch, rows, tokens), like)
        self._e = ws.get("image_tokens_e", (batch, rows, c), like)
        self.m = 0
        #: the runs of rows, in order
        self.segments: list[TermRows] = []

    @property
    def z(self) -> torch.Tensor | None:
        return self._z[:, : self.m] if self.m else None

    @property
    def e(self) -> torch.Tensor | None:
        return self._e[:, : self.m] if self.m else None

    def next_rows(self, k: int) -> torch.Tensor:
        """``(B, k, N)``: the buffer of the next ``k`` coefficient rows, for a producer that
        writes them in place before :meth:`append` with ``z=None``."""
        return self._z[:, self.m : self.m + k]

    def append(
        self,
        z: torch.Tensor | None,
        e: torch.Tensor,
        values: torch.Tensor | None,
        scale: torch.Tensor | None = None,
        summed: bool = False,
    ) -> None:
        """Add terms: coefficients ``z`` ``(B, k, N)`` (times ``scale`` ``(B, 1, N)``, if
        given; None when already written into :meth:`next_rows`) and rows ``e``
        ``(B, k, C)``; ``values`` and ``summed`` as in :class:`TermRows`."""
        k = e.shape[1]
        if z is not None and scale is not None:
            torch.mul(z, scale, out=self.next_rows(k))
        elif z is not None:
            self.next_rows(k).copy_(z)
        self._e[:, self.m : self.m + k] = e
        self.segments.append(TermRows(self.m, self.m + k, values, summed))
        self.m += k

    def compact(self, prompts: torch.Tensor) -> None:
        """Keep only the prompts at ``prompts`` (increasing 1-D indices), moving their
        coefficients and rows to the front of the same buffers (no second buffer of ~2 MB per
        prompt). The other prompts' tokens are overwritten."""
        for i, r in enumerate(prompts.tolist()):
            if r != i:  # r > i: a source row is never one already written
                self._z[i].copy_(self._z[r])
                self._e[i].copy_(self._e[r])
        k = len(prompts)
        self._z, self._e = self._z[:k], self._e[:k]
        self.a = None if self.a is None else self.a[prompts]
        self.segments = [
            run._replace(values=None if run.values is None else run.values[prompts])
            for run in self.segments
        ]


#: ``(layer, x)`` → ``layer(x)``, computed by the module or by the native kernel.
Linear = Callable[[nn.Linear, torch.Tensor], torch.Tensor]


def _module_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def _per_prompt(
    x: torch.Tensor, shared: torch.Tensor, out: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """``x[b] @ shared`` for each prompt ``b``: ``(B, H, T, K) @ (H, K, N)`` → ``(B, H, T, N)``,
    or ``out += alpha · x @ shared`` with ``out`` given. One batched product per prompt, so
    the per-image ``shared`` operand is read in place (broadcasting it over ``B`` would copy
    it ``B`` times)."""
    if out is None:
        out = x.new_empty(*x.shape[:-1], shared.shape[-1])
        for i in range(x.shape[0]):
            torch.bmm(x[i], shared, out=out[i])
    else:
        for i in range(x.shape[0]):
            out[i].baddbmm_(x[i], shared, alpha=alpha)
    return out


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x[:, h] @ w[h]`` for each head ``h``: ``(B, H, T, K) @ (H, K, N)`` → ``(B, H, T, N)``
    (a transposed view). One product per head over every prompt's rows: broadcasting ``w``
    over ``B`` would copy it ``B`` times."""
    b, h, t, k = x.shape
    out = torch.bmm(x.transpose(0, 1).reshape(h, b * t, k), w)  # (H, B·T, N)
    return out.view(h, b, t, -1).transpose(0, 1)


def _heads_of(proj: nn.Linear, heads: int) -> torch.Tensor:
    """``(H, d, C)``: each head's rows of a projection's weight ``(H·d, C)``."""
    return proj.weight.view(heads, -1, proj.weight.shape[-1])


def _coefficients(
    xh: torch.Tensor, img: _ImageTokens, attn: Attention, proj: nn.Linear
) -> torch.Tensor | None:
    """``(B, H·T, m)``: prompt-side vectors ``xh`` ``(B, H, T, d)`` against the low-rank rows
    of the image tokens through ``attn``'s projection ``proj``, per head (None before the
    first update): with ``img.z``, the low-rank part of their scores. Each vector goes back
    through its head's rows of ``proj`` first (``xh_h·(e·W_hᵀ)ᵀ = (xh_h·W_h)·eᵀ``): ``H·T``
    rows of ``C`` values against ``m``, instead of all ``m`` rows through ``proj``."""
    if img.z is None:
        return None
    b, h, t, _ = xh.shape
    back = _per_head(xh, _heads_of(proj, h)).reshape(b, h * t, -1)  # (B, H·T, C)
    return back @ img.e.transpose(1, 2)


def _factored_scores(
    xh: torch.Tensor, side: AttnImageSide, img: _ImageTokens, attn: Attention, proj: nn.Linear
) -> torch.Tensor:
    """Dot products of prompt-side vectors ``xh`` ``(B, H, T, d)`` with the image side of an
    attention, ``(K + PE)·Wᵀ + b`` per head, without forming it: the cached products, the
    low-rank part and the per-token scale (``proj`` is ``attn``'s image-side projection).
    Returns ``(B, H, T, N)``, accumulated in place."""
    b, h, t, d = xh.shape
    scores = _per_prompt(xh, side.img)
    coef = _coefficients(xh, img, attn, proj)
    if coef is not None:
        scores.view(b, h * t, -1).baddbmm_(coef, img.z)
    if img.a is not None:
        scores.mul_(img.a[:, None, None, :])
    if side.pe is not None:
        _per_prompt(xh, side.pe, out=scores, alpha=1.0)
    return scores


def _token_to_image(
    attn: Attention,
    queries: torch.Tensor,
    img: _ImageTokens,
    k_side: AttnImageSide,
    v_side: AttnImageSide,
    kernels: native.DecoderKernels | None = None,
    linear: Linear = _module_linear,
) -> torch.Tensor:
    """Attention of ``queries`` ``(B, T, C)`` (positional encoding included) over the factored
    image tokens: keys ``K + PE``, values ``K``; with ``kernels``, scores, softmax and pooling
    run as one native pass over the image. Returns ``(B, T, C)``."""
    heads = attn.num_heads
    d = attn.internal_dim // heads
    qh = attn.split_heads(linear(attn.q_proj, queries)) * d**-0.5  # (B, H, T, d)
    b, h, t, _ = qh.shape
    if kernels is not None:
        coef = _coefficients(qh, img, attn, attn.k_proj)
        shared, pooled = kernels.token_attention(
            qh, k_side.img, k_side.pe, coef, img.z, img.a, v_side.img
        )  # (B, H, T, d), (B, H·T, m)
    else:
        weights = torch.softmax(_factored_scores(qh, k_side, img, attn, attn.k_proj), dim=-1)
        n = weights.shape[-1]
        if img.a is not None:
            weights.mul_(img.a[:, None, None, :])
        pooled = None if img.z is None else weights.view(b, h * t, n) @ img.z.transpose(1, 2)
        shared = _per_prompt(weights, v_side.img)  # (B, H, T, d)
    out = shared
    if pooled is not None:  # pooled rows, then each head's value projection (C → d)
        rows = (pooled @ img.e).view(b, h, t, -1)  # (B, H, T, C)
        out = _per_head(rows, _heads_of(attn.v_proj, h).transpose(1, 2)) + out
    out = out + attn.v_proj.bias.view(heads, 1, d)
    return linear(attn.out_proj, out.transpose(1, 2).reshape(b, t, heads * d))


def _image_to_token(
    attn: Attention,
    keys: torch.Tensor,
    values: torch.Tensor,
    img: _ImageTokens,
    cache: LayerProducts,
    kernels: native.DecoderKernels | None = None,
    linear: Linear = _module_linear,
) -> None:
    """The image tokens' attention over the prompt tokens, added to the factored image
    tokens: the update's rows (attention weights relative to ``a``, ``Rᵀ`` and ``V`` of the
    module docstring) and its bias row. With ``kernels`` the weights are written in place by
    one native pass over the image.

    Each head's weights sum to one over the ``T`` tokens, so the first token's follow from
    the others: ``Σ_t R_t·V_t = V_0 + Σ_{t≥1} R_t·(V_t − V_0)``. The update is stored as the
    ``H·(T−1)`` rows ``V_t − V_0`` and one row ``Σ_h V_{h,0}`` with the bias row's
    coefficient: ``H − 1`` fewer rows per layer for every later low-rank product.

    Args:
        keys: ``(B, T, C)`` token keys (positional encoding included); values ``(B, T, C)``.
    """
    heads = attn.num_heads
    d = attn.internal_dim // heads
    kh = attn.split_heads(linear(attn.k_proj, keys)) * d**-0.5  # (B, H, T, d)
    vh = attn.split_heads(linear(attn.v_proj, values))  # (B, H, T, d)
    b, _, t, _ = kh.shape
    w_o = attn.out_proj.weight.view(-1, heads, d).permute(1, 2, 0)  # (H, d, C)
    rows = _per_head(vh, w_o)  # (B, H, T, C)
    first = rows[:, :, :1]
    inv_a = None if img.a is None else img.a.reciprocal()[:, None, :]  # (B, 1, N)
    diffs = (rows[:, :, 1:] - first).reshape(b, heads * (t - 1), -1)
    value_diffs = vh[:, :, 1:] - vh[:, :, :1]
    if kernels is not None:
        coef = _coefficients(kh, img, attn, attn.q_proj)
        side, out = cache.i2t_q, img.next_rows(heads * (t - 1))
        kernels.image_attention(kh, side.img, side.pe, coef, img.z, img.a, out, skip_first=True)
        img.append(None, diffs, value_diffs)
    else:
        # scores laid out (B, H, T, N): the softmax over the T tokens runs along a strided
        # axis with the long N axis contiguous, which vectorises (a last axis of 7 does not)
        scores = _factored_scores(kh, cache.i2t_q, img, attn, attn.q_proj)
        weights = torch.softmax(scores, dim=2)[:, :, 1:]
        img.append(weights.reshape(b, heads * (t - 1), -1), diffs, value_diffs, scale=inv_a)
    ones = torch.ones_like(img.next_rows(1)) if inv_a is None else inv_a
    img.append(ones, first.sum(1), vh[:, :, :1], summed=True)
    img.append(ones, attn.out_proj.bias.expand(b, 1, -1), None)


def _layer_norm_factored(
    img: _ImageTokens,
    cache: LayerProducts,
    norm: nn.LayerNorm,
    kernels: native.DecoderKernels | None = None,
) -> None:
    """LayerNorm of ``P = a ⊙ (X·diag(g) + zᵀ·e)`` (the tokens after the update), in place
    and in factored form: ``a`` becomes ``a·r`` and two fixed rows are added; the existing
    coefficients stay as they are. With ``kernels`` the statistics are one native pass."""
    z, e, a = img.z, img.e, img.a
    c = e.shape[-1]
    # statistics of Q = X·diag(g) + zᵀ·e (P = a ⊙ Q): the mean is linear
    # C·var(Q) = ‖x̃‖² + Σ_k z_k (G·z + 2·(x̃·ẽ_k))_k, with G = ẽẽᵀ and the cross products
    # x̃·ẽ_k from cached per-image products, accumulated into one (B, m, N) matrix; the
    # row sums of e ride along as one more row of the same product, for the mean
    e_centred = center_rows(e)
    m = e.shape[1]
    lhs = torch.cat([e_centred @ e_centred.transpose(1, 2), e.sum(-1)[:, None, :]], 1)
    segments = []  # each run of rows with its cached cross products
    update, fixed = 0, 0
    for run in img.segments:
        if run.values is None:  # fixed rows: cached products, in the same order
            k = run.stop - run.start
            segments.append((run, cache.cross_c[fixed : fixed + k]))
            fixed += k
        else:  # an update's runs (rows, then the summed row) share its cached products
            segments.append((run, cache.cross_u[update]))
            update += run.summed
    if kernels is not None:
        mean, r = kernels.layer_norm_stats(
            z, lhs, segments, cache.x_sum, cache.x_sq, a, c, norm.eps
        )
    else:
        both = lhs @ z  # (B, m + 1, N)
        acc, mean = both[:, :m], both[:, m].add_(cache.x_sum).div_(c)  # mean (B, N)
        for run, cross in segments:
            block = acc[:, run.start : run.stop]
            if run.values is None:
                block.add_(cross, alpha=2.0)
            elif run.summed:
                block.add_(_per_prompt(run.values, cross).sum(1), alpha=2.0)
            else:
                b, h, t, _ = run.values.shape
                _per_prompt(run.values, cross, out=block.view(b, h, t, -1), alpha=2.0)
        var = (cache.x_sq + (acc.mul_(z)).sum(1)) / c  # (B, N), var(Q)
        if a is not None:
            var.mul_(a * a)
        r = torch.rsqrt(var.clamp(min=0) + norm.eps)  # 1/σ of P, (B, N)
    a = r if a is None else a * r
    img.a = a
    e.mul_(norm.weight)
    b = z.shape[0]
    # LN(P) = a ⊙ (X·diag(gγ) + zᵀ·(e·γ) - mean·γ + (1/a)·β)
    consts = torch.stack([-mean, a.reciprocal()], 1)  # (B, 2, N)
    rows = torch.stack([norm.weight, norm.bias])[None].expand(b, -1, -1)
    img.append(consts, rows, None)


@dataclass
class DecodedTokens:
    """The transformer's outputs for ``B`` prompts, before any upscaling.

    ``iou`` ``(B, M)`` predicted IoUs and ``hyper`` ``(B, M, C/8)`` hypernetwork outputs of
    the ``M`` kept mask tokens; ``image`` the final image tokens in factored form."""

    iou: torch.Tensor
    hyper: torch.Tensor
    image: _ImageTokens

    def compact(self, prompts: torch.Tensor) -> DecodedTokens:
        """The outputs of the prompts at ``prompts`` (increasing 1-D indices) only, to upscale
        just those: their image tokens move to the front of the same buffers, so this
        object's own image tokens are no longer valid afterwards."""
        self.image.compact(prompts)
        return DecodedTokens(self.iou[prompts], self.hyper[prompts], self.image)


def decode_tokens(
    cache: ImageCache,
    sparse_prompt_embeddings: torch.Tensor,
    tokens: Tokens = "multi",
    workspace: Workspace | None = None,
    kernels: native.DecoderKernels | None = None,
) -> DecodedTokens:
    """Run the two-way transformer, IoU head and hypernetworks of ``cache.model``'s decoder
    for ``B`` prompts against one cached image.

    The prompt tokens go through the modules' own pieces (each block's
    :meth:`~mobilesam.modeling.transformer.TwoWayAttentionBlock.self_attend` and
    :meth:`~mobilesam.modeling.transformer.TwoWayAttentionBlock.mlp_tokens`, the
    transformer's :meth:`~mobilesam.modeling.transformer.TwoWayTransformer.final_tokens`,
    the IoU head); only the attentions that involve the image tokens run in factored form,
    from the attention modules' weights.

    Args:
        sparse_prompt_embeddings: ``(B, N_p, C)``.
        tokens: keep the multimask tokens, token 0 or all (see
            :data:`~mobilesam.engine.interface.Tokens`). The final attention and the
            hypernetworks run only for the kept tokens (each query row is independent
            there), and :attr:`DecodedTokens.iou` and ``hyper`` hold only those.
        workspace: holds the factored image tokens (~2 MB per prompt), for a loop that
            decodes batch after batch; the outputs are then valid until its next use.
        kernels: the native kernels, where the engine runs them (float32 on the CPU).
    """
    decoder = cache.model.mask_decoder
    tf = decoder.transformer
    b = sparse_prompt_embeddings.shape[0]
    out_tokens = cache.weights.tokens
    all_tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], 1)
    heads = tf.layers[0].cross_attn_image_to_token.num_heads if tf.layers else 0
    # per layer: the update's H·(T−1) rows and its summed row, the bias row, two LayerNorm rows
    n_rows = len(tf.layers) * (heads * (all_tokens.shape[1] - 1) + 4)
    h, w = cache.size
    img = _ImageTokens(all_tokens, b, n_rows, h * w, workspace)
    linears = cache.linears if kernels is not None else None
    linear = linears or _module_linear
    queries, query_pe = all_tokens, all_tokens
    for layer, lc in zip(tf.layers, cache.layers, strict=True):
        queries = layer.self_attend(queries, query_pe)
        t2i = layer.cross_attn_token_to_image
        attn = _token_to_image(t2i, queries + query_pe, img, lc.t2i_k, lc.t2i_v, kernels, linear)
        queries = layer.mlp_tokens(queries, attn, linears and linears.mlp(layer.mlp))
        i2t = layer.cross_attn_image_to_token
        _image_to_token(i2t, queries + query_pe, queries, img, lc, kernels, linear)
        _layer_norm_factored(img, lc, layer.norm4, kernels)
    # only the IoU token and the kept mask tokens are read after the final attention
    kept = token_range(tokens, decoder.num_mask_tokens)
    rows_out = [0, *(1 + i for i in kept)]
    queries, query_pe = queries[:, rows_out], query_pe[:, rows_out]
    attn = _token_to_image(
        tf.final_attn_token_to_image,
        queries + query_pe,
        img,
        cache.final_k,
        cache.final_v,
        kernels,
        linear,
    )
    queries = tf.final_tokens(queries, attn)
    iou = decoder.iou_prediction_head(queries[:, 0, :])[:, kept.start : kept.stop]
    hyper = cache.weights.hypernetworks(queries[:, 1:], kept)
    return DecodedTokens(iou=iou, hyper=hyper, image=img)


def first_conv_factors(
    cache: ImageCache, image: _ImageTokens
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The first upscaling convolution of the final image tokens, factored:
    ``rows[:, s:e] = a[:, s:e, None] * (cache.upscale[s:e] + z[:, :, s:e]ᵀ @ ew) + bias``,
    each row ``4·C/4`` values in sub-pixel-major order. Returns ``(a, z, ew, bias)``; ``a``,
    ``z`` and ``ew`` are None for a transformer of depth 0."""
    ew = None if image.e is None else image.e @ cache.weights.up1_w
    return image.a, image.z, ew, cache.weights.up1_b
