"""Optional native kernels for the mask decoder, compiled on first use with the system's C
compiler.

Three kernels, each fusing a run of the fast decoder (:mod:`mobilesam.modeling.decoder_cache`)
that PyTorch would run as a dozen operations over ``N`` image tokens, so that the
intermediates stay in a core's cache instead of crossing memory each time:

- ``upscale_tail.c``: the upscaling tail (first convolution from its factors, LayerNorm,
  GELUs, second convolution, hypernetwork product, pixel layout);
- ``cross_attention.c``: both cross-attentions over the factored image tokens: token→image
  (scores, softmax, pooling, merged across chunks of the image as in flash attention) and
  image→token (scores and softmax, written into the factored form's coefficients);
- ``layer_norm_stats.c``: the LayerNorm statistics of the factored image tokens.

They are float32, CPU, inference only; their products call the BLAS ``sgemm_`` that
PyTorch's CPU library exports (MKL on x86-64), and their threads are PyTorch's OpenMP
runtime. The shared library is built once per source, flags and PyTorch version, into
``<cache>/native/<digest>/`` (``<cache>`` as in :func:`mobilesam.hub.default_cache_dir`),
and loaded with :mod:`ctypes`. Anything missing (no compiler, another BLAS, another
platform) leaves :func:`kernels` returning None, and the decoder keeps its PyTorch order:
results agree to float32 rounding either way. ``MOBILESAM_NATIVE=0`` turns the kernels off;
:func:`status` says which path is in use and why.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess

import torch

from .build import build, build_flags, compiler
from .kernels import DecoderKernels

__all__ = ["DecoderKernels", "kernels", "kernels_for", "status"]

_log = logging.getLogger(__name__)
_STATUS: list[str] = []


@functools.cache
def kernels() -> DecoderKernels | None:
    """The decoder's native kernels, built and loaded on first call; None where unavailable
    (:func:`status` says why). The result is memoised."""
    if os.environ.get("MOBILESAM_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _STATUS.append("off: MOBILESAM_NATIVE disables native kernels")
        return None
    flags, cc = build_flags(), compiler()
    if flags is None or cc is None:
        why = "no C compiler (cc, gcc or $CC)" if flags else "needs x86-64 Linux with AVX2"
        _STATUS.append(f"off: {why}")
        return None
    try:
        loaded = DecoderKernels(ctypes.CDLL(str(build(cc, flags))))
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        _STATUS.append(f"off: build or load failed: {detail.strip()[:500]}")
        _log.warning("mobilesam: native decoder kernels unavailable, using PyTorch: %s", detail)
        return None
    bf16 = "available" if loaded.bf16_products else "unavailable"
    _STATUS.append(f"on (CPU; bf16 tail products {bf16})")
    return loaded


def kernels_for(*tensors: torch.Tensor, check_grad: bool = True) -> DecoderKernels | None:
    """:func:`kernels` where they apply to ``tensors``: all float32 on the CPU, in eager
    inference (no gradient recorded, unless ``check_grad`` is False; not tracing)."""
    if (
        (check_grad and torch.is_grad_enabled())
        or torch.jit.is_tracing()
        or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors)
    ):
        return None
    return kernels()


def status() -> str:
    """One line: whether the native kernels are in use, and why not if they are not."""
    kernels()
    return _STATUS[-1]
