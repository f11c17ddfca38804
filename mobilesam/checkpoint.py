"""Reading official SAM / MobileSAM checkpoints: unwrap, remap, detect the architecture, and
load strictly with errors that name every offending key."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

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


#: Keys named per kind of problem in an error message before "… and N more".
NAMED_KEYS = 10

#: What each encoder family's checkpoints look like, as error messages name them.
TINY_VIT_ARCH = "MobileSAM TinyViT encoder (image_encoder.layers.N.*)"
VIT_ARCH = "SAM ViT encoder (image_encoder.patch_embed.*, image_encoder.blocks.N.*)"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model, or is damaged; the one-line message names the
    offending keys (the first :data:`NAMED_KEYS` of each kind, and how many in all)."""


def first_few(keys: list[str], limit: int = NAMED_KEYS) -> str:
    """The first ``limit`` of ``keys`` joined by commas, then "… and N more" if there are
    more (for one-line error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file on the CPU with ``weights_only=True``, normalise it and check
    its tensors (:func:`checked_state_dict`).

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: the file holds no recognisable state dict, or a damaged one (NaN/inf
            values, tensors without data).
    """
    return checked_state_dict(load_checkpoint(path), source=str(path))


def load_checkpoint(path: str | os.PathLike[str]) -> object:
    """The object a checkpoint file holds, loaded on the CPU with ``weights_only=True``
    (not yet normalised or checked: see :func:`checked_state_dict`).

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: not a file that ``torch.load`` reads with ``weights_only=True``.
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
    return obj


def checked_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """:func:`normalize_state_dict` then :func:`check_tensors`: the state dict of ``obj``,
    whose tensors all hold finite data; ``source`` names it in errors."""
    sd = normalize_state_dict(obj, source)
    check_tensors(sd, source)
    return sd


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite, in one pass without a mask the size of ``t``
    (NaN and ±inf reach the minimum or the maximum); non-float tensors are."""
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        return True
    if t.is_complex():
        t = torch.view_as_real(t)
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def non_finite_keys(tensors: Mapping[str, object]) -> list[str]:
    """The keys of ``tensors`` whose value is a tensor holding NaN or ±inf, sorted (other
    values are skipped)."""
    return sorted(
        k for k, v in tensors.items() if isinstance(v, torch.Tensor) and not all_finite(v)
    )


def check_tensors(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the tensors of ``sd`` that hold no data (meta or
    sparse tensors) or any NaN/inf value: a model built from them would give NaN scores or
    empty masks, so none is built."""
    empty = sorted(k for k, v in sd.items() if v.is_meta or v.layout != torch.strided)
    if empty:
        raise CheckpointError(
            f"{source}: {len(empty)} tensors hold no data (meta or sparse): {first_few(empty)}"
        )
    bad = non_finite_keys(sd)
    if bad:
        count = "1 tensor holds" if len(bad) == 1 else f"{len(bad)} tensors hold"
        raise CheckpointError(
            f"{source}: {count} NaN/inf values: {first_few(bad, 5)}; the checkpoint is damaged (a "
            "diverged training run or a corrupted file): use another one"
        )


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
        if not isinstance(key, str):
            raise CheckpointError(
                f"{source}: key {key!r} is a {type(key).__name__}, not a parameter name: "
                "not a PyTorch state dict"
            )
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
        CheckpointError: not a SAM-family checkpoint, or one whose architecture keys are
            missing or malformed (one line naming them and the architecture expected).
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


class _Shapes:
    """Reads the shapes an architecture is inferred from: each named tensor must be there,
    with ``ndim`` dimensions none of which is empty, else a :class:`CheckpointError` names it
    and the architecture (``arch``) expected."""

    def __init__(self, sd: Mapping[str, torch.Tensor], arch: str) -> None:
        self.sd, self.arch = sd, arch

    def __call__(self, key: str, ndim: int) -> tuple[int, ...]:
        t = self.sd.get(key)
        if t is None:
            self.fail(f"{key} is missing")
        shape = tuple(t.shape)
        if len(shape) != ndim or 0 in shape:
            self.fail(f"{key} has shape {shape}, not {ndim} non-empty dimensions")
        return shape

    def fail(self, what: str) -> NoReturn:
        raise CheckpointError(f"malformed checkpoint for a {self.arch}: {what}")


def infer_tiny_vit_config(sd: Mapping[str, torch.Tensor]) -> TinyViTConfig:
    """TinyViT encoder architecture from the shapes of its weights.

    Raises:
        CheckpointError: a tensor it is inferred from is missing or malformed, or a stage
            has no blocks.
    """
    p = "image_encoder."
    need = _Shapes(sd, TINY_VIT_ARCH)
    n_layers = _block_count(sd, re.escape(p) + r"layers\.(\d+)\.")
    if n_layers < 2:
        need.fail(f"it needs at least 2 stages ({p}layers.0 and {p}layers.1), found {n_layers}")
    dims, depths, heads, windows = [], [], [], []
    for i in range(n_layers):
        depths.append(_block_count(sd, re.escape(f"{p}layers.{i}.blocks.") + r"(\d+)\."))
        if depths[-1] == 0:
            need.fail(f"stage {p}layers.{i} has no blocks ({p}layers.{i}.blocks.0.* missing)")
        if i == 0:
            out_ch, in_ch = need(f"{p}layers.0.blocks.0.conv1.c.weight", 4)[:2]
            dims.append(in_ch)
            expand = out_ch / in_ch
            # Stage 0 is convolutional: heads and window are unused; keep the official values.
            heads.append(TinyViTConfig().num_heads[0])
            windows.append(TinyViTConfig().window_sizes[0])
            continue
        bias = need(f"{p}layers.{i}.blocks.0.attn.attention_biases", 2)
        dims.append(need(f"{p}layers.{i}.blocks.0.attn.norm.weight", 1)[0])
        heads.append(bias[0])
        windows.append(math.isqrt(bias[1]))
    fc1 = need(f"{p}layers.1.blocks.0.mlp.fc1.weight", 2)
    return TinyViTConfig(
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        mlp_ratio=fc1[0] / fc1[1],
        mbconv_expand_ratio=expand,
        local_conv_size=need(f"{p}layers.1.blocks.0.local_conv.c.weight", 4)[-1],
        out_chans=need(f"{p}neck.0.weight", 4)[0],
    )


def infer_vit_config(sd: Mapping[str, torch.Tensor]) -> ViTConfig:
    """SAM ViT encoder architecture from the shapes of its weights.

    Raises:
        CheckpointError: a tensor it is inferred from is missing or malformed, or there are
            no blocks.
    """
    p = "image_encoder."
    need = _Shapes(sd, VIT_ARCH)
    proj = need(f"{p}patch_embed.proj.weight", 4)
    embed_dim, patch = proj[0], proj[-1]
    depth = _block_count(sd, re.escape(f"{p}blocks.") + r"(\d+)\.")
    if depth == 0:
        need.fail(f"it has no blocks ({p}blocks.0.* missing)")
    grid = need(f"{p}pos_embed", 4)[1] if f"{p}pos_embed" in sd else 64
    use_rel_pos = f"{p}blocks.0.attn.rel_pos_h" in sd
    window, global_idx, head_dim = 0, [], 64
    for i in range(depth):
        key = f"{p}blocks.{i}.attn.rel_pos_h"
        if key not in sd:
            continue
        rel = need(key, 2)
        head_dim = rel[1]
        if rel[0] == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (rel[0] + 1) // 2
    lin1 = need(f"{p}blocks.0.mlp.lin1.weight", 2)
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(1, embed_dim // head_dim),
        mlp_ratio=lin1[0] / lin1[1],
        out_chans=need(f"{p}neck.0.weight", 4)[0],
        qkv_bias=f"{p}blocks.0.attn.qkv.bias" in sd,
        use_abs_pos=f"{p}pos_embed" in sd,
        use_rel_pos=use_rel_pos,
        window_size=window,
        global_attn_indexes=tuple(global_idx),
    )


def check_state_dict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    prefix: str = "",
    *,
    expected: str | None = None,
    source: str | None = None,
) -> None:
    """Raise :class:`CheckpointError` naming the missing, unexpected and misshapen keys (the
    first :data:`NAMED_KEYS` of each kind and their number), in one line.

    Args:
        model: the module to load into.
        sd: normalised state dict.
        prefix: only keys of ``sd`` under this prefix are compared (prefix removed).
        expected: the architecture named in the message (default: the module's class).
        source: the checkpoint named in the message (e.g. its path).
    """
    want = model.state_dict()
    given = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = sorted(set(want) - set(given))
    unexpected = sorted(set(given) - set(want))
    shapes = sorted(
        f"{prefix}{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(want[k].shape)}"
        for k in set(want) & set(given)
        if tuple(given[k].shape) != tuple(want[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (
            ("missing keys", [prefix + k for k in missing]),
            ("unexpected keys", [prefix + k for k in unexpected]),
            ("wrong shapes", shapes),
        ):
            if items:
                parts.append(f"{len(items)} {title}: {first_few(items)}")
        head = f"{source}: " if source else ""
        raise CheckpointError(
            f"{head}checkpoint does not match {expected or type(model).__name__}: "
            + "; ".join(parts)
        )


def load_state_dict_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    expected: str | None = None,
    source: str | None = None,
) -> None:
    """Check then load ``sd`` into ``model`` (keys must match exactly); ``expected`` and
    ``source`` name the architecture and the checkpoint in errors (:func:`check_state_dict`)."""
    check_state_dict(model, sd, expected=expected, source=source)
    model.load_state_dict(sd, strict=True)
