"""Optional native kernels for the mask decoder, compiled on first use with the system's C
compiler.

Four kernels, each fusing a run of the CPU engine's decoder
(:mod:`mobilesam.engine.factored_decode`) that PyTorch would run as a dozen operations, so
that the intermediates stay in a core's cache instead of crossing memory each time:

- ``upscale_tail.c``: the upscaling tail (first convolution from its factors, LayerNorm,
  GELUs, second convolution, hypernetwork product, pixel layout);
- ``cross_attention.c``: both cross-attentions over the factored image tokens: token→image
  (scores, softmax, pooling, merged across chunks of the image as in flash attention) and
  image→token (scores and softmax, written into the factored form's coefficients);
- ``layer_norm_stats.c``: the LayerNorm statistics of the factored image tokens;
- ``token_linear.c``: the transformer's linear layers on a few prompt tokens.

They are CPU, inference only, float32 (the tail's two products bfloat16 where the CPU has
AVX512-BF16). Their products are few rows against rows of contiguous values, accumulated in
vector registers (``small_gemm.h``); they need no BLAS, and their threads are OpenMP's.
The shared library is built once per source, flags and PyTorch version, into
``<cache>/native/<digest>/`` (``<cache>`` as in :func:`mobilesam.hub.default_cache_dir`),
and loaded with :mod:`ctypes`. Anything missing (no compiler, another platform) leaves
:func:`kernels` returning None, and the decoder keeps its PyTorch order: results agree to
float32 rounding either way. ``MOBILESAM_NATIVE=0`` turns the kernels off; :func:`status`
says which path is in use and why.

Every tensor is checked before its pointer reaches C (:mod:`.kernels`: a
:class:`ValueError`, also under ``python -O``). With bf16 precision the tail's two products
take bf16 only where :func:`bf16_tail_products` says so, from the CPU's features; nothing
here is chosen by a timing. Where the kernels run is the engine's decision:
:func:`applicable` is a pure check of the tensors, reading no global mode.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess

import torch

from ... import precision
from .build import build, build_flags, compiler
from .kernels import DecoderKernels, bf16_tail_products

__all__ = ["DecoderKernels", "applicable", "bf16_tail_products", "kernels", "status"]

_log = logging.getLogger(__name__)


def kernels() -> DecoderKernels | None:
    """The decoder's native kernels, built and loaded on first call; None where unavailable
    (:func:`status` says why). The result is memoised."""
    return _load()[0]


@functools.cache
def _load() -> tuple[DecoderKernels | None, str]:
    """The kernels (or None) and one line on why they are on or off."""
    if os.environ.get("MOBILESAM_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "off: MOBILESAM_NATIVE disables native kernels"
    flags, cc = build_flags(), compiler()
    if flags is None or cc is None:
        why = "no C compiler (cc, gcc or $CC)" if flags else "needs x86-64 Linux with AVX2"
        return None, f"off: {why}"
    try:
        return DecoderKernels(ctypes.CDLL(str(build(cc, flags)))), "on (CPU)"
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        _log.warning("mobilesam: native decoder kernels unavailable, using PyTorch: %s", detail)
        return None, f"off: build or load failed: {detail.strip()[:500]}"


def applicable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take ``tensors`` (the activations a decoder step reads): all
    float32 on the CPU, none requiring gradients (the kernels record none). A pure check of
    the tensors; where the kernels run is the caller's (the engine's) decision."""
    return all(t.is_cpu and t.dtype == torch.float32 and not t.requires_grad for t in tensors)


def status() -> str:
    """One line: whether the native kernels are in use, and why not if they are not; when
    on, whether a bf16 tail takes bf16 products here, and why."""
    loaded, line = _load()
    if loaded is None:
        return line
    bf16, why = bf16_tail_products(precision.cpu_features(), loaded.bf16_products)
    return f"on (CPU; a bf16 tail takes {'bf16' if bf16 else 'float32'} products: {why})"
