"""The CPU engine: the factored decoding order with the native kernels, and the encoder's
banded inference. See ``docs/engine.md``."""

from __future__ import annotations

import torch
from torch import nn

from . import native, tuning
from .encoder import encode_fast
from .factored_decode import decode_tokens
from .image_products import ImageCache, prepare_image_cache
from .interface import Engine, ImageState, Tokens, passing
from .token_linears import TokenLinears
from .plain import PlainEngine
from .upscale_tail import masks_from_decoded, native_tail
from .workspace import Workspace


class CpuEngine(Engine):
    """Fast inference on the CPU, the same arithmetic to float rounding:

    - :meth:`encode`: the encoder's banded, fused inference
      (:func:`~mobilesam.engine.encoder.encode_fast`);
    - :meth:`prepare`: every prompt-independent product of the decoder, once per image
      (:mod:`~mobilesam.engine.image_products`);
    - :meth:`decode`: per prompt, the transformer on the factored image tokens
      (:mod:`~mobilesam.engine.factored_decode`) and the upscaling tail for the returned
      tokens only (:mod:`~mobilesam.engine.upscale_tail`), with the native kernels
      (:mod:`mobilesam.engine.native`) where they apply (float32 on the CPU). A dense prompt
      (``mask_input``) cannot share the image products: it runs the plain order.

    It runs on other devices too (PyTorch operations only), but the plain engine is the
    default there.
    """

    name = "cpu"
    decode_batch = tuning.CPU_DECODER_BATCH

    def __init__(self) -> None:
        self._plain = PlainEngine()

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encode_fast(encoder, x)

    def prepare(
        self, model: nn.Module, embedding: torch.Tensor, tail_dtype: torch.dtype | None = None
    ) -> ImageCache:
        """See :meth:`Engine.prepare`. Where the fused native tail runs in float32 but not in
        ``tail_dtype``, the tail stays float32: faster than PyTorch's reduced one, and
        exact."""
        decoder, device = model.mask_decoder, embedding.device
        tail = native_tail(decoder, device, tail_dtype or embedding.dtype)
        if tail is None and tail_dtype is not None and embedding.dtype == torch.float32:
            tail = native_tail(decoder, device, torch.float32)
            tail_dtype = None if tail is not None else tail_dtype
        cache = prepare_image_cache(model, embedding, tail_dtype, tail is not None)
        if native.applicable(embedding):
            cache.linears = TokenLinears.of(decoder)
        return cache

    @torch.no_grad()
    def decode(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        dense: torch.Tensor | None = None,
        tokens: Tokens = "multi",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if dense is not None:  # a dense prompt per call: SAM's order
            return self._plain.decode(state, sparse, dense, tokens)
        cache = _cache(state)
        decoded = decode_tokens(cache, sparse, tokens, kernels=_kernels(sparse, cache))
        return masks_from_decoded(cache, decoded, decoded.hyper), decoded.iou

    @torch.no_grad()
    def decode_filtered(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        iou_thresh: float,
        workspace: Workspace | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = _cache(state)
        kernels = _kernels(sparse, cache)
        decoded = decode_tokens(cache, sparse, "multi", workspace, kernels)
        passed = passing(decoded.iou, iou_thresh)
        rows = passed.any(1).nonzero()[:, 0]
        h, w = cache.size
        like = decoded.hyper
        if len(rows) == 0:
            empty = like.new_zeros(0)
            return empty.reshape(0, 4 * h, 4 * w), empty, rows
        # (the kept prompts' factored image tokens move to the front of the workspace)
        kept = decoded if len(rows) == len(passed) else decoded.compact(rows)
        keep = passed[rows]
        n_masks = int(keep.sum())
        size = (4 * h, 4 * w)
        dst = like.new_empty(n_masks, *size) if out is None else out[:n_masks]
        if n_masks == keep.numel():  # (r, 3, 4h, 4w), written in place
            masks_from_decoded(cache, kept, kept.hyper, dst.view(*keep.shape, *size))
        else:
            buf = None if workspace is None else workspace.get("masks", (*keep.shape, *size), like)
            masks = masks_from_decoded(cache, kept, kept.hyper, buf)
            torch.index_select(masks.flatten(0, 1), 0, keep.flatten().nonzero()[:, 0], out=dst)
        prompt = rows[:, None].expand(keep.shape)[keep]
        return dst, kept.iou[keep], prompt


def _cache(state: ImageState) -> ImageCache:
    if not isinstance(state, ImageCache):
        raise ValueError(
            f"the CPU engine decodes from its own prepare()'s state, got {type(state).__name__}"
        )
    return state


def _kernels(sparse: torch.Tensor, cache: ImageCache) -> native.DecoderKernels | None:
    """The native kernels where they take the decoder's activations (float32 on the CPU);
    the tail decides separately (its dtype may be bf16)."""
    return native.kernels() if native.applicable(sparse, cache.final_k.img) else None
