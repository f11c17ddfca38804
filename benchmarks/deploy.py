"""CPU benchmark of the deployment paths: ONNX Runtime fp32 / int8 / fp16 against torch fp32 /
bf16 / fp16, and against the official ``mobile_sam`` code (encoder and ``predict``, same process,
same weights; every path timed in turn, round after round), with agreement of every
reduced-precision path measured as mask IoU against torch fp32 over the golden prompt cases.

Usage: ``python benchmarks/deploy.py [--threads 2] [--repeats 5] [--official PATH] [--json PATH]``
"""

from __future__ import annotations

import json
import sys
import tempfile
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
from mobilesam.evaluation.miou import mask_iou  # noqa: E402
from mobilesam.onnx import OnnxPredictor, export_onnx  # noqa: E402
from mobilesam.precision import cpu_has_bf16_units  # noqa: E402

CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
OFFICIAL_LABEL = "official mobile_sam fp32"


def golden_cases() -> list[tuple[str, dict]]:
    cases = json.loads((REFERENCE / "golden" / "cases.json").read_text())["cases"]
    out = []
    for c in cases:
        if (
            "onnx" in c["key"]
            or "batched" in c["key"]
            or "point_labels" not in c
            and "box" not in c
        ):
            continue
        kw = {
            "point_coords": np.array(c["point_coords"]) if "point_coords" in c else None,
            "point_labels": np.array(c["point_labels"]) if "point_labels" in c else None,
            "box": np.array(c["box"]) if "box" in c else None,
            "multimask_output": c.get("multimask_output", True),
        }
        out.append((c["image"], kw))
    return out


def agreement(pred, ref_masks: dict, images: dict, cases: list) -> float:
    """Mean mask IoU against torch fp32 over every mask of every golden prompt case."""
    ious = []
    for name in images:
        pred.set_image(images[name])
        mine = [kw for img, kw in cases if img == name]
        for kw, ref in zip(mine, ref_masks[name], strict=True):
            masks = pred.predict(**kw)[0]
            ious += [mask_iou(a, b) for a, b in zip(masks, ref, strict=True)]
    return float(np.mean(ious))


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    add_official_argument(ap)
    args = ap.parse_args()
    mobile_sam = import_official(args.official)
    torch.set_num_threads(args.threads)
    peaks = [matmul_peak()]
    cases = golden_cases()
    names = sorted({img for img, _ in cases})
    images = {n: np.array(Image.open(REFERENCE / "images" / n).convert("RGB")) for n in names}
    image = images["picture1.jpg"]
    pt, lb = np.array([[420.0, 385.0]]), np.array([1])

    # every path is built first, then all are timed in turn, round after round
    encoders, predicts, agree = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(build_sam(CKPT), tmp, quantize="int8", fp16=True, checkpoint=CKPT)
        ref = SamPredictor(build_sam(CKPT))
        ref_masks = {}
        for name in names:
            ref.set_image(images[name])
            ref_masks[name] = [ref.predict(**kw)[0] for img, kw in cases if img == name]
        x = torch.randn(1, 3, 1024, 1024)

        def torch_path(label: str, dtype: torch.dtype) -> None:
            model = build_sam(CKPT)
            pred = SamPredictor(model, precision=dtype)
            xd = x.to(dtype)
            encoders[label] = lambda: pred.engine.encode(pred.image_encoder, xd)
            if dtype != torch.float32:
                agree[label] = agreement(pred, ref_masks, images, cases)
            pred.set_image(image)
            predicts[label] = lambda: pred.predict(pt, lb)

        def ort_path(label: str, encoder: str, decoder: str) -> None:
            pred = OnnxPredictor(tmp, encoder=encoder, decoder=decoder, threads=args.threads)
            sess, xn = pred._encoder, x.numpy()
            encoders[label] = lambda: sess.run(None, {"image": xn})
            agree[label] = agreement(pred, ref_masks, images, cases)
            pred.set_image(image)
            predicts[label] = lambda: pred.predict(pt, lb)

        torch_path("torch fp32", torch.float32)
        if cpu_has_bf16_units():
            torch_path("torch bf16", torch.bfloat16)
        else:
            print("this CPU reports no bf16 units (avx512_bf16, amx_bf16): bf16 not measured")
        torch_path("torch fp16", torch.float16)
        ort_path("ORT fp32", "fp32", "fp32")
        ort_path("ORT int8 (encoder + decoder)", "int8", "int8")
        ort_path("ORT int8 encoder, fp32 decoder", "int8", "fp32")
        ort_path("ORT fp16 encoder", "fp16", "fp32")
        if mobile_sam is not None:
            ref_model = official_model(mobile_sam, CKPT)
            ref_pred = mobile_sam.SamPredictor(ref_model)
            encoders[OFFICIAL_LABEL] = lambda: ref_model.image_encoder(x)
            ref_pred.set_image(image)
            predicts[OFFICIAL_LABEL] = lambda: ref_pred.predict(pt, lb)
        with torch.inference_mode():
            enc_times = interleaved(encoders, args.repeats)
            dec_times = interleaved(predicts, args.repeats, inner=5, warmup=2)
    result = {
        label: {"encoder": summary(enc_times[label]), "predict": summary(dec_times[label])}
        | ({"miou": agree[label]} if label in agree else {})
        for label in encoders
    }
    peaks.append(matmul_peak())
    peak = max(p["best_gflops"] for p in peaks)
    base = result.get(OFFICIAL_LABEL, result["torch fp32"])
    off_s, off_ms = base["encoder"]["median_s"], 1000 * base["predict"]["median_s"]
    rows = []
    for label, r in result.items():
        enc = r["encoder"]["median_s"]
        rows.append(
            (
                label,
                f"{enc:.3f}",
                f"{off_s / enc:.2f}×",
                f"{1000 * r['predict']['median_s']:.1f}",
                f"{off_ms / (1000 * r['predict']['median_s']):.2f}×",
                f"{r['miou']:.4f}" if "miou" in r else "-",
            )
        )
    print(describe_machine(args.threads, peak))
    vs = "vs official" if mobile_sam is not None else "vs torch fp32"
    print_table(rows, ("path", "encoder s", vs, "predict ms", vs, "mIoU vs torch fp32"))
    out = {"machine": machine_info(), "threads": args.threads, "peak_gflops": peak, **result}
    print(f"json: {write_json('deploy', out, args.json)}")


if __name__ == "__main__":
    main()
