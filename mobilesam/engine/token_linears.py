"""The decoder's token-side linear layers through the native small-row kernel.

Per prompt, the two-way transformer's token side multiplies a handful of rows (``T`` = 7 for
one point) by weights of up to ``256 × 2048``; a BLAS GEMM tuned for many rows spends most of
that call packing. :class:`TokenLinears` holds each such layer's weight packed once per image
state (so it follows the weights as the state does) and runs it with
:meth:`~mobilesam.engine.native.DecoderKernels.token_linear`: the same products, summed in
another order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..modeling.common import MLPBlock
from . import native, tuning


class TokenLinears:
    """The packed weights of a mask decoder's transformer linear layers, by module."""

    def __init__(self, decoder: nn.Module, kernels: native.DecoderKernels) -> None:
        self._kernels = kernels
        self._packed: dict[nn.Linear, torch.Tensor] = {}
        for module in decoder.transformer.modules():
            if isinstance(module, nn.Linear):
                packed = kernels.pack_linear(module.weight)
                if packed is not None:
                    self._packed[module] = packed

    @classmethod
    def of(cls, decoder: nn.Module) -> TokenLinears | None:
        """The decoder's packed layers where the kernel is offered (float32 weights on an
        AVX-512 CPU), else None."""
        kernels = native.kernels()
        if kernels is None or not kernels.linear_cols:
            return None
        linears = cls(decoder, kernels)
        return linears if linears._packed else None

    def __call__(self, layer: nn.Linear, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """``layer(x)`` (then ReLU with ``relu``), natively where ``x`` has few rows."""
        packed = self._packed.get(layer)
        if packed is None or x.numel() > tuning.TOKEN_LINEAR_MAX_ROWS * x.shape[-1]:
            y = layer(x)
            return y.relu_() if relu else y
        return self._kernels.token_linear(x, packed, layer.bias, relu)

    def mlp(self, block: MLPBlock) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``block``'s function with its ReLU fused into the first layer (None for another
        activation)."""
        if type(block.act) is not nn.ReLU:
            return None
        return lambda x: self(block.lin2, self(block.lin1, x, relu=True))
