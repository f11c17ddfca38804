"""``mobilesam segment``: masks from point and box prompts for one photo."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .common import (
    CliError,
    add_model_args,
    add_precision_arg,
    example_image,
    load_model,
    overlay,
    parse_floats,
    read_rgb,
)

EXAMPLES = """examples:
  mobilesam segment --point 400,380                      # bundled photo, official weights
  mobilesam segment photo.jpg --checkpoint mobile_sam.pt --point 120,80 --point 300,200,0
  mobilesam segment photo.jpg --model mobilesam --box 10,20,300,400 --multimask --out masks/
"""


def cmd_segment(args: argparse.Namespace) -> int:
    from ..predictor import SamPredictor
    from ..prompts import check_prompt_reach

    image_path = Path(args.image) if args.image else example_image()
    image = read_rgb(image_path)
    points = [parse_floats(p, (2, 3), "--point") for p in args.point]
    for p in points:
        if len(p) == 3 and p[2] not in (0, 1):
            raise CliError(f"--point label must be 1 (foreground) or 0 (background), got {p[2]:g}")
    box = parse_floats(args.box, (4,), "--box") if args.box else None
    if not points and box is None:
        h, w = image.shape[:2]
        points = [[w / 2, h / 2, 1]]
    for flag, values in (("--point", [p[:2] for p in points]), ("--box", box or [])):
        try:
            check_prompt_reach(f"{flag} coordinates", values, image.shape[:2])
        except ValueError as exc:
            raise CliError(str(exc)) from None
    model, ckpt = load_model(args)
    predictor = SamPredictor(model, precision=args.precision)
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    coords = np.array([p[:2] for p in points]) if points else None
    labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in points]) if points else None
    masks, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=np.array(box) if box is not None else None,
        multimask_output=args.multimask,
    )
    t2 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = image_path.stem
    names = (
        [f"{stem}_mask{i}.png" for i in range(len(masks))]
        if args.multimask
        else [f"{stem}_mask.png"]
    )
    for name, m in zip(names, masks, strict=True):
        Image.fromarray(m.astype(np.uint8) * 255).save(out / name)
    best = int(np.argmax(scores))
    Image.fromarray(overlay(image, masks[best], (30, 144, 255))).save(out / f"{stem}_overlay.png")
    report = {
        "image": str(image_path),
        "checkpoint": str(ckpt),
        "size": list(image.shape[:2]),
        "points": points,
        "box": box,
        "masks": names,
        "scores": [float(s) for s in scores],
        "encode_s": round(t1 - t0, 4),
        "predict_s": round(t2 - t1, 4),
    }
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    print(
        f"wrote {', '.join(names)} to {out} (scores {', '.join(f'{s:.3f}' for s in scores)}; "
        f"encode {t1 - t0:.2f} s, predict {1000 * (t2 - t1):.0f} ms)"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser(
        "segment",
        help="segment a photo from point / box prompts",
        description="Masks for one photo from point and/or box prompts.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("image", nargs="?", help="photo to segment (default: the bundled example)")
    add_model_args(seg)
    add_precision_arg(seg)
    seg.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="point in pixels; label 1 = foreground (default), 0 = background",
    )
    seg.add_argument("--box", metavar="X0,Y0,X1,Y1", help="box in pixels")
    seg.add_argument("--multimask", action="store_true", help="write the 3 candidate masks")
    seg.add_argument("--out", default="mobilesam_out", help="output directory")
    seg.set_defaults(func=cmd_segment)
