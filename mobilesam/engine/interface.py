"""The interface every inference engine implements (see ``docs/engine.md``).

An engine runs a :class:`~mobilesam.modeling.sam.Sam`'s modules for inference: the image
encoder, then, per image, :meth:`Engine.prepare` and, per batch of prompts,
:meth:`Engine.decode` or :meth:`Engine.decode_filtered`. It reads the modules' weights and
calls their public pieces; it never changes the model. The predictor owns its engine and the
per-image state the engine returns; the state is valid while the model's prompt encoder and
decoder weights and the embedding are unchanged (the predictor checks that).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .workspace import Workspace

#: Which mask tokens :meth:`Engine.decode` returns: the 3 multimask ones, token 0 (the
#: single-mask answer) or all 4 (token 0 first).
Tokens = Literal["multi", "single", "all"]


def token_range(tokens: Tokens, num_mask_tokens: int) -> range:
    """The indices of the mask tokens ``tokens`` names, out of ``num_mask_tokens``."""
    if tokens == "multi":
        return range(1, num_mask_tokens)
    if tokens == "single":
        return range(1)
    if tokens == "all":
        return range(num_mask_tokens)
    raise ValueError(f"tokens must be 'multi', 'single' or 'all', got {tokens!r}")


@dataclass
class ImageState:
    """The per-image state every engine's :meth:`Engine.prepare` returns (engines extend it):
    the inputs of SAM's plain decoding order for one image.

    ``model`` the :class:`~mobilesam.modeling.sam.Sam`; ``embedding`` ``(1, C, h, w)`` in the
    decoder's dtype; ``image_pe`` ``(1, C, h, w)`` the prompt encoder's dense positional
    encoding; ``no_mask`` ``(1, C, h, w)`` the dense embedding of "no mask input" (an
    expanded view)."""

    model: nn.Module
    embedding: torch.Tensor
    image_pe: torch.Tensor
    no_mask: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the embedding grid."""
        return int(self.embedding.shape[-2]), int(self.embedding.shape[-1])


class Engine(ABC):
    """Runs a ``Sam``'s encoder and decoder for inference. Every method takes and returns
    tensors on the model's device; none records gradients or changes the model."""

    #: the name :func:`~mobilesam.engine.engine_for` knows the engine by
    name: str = ""
    #: prompts per decoder pass in :meth:`decode_filtered` when the caller gives none (None:
    #: all at once)
    decode_batch: int | None = None

    @abstractmethod
    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The image embedding ``(B, 256, 64, 64)`` of ``x`` ``(B, 3, 1024, 1024)``,
        preprocessed (normalised and padded) and in ``encoder``'s dtype."""

    @abstractmethod
    def prepare(
        self, model: nn.Module, embedding: torch.Tensor, tail_dtype: torch.dtype | None = None
    ) -> ImageState:
        """The per-image state for decoding ``embedding`` ``(1, C, h, w)`` float32 with
        ``model`` (a ``Sam``). ``tail_dtype``: None, or ``torch.bfloat16`` to let the
        decoder's upscaling tail take bf16 products where the engine supports it."""

    @abstractmethod
    def decode(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        dense: torch.Tensor | None = None,
        tokens: Tokens = "multi",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``B`` prompts against the prepared image.

        Args:
            sparse: ``(B, N, C)`` prompt-encoder output.
            dense: ``(B, C, h, w)`` dense prompt embeddings (only with a ``mask_input``);
                None: no mask input.
            tokens: which mask tokens to return (:data:`Tokens`).

        Returns:
            low-res logits ``(B, M, 4h, 4w)`` and predicted IoUs ``(B, M)``, ``M`` = 3, 1 or 4.
        """

    @abstractmethod
    def decode_filtered(
        self,
        state: ImageState,
        sparse: torch.Tensor,
        iou_thresh: float,
        workspace: Workspace | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multimask tokens of each of ``B`` prompts ``sparse`` ``(B, N, C)`` whose
        predicted IoU is above ``iou_thresh`` (0 or less keeps all, as in SAM), upscaled
        only for those survivors (segment everything's hot path). A NaN score passes, so
        that the caller's check sees it instead of losing the mask silently.

        Args:
            workspace: scratch buffers reused call after call (the outputs may live there:
                valid until its next use).
            out: ``(≥ 3B, 4h, 4w)`` buffer the survivors' logits are written to (its first
                ``k`` rows), when given.

        Returns:
            low-res logits ``(k, 4h, 4w)``, IoUs ``(k,)`` and the prompt index of each mask
            ``(k,)`` int64, prompt-major (prompt 0's surviving tokens first).
        """


def passing(iou: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """``(B, M)`` bool: the scores that pass ``iou_thresh`` (all for a threshold of 0 or
    less, SAM's rule; NaN always passes, see :meth:`Engine.decode_filtered`)."""
    if iou_thresh <= 0.0:
        return torch.ones_like(iou, dtype=torch.bool)
    return ~(iou <= iou_thresh)
