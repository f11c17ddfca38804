"""CPU benchmark of the encoder, ``set_image`` and ``predict`` against the official code.

Both sides run in this process on the same weights and threads, interleaved round by round
(ours, then the official ``mobile_sam`` package, for each measurement), so machine noise hits
both alike. Reported from one run:
- the CPU (model, AVX-512 / AVX512-BF16 / AMX flags), the thread count and the fp32 matmul
  peak (2048², best of 10, before and after);
- median encoder (ours: the predictor's engine, ``CpuEngine.encode``), ``set_image`` and
  one-point multimask ``predict`` (full-resolution masks) of each side, and their ratio;
- GFLOP (``torch.utils.flop_counter``): the encoder, the decoder per prompt in SAM's order and
  in this project's cached order, and the per-image cache; achieved GFLOP/s as a percentage
  of the matmul peak.

Usage: ``python benchmarks/encoder.py [--threads 2] [--repeats 9] [--official PATH] [--json PATH]``
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

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
from mobilesam.engine import CpuEngine, native  # noqa: E402


def gflop(fn: Callable[[], object]) -> float:
    """GFLOP of ``fn``'s PyTorch operations. The native decoder kernels run the same products
    outside PyTorch's sight, so they are counted in the PyTorch order (kernels off)."""
    kernels = native.kernels
    native.kernels = lambda: None
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        native.kernels = kernels
    return counter.get_total_flops() / 1e9


def flop_counts(model: torch.nn.Module, pred: SamPredictor, point: np.ndarray) -> dict:
    x = torch.zeros(1, 3, model.img_size, model.img_size)
    coords = torch.as_tensor(pred.transform.apply_coords(point, pred.original_size)).float()
    labels = torch.ones(1, 1, dtype=torch.int)
    sparse, dense = pred.encode_prompts(coords[None], labels)
    pe, dec, cpu = model.prompt_encoder, model.mask_decoder, CpuEngine()
    state = cpu.prepare(model, pred.features)
    return {
        "encoder": gflop(lambda: model.image_encoder(x)),
        "decoder_sam_order": gflop(
            lambda: dec.predict_masks(pred.features, pe.get_dense_pe(), sparse, dense)
        ),
        "decoder_cached": gflop(lambda: cpu.decode(state, sparse)),
        "decoder_cache_per_image": gflop(lambda: cpu.prepare(model, pred.features)),
    }


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--image", default=str(REFERENCE / "images" / "picture1.jpg"))
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    add_official_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    image = np.array(Image.open(args.image).convert("RGB"))
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.55, h * 0.5]]), np.array([1])
    model = build_sam(args.checkpoint).eval()
    pred = SamPredictor(model)
    pred.set_image(image)
    flops = flop_counts(model, pred, point)
    x = torch.randn(1, 3, model.img_size, model.img_size)

    mobile_sam = import_official(args.official)
    peaks = [matmul_peak()]
    with torch.no_grad():
        ours = {
            "encoder": lambda: pred.engine.encode(pred.image_encoder, x),  # the predictor's
            "set_image": lambda: pred.set_image(image),
            "predict": lambda: pred.predict(point, label, multimask_output=True),
        }
        if mobile_sam is not None:
            ref = official_model(mobile_sam, args.checkpoint)
            ref_pred = mobile_sam.SamPredictor(ref)
            ref_pred.set_image(image)
            theirs = {
                "encoder": lambda: ref.image_encoder(x),
                "set_image": lambda: ref_pred.set_image(image),
                "predict": lambda: ref_pred.predict(point, label, multimask_output=True),
            }
        else:
            theirs = dict(ours)  # timed, then dropped
        times = {  # predict is short: 10 calls per round
            name: interleaved(
                {"ours": ours[name], "official": theirs[name]},
                args.repeats,
                inner=10 if name == "predict" else 1,
            )
            for name in ours
        }
    peaks.append(matmul_peak())
    peak = max(p["best_gflops"] for p in peaks)

    work = {"encoder": flops["encoder"], "set_image": flops["encoder"], "predict": None}
    rows, result = [], {}
    for name, sides in times.items():
        mine = statistics.median(sides["ours"])
        entry = {"ours": summary(sides["ours"])}
        ratio = "-"
        if mobile_sam is not None:
            entry["official"] = summary(sides["official"])
            entry["speedup"] = statistics.median(sides["official"]) / mine
            ratio = f"{entry['speedup']:.2f}×"
        unit, scale = ("ms", 1000) if name == "predict" else ("s", 1)
        g = work[name] if work[name] is not None else flops["decoder_cached"]
        entry["gflops_per_s"] = g / mine
        entry["pct_of_peak"] = 100 * g / mine / peak
        rows.append(
            (
                name,
                f"{scale * mine:.3f} {unit}",
                f"{scale * statistics.median(sides['official']):.3f} {unit}"
                if mobile_sam is not None
                else "-",
                ratio,
                f"{g:.2f}",
                f"{g / mine:.0f}",
                f"{100 * g / mine / peak:.1f}%",
            )
        )
        result[name] = entry
    print(describe_machine(args.threads, peak))
    print_table(
        rows,
        ("measure", "mobilesam", "official", "speed-up", "GFLOP", "GFLOP/s", "% of peak"),
    )
    print(
        f"decoder GFLOP per prompt: SAM's order {flops['decoder_sam_order']:.2f}, "
        f"cached {flops['decoder_cached']:.2f} (+ {flops['decoder_cache_per_image']:.2f} "
        "once per image, in set_image)"
    )
    print("predict's GFLOP/s counts the decoder only (its upsampling is not a matmul)")
    out = {
        "machine": machine_info(),
        "threads": args.threads,
        "image": Path(args.image).name,
        "official": args.official if mobile_sam is not None else None,
        "matmul_peak_gflops": peak,
        "matmul": peaks,
        "gflop": flops,
        "results": result,
    }
    print(f"json: {write_json('encoder', out, args.json)}")


if __name__ == "__main__":
    main()
