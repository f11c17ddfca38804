"""The teacher's prompt encoder and mask decoder, the parts of the teacher that training
needs: read once from the teacher checkpoint, built alone (the teacher's image encoder, a
ViT-H for the paper, is never built) for the mask losses, and reused to export the student
as an official-format checkpoint (:func:`write_checkpoint`, which fine-tuning's export uses
too)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._atomic import atomic_write
from ..build import SamConfig, build_mask_decoder, build_prompt_encoder
from ..checkpoint import CheckpointError, check_state_dict, non_finite_keys, read_state_dict
from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder

#: Key prefixes of the teacher's tensors that the student keeps.
HEAD_PREFIXES: tuple[str, ...] = ("prompt_encoder.", "mask_decoder.")


@dataclass(frozen=True)
class TeacherHeads:
    """The teacher's prompt encoder and mask decoder (frozen, eval mode) and the checkpoint
    tensors they were loaded from (``prompt_encoder.*`` and ``mask_decoder.*`` keys, on the
    CPU)."""

    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    state_dict: dict[str, torch.Tensor]


def read_teacher_heads(checkpoint: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``prompt_encoder.*`` and ``mask_decoder.*`` tensors of an official-format
    checkpoint, read once on the CPU with ``weights_only=True``; the rest is dropped.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        checkpoint.CheckpointError: unreadable, or without such tensors.
    """
    sd = read_state_dict(checkpoint)
    heads = {k: v for k, v in sd.items() if k.startswith(HEAD_PREFIXES)}
    if not heads:
        raise CheckpointError(
            f"{checkpoint} holds no prompt_encoder.* or mask_decoder.* tensors: not a SAM "
            "checkpoint"
        )
    return heads


def build_teacher_heads(
    heads: Mapping[str, torch.Tensor],
    embedding_size: tuple[int, int],
    img_size: int,
    device: torch.device,
) -> TeacherHeads:
    """SAM's prompt encoder and mask decoder (the :class:`~mobilesam.build.SamConfig`
    defaults every SAM and MobileSAM checkpoint uses), loaded strictly from ``heads``
    (:func:`read_teacher_heads`), frozen, on ``device``.

    Args:
        embedding_size: ``(h, w)`` of the image embedding (64×64 for a 1024 input).
        img_size: side of the square model input in pixels, the frame of point prompts.

    Raises:
        checkpoint.CheckpointError: ``heads`` do not fit (names every offending key).
    """
    cfg = SamConfig()
    prompt_encoder = build_prompt_encoder(cfg, img_size, embedding_size)
    mask_decoder = build_mask_decoder(cfg)
    for prefix, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
        check_state_dict(module, heads, prefix)
        part = {k[len(prefix) :]: v for k, v in heads.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
        module.to(device).eval().requires_grad_(False)
    return TeacherHeads(prompt_encoder, mask_decoder, dict(heads))


def export_student(
    encoder: nn.Module,
    teacher_heads: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    mask_decoder: nn.Module | None = None,
) -> None:
    """Write an official-format checkpoint to ``path`` atomically, as a plain fp32 state dict:
    ``image_encoder.*`` from the student ``encoder``, ``prompt_encoder.*`` and
    ``mask_decoder.*`` from ``teacher_heads`` (:func:`read_teacher_heads`), the decoder's
    replaced by ``mask_decoder``'s when one is given (the fine-tuned copy).

    Raises:
        ValueError: a tensor holds a NaN or an infinity (named); nothing is written.
    """
    parts = [("image_encoder.", encoder.state_dict())]
    parts.append(("", {k: v for k, v in teacher_heads.items() if k.startswith(HEAD_PREFIXES)}))
    if mask_decoder is not None:
        parts.append(("mask_decoder.", mask_decoder.state_dict()))
    write_checkpoint({prefix + k: v for prefix, tensors in parts for k, v in tensors.items()}, path)


def write_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``state_dict`` to ``path`` atomically as an official-format checkpoint: a plain
    state dict on the CPU, floating tensors in float32 (what ``sam_model_registry`` loads).

    Raises:
        ValueError: a tensor holds a NaN or an infinity (named); nothing is written.
    """
    sd = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        sd[k] = v.float() if v.is_floating_point() else v
    bad = non_finite_keys(sd)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"not writing {path}: non-finite values in {', '.join(bad[:3])}{more} (a diverged "
            "run, or a starting checkpoint holding NaN)"
        )
    atomic_write(Path(path), lambda tmp: torch.save(sd, tmp))
