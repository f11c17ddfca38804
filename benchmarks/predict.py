"""``predict`` on the CPU: this project's engines and precisions against the official code,
with the operation count and where one call's time goes.

Every path runs in this process on the same weights, photo and threads, interleaved round by
round (see ``common.interleaved``): the fast CPU engine in fp32 and bf16, the plain engine
(SAM's order), and the official ``mobile_sam`` package. For the fast fp32 path it also
reports:
- the operation count of one call: top-level PyTorch operations and aten calls
  (``torch.profiler``), and native kernel calls;
- the breakdown of one call: each native kernel's time (timed around its Python wrapper),
  the ``linear`` operations, and the rest (other PyTorch operations and Python).

Usage: ``python benchmarks/predict.py [--threads 2] [--repeats 15] [--json PATH]``
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    add_official_argument,
    argument_parser,
    describe_machine,
    import_official,
    interleaved,
    machine_info,
    matmul_peak,
    official_model,
    print_table,
    summary,
    write_json,
)

from mobilesam import SamPredictor, build_sam  # noqa: E402
from mobilesam.engine.native.kernels import DecoderKernels  # noqa: E402

CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
POINT, LABEL = np.array([[400, 380]]), np.array([1])
#: The native kernels' Python entry points, timed one by one in the breakdown.
KERNELS = (
    "upscale_tail", "token_attention", "image_attention", "layer_norm_stats", "token_linear"
)


def breakdown(predictor: SamPredictor, calls: int = 30) -> dict[str, float]:
    """Milliseconds per ``predict`` spent in each native kernel, in ``linear``s and in the
    rest, plus the operation counts (medians over ``calls`` calls)."""
    spent: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    originals = {}
    for name in KERNELS:
        fn = getattr(DecoderKernels, name, None)
        if fn is None:
            continue
        originals[name] = fn

        @functools.wraps(fn)
        def timed(*args, __fn=fn, __name=name, **kwargs):
            start = time.perf_counter()
            try:
                return __fn(*args, **kwargs)
            finally:
                spent[__name] += time.perf_counter() - start
                counts[__name] += 1

        setattr(DecoderKernels, name, timed)
    try:
        totals = []
        for _ in range(calls):
            start = time.perf_counter()
            predictor.predict(POINT, LABEL)
            totals.append(time.perf_counter() - start)
    finally:
        for name, fn in originals.items():
            setattr(DecoderKernels, name, fn)
    out = {f"{k} ms": 1e3 * v / calls for k, v in spent.items()}
    out.update({f"{k} calls": v / calls for k, v in counts.items()})
    out["total ms"] = 1e3 * statistics.median(totals)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(5):
            predictor.predict(POINT, LABEL)
        profiled = time.perf_counter() - start
    events = prof.key_averages()
    out["aten calls"] = sum(e.count for e in events if e.key.startswith("aten::")) / 5
    # the linears' share of the profiled wall time (the profiler slows every call alike)
    linear_s = sum(e.cpu_time_total for e in events if e.key == "aten::linear") / 1e6
    linear = out["total ms"] * linear_s / profiled
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        predictor.predict(POINT, LABEL)
    out["top-level operations"] = sum(
        1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None
    )
    out["linear ms"] = linear
    kernel_ms = sum(v for k, v in out.items() if k.endswith(" ms") and k[:-3] in KERNELS)
    out["rest ms"] = out["total ms"] - kernel_ms - linear
    return out


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    add_official_argument(ap)
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(runs=5)["best_gflops"]
    print(describe_machine(args.threads, peak))
    image = np.array(Image.open(REFERENCE / "images" / "picture1.jpg").convert("RGB"))

    sam = build_sam(CKPT)
    paths = {
        "cpu fp32": SamPredictor(sam, engine="cpu"),
        "cpu bf16": SamPredictor(sam, precision="bf16", engine="cpu"),
        "plain fp32": SamPredictor(sam, engine="plain"),
    }
    for p in paths.values():
        p.set_image(image)
    fns = {name: functools.partial(p.predict, POINT, LABEL) for name, p in paths.items()}
    official = import_official(args.official)
    if official is not None:
        ref = official.SamPredictor(official_model(official, CKPT))
        ref.set_image(image)
        fns["official"] = functools.partial(ref.predict, POINT, LABEL)
    with torch.inference_mode():
        times = interleaved(fns, args.repeats, inner=5, warmup=2)
    base = statistics.median(times["official"]) if "official" in times else None
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        ratio = f"{base / med:.2f}x" if base else "-"
        rows.append((name, f"{1e3 * med:.1f} ms", f"{1e3 * min(t):.1f} ms", ratio))
    print_table(rows, ("predict (1 point, multimask)", "median", "min", "vs official"))
    parts = breakdown(paths["cpu fp32"])
    print()
    print_table(
        [(k, f"{v:.2f}") for k, v in parts.items()], ("one fp32 predict (cpu engine)", "value")
    )
    path = write_json(
        "predict",
        {
            "machine": machine_info(),
            "matmul_peak_gflops": peak,
            "predict": {k: summary(v) for k, v in times.items()},
            "breakdown": parts,
        },
        args.json,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
