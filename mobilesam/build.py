"""Model configs, the registry, and builders (``sam_model_registry[key](checkpoint=...)``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from .checkpoint import (
    TINY_VIT_ARCH,
    VIT_ARCH,
    CheckpointError,
    checked_state_dict,
    detect_model_type,
    infer_tiny_vit_config,
    infer_vit_config,
    load_checkpoint,
    load_state_dict_strict,
)
from .device import resolve_device
from .modeling.image_encoder import VIT_PRESETS, ImageEncoderViT, ViTConfig
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import Sam
from .modeling.tiny_vit import TinyViT, TinyViTConfig
from .modeling.transformer import TwoWayTransformer

EncoderConfig = TinyViTConfig | ViTConfig


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM-family model: its image encoder plus SAM's prompt encoder and decoder."""

    encoder: EncoderConfig = field(default_factory=TinyViTConfig)
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


#: The one registry of named architectures.
MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_t": SamConfig(encoder=TinyViTConfig()),
    "vit_b": SamConfig(encoder=VIT_PRESETS["vit_b"]),
    "vit_l": SamConfig(encoder=VIT_PRESETS["vit_l"]),
    "vit_h": SamConfig(encoder=VIT_PRESETS["vit_h"]),
}


def encoder_stride(cfg: EncoderConfig) -> int:
    """Pixels per embedding cell (16 for every SAM and MobileSAM encoder)."""
    if isinstance(cfg, ViTConfig):
        return cfg.patch_size
    return 4 * 2 ** (len(cfg.embed_dims) - 2) * cfg.last_downsample_stride


def build_image_encoder(cfg: EncoderConfig) -> nn.Module:
    """Image encoder for an encoder config."""
    return TinyViT(cfg) if isinstance(cfg, TinyViTConfig) else ImageEncoderViT(cfg)


def build_prompt_encoder(cfg: SamConfig, img_size: int, grid: tuple[int, int]) -> PromptEncoder:
    """SAM's prompt encoder for ``img_size``-pixel square inputs and a ``grid`` ``(h, w)``
    image embedding."""
    return PromptEncoder(
        embed_dim=cfg.prompt_embed_dim,
        image_embedding_size=grid,
        input_image_size=(img_size, img_size),
        mask_in_chans=cfg.mask_in_chans,
    )


def build_mask_decoder(cfg: SamConfig) -> MaskDecoder:
    """SAM's mask decoder (two-way transformer, upscaling, hypernetworks, IoU head)."""
    return MaskDecoder(
        transformer_dim=cfg.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.prompt_embed_dim,
            mlp_dim=cfg.decoder_mlp_dim,
            num_heads=cfg.decoder_heads,
        ),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )


def build_sam_from_config(cfg: SamConfig) -> Sam:
    """An untrained :class:`Sam` in eval mode, with randomly initialised weights."""
    enc = cfg.encoder
    grid = enc.img_size // encoder_stride(enc)
    model = Sam(
        image_encoder=build_image_encoder(enc),
        prompt_encoder=build_prompt_encoder(cfg, enc.img_size, (grid, grid)),
        mask_decoder=build_mask_decoder(cfg),
    )
    return model.eval()


def build_sam(
    checkpoint: str | os.PathLike[str] | None = None,
    model_type: str | None = None,
    device: str | torch.device | None = None,
) -> Sam:
    """Build a model, optionally loading a checkpoint strictly.

    Args:
        checkpoint: path to an official-format checkpoint (plain state dict, ``{"model": ...}``
            wrapper or ``module.``-prefixed keys are all accepted).
        model_type: a :data:`MODEL_CONFIGS` key; detected from the checkpoint's keys and shapes
            when None.
        device: where the model goes (``sam.to(device)``): ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"``, a ``torch.device``, or ``"auto"`` (CUDA where available,
            see :func:`mobilesam.device.resolve_device`); None leaves it on the CPU, as SAM
            does. Predictors and generators run on the model's device.

    Raises:
        ValueError: unknown ``model_type``, or neither argument given.
        mobilesam.device.DeviceUnavailable: a ``device`` this machine does not have (a
            ValueError naming the devices it has), checked before anything is loaded.
        FileNotFoundError: no file at ``checkpoint``.
        checkpoint.CheckpointError: the checkpoint is unreadable, damaged (NaN/inf values) or
            does not fit: one line naming the offending keys and the architecture expected
            (:func:`sam_from_state_dict`).
    """
    target = None if device is None else resolve_device(device)
    if checkpoint is None:
        if model_type is None:
            raise ValueError("build_sam needs a checkpoint, a model_type, or both")
        model = build_sam_from_config(_config(model_type))
    else:
        model = sam_from_state_dict(load_checkpoint(checkpoint), model_type, source=str(checkpoint))
    return model if target is None else model.to(target)


def sam_from_state_dict(
    state: object, model_type: str | None = None, source: str = "checkpoint"
) -> Sam:
    """A model holding the weights of ``state``, a state dict in any accepted format (see
    :func:`build_sam`), loaded strictly; ``source`` names it in errors.

    Raises:
        ValueError: unknown ``model_type``.
        checkpoint.CheckpointError: one line naming the missing, malformed, misshapen or
            non-finite tensors and the architecture expected.
    """
    preset = _config(model_type) if model_type is not None else None
    sd = checked_state_dict(state, source)
    if preset is not None:
        cfg = preset
        model = build_sam_from_config(cfg)
        expected = f"{model_type}, a {_arch(cfg.encoder)}"
    else:
        try:
            detected = detect_model_type(sd)
            if detected in MODEL_CONFIGS:
                cfg = MODEL_CONFIGS[detected]
            elif detected == "tiny_vit_custom":
                cfg = SamConfig(encoder=infer_tiny_vit_config(sd))
            else:
                cfg = SamConfig(encoder=infer_vit_config(sd))
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        expected = f"the {_arch(cfg.encoder)} its shapes describe"
        try:
            model = build_sam_from_config(cfg)
        except (ValueError, RuntimeError, ArithmeticError, AssertionError, IndexError) as exc:
            # shapes that are each well formed but do not make a model together
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{source}: {expected} cannot be built ({reason}); its encoder config would be "
                f"{cfg.encoder}"
            ) from exc
    load_state_dict_strict(model, sd, expected=expected, source=source)
    return model


def _arch(cfg: EncoderConfig) -> str:
    return TINY_VIT_ARCH if isinstance(cfg, TinyViTConfig) else VIT_ARCH


def _config(model_type: str) -> SamConfig:
    if model_type == "default":
        model_type = "vit_h"
    if model_type not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown model_type {model_type!r}; choose one of {sorted(MODEL_CONFIGS)} or 'default'"
        )
    return MODEL_CONFIGS[model_type]


def _registry_builder(model_type: str) -> Callable[..., Sam]:
    fn = partial(build_sam, model_type=model_type)

    def builder(
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
    ) -> Sam:
        return fn(checkpoint=checkpoint, device=device)

    builder.__name__ = f"build_sam_{model_type}"
    builder.__doc__ = (
        f"Build ``{model_type}``, load ``checkpoint`` (if given) strictly and move it to "
        "``device`` (if given; see :func:`build_sam`)."
    )
    return builder


build_sam_vit_t = _registry_builder("vit_t")
build_sam_vit_b = _registry_builder("vit_b")
build_sam_vit_l = _registry_builder("vit_l")
build_sam_vit_h = _registry_builder("vit_h")

#: Drop-in for ``segment_anything.sam_model_registry`` / ``mobile_sam.sam_model_registry``.
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
}
