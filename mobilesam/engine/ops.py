"""Small tensor helpers the engine's fast paths share: a transposed convolution as a matrix,
and GELU in place (inference only)."""

from __future__ import annotations

import torch
from torch import nn


def conv_transpose_matrix(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2, stride-2 transposed convolution as a matrix product on pixels in rows:
    the ``(C, O, 2, 2)`` kernel as a ``(C, 4·O)`` matrix with sub-pixel-major columns, and
    the bias repeated per sub-pixel ``(4·O,)``."""
    c, o = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(c, 4 * o), conv.bias.repeat(4)


def gelu_(x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(x)`` in place, for an ``nn.GELU`` ``act`` (inference only)."""
    return torch.ops.aten.gelu_(x, approximate=act.approximate)
