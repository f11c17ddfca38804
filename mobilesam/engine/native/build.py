"""Building the native kernels' shared library: compiler flags for this CPU, the compiler,
and a build cached per source, flags and PyTorch version (see :mod:`mobilesam.engine.native`)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

_HERE = Path(__file__).parent
SOURCES = ("upscale_tail.c", "cross_attention.c", "layer_norm_stats.c", "token_linear.c")
HEADERS = ("common.h", "small_gemm.h")
LIBRARY = "decoder_kernels.so"


@functools.cache
def build_flags() -> tuple[str, ...] | None:
    """Compiler flags for this CPU, or None where the kernels are not offered."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    arch = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}.get(torch.backends.cpu.get_cpu_capability())
    if arch is None:
        return None
    return (
        "-O3",
        f"-march={arch}",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fopenmp",
        "-fPIC",
        "-shared",
        "-lm",
        "-Wl,--no-undefined",
    )


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, else ``gcc``, whichever is found first."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def build(cc: str, flags: tuple[str, ...]) -> Path:
    """Compile with ``cc`` (or reuse) the shared library; returns its path. Raises on
    failure."""
    from ...hub import default_cache_dir

    text = b"\0".join((_HERE / name).read_bytes() for name in SOURCES + HEADERS)
    digest = hashlib.sha256(
        b"\0".join([text, " ".join(flags).encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    out_dir = default_cache_dir() / "native" / digest
    target = out_dir / LIBRARY
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # build beside the target and rename: concurrent builders never see a partial file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *(str(_HERE / name) for name in SOURCES), "-o", tmp, *flags],
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
