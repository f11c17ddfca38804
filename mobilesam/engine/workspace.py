"""Named scratch buffers reused call after call by the engine's inference paths."""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named scratch buffers, each grown to the largest request and reused (inference only:
    later requests overwrite earlier results). Large tensors allocated afresh on every call
    cost page faults each time; a loop that holds a workspace touches its memory once."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``shape`` tensor with ``like``'s dtype and device."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or (buf.dtype, buf.device) != (like.dtype, like.device):
            buf = self._buffers[name] = like.new_empty(n)
        return buf[:n].view(shape)
