"""The plain engine: SAM's own order, the modules' ``forward``, on any device."""

from __future__ import annotations

import torch
from torch import nn

from .interface import Engine, ImageState, Tokens, passing, token_range
from .workspace import Workspace


class PlainEngine(Engine):
    """SAM's arithmetic as the modules write it: the encoder's ``forward``, and per batch of
    prompts :meth:`~mobilesam.modeling.mask_decoder.MaskDecoder.predict_masks` (transformer,
    then ``output_upscaling`` on the image tokens, then the hypernetwork product). It serves
    every device other than the CPU, a ``mask_input`` (a dense prompt per call), and anyone
    who wants the reference arithmetic. Its per-image state is the embedding itself
    (:class:`~mobilesam.engine.interface.ImageState`)."""

    name = "plain"

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder(x)

    def prepare(
        self, model: nn.Module, embedding: torch.Tensor, tail_dtype: torch.dtype | None = None
    ) -> ImageState:
        pe = model.prompt_encoder
        with torch.no_grad():
            return ImageState(model, embedding, pe.get_dense_pe(), pe.no_mask_dense(1))

    @torch.no_grad()
    def decode(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        dense: torch.Tensor | None = None,
        tokens: Tokens = "multi",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = state.model.mask_decoder
        dense = state.no_mask if dense is None else dense
        masks, iou = decoder.predict_masks(state.embedding, state.image_pe, sparse, dense)
        kept = token_range(tokens, decoder.num_mask_tokens)
        return masks[:, kept.start : kept.stop], iou[:, kept.start : kept.stop]

    @torch.no_grad()
    def decode_filtered(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        iou_thresh: float,
        workspace: Workspace | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, iou = self.decode(state, sparse, None, "multi")
        passed = passing(iou, iou_thresh)
        prompt = passed.nonzero()[:, 0]
        low, iou = low[passed], iou[passed]
        if out is not None:
            low = out[: len(low)].copy_(low)
        return low, iou, prompt
