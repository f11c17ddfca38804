"""``mobilesam bench``: a quick timing of this machine (encoder, ``predict``, optionally
segment-everything) with the matmul peak for context. Full benchmarks: ``benchmarks/``."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .common import (
    CliError,
    add_model_args,
    add_precision_arg,
    example_image,
    load_model,
    read_rgb,
)

EXAMPLES = """examples:
  mobilesam bench --checkpoint mobile_sam.pt
  mobilesam bench photo.jpg --model mobilesam --threads 4 --repeats 5 --everything --json out.json
"""


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..precision import precision_name
    from ..predictor import SamPredictor
    from ..timing import matmul_peak, time_fn

    for name in ("threads", "repeats", "points_per_side"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def median_s(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
        return statistics.median(time_fn(fn, repeats, warmup))

    if args.threads:
        torch.set_num_threads(args.threads)
    image = read_rgb(Path(args.image) if args.image else example_image())
    model, ckpt = load_model(args)
    peak = matmul_peak(runs=5)["best_gflops"]
    pred = SamPredictor(model, precision=args.precision)
    x = torch.randn(1, 3, model.img_size, model.img_size).to(pred.dtype)
    with torch.no_grad():
        enc = median_s(lambda: model.image_encoder(x), args.repeats)
    set_img = median_s(lambda: pred.set_image(image), args.repeats)
    h, w = image.shape[:2]
    pt, lb = np.array([[w / 2, h / 2]]), np.array([1])
    predict = median_s(lambda: pred.predict(pt, lb), 5 * args.repeats, warmup=2)
    result = {
        "checkpoint": str(ckpt),
        "image_size": [h, w],
        "threads": torch.get_num_threads(),
        "precision": precision_name(pred.dtype),
        "matmul_peak_gflops": round(peak, 1),
        "encoder_s": round(enc, 4),
        "set_image_s": round(set_img, 4),
        "predict_ms": round(1000 * predict, 2),
    }
    if args.everything:
        gen = SamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, precision=args.precision
        )
        start = time.perf_counter()
        masks = gen.generate(image)
        result["everything_s"] = round(time.perf_counter() - start, 2)
        result["everything_masks"] = len(masks)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="quick timing of the encoder, predict and segment-everything on this machine",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", nargs="?", help="photo (default: the bundled example)")
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--everything", action="store_true", help="also time segment-everything")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--json", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench)
