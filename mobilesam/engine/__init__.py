"""Inference engines: everything that makes inference fast, behind one small interface
(:class:`Engine`), so that :mod:`mobilesam.modeling` stays SAM's modules.

Two engines give the same masks to float rounding:

- ``"cpu"`` (:class:`CpuEngine`): the factored decoding order with the native kernels, and
  the encoder's banded inference; the default on a CPU device;
- ``"plain"`` (:class:`PlainEngine`): SAM's order, the modules' ``forward``; the default on
  every other device. On CUDA the predictor runs it under ``torch.autocast`` for bf16/fp16
  (:func:`mobilesam.precision.autocast`), and batches of images through its encoder
  (``SamPredictor.set_image_batch``).

:func:`engine_for` is the one place an engine is chosen; ``SamPredictor(sam, engine=...)``
overrides it. ``docs/engine.md`` explains the interface and how to add an engine.
"""

from __future__ import annotations

import torch

from .cpu import CpuEngine
from .interface import Engine, ImageState, Tokens
from .plain import PlainEngine
from .workspace import Workspace

__all__ = [
    "ENGINES",
    "CpuEngine",
    "Engine",
    "ImageState",
    "PlainEngine",
    "Tokens",
    "Workspace",
    "engine_for",
]

#: The engines by name.
ENGINES: dict[str, type[Engine]] = {"plain": PlainEngine, "cpu": CpuEngine}


def engine_for(name: str | Engine | None, device: torch.device | str) -> Engine:
    """The engine ``name`` names: ``None`` or ``"auto"`` gives ``"cpu"`` on a CPU device and
    ``"plain"`` on any other; an :class:`Engine` instance is returned as is.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(name, Engine):
        return name
    if name is None or name == "auto":
        name = "cpu" if torch.device(device).type == "cpu" else "plain"
    if not isinstance(name, str) or name not in ENGINES:
        known = ", ".join(repr(n) for n in ("auto", *ENGINES))
        raise ValueError(f"engine must be one of {known} or an Engine, got {name!r}")
    return ENGINES[name]()
