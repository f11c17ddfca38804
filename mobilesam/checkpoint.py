"""Reading official SAM / MobileSAM checkpoints: unwrap, remap, detect the architecture, and
load strictly with errors that name every offending key."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .modeling.image_encoder import VIT_PRESETS, ViTConfig
from .modeling.tiny_vit import TinyViTConfig

#: Containers that training scripts wrap a state dict in; unwrapped in this order.
WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state_dict")
#: Key prefixes stripped from every key (DataParallel / DDP / torch.compile wrappers).
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: Keys in official checkpoints that this implementation does not build, dropped on load.
#: TinyViT's ImageNet classifier head is unused by SAM.
DROP_PREFIXES: tuple[str, ...] = ("image_encoder.head.", "image_encoder.norm_head.")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names every offending key."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file on the CPU with ``weights_only=True`` and normalise it.

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: the file holds no recognisable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not reason or reason.isdigit() or len(reason) < 8:  # e.g. a bare byte value
            reason = f"{type(exc).__name__} ({reason or 'no detail'}): not a PyTorch file?"
        raise CheckpointError(
            f"could not read {path} as a PyTorch checkpoint with weights_only=True: {reason}"
        ) from exc
    return normalize_state_dict(obj, source=str(path))


def normalize_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": ...}``-style containers, strip ``module.`` prefixes, drop
    :data:`DROP_PREFIXES` keys."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:10]}"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith(DROP_PREFIXES):
            continue
        out[key] = value
    return out


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_model_type(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture of a normalised state dict.

    Returns:
        ``"vit_t"`` for MobileSAM's TinyViT-5M, ``"tiny_vit_custom"`` for a TinyViT of other
        dimensions, a ``VIT_PRESETS`` key for SAM's ViTs, or ``"vit_custom"`` for a ViT of
        another size.

    Raises:
        CheckpointError: not a SAM-family checkpoint.
    """
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in sd:
        return "vit_t" if infer_tiny_vit_config(sd) == TinyViTConfig() else "tiny_vit_custom"
    if "image_encoder.patch_embed.proj.weight" in sd:
        cfg = infer_vit_config(sd)
        return next((k for k, v in VIT_PRESETS.items() if v == cfg), "vit_custom")
    raise CheckpointError(
        "not a SAM/MobileSAM checkpoint: neither TinyViT keys "
        "('image_encoder.layers.*') nor ViT keys ('image_encoder.patch_embed.proj.*') found"
    )


def _block_count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_tiny_vit_config(sd: Mapping[str, torch.Tensor]) -> TinyViTConfig:
    """TinyViT encoder architecture from the shapes of its weights."""
    p = "image_encoder."
    n_layers = _block_count(sd, re.escape(p) + r"layers\.(\d+)\.")
    dims, depths, heads, windows = [], [], [], []
    for i in range(n_layers):
        depths.append(_block_count(sd, re.escape(f"{p}layers.{i}.blocks.") + r"(\d+)\."))
        if i == 0:
            w = sd[f"{p}layers.0.blocks.0.conv1.c.weight"]
            dims.append(w.shape[1])
            expand = w.shape[0] / w.shape[1]
            # Stage 0 is convolutional: heads and window are unused; keep the official values.
            heads.append(TinyViTConfig().num_heads[0])
            windows.append(TinyViTConfig().window_sizes[0])
            continue
        bias = sd[f"{p}layers.{i}.blocks.0.attn.attention_biases"]
        dims.append(sd[f"{p}layers.{i}.blocks.0.attn.norm.weight"].shape[0])
        heads.append(bias.shape[0])
        windows.append(math.isqrt(bias.shape[1]))
    fc1 = sd[f"{p}layers.1.blocks.0.mlp.fc1.weight"]
    return TinyViTConfig(
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        mbconv_expand_ratio=expand,
        local_conv_size=sd[f"{p}layers.1.blocks.0.local_conv.c.weight"].shape[-1],
        out_chans=sd[f"{p}neck.0.weight"].shape[0],
    )


def infer_vit_config(sd: Mapping[str, torch.Tensor]) -> ViTConfig:
    """SAM ViT encoder architecture from the shapes of its weights."""
    p = "image_encoder."
    proj = sd[f"{p}patch_embed.proj.weight"]
    embed_dim, patch = proj.shape[0], proj.shape[-1]
    depth = _block_count(sd, re.escape(f"{p}blocks.") + r"(\d+)\.")
    pos = sd.get(f"{p}pos_embed")
    grid = pos.shape[1] if pos is not None else 64
    use_rel_pos = f"{p}blocks.0.attn.rel_pos_h" in sd
    window, global_idx, head_dim = 0, [], 64
    for i in range(depth):
        rel = sd.get(f"{p}blocks.{i}.attn.rel_pos_h")
        if rel is None:
            continue
        head_dim = rel.shape[1]
        if rel.shape[0] == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (rel.shape[0] + 1) // 2
    lin1 = sd[f"{p}blocks.0.mlp.lin1.weight"]
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=lin1.shape[0] / lin1.shape[1],
        out_chans=sd[f"{p}neck.0.weight"].shape[0],
        qkv_bias=f"{p}blocks.0.attn.qkv.bias" in sd,
        use_abs_pos=pos is not None,
        use_rel_pos=use_rel_pos,
        window_size=window,
        global_attn_indexes=tuple(global_idx),
    )


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected and misshapen key.

    Args:
        model: the module to load into.
        sd: normalised state dict.
        prefix: only keys of ``sd`` under this prefix are compared (prefix removed).
    """
    expected = model.state_dict()
    given = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [f"checkpoint does not match {type(model).__name__}:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", shapes),
        ):
            if items:
                parts.append(f"  {len(items)} {title}: " + ", ".join(prefix + i for i in items))
        raise CheckpointError("\n".join(parts))


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Check then load ``sd`` into ``model`` (keys must match exactly)."""
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
