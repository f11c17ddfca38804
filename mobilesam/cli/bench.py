"""``mobilesam bench``: a quick timing of this machine."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._atomic import atomic_write
from .common import (
    add_command,
    add_count_arg,
    add_device_arg,
    add_max_pixels_arg,
    add_precision_arg,
    example_image,
    existing_file,
    read_photo,
)
from .models import add_model_args, load_model

EXAMPLES = """
mobilesam bench --checkpoint mobile_sam.pt
mobilesam bench photo.jpg --model mobilesam --threads 4 --repeats 5 --everything --json out.json
mobilesam bench --model mobilesam --device cuda --precision bf16
"""


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the image encoder, set_image and predict on this machine.

    It prints the median time of each (and, with --everything, of segmenting everything in
    the photo), with the CPU's measured matrix-multiply peak (GFLOP/s) and whether the
    decoder's native kernels run, for context, and can write the figures to a JSON file. It
    also times the encoder in fp32 and bf16 and prints a recommended --precision: a
    suggestion only; nothing is chosen from these timings. On a GPU (--device) every timing
    waits for the device to finish. The full benchmarks are in the repository's benchmarks
    folder (benchmarks/gpu.py for a GPU).
    """
    import torch

    from ..device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    image = read_photo(args.image or example_image(), args.max_pixels)
    model, ckpt = load_model(args)
    model.to(resolve_device(args.device))
    result = {
        "checkpoint": str(ckpt),
        "device": str(model.device),
        "image_size": list(image.shape[:2]),
        "threads": torch.get_num_threads(),
        **time_model(model, image, args),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        if k != "recommended":
            print(f"{k:<{width}}  {v}")
    print(f"recommended: {result['recommended']}")
    if args.json:
        text = json.dumps(result, indent=2, allow_nan=False)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


def time_model(model: Any, image: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """The figures: matmul peak, encoder, set_image and predict times (and segment-everything
    with ``args.everything``), for ``model`` on ``image`` (``H×W×3`` uint8)."""

    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..engine import native
    from ..precision import precision_name
    from ..predictor import SamPredictor
    from ..timing import matmul_peak

    peak = matmul_peak(runs=5)["best_gflops"]
    pred = SamPredictor(model, precision=args.precision)
    encoder = {name: encoder_s(model, name, args.repeats) for name in ("fp32", "bf16")}
    device = model.device
    set_img = median_s(lambda: pred.set_image(image), args.repeats, device=device)
    h, w = image.shape[:2]
    pt, lb = np.array([[w / 2, h / 2]]), np.array([1])
    predict = median_s(lambda: pred.predict(pt, lb), 5 * args.repeats, warmup=2, device=device)
    result: dict[str, Any] = {
        "precision": precision_name(pred.dtype),
        "native_kernels": native.status(),
        "matmul_peak_gflops": round(peak, 1),
        "encoder_s": round(encoder[precision_name(pred.dtype)], 4),
        "encoder_fp32_s": round(encoder["fp32"], 4),
        "encoder_bf16_s": round(encoder["bf16"], 4),
        "recommended": recommendation(encoder["fp32"], encoder["bf16"]),
        "set_image_s": round(set_img, 4),
        "predict_ms": round(1000 * predict, 2),
    }
    if args.everything:
        gen = SamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, precision=args.precision
        )
        synchronize(device)
        start = time.perf_counter()
        masks = gen.generate(image)
        synchronize(device)
        result["everything_s"] = round(time.perf_counter() - start, 2)
        result["everything_masks"] = len(masks)
    return result


def encoder_s(model: Any, precision: str, repeats: int) -> float:
    """Median seconds of ``model``'s image encoder at ``precision`` (``"fp32"`` or
    ``"bf16"``) on one random image on the model's device, as a predictor of that precision
    runs it."""
    import torch

    from ..predictor import SamPredictor

    pred = SamPredictor(model, precision=precision)
    x = torch.randn(1, 3, model.img_size, model.img_size, device=model.device)
    return median_s(lambda: pred.embed_torch(x), repeats, device=model.device)


#: How much faster the bf16 encoder must be here for bench to recommend bf16: below this,
#: fp32's exact results are worth more than the time.
RECOMMEND_BF16_SPEEDUP = 1.2


def recommendation(fp32_s: float, bf16_s: float) -> str:
    """The precision ``mobilesam bench`` recommends from the two encoder timings: a
    suggestion printed for the user, never applied by itself."""
    speedup = fp32_s / bf16_s
    if speedup >= RECOMMEND_BF16_SPEEDUP:
        return f"--precision bf16 (encoder {speedup:.1f}x faster here)"
    return f"--precision fp32 (bf16 encoder {speedup:.2f}x of fp32's speed here)"


def median_s(fn: Callable[[], object], repeats: int, warmup: int = 1, device: Any = None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup``; on a
    CUDA ``device`` each run ends when the device has finished its work."""
    from ..timing import time_fn

    def run() -> None:
        fn()
        synchronize(device)

    synchronize(device)
    return statistics.median(time_fn(run, repeats, warmup))


def synchronize(device: Any) -> None:
    """Wait for a CUDA ``device`` (a ``torch.device`` or None) to finish its queued work."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", cmd_bench, EXAMPLES)
    p.add_argument(
        "image", nargs="?", type=existing_file, help="photo (default: the bundled example)"
    )
    add_model_args(p)
    add_device_arg(p)
    add_precision_arg(p)
    add_count_arg(p, "--threads", None, "torch threads (default: torch's)")
    add_count_arg(p, "--repeats", 3, "timed runs")
    p.add_argument("--everything", action="store_true", help="also time segment-everything")
    add_count_arg(p, "--points-per-side", 32, "segment-everything's prompt grid")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this file")
    add_max_pixels_arg(p)
