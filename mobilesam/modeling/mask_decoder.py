"""SAM's mask decoder: image embedding + prompt embeddings → low-res masks and IoU scores."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import native
from .common import MLP, LayerNorm2d, Workspace, conv_transpose_matrix, gelu_
from .decoder_cache import DecodedTokens, decode_tokens, first_conv_factors
from .image_cache import ImageCache, prepare_image_cache
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks and an IoU estimate for each.

    Token 0 of the output is the single-mask answer; tokens 1.. are the multimask answers.
    Masks come out at 4× the embedding grid (``256×256`` for a 64×64 embedding), as logits.
    """

    #: Image tokens per chunk of the upscaling tail on CPU: bounds its intermediates (about
    #: 3 KB per token) for large embedding grids. A 64×64 grid goes through in one chunk:
    #: measured on a 2-core Xeon (AMX), 1024-token chunks cost ~8% more, 256-token ones ~20%.
    UPSCALE_CHUNK_TOKENS = 4096

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

    def masks_from_tokens(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """Upscale the image tokens and take each mask token's product with them.

        Args:
            keys: ``(B, h*w, C)`` image tokens from the transformer.
            hyper_in: ``(B, T, C/8)`` hypernetwork outputs, one per mask token.

        Returns:
            ``(B, T, 4h, 4w)`` mask logits.
        """
        w1, bias = conv_transpose_matrix(self.output_upscaling[0])

        def first_conv(
            rows: slice, start: int, stop: int, ws: Workspace | None = None
        ) -> torch.Tensor:
            return keys[rows, start:stop] @ w1 + bias

        return self.upscale(first_conv, hyper_in, keys.shape[0], h, w)

    def upscale(
        self,
        first_conv: Callable[[slice, int, int, Workspace | None], torch.Tensor],
        hyper_in: torch.Tensor,
        batch: int,
        h: int,
        w: int,
        second: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The upscaling tail from the first transposed convolution's output.

        Args:
            first_conv: ``(prompts, start, stop, workspace)`` → ``(b, stop - start, 4·C/4)``:
                that convolution (bias included) for image tokens ``start:stop`` of the
                prompts in the slice ``prompts``; each token's ``4·C/4`` values are
                sub-pixel-major. It may write into ``workspace`` (when not None).
            hyper_in: ``(B, T, C/8)`` hypernetwork outputs of the wanted mask tokens.
            second: the second transposed convolution as ``(weight matrix, bias)`` (see
                :class:`~mobilesam.modeling.image_cache.DecoderWeights`), when prepared.

        Returns:
            ``(B, T, 4h, 4w)`` mask logits.

        ``output_upscaling`` (kept as a Sequential for the official parameter names) is two
        kernel-2 stride-2 transposed convolutions, so every token owns a ``4×4`` output patch
        and the whole tail (both layers, LayerNorm, GELUs, the hypernetwork product) is
        independent per token. It runs as matrix products in a sub-pixel layout, without
        shuffling pixels; only the ``T``-channel result is rearranged into an image. On CPU
        each prompt goes through in chunks of whole grid rows, about ``UPSCALE_CHUNK_TOKENS``
        tokens, so the ``C/4``- and ``C/8``-channel intermediates stay in cache; per-pixel
        arithmetic is the same either way.
        """
        w2, bias2 = second or conv_transpose_matrix(self.output_upscaling[3])
        t = hyper_in.shape[1]
        one_pass = hyper_in.device.type != "cpu" or torch.jit.is_tracing()
        rows_per_chunk = h if one_pass else max(1, self.UPSCALE_CHUNK_TOKENS // w)
        groups = [slice(None)] if one_pass else [slice(i, i + 1) for i in range(batch)]
        inplace = not torch.is_grad_enabled()
        masks = None if one_pass else hyper_in.new_empty(batch, t, 4 * h, 4 * w)
        # eager inference reuses one set of buffers for every chunk and prompt: fresh
        # allocations of this size cost page faults on every call
        ws = Workspace() if inplace and not one_pass else None
        for rows in groups:
            for r0 in range(0, h, rows_per_chunk):
                r1 = min(h, r0 + rows_per_chunk)
                x = first_conv(rows, r0 * w, r1 * w, ws)  # (b, p, 4·C/4)
                x = self._tail(x, hyper_in[rows], (w2, bias2), ws, inplace)  # (b, T, 16p)
                if one_pass:
                    return _subpixel_image(x, h, w)
                _write_subpixel_rows(masks[rows, :, 4 * r0 : 4 * r1], x, w, inplace)
        return masks

    def _tail(
        self,
        x: torch.Tensor,
        hyper: torch.Tensor,
        second: tuple[torch.Tensor, torch.Tensor],
        ws: Workspace | None,
        inplace: bool,
    ) -> torch.Tensor:
        """First transposed convolution's output ``(b, p, 4·C/4)`` → mask logits ``(b, T,
        16p)`` in sub-pixel layout: LayerNorm, GELU, second convolution, GELU, and the product
        with the hypernetwork outputs ``hyper`` ``(b, T, C/8)``."""
        _, norm, act1, _, act2 = self.output_upscaling
        b = x.shape[0]
        x = x.reshape(b, -1, norm.weight.shape[0])  # (b, 4p, C/4)
        x = F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps)
        x = _gelu(x, act1, inplace)
        x = _conv_transpose_2x2(x, *second, ws)  # (b, 16p, C/8)
        x = _gelu(x, act2, inplace)
        if ws is None:
            return hyper @ x.transpose(1, 2)
        # one 2-D product per prompt: a batched one copies the transposed operand in bf16
        out = ws.get("hyper", (b, hyper.shape[1], x.shape[1]), x)
        for i in range(b):
            torch.mm(hyper[i], x[i].t(), out=out[i])
        return out

    def prepare(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        key: tuple = (),
        tail_dtype: torch.dtype | None = None,
    ) -> ImageCache:
        """The per-image products of the fast decoding order (see
        :mod:`~mobilesam.modeling.decoder_cache`): ``image_embeddings`` and ``image_pe``
        ``(1, C, h, w)``, ``dense_prompt_embeddings`` ``(1, C, 1 or h, 1 or w)`` shared by
        every prompt; ``tail_dtype`` as in
        :func:`~mobilesam.modeling.image_cache.prepare_image_cache`. Where the fused tail
        of :mod:`mobilesam.native` runs in float32 but not in ``tail_dtype``, the tail stays
        float32: faster than PyTorch's reduced one, and exact."""
        device = image_embeddings.device
        if (
            tail_dtype is not None
            and image_embeddings.dtype == torch.float32
            and not self._native_tail(device, tail_dtype, check_grad=False)
            and self._native_tail(device, torch.float32, check_grad=False)
        ):
            tail_dtype = None
        return prepare_image_cache(
            self, image_embeddings, image_pe, dense_prompt_embeddings, key, tail_dtype
        )

    def predict_masks_cached(
        self,
        cache: ImageCache,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` for ``B`` prompts against one prepared image.

        Args:
            cache: from :meth:`prepare`.
            sparse_prompt_embeddings: ``(B, N, C)``.
            multimask_output: upscale only the multimask tokens (True), only token 0 (False),
                or all tokens (None).

        Returns:
            masks ``(B, M, 4h, 4w)`` logits and IoU predictions ``(B, M)`` of the selected
            tokens (``M`` = 3, 1 or 4).
        """
        decoded = decode_tokens(self, cache, sparse_prompt_embeddings, multimask_output)
        return self.masks_from_decoded(cache, decoded, decoded.hyper), decoded.iou

    def masks_from_decoded(
        self,
        cache: ImageCache,
        decoded: DecodedTokens,
        hyper_in: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-res logits ``(B, T, 4h, 4w)`` of the prompts in ``decoded`` for the mask tokens
        whose hypernetwork outputs are ``hyper_in`` ``(B, T, C/8)`` (a selection or subset of
        ``decoded.hyper``, prompts included); written into ``out`` (contiguous, that shape
        and dtype) if given."""
        dtype = cache.upscale.dtype  # the tail's (see prepare_image_cache)
        a, z, ew, bias = first_conv_factors(cache, decoded.image)
        h, w = cache.size
        w2, b2 = cache.weights.up2_w, cache.weights.up2_b
        kernels = (
            None if hyper_in.dtype != torch.float32 else self._native_tail(hyper_in.device, dtype)
        )
        if kernels is not None:  # the same tail, fused per chunk of tokens (mobilesam.native)
            norm = self.output_upscaling[1]
            return kernels.upscale_tail(
                cache.upscale, a, z, ew, bias, norm, w2, b2, hyper_in, (h, w), out
            )
        # PyTorch's tail runs wholly in the tail's dtype
        a, z, ew, bias, b2 = (None if t is None else t.to(dtype) for t in (a, z, ew, bias, b2))

        def first_conv(
            rows: slice, start: int, stop: int, ws: Workspace | None = None
        ) -> torch.Tensor:
            shared = cache.upscale[start:stop]
            if z is None:
                return (shared + bias).expand(hyper_in[rows].shape[0], -1, -1)
            zr = z[rows, :, start:stop]
            out = None if ws is None else ws.get("first", (zr.shape[0], *shared.shape), shared)
            y = torch.baddbmm(shared, zr.transpose(1, 2), ew[rows], out=out)
            return torch.addcmul(bias, y, a[rows, start:stop, None], out=y)

        masks = self.upscale(first_conv, hyper_in.to(dtype), hyper_in.shape[0], h, w, (w2, b2))
        if out is None:
            return masks.to(hyper_in.dtype)
        return out.copy_(masks)

    def _native_tail(
        self, device: torch.device, tail_dtype: torch.dtype, check_grad: bool = True
    ) -> native.DecoderKernels | None:
        """The native kernels where their fused tail applies: CPU, eager inference (see
        :func:`mobilesam.native.kernels_for`), the decoder's exact-erf GELUs, and a float32
        tail, or a bf16 one where the kernels have bf16 products; else None."""
        exact = all(
            isinstance(act, nn.GELU) and act.approximate == "none"
            for act in (self.output_upscaling[2], self.output_upscaling[4])
        )
        kernels = native.kernels_for(check_grad=check_grad)
        if not exact or device.type != "cpu" or kernels is None:
            return None
        if tail_dtype == torch.float32 or (tail_dtype == torch.bfloat16 and kernels.bf16):
            return kernels
        return None

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
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0):
            # One image, one dense prompt for all (no mask input): the transformer receives
            # the image once and shares its first-layer image projections across prompts.
            src = image_embeddings + dense[:1]
        else:
            src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        masks = self.masks_from_tokens(keys, hyper_in, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


#: Integer types that hold two adjacent values of a float type of each byte size (for moves).
_PAIR_DTYPES = {4: torch.int64, 2: torch.int32, 8: torch.complex128}


def _subpixel_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Mask logits ``(b, T, 16·h·w)`` in sub-pixel layout → images ``(b, T, 4h, 4w)``."""
    b, t = x.shape[:2]
    # (b, T, i, j, a, b, c, d) → pixel (4i + 2a + c, 4j + 2b + d) of mask T
    x = x.view(b, t, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return x.reshape(b, t, 4 * h, 4 * w)


def _write_subpixel_rows(dst: torch.Tensor, x: torch.Tensor, w: int, inplace: bool) -> None:
    """Write mask logits ``x`` ``(b, T, 16·r·w)`` (sub-pixel layout, ``r`` grid rows) into
    image rows ``dst`` ``(b, T, 4r, 4w)``."""
    b, t = x.shape[:2]
    r = dst.shape[2] // 4
    if not inplace:  # autograd: the rearrangement on floats
        x = x.view(b, t, r, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        dst.view(b, t, r, 2, 2, w, 2, 2).copy_(x)
        return
    # moving each (d = 0, 1) pair as one integer is several times faster
    pair = _PAIR_DTYPES[x.element_size()]
    src = x.view(pair).view(b, t, r, w, 2, 2, 2)  # (b, T, i, j, a, b, c)
    dst = dst.view(pair).view(b, t, r, 2, 2, w, 2)
    dst.copy_(src.permute(0, 1, 2, 4, 6, 3, 5))


def _gelu(x: torch.Tensor, act: nn.Module, inplace: bool) -> torch.Tensor:
    """``act(x)`` (an ``nn.GELU``), in place when no gradient is recorded."""
    return gelu_(x, act) if inplace else act(x)


def _conv_transpose_2x2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ws: Workspace | None = None
) -> torch.Tensor:
    """A kernel-2, stride-2 transposed convolution on pixels in rows: ``(B, P, C)`` →
    ``(B, 4P, O)``, where output row ``4p + 2a + b`` is sub-pixel ``(a, b)`` (row, column)
    of input pixel ``p``. Each input pixel owns its 2×2 output patch, so the layer is one
    matrix product with the :func:`~mobilesam.modeling.common.conv_transpose_matrix`
    weight and bias."""
    b, p, c = x.shape
    x = x.reshape(b * p, c)
    out = None if ws is None else ws.get("second", (b * p, weight.shape[1]), x)
    y = torch.mm(x, weight, out=out) if bias is None else torch.addmm(bias, x, weight, out=out)
    return y.reshape(b, 4 * p, weight.shape[1] // 4)


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
