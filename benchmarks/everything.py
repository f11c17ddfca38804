"""CPU benchmark of segment-everything (``SamAutomaticMaskGenerator``) at default settings.

For each image it runs, each in a fresh process so that peak RSS is the run's own, alternating
the two sides ``--repeats`` times, each timed run after one untimed warm-up on a 2×2 grid of
the same image (``--warmup 0``: cold runs):
- ``mobilesam``: this package's generator at its defaults;
- ``official``: the official ``mobile_sam.SamAutomaticMaskGenerator`` (``--official``, default
  ``../shared/official``) on the same weights, its stages timed by wrapping its own calls.

It reports the median wall time, seconds per stage (encoder, decoder, upsample, filter, RLE,
NMS), the mask count, peak RSS, the same-run speed-up and whether the two outputs match
(one-to-one mask IoU ≥ 0.99), plus the CPU, its flags and the matmul peak from the same run,
as a table and as JSON. Without the official code it times this project alone and says so.

Usage: ``python benchmarks/everything.py [--images picture1.jpg picture4.jpg] [--repeats 2]
[--threads 2] [--points-per-side 32] [--warmup 1] [--precision fp32] [--official PATH]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
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
    machine_info,
    matmul_peak,
    official_model,
    print_table,
    write_json,
)

STAGES = ("encoder", "decoder", "upsample", "filter", "rle", "nms")


def official_generator(args: argparse.Namespace, stages: dict[str, float]):  # noqa: ANN201
    """The official generator, with its encoder, decoder, upsampling, RLE and NMS calls wrapped
    to add their seconds to ``stages`` (the rest of the wall time is its filtering)."""
    mobile_sam = import_official(args.official)
    amg = sys.modules["mobile_sam.automatic_mask_generator"]
    model = official_model(mobile_sam, args.checkpoint)

    def timed(stage: str, fn):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages[stage] += time.perf_counter() - start

        return wrapper

    gen = amg.SamAutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, output_mode="uncompressed_rle"
    )
    gen.predictor.set_image = timed("encoder", gen.predictor.set_image)
    model.mask_decoder.forward = timed("decoder", model.mask_decoder.forward)
    model.postprocess_masks = timed("upsample", model.postprocess_masks)
    amg.mask_to_rle_pytorch = timed("rle", amg.mask_to_rle_pytorch)
    amg.batched_nms = timed("nms", amg.batched_nms)
    return gen


def worker(args: argparse.Namespace) -> None:
    """Run one implementation on one image; print a JSON result line."""
    from mobilesam import SamAutomaticMaskGenerator, build_sam

    torch.set_num_threads(args.threads)
    image = np.array(Image.open(REFERENCE / "images" / args.image).convert("RGB"))
    official = args.worker == "official"
    stages = dict.fromkeys(STAGES, 0.0)
    if official:
        gen = official_generator(args, stages)
        mobile_sam = sys.modules["mobile_sam"]
        warm = mobile_sam.SamAutomaticMaskGenerator(gen.predictor.model, points_per_side=2)
    else:
        model = build_sam(args.checkpoint)
        kw = {"output_mode": "uncompressed_rle", "precision": args.precision}
        gen = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **kw)
        warm = SamAutomaticMaskGenerator(model, points_per_side=2, **kw)
    for _ in range(args.warmup):  # first-call costs (kernel selection, caches), 4 points
        warm.generate(image)
    stages.update(dict.fromkeys(STAGES, 0.0))
    start = time.perf_counter()
    out = gen.generate(image)
    total = time.perf_counter() - start
    if official:
        stages["filter"] = total - sum(v for k, v in stages.items() if k != "filter")
    else:
        stages = {s: gen.stage_times.get(s, 0.0) for s in STAGES}
    Path(args.dump).write_text(
        json.dumps([{k: a[k] for k in ("segmentation", "predicted_iou", "bbox")} for a in out])
    )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"time_s": total, "stages_s": stages, "masks": len(out), "peak_rss_mib": peak_rss}
        )
    )


def run_worker(impl: str, image: str, args: argparse.Namespace, dump: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--image",
        image,
        "--official",
        args.official,
        "--threads",
        str(args.threads),
        "--points-per-side",
        str(args.points_per_side),
        "--warmup",
        str(args.warmup),
        "--precision",
        args.precision,
        "--checkpoint",
        args.checkpoint,
        "--dump",
        str(dump),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker {impl} {image} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def match(a_path: Path, b_path: Path) -> dict:
    """One-to-one matching of two mask lists by mask IoU (pycocotools on the RLEs)."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    if not a or not b:
        return {"matched": 0, "of": max(len(a), len(b))}

    def coco(anns: list[dict]) -> list[dict]:
        return [mask_utils.frPyObjects(x["segmentation"], *x["segmentation"]["size"]) for x in anns]

    iou = np.asarray(mask_utils.iou(coco(a), coco(b), [0] * len(b)))
    rows, cols = linear_sum_assignment(-iou)
    good = iou[rows, cols] >= 0.99
    score = [
        abs(a[i]["predicted_iou"] - b[j]["predicted_iou"]) for i, j in zip(rows, cols, strict=True)
    ]
    return {
        "matched": int(good.sum()),
        "of": max(len(a), len(b)),
        "max_score_diff": float(max(score)),
    }


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--images", nargs="+", default=["picture1.jpg", "picture4.jpg"])
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs on a 2×2 grid before the timed one, on each side (0: a cold run)",
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="this project's encoder precision (the official code runs fp32)",
    )
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    add_official_argument(ap)
    ap.add_argument("--worker", choices=["mobilesam", "official"], help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    torch.set_num_threads(args.threads)
    impls = ["mobilesam"]
    if import_official(args.official) is not None:
        impls.append("official")
    peaks = [matmul_peak()]
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image in args.images:
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for r in range(args.repeats):
                for impl in impls if r % 2 == 0 else impls[::-1]:
                    print(f"{image}: {impl} run {r + 1}/{args.repeats} ...", flush=True)
                    dump = Path(tmp) / f"{impl}_{image}.json"
                    runs[impl].append(run_worker(impl, image, args, dump))
            entry: dict[str, object] = {}
            for impl, res in runs.items():
                stage_median = {s: statistics.median(x["stages_s"][s] for x in res) for s in STAGES}
                summary = {
                    "times_s": [x["time_s"] for x in res],
                    "median_s": statistics.median(x["time_s"] for x in res),
                    "stage_median_s": stage_median,
                    "masks": res[-1]["masks"],
                    "peak_rss_mib": max(x["peak_rss_mib"] for x in res),
                }
                entry[impl] = summary
                rows.append(
                    (
                        image,
                        impl,
                        f"{summary['median_s']:.1f}",
                        *(f"{stage_median[s]:.2f}" for s in STAGES),
                        str(summary["masks"]),
                        f"{summary['peak_rss_mib']:.0f}",
                    )
                )
            if "official" in entry:
                entry["speedup"] = entry["official"]["median_s"] / entry["mobilesam"]["median_s"]
                entry["speedups_per_run"] = [
                    o["time_s"] / m["time_s"]
                    for o, m in zip(runs["official"], runs["mobilesam"], strict=True)
                ]
                entry["match"] = match(
                    Path(tmp) / f"mobilesam_{image}.json", Path(tmp) / f"official_{image}.json"
                )
            results[image] = entry
    peaks.append(matmul_peak())
    peak = max(p["best_gflops"] for p in peaks)
    print()
    print(
        describe_machine(args.threads, peak)
        + f"; points_per_side={args.points_per_side}; mobilesam precision={args.precision}"
        + f"; warm-up runs={args.warmup}"
    )
    print_table(rows, ("image", "impl", "median s", *STAGES, "masks", "peak RSS MiB"))
    for image, entry in results.items():
        if "speedup" in entry:
            m = entry["match"]
            per_run = ", ".join(f"{x:.2f}×" for x in entry["speedups_per_run"])
            print(
                f"{image}: {entry['speedup']:.2f}× faster than the official code in this run "
                f"(per run: {per_run}); masks matched one-to-one at IoU ≥ 0.99: "
                f"{m['matched']}/{m['of']}"
            )
    out = {
        "machine": machine_info(),
        "threads": args.threads,
        "points_per_side": args.points_per_side,
        "precision": args.precision,
        "warmup": args.warmup,
        "official": args.official if "official" in impls else None,
        "matmul_peak_gflops": peak,
        "matmul": peaks,
        "results": results,
    }
    print(f"json: {write_json('everything', out, args.json)}")


if __name__ == "__main__":
    main()
