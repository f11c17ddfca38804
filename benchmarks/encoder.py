"""CPU benchmark of the MobileSAM encoder and of ``predict``.

Reports, with the thread count stated:
- the machine's fp32 matmul peak (best of 10 runs of a 2048² matmul) and its median;
- the encoder's FLOPs (``torch.utils.flop_counter``);
- median encoder forward, ``set_image`` (preprocessing + encoder) and one-point ``predict``;
- the same for an *official-order* reference: this package's modules run with the official
  code's arithmetic (BatchNorm unfused, explicit softmax attention, NCHW-contiguous encoder
  convolutions, ConvTranspose2d upscaling on strided token views), so the speed-up is
  measured in one run under the same machine noise;
- achieved GFLOP/s and the percentage of the matmul peak.

Usage: ``python benchmarks/encoder.py [--threads 2] [--repeats 7] [--json PATH]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    machine_info,
    matmul_peak,
    print_table,
    summary,
    time_fn,
    write_json,
)
from reference import official_order  # noqa: E402

from mobilesam import SamPredictor, build_sam  # noqa: E402


def encoder_flops(model: torch.nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, model.img_size, model.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.image_encoder(x)
    return int(counter.get_total_flops())


def measure(model, image: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    pred = SamPredictor(model)
    x = torch.randn(1, 3, model.img_size, model.img_size)
    with torch.no_grad():
        enc = time_fn(lambda: model.image_encoder(x), repeats, warmup=1)
    set_img = time_fn(lambda: pred.set_image(image), repeats, warmup=1)
    h, w = image.shape[:2]
    pt, lb = np.array([[w * 0.55, h * 0.5]]), np.array([1])
    predict = time_fn(lambda: pred.predict(pt, lb, multimask_output=True), 5 * repeats, warmup=2)
    return {"encoder": summary(enc), "set_image": summary(set_img), "predict": summary(predict)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--image", default=str(REFERENCE / "images" / "picture1.jpg"))
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_sam(args.checkpoint)
    image = np.array(Image.open(args.image).convert("RGB"))
    flops = encoder_flops(model)
    peak_before = matmul_peak()
    ours = measure(model, image, args.repeats)
    official = None
    if not args.skip_official:
        with official_order(model):
            official = measure(model, image, args.repeats)
    peak_after = matmul_peak()
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])

    def gflops(s: float) -> float:
        return flops / s / 1e9

    rows = []
    for name, res in [("mobilesam", ours), ("official-order", official)]:
        if res is None:
            continue
        enc = res["encoder"]["median_s"]
        rows.append(
            (
                name,
                f"{enc:.3f}",
                f"{res['set_image']['median_s']:.3f}",
                f"{1000 * res['predict']['median_s']:.1f}",
                f"{gflops(enc):.1f}",
                f"{100 * gflops(enc) / peak:.1f}%",
            )
        )
    print(
        f"threads={args.threads}  encoder={flops / 1e9:.1f} GFLOP  "
        f"matmul 2048² best-of-10 peak={peak:.1f} GFLOP/s "
        f"(medians {peak_before['median_gflops']:.1f}, {peak_after['median_gflops']:.1f})"
    )
    print_table(
        rows,
        ("impl", "encoder s", "set_image s", "predict ms", "GFLOP/s", "% of peak"),
    )
    result = {
        "machine": machine_info(),
        "threads": args.threads,
        "image": Path(args.image).name,
        "encoder_gflop": flops / 1e9,
        "matmul_peak_gflops": peak,
        "matmul": [peak_before, peak_after],
        "mobilesam": ours,
        "official_order": official,
        "encoder_pct_of_peak": 100 * gflops(ours["encoder"]["median_s"]) / peak,
    }
    if official is not None:
        result["speedup_encoder"] = official["encoder"]["median_s"] / ours["encoder"]["median_s"]
        result["speedup_predict"] = official["predict"]["median_s"] / ours["predict"]["median_s"]
        print(
            f"speed-up vs official-order: encoder {result['speedup_encoder']:.2f}×, "
            f"predict {result['speedup_predict']:.2f}×"
        )
    print("anchors (official code, README): encoder 2.2-2.4 s; predict 87-110 ms")
    print(f"json: {write_json('encoder', result, args.json)}")


if __name__ == "__main__":
    main()
