"""One precision setting for the whole product: ``"fp32"``, ``"bf16"`` or ``"auto"``.

Reduced precision runs where it pays: on a CPU with bf16 units (AVX512-BF16 or AMX) TinyViT
runs about twice as fast in bf16, and so do the two products of the decoder's upscaling tail
on CPUs with AVX512-BF16 (with :mod:`mobilesam.engine.native`: bf16 inputs, float32 sums,
LayerNorm and GELUs in float32, see :func:`mobilesam.engine.native.bf16_tail_products`;
without it, PyTorch's tail all in bf16). The
prompt encoder, the decoder's transformer (bound by memory traffic and operation count, not by
products; measured no faster in bf16), the IoU scores and the mask postprocessing stay in
float32, so scores and the returned logits are float32.

On a CUDA device, bf16 and fp16 run as PyTorch's mixed precision instead:
:func:`autocast` wraps the encoder and the mask decoder in ``torch.autocast`` (products and
convolutions in the reduced dtype, normalisations and softmax in float32, the weights as they
are), and the predictor returns float32 scores and logits. The prompt encoder, the positional
encodings and the mask postprocessing stay float32 there too.

``"auto"`` picks bf16 where the device has bf16 units (a CPU reporting ``avx512_bf16`` or
``amx_bf16``, a CUDA device with native bf16), float32 elsewhere: decided from the device's
features, never from a timing, so one machine always runs the same arithmetic
(``mobilesam bench`` times both and recommends one). It never picks float16, which CPUs run
slowly. The default everywhere is float32, so results reproduce by default. What runs in
bf16 for each CPU and setting is tabled in docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: Names accepted for each dtype (``torch.dtype`` values are accepted too).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}

PrecisionLike = str | torch.dtype | None


def resolve_precision(precision: PrecisionLike, device: torch.device | str = "cpu") -> torch.dtype:
    """The encoder dtype for ``precision``: ``None`` or ``"fp32"`` → float32, ``"bf16"`` →
    bfloat16, ``"fp16"`` → float16 (explicit only), ``"auto"`` → see the module docstring;
    a ``torch.dtype`` among those three is returned as is. Raises ``ValueError`` otherwise."""
    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype):
        if precision not in PRECISIONS.values():
            raise ValueError(
                f"precision must be torch.float32, torch.bfloat16 or torch.float16, got {precision}"
            )
        return precision
    name = ALIASES.get(str(precision).lower(), str(precision).lower())
    if name == "auto":
        return auto_dtype(torch.device(device).type)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32', 'bf16', 'fp16' or 'auto', got {precision!r}")
    return PRECISIONS[name]


def precision_name(dtype: torch.dtype) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
    return {v: k for k, v in PRECISIONS.items()}[dtype]


def autocast_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the encoder and the decoder run under ``torch.autocast`` for a predictor of
    ``dtype`` on ``device``: ``dtype`` itself for bf16 or fp16 on a CUDA device, None elsewhere
    (a CPU runs a cast copy of the encoder and its own bf16 kernels instead)."""
    if torch.device(device).type == "cuda" and dtype != torch.float32:
        return dtype
    return None


def autocast(
    device: torch.device | str, dtype: torch.dtype
) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast("cuda", dtype)`` where :func:`autocast_dtype` says so, else a context
    that does nothing."""
    chosen = autocast_dtype(device, dtype)
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=chosen)


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` whose floating-point parameters and buffers are cast to ``dtype``
    (what ``module.to(dtype)`` would do, leaving ``module`` as it is). The copy's parameters
    do not require grad; its floating tensors are made in ``dtype`` directly, without a
    transient copy in the source dtype."""
    memo: dict[int, object] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            cast = t.detach().to(dtype, copy=True)
            memo[id(t)] = (
                nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
            )
    return copy.deepcopy(module, memo)


#: The /proc/cpuinfo flags of bf16 arithmetic units.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU reports in ``/proc/cpuinfo``: its ``vendor_id`` (``"GenuineIntel"``,
    ``"AuthenticAMD"``, ...; empty where unknown) and the first processor's flags."""

    vendor: str = ""
    flags: frozenset[str] = frozenset()

    @property
    def bf16_units(self) -> bool:
        """Whether the CPU has bf16 arithmetic units (``avx512_bf16`` or ``amx_bf16``)."""
        return bool(self.flags & BF16_FLAGS)


@functools.cache
def cpu_features() -> CpuFeatures:
    """This CPU's :class:`CpuFeatures`, read once per process (empty where
    ``/proc/cpuinfo`` is missing, e.g. off Linux)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return CpuFeatures()


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The :class:`CpuFeatures` of the first processor in ``/proc/cpuinfo``'s ``text``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the end of the first processor's block
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return CpuFeatures(fields.get("vendor_id", ""), frozenset(fields.get("flags", "").split()))


def cpu_has_bf16_units() -> bool:
    """Whether this CPU reports bf16 arithmetic (``avx512_bf16`` or ``amx_bf16``)."""
    return cpu_features().bf16_units


def auto_dtype(device_type: str = "cpu") -> torch.dtype:
    """What ``precision="auto"`` runs on a device of ``device_type``: bfloat16 on a CUDA
    device with native bf16 support or a CPU with bf16 units, float32 elsewhere. Decided
    from the device's features only, never from a timing."""
    if device_type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
        return torch.bfloat16 if supported else torch.float32
    if device_type == "cpu" and cpu_features().bf16_units:
        return torch.bfloat16
    return torch.float32
