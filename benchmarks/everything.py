"""CPU benchmark of segment-everything (``SamAutomaticMaskGenerator``) at default settings.

For each image it runs, each in a fresh process so that peak RSS is the run's own:
- ``mobilesam``: this package's generator at its defaults, ``--repeats`` times;
- ``mobilesam-folded``: the same with ``folded_attention=True``, ``--repeats`` times;
- ``official``: the official algorithm (``segment_anything`` 1.0's flow: batches of 64 points
  decoded at once, every candidate upsampled before filtering, dense boxes and RLE) with the
  official arithmetic, on the same modules and weights (see ``reference.py``), once, for the
  images in ``--reference``.

It reports the median wall time, seconds per stage (encoder, decoder, upsample, filter, RLE,
NMS), the mask count, peak RSS and whether the two outputs match (one-to-one mask IoU ≥ 0.99),
plus the machine's matmul peak measured in the same run, as a table and as JSON.

Usage: ``python benchmarks/everything.py [--images picture1.jpg picture4.jpg]
[--reference picture1.jpg] [--repeats 3] [--threads 2] [--points-per-side 32]``
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
from common import REFERENCE, machine_info, matmul_peak, print_table, write_json  # noqa: E402

STAGES = ("encoder", "decoder", "upsample", "filter", "rle", "nms")
ANCHOR = {"picture1.jpg": {"seconds": 217.0, "masks": 495, "peak_rss_gib": 2.39, "peak": 160.0}}


def worker(args: argparse.Namespace) -> None:
    """Run one implementation on one image; print a JSON result line."""
    from reference import OfficialAlgorithmGenerator, official_order

    from mobilesam import SamAutomaticMaskGenerator, build_sam

    torch.set_num_threads(args.threads)
    model = build_sam(args.checkpoint)
    image = np.array(Image.open(REFERENCE / "images" / args.image).convert("RGB"))
    official = args.worker == "official"
    kwargs = {"folded_attention": True} if args.worker == "mobilesam-folded" else {}
    cls = OfficialAlgorithmGenerator if official else SamAutomaticMaskGenerator
    gen = cls(model, points_per_side=args.points_per_side, output_mode="uncompressed_rle", **kwargs)
    times, stages, out = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if official:
            with official_order(model):
                out = gen.generate(image)
        else:
            out = gen.generate(image)
        times.append(time.perf_counter() - start)
        stages.append(dict(gen.stage_times))
    Path(args.dump).write_text(
        json.dumps([{k: a[k] for k in ("segmentation", "predicted_iou", "bbox")} for a in out])
    )
    print(
        json.dumps(
            {
                "times_s": times,
                "stages_s": stages,
                "masks": len(out),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_worker(impl: str, image: str, repeats: int, args: argparse.Namespace, dump: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--image",
        image,
        "--repeats",
        str(repeats),
        "--threads",
        str(args.threads),
        "--points-per-side",
        str(args.points_per_side),
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=["picture1.jpg", "picture4.jpg"])
    ap.add_argument("--reference", nargs="*", default=["picture1.jpg"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    ap.add_argument(
        "--worker", choices=["mobilesam", "mobilesam-folded", "official"], help=argparse.SUPPRESS
    )
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    torch.set_num_threads(args.threads)
    peaks = [matmul_peak()]
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image in args.images:
            entry: dict[str, object] = {}
            impls = [("mobilesam", args.repeats), ("mobilesam-folded", args.repeats)]
            if image in args.reference:
                impls.append(("official", 1))
            for impl, repeats in impls:
                print(f"{image}: {impl} × {repeats} ...", flush=True)
                res = run_worker(impl, image, repeats, args, Path(tmp) / f"{impl}_{image}.json")
                res["median_s"] = statistics.median(res["times_s"])
                res["stage_median_s"] = {
                    s: statistics.median(r.get(s, 0.0) for r in res["stages_s"]) for s in STAGES
                }
                entry[impl] = res
                st = res["stage_median_s"]
                rows.append(
                    (
                        image,
                        impl,
                        f"{res['median_s']:.1f}",
                        *(f"{st[s]:.2f}" for s in STAGES),
                        str(res["masks"]),
                        f"{res['peak_rss_mib']:.0f}",
                    )
                )
            if "official" in entry:
                ref = entry["official"]
                for impl in ("mobilesam", "mobilesam-folded"):
                    entry[f"speedup_{impl}"] = ref["median_s"] / entry[impl]["median_s"]
                    entry[f"match_{impl}"] = match(
                        Path(tmp) / f"{impl}_{image}.json", Path(tmp) / f"official_{image}.json"
                    )
            results[image] = entry
    peaks.append(matmul_peak())
    peak = max(p["best_gflops"] for p in peaks)

    medians = ", ".join(f"{p['median_gflops']:.0f}" for p in peaks)
    print(
        f"\nthreads={args.threads}  points_per_side={args.points_per_side}  "
        f"matmul 2048² best-of-10 peak={peak:.0f} GFLOP/s (medians {medians})"
    )
    print_table(rows, ("image", "impl", "median s", *STAGES, "masks", "peak RSS MiB"))
    for image, entry in results.items():
        for impl in ("mobilesam", "mobilesam-folded"):
            if f"speedup_{impl}" in entry:
                m = entry[f"match_{impl}"]
                print(
                    f"{image}: {impl} {entry[f'speedup_{impl}']:.1f}× faster than the official "
                    f"algorithm in this run; masks matched one-to-one at IoU ≥ 0.99: "
                    f"{m['matched']}/{m['of']}"
                )
        anchor = ANCHOR.get(image)
        if anchor:
            ours = entry["mobilesam"]["median_s"]  # type: ignore[index]
            scaled = ours * peak / anchor["peak"]
            entry["vs_anchor"] = {
                "anchor_s": anchor["seconds"],
                "speedup_raw": anchor["seconds"] / ours,
                "speedup_peak_normalised": anchor["seconds"] / scaled,
            }
            print(
                f"{image}: anchor {anchor['seconds']:.0f} s (official code, matmul peak "
                f"{anchor['peak']:.0f}): {anchor['seconds'] / ours:.1f}× raw, "
                f"{anchor['seconds'] / scaled:.1f}× after scaling ours to that peak"
            )
    out = {
        "machine": machine_info(),
        "threads": args.threads,
        "points_per_side": args.points_per_side,
        "matmul_peak_gflops": peak,
        "matmul": peaks,
        "results": results,
    }
    print(f"json: {write_json('everything', out, args.json)}")


if __name__ == "__main__":
    main()
