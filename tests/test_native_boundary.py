"""The native kernels' boundary and the choice of numerics.

- Every tensor a kernel cannot read raises ``ValueError`` before its pointer reaches C, also
  under ``python -O`` (which strips ``assert``); the golden parity cases still pass there,
  with the native kernels and with ``MOBILESAM_NATIVE=0``.
- What runs in bf16 (``precision="auto"``, and whether a bf16 tail takes bf16 products) is a
  function of the CPU's features only: no timing runs.
- ``mobilesam bench``'s recommendation is a string; it changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mobilesam.precision as precision_mod
from mobilesam.cli.bench import recommendation
from mobilesam.engine import native
from mobilesam.precision import CpuFeatures, parse_cpuinfo, resolve_precision

from .test_golden_parity import PROMPT_CASES, _check_outputs

ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(
    native.kernels() is None, reason=f"native kernels unavailable: {native.status()}"
)


def bad_calls(k: native.DecoderKernels) -> dict[str, object]:
    """``{what is wrong: a call of one of ``k``'s kernels that must raise ValueError}``, each
    from valid small arguments with one thing changed. No ``assert`` here: this also runs
    under ``python -O``."""
    g = torch.Generator().manual_seed(0)
    b, heads, t, d, n, m = 2, 2, 3, 4, 10, 5

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    def attention(**change: object) -> object:
        args = dict(
            q=rand(b, heads, t, d), k_img=rand(heads, d, n), k_pe=rand(heads, d, n),
            coef=rand(b, heads * t, m), z=rand(b, m, n), a=rand(b, n).abs(),
            v_img=rand(heads, n, d),
        )  # fmt: skip
        return lambda: k.token_attention(**{**args, **change})

    def image_attention(**change: object) -> object:
        args = dict(
            q=rand(b, heads, t, d), q_img=rand(heads, d, n), q_pe=None,
            coef=rand(b, heads * t, m), z=rand(b, m, n), a=None,
            out=torch.empty(b, heads * (t - 1), n), skip_first=True,
        )  # fmt: skip
        return lambda: k.image_attention(**{**args, **change})

    def tail(**change: object) -> object:
        side, gc, o = 4, 8, 4
        norm = SimpleNamespace(weight=rand(gc), bias=rand(gc), eps=1e-6)
        args = dict(
            shared=rand(side * side, 4 * gc), a=rand(b, side * side).abs(),
            z=rand(b, m, side * side), ew=rand(b, m, 4 * gc), bias1=rand(4 * gc), norm=norm,
            w2=rand(gc, 4 * o), b2=rand(4 * o), hyper=rand(b, t, o), size=(side, side),
            out=None,
        )  # fmt: skip
        return lambda: k.upscale_tail(**{**args, **change})

    def stats(segment: tuple, **change: object) -> object:
        args = dict(
            z=rand(b, m, n), lhs=rand(b, m + 1, m), segments=[segment], x_sum=rand(n),
            x_sq=rand(n).abs(), a=None, channels=8, eps=1e-6,
        )  # fmt: skip
        return lambda: k.layer_norm_stats(**{**args, **change})

    def linear(**change: object) -> object:
        cols = k.linear_cols or 16
        packed = k.pack_linear(rand(2 * cols, 8)) if k.linear_cols else rand(2, 8, cols)
        args = dict(x=rand(3, 8), packed=packed, bias=rand(2 * cols))
        return lambda: k.token_linear(**{**args, **change})

    def run(start: int, stop: int, values: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(start=start, stop=stop, values=values, summed=False)

    fixed, update = run(0, m), run(0, 4, rand(b, 2, 2, d))
    strided_out = torch.empty(b, heads * (t - 1), 2 * n)[..., ::2]
    return {
        "q of 3 axes": attention(q=rand(b, heads * t, d)),
        "k_img with N + 1 tokens": attention(k_img=rand(heads, d, n + 1)),
        "z of float64": attention(z=rand(b, m, n, dtype=torch.float64)),
        "z transposed": attention(z=rand(b, n, m).transpose(1, 2)),
        "v_img not contiguous": attention(v_img=rand(heads, d, n).transpose(1, 2)),
        "a of the wrong length": attention(a=rand(b, n - 1)),
        "coef without z": attention(z=None),
        "k_img on the meta device": attention(k_img=torch.empty(heads, d, n, device="meta")),
        "out with a row stride": image_attention(out=strided_out),
        "out with all tokens": image_attention(out=torch.empty(b, heads * t, n)),
        "tail out not contiguous": tail(out=torch.empty(b, t, 16, 32)[..., ::2]),
        "tail out of float64": tail(out=torch.empty(b, t, 16, 16, dtype=torch.float64)),
        "shared of the wrong grid": tail(shared=rand(5 * 5, 32)),
        "shared of float16": tail(shared=rand(16, 32, dtype=torch.float16)),
        "hyper of bfloat16": tail(hyper=rand(b, t, 4, dtype=torch.bfloat16)),
        "ew of another rank": tail(ew=rand(b, m + 1, 32)),
        "x of the wrong width": linear(x=rand(3, 9)),
        "x of float64": linear(x=rand(3, 8, dtype=torch.float64)),
        "packed in blocks of another width": linear(packed=rand(2, 8, 7)),
        "linear bias of the wrong length": linear(bias=rand(5)),
        "fixed rows past m": stats((run(1, m + 1), rand(m, n))),
        "cross of the wrong width": stats((fixed, rand(m, n + 1))),
        "update rows not H·T'": stats((run(0, 3, rand(b, 2, 2, d)), rand(2, d, n))),
        "update values of another batch": stats(
            (update, rand(2, d, n)), z=rand(b + 1, m, n), lhs=rand(b + 1, m + 1, m)
        ),
    }  # fmt: skip


#: Run by ``python -O`` in a child process: the bad calls (each must raise ValueError) and the
#: golden prompt cases through SamPredictor, written to argv[1] for the parent to compare
#: (under -O, an ``assert`` would check nothing).
_CHILD = """
import json, sys
import numpy as np, torch
from mobilesam import SamPredictor, build_sam
from mobilesam.engine import native
from tests.helpers import FIXTURE_CKPT, REFERENCE
from tests.test_golden_parity import PROMPT_CASES, _case, _prompt_kwargs
from tests.test_native_boundary import bad_calls

out = sys.argv[1]
report = {"debug": __debug__, "optimize": sys.flags.optimize, "status": native.status(), "bad": {}}
k = native.kernels()
calls = {} if k is None else bad_calls(k)
for what, call in calls.items():
    try:
        call()
        report["bad"][what] = "no error"
    except Exception as exc:
        report["bad"][what] = f"{type(exc).__name__}: {exc}"
golden = np.load(REFERENCE / "golden" / "golden.npz")
cases = json.loads((REFERENCE / "golden" / "cases.json").read_text())
sizes = {"picture1.jpg": (770, 769), "picture4.jpg": (1365, 2048)}
pred = SamPredictor(build_sam(FIXTURE_CKPT))
arrays = {}
with torch.inference_mode():
    for i, name in enumerate(cases["images"]):
        pred.set_embedding(torch.from_numpy(golden[f"img{i}/embedding"]), sizes[name])
        for key in PROMPT_CASES:
            case = _case(cases, f"img{i}/{key}")
            kw = _prompt_kwargs(case)
            masks, iou, low = pred.predict(**kw, multimask_output=case["multimask_output"])
            arrays.update({f"img{i}/{key}/masks": masks, f"img{i}/{key}/iou": iou})
            arrays[f"img{i}/{key}/low"] = low
np.savez(out + ".npz", **arrays)
with open(out + ".json", "w") as f:
    json.dump(report, f)
"""


def _run_optimized(tmp_path: Path, **env: str) -> tuple[dict, dict]:
    out = tmp_path / "child"
    result = subprocess.run(
        [sys.executable, "-O", "-c", _CHILD, str(out)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(Path(f"{out}.json").read_text())
    with np.load(f"{out}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert report["optimize"] == 1 and report["debug"] is False
    return report, arrays


def _check_golden(golden: dict, cases: dict, arrays: dict) -> None:
    for i in range(len(cases["images"])):
        for key in PROMPT_CASES:
            k = f"img{i}/{key}"
            _check_outputs(golden, k, arrays[f"{k}/masks"], arrays[f"{k}/iou"], arrays[f"{k}/low"])


def test_image_sizes_of_the_child_match_the_reference(reference, cases):
    """The child restores embeddings with these original sizes (no image decoding there)."""
    from .helpers import load_image

    sizes = {"picture1.jpg": (770, 769), "picture4.jpg": (1365, 2048)}
    assert {name: load_image(reference, name).shape[:2] for name in cases["images"]} == sizes


@needs_kernels
def test_checks_and_parity_hold_under_python_O(tmp_path, golden, cases):
    report, arrays = _run_optimized(tmp_path)
    assert report["status"].startswith("on"), report["status"]
    wrong = {what: got for what, got in report["bad"].items() if not got.startswith("ValueError")}
    assert not wrong and len(report["bad"]) == len(bad_calls(native.kernels())), wrong
    _check_golden(golden, cases, arrays)


def test_parity_under_python_O_without_native_kernels(tmp_path, golden, cases):
    """``MOBILESAM_NATIVE=0``: the PyTorch order, same golden cases."""
    report, arrays = _run_optimized(tmp_path, MOBILESAM_NATIVE="0")
    assert report["status"] == "off: MOBILESAM_NATIVE disables native kernels"
    _check_golden(golden, cases, arrays)


@needs_kernels
@pytest.mark.parametrize("what", list(bad_calls(native.kernels()) if native.kernels() else []))
def test_bad_tensor_raises_one_clear_line(what):
    call = bad_calls(native.kernels())[what]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message


@needs_kernels
def test_valid_small_calls_run():
    """The base arguments of :func:`bad_calls` are valid: each kernel runs on them."""
    k, g = native.kernels(), torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 3, 4, generator=g)
    side = torch.randn(2, 4, 10, generator=g)
    z, coef = torch.randn(2, 5, 10, generator=g), torch.randn(2, 6, 5, generator=g)
    out_v, out_z = k.token_attention(q, side, None, coef, z, None, torch.randn(2, 10, 4))
    assert out_v.shape == (2, 2, 3, 4) and out_z.shape == (2, 6, 5)
    # rows of N values with a batch stride: the kernel writes only its H·(T-1) rows
    buf = torch.full((2, 5, 10), 7.0)
    k.image_attention(q, side, None, coef, z, None, buf[:, :4], skip_first=True)
    assert (buf[:, 4] == 7.0).all() and (buf[:, :4] >= 0).all()
    heads = buf[:, :4].view(2, 2, 2, 10).sum(2)  # each head's softmax, less its first token
    assert (heads <= 1 + 1e-6).all()


def test_kernel_calls_are_by_name():
    """A C call with a missing or unexpected parameter, or an int C cannot hold, is refused
    before C runs."""
    import ctypes

    from mobilesam.engine.native.kernels import _Kernel

    class CFunction:  # stands in for a ctypes function
        def __call__(self, *args):
            raise AssertionError("C reached")

    lib = SimpleNamespace(f=CFunction())
    kernel = _Kernel(lib, "f", "test kernel", (("x", ctypes.c_void_p), ("n", ctypes.c_int)))
    assert lib.f.argtypes == [ctypes.c_void_p, ctypes.c_int] and lib.f.restype is ctypes.c_int
    with pytest.raises(TypeError, match=r"missing \['n'\], unexpected \['y'\]"):
        kernel(x=1, y=2)
    with pytest.raises(ValueError, match="n=2147483648 exceeds a C int"):
        kernel(x=1, n=2**31)


# --- deterministic numerics ------------------------------------------------------------------

INTEL_AMX = CpuFeatures("GenuineIntel", frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
INTEL_BF16 = CpuFeatures("GenuineIntel", frozenset({"avx512f", "avx512_bf16"}))
INTEL_NONE = CpuFeatures("GenuineIntel", frozenset({"avx512f"}))
AMD_BF16 = CpuFeatures("AuthenticAMD", frozenset({"avx512f", "avx512_bf16"}))
AMD_NONE = CpuFeatures("AuthenticAMD", frozenset({"avx2"}))
UNKNOWN = CpuFeatures()

#: features → (precision "auto" on the CPU, a bf16 tail takes bf16 products where the
#: AVX512-BF16 kernel is built): the table of docs/deployment.md
DECISIONS = {
    INTEL_AMX: (torch.bfloat16, True),
    INTEL_BF16: (torch.bfloat16, True),
    INTEL_NONE: (torch.float32, False),
    AMD_BF16: (torch.bfloat16, True),
    AMD_NONE: (torch.float32, False),
    UNKNOWN: (torch.float32, False),
}


@pytest.fixture
def no_timing(monkeypatch):
    """Any timing (``time.perf_counter``, ``time.monotonic``, ``time.time``) fails."""

    def timing(*args):
        raise AssertionError("a timing ran")

    for name in ("perf_counter", "perf_counter_ns", "monotonic", "time", "process_time"):
        monkeypatch.setattr(time, name, timing)


@pytest.mark.parametrize("features", list(DECISIONS), ids=lambda f: f"{f.vendor}-{len(f.flags)}")
def test_bf16_choices_are_functions_of_cpu_features(monkeypatch, no_timing, features):
    auto, tail = DECISIONS[features]
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: features)
    assert resolve_precision("auto") == resolve_precision("auto", "cpu") == auto
    assert native.bf16_tail_products(features, kernel_built=True)[0] is tail
    assert native.bf16_tail_products(features, kernel_built=False)[0] is False
    if native.kernels() is not None:
        k = native.kernels()
        assert k.bf16 is (tail and k.bf16_products)
        assert ("bf16 products" in native.status()) is (tail and k.bf16_products)
    assert (
        resolve_precision("bf16") == torch.bfloat16 and resolve_precision("fp32") == torch.float32
    )


def test_auto_on_other_devices_reads_no_cpu_flags(monkeypatch, no_timing):
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: INTEL_AMX)
    assert resolve_precision("auto", "meta") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cuda") == torch.float32


def test_cpuinfo_is_read_from_the_first_processor():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n"
        "power management:\n\nprocessor\t: 1\nvendor_id\t: Other\nflags\t\t: amx_bf16\n"
    )
    features = parse_cpuinfo(text)
    assert features == CpuFeatures("AuthenticAMD", frozenset({"fpu", "avx512f", "avx512_bf16"}))
    assert features.bf16_units and parse_cpuinfo("") == UNKNOWN


def test_bench_recommends_and_changes_nothing():
    assert recommendation(0.44, 0.21) == "--precision bf16 (encoder 2.1x faster here)"
    assert recommendation(0.44, 0.40).startswith("--precision fp32")
    assert resolve_precision("auto") == precision_mod.auto_dtype("cpu")  # unchanged by it
