"""Optional native kernels, compiled on first use with the system's C compiler.

One kernel today: the mask decoder's upscaling tail (``upscale_tail.c``), fused per chunk of
image tokens so its intermediates stay in the core's cache instead of crossing memory a dozen
times. It is float32, CPU, inference only; its products call the BLAS ``sgemm_`` that
PyTorch's CPU library exports (MKL on x86-64), and its threads are PyTorch's OpenMP runtime.

The shared library is built once per source, flags and PyTorch version, into
``<cache>/native/<digest>/`` (``<cache>`` as in :func:`mobilesam.hub.default_cache_dir`), and
loaded with :mod:`ctypes`. Anything missing (no compiler, another BLAS, another platform)
leaves :func:`upscale_tail` returning None, and the decoder keeps its PyTorch order: the
results agree to float32 rounding either way. ``MOBILESAM_NATIVE=0`` turns the kernels off.
:func:`status` says which path is in use and why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["UpscaleTail", "status", "upscale_tail"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("upscale_tail.c")


@functools.cache
def _build_flags() -> tuple[str, ...] | None:
    """Compiler flags for this CPU, or None where the kernel is not offered."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    arch = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}.get(torch.backends.cpu.get_cpu_capability())
    if arch is None:
        return None
    torch_lib = Path(torch.__file__).parent / "lib"
    return (
        "-O3",
        f"-march={arch}",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fopenmp",
        "-fPIC",
        "-shared",
        f"-L{torch_lib}",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_lib}",
        "-Wl,--no-undefined",
    )


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str, flags: tuple[str, ...]) -> Path:
    """Compile (or reuse) the shared library; returns its path. Raises on failure."""
    from ..hub import default_cache_dir

    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    out_dir = default_cache_dir() / "native" / digest
    target = out_dir / "upscale_tail.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # build beside the target and rename: concurrent builders never see a partial file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, str(_SOURCE), "-o", tmp, *flags],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class UpscaleTail:
    """The fused upscaling tail (see ``upscale_tail.c``), for float32 CPU tensors."""

    #: Grid rows per task: about 128 image tokens, whose intermediates (~0.5 MB) stay in a
    #: core's L2 cache.
    TOKENS_PER_TASK = 128

    def __init__(self, lib: ctypes.CDLL) -> None:
        fn = lib.mobilesam_upscale_tail_f32
        p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        fn.argtypes = [p, p, ctypes.c_long, p, p, p, p, p, f, p, p, p, p] + [i] * 9
        fn.restype = i
        self._fn = fn

    def __call__(
        self,
        shared: torch.Tensor,
        a: torch.Tensor | None,
        z: torch.Tensor | None,
        ew: torch.Tensor | None,
        bias1: torch.Tensor,
        norm: torch.nn.LayerNorm | torch.nn.Module,
        w2: torch.Tensor,
        b2: torch.Tensor,
        hyper: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Mask logits ``(B, T, 4h, 4w)``.

        Args:
            shared: ``(N, 4·G)`` the image's first-convolution product (``N = h·w`` tokens,
                ``G = C/4`` channels per sub-pixel, sub-pixel-major).
            a: ``(B, N)`` per-token scale; z: ``(B, m, N)`` coefficients (last axis
                contiguous); ew: ``(B, m, 4·G)`` rows through the first convolution; all
                three None for a transformer of depth 0.
            bias1: ``(4·G,)`` first convolution's bias; norm: its LayerNorm2d (``weight``,
                ``bias`` ``(G,)``, ``eps``).
            w2: ``(G, 4·O)`` and b2 ``(4·O,)``: the second convolution as a matrix.
            hyper: ``(B, T, O)`` hypernetwork outputs.
            size: ``(h, w)`` of the embedding grid.
        """
        h, w = size
        b, t, o = hyper.shape
        g = norm.weight.shape[0]
        m = 0 if z is None else z.shape[1]
        if z is not None:
            assert z.stride(-1) == 1 and z.stride(-2) == h * w, "z: (B, m, N) rows of N"
            a, ew = a.contiguous(), ew.contiguous()
        hyper = hyper.contiguous()
        out = hyper.new_empty(b, t, 4 * h, 4 * w)
        args = [t_ if t_ is None else t_.contiguous() for t_ in (shared, bias1, w2, b2)]
        failed = self._fn(
            args[0].data_ptr(),
            None if z is None else z.data_ptr(),
            0 if z is None else z.stride(0),
            None if ew is None else ew.data_ptr(),
            None if a is None else a.data_ptr(),
            args[1].data_ptr(),
            norm.weight.data_ptr(),
            norm.bias.data_ptr(),
            norm.eps,
            args[2].data_ptr(),
            args[3].data_ptr(),
            hyper.data_ptr(),
            out.data_ptr(),
            b,
            h,
            w,
            m,
            g,
            o,
            t,
            max(1, self.TOKENS_PER_TASK // w),
            torch.get_num_threads(),
        )
        if failed:
            raise MemoryError("the native upscaling tail could not allocate its buffers")
        return out


_STATUS: list[str] = []


@functools.cache
def upscale_tail() -> UpscaleTail | None:
    """The fused upscaling tail, built and loaded on first call; None where unavailable
    (:func:`status` says why). Thread-safe to call; the result is memoised."""
    if os.environ.get("MOBILESAM_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _STATUS.append("off: MOBILESAM_NATIVE disables native kernels")
        return None
    flags = _build_flags()
    compiler = _compiler()
    if flags is None or compiler is None:
        why = "no C compiler (cc, gcc or $CC)" if flags else "needs x86-64 Linux with AVX2"
        _STATUS.append(f"off: {why}")
        return None
    try:
        kernel = UpscaleTail(ctypes.CDLL(str(_build(compiler, flags))))
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        _STATUS.append(f"off: build or load failed: {detail.strip()[:500]}")
        _log.warning("mobilesam: native upscaling tail unavailable, using PyTorch: %s", detail)
        return None
    _STATUS.append("on: fused upscaling tail (float32, CPU)")
    return kernel


def status() -> str:
    """One line: whether the native kernels are in use, and why not if they are not."""
    upscale_tail()
    return _STATUS[-1]
