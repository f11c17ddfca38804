"""One precision setting for the whole product: ``"fp32"``, ``"bf16"`` or ``"auto"``.

Reduced precision runs where it pays: on a CPU with bf16 units (AVX512-BF16 or AMX) TinyViT
runs about twice as fast in bf16, and so do the two products of the decoder's upscaling tail
(with :mod:`mobilesam.native`: bf16 inputs, float32 sums, LayerNorm and GELUs in float32;
without it, PyTorch's tail all in bf16). The prompt encoder, the decoder's transformer (bound
by memory traffic and operation count, not by products; measured no faster in bf16), the IoU
scores and the mask postprocessing stay in float32, so scores and the returned logits are
float32.

``"auto"`` picks bf16 only where the CPU reports bf16 units *and* a quick check (a few
512×512 products, about 20 ms, once per process) finds bf16 faster; otherwise float32. It
never picks float16, which CPUs run slowly. The default everywhere is float32, so results
reproduce by default.
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
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
        return torch.bfloat16 if bf16_is_faster(str(torch.device(device).type)) else torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
    return PRECISIONS[name]


def precision_name(dtype: torch.dtype) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
    return {v: k for k, v in PRECISIONS.items()}[dtype]


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


def cpu_has_bf16_units() -> bool:
    """Whether this CPU reports bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``; False where that file is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=4)
def bf16_is_faster(device_type: str = "cpu") -> bool:
    """Whether bf16 should run the encoder on ``device_type`` (memoised per process)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu" or not cpu_has_bf16_units():
        return False
    return _matmul_seconds(torch.bfloat16) * 1.2 < _matmul_seconds(torch.float32)


def _matmul_seconds(dtype: torch.dtype, n: int = 512, repeats: int = 3) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up (kernel selection, packing)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best
