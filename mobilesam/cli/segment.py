"""``mobilesam segment``: masks from point and box prompts for one photo."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .._atomic import atomic_write
from .common import (
    CliError,
    add_command,
    add_device_arg,
    add_max_pixels_arg,
    add_out_arg,
    add_precision_arg,
    example_image,
    existing_file,
    numbers,
    read_photo,
)
from .models import add_model_args, load_model
from .overlay import overlay

EXAMPLES = """
mobilesam segment --point 400,380                      # bundled photo, official weights
mobilesam segment photo.jpg --checkpoint mobile_sam.pt --point 120,80 --point 300,200,0
mobilesam segment photo.jpg --model mobilesam --box 10,20,300,400 --multimask --out masks/
mobilesam segment photo.jpg --model mobilesam --device cuda --precision bf16 --point 120,80
"""


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one photo from point and box prompts.

    Points and boxes are in pixels, (x, y) from the top-left corner of the photo as image
    viewers show it (EXIF orientation applied); without any prompt the centre of the photo
    is the point. It writes PHOTO_mask.png (0/255, the photo's size), or PHOTO_mask0..2.png
    with --multimask, PHOTO_overlay.png (the best mask over the photo) and PHOTO.json (the
    prompts, the masks' scores and the timings) to the --out folder.
    """
    from ..device import resolve_device
    from ..predictor import SamPredictor

    image_path = args.image or example_image()
    image = read_photo(image_path, args.max_pixels)
    points, box = prompts(args, image.shape[:2])
    model, ckpt = load_model(args)
    model.to(resolve_device(args.device))
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
    names = write_masks(Path(args.out), image_path.stem, image, masks, scores)
    report = {
        "image": str(image_path),
        "checkpoint": str(ckpt),
        "size": list(image.shape[:2]),
        "points": points,
        "box": box,
        "masks": names,
        "scores": [float(s) for s in scores],
        "device": str(predictor.device),
        "encode_s": round(t1 - t0, 4),
        "predict_s": round(t2 - t1, 4),
    }
    text = json.dumps(report, indent=2, allow_nan=False)
    atomic_write(Path(args.out) / f"{image_path.stem}.json", lambda tmp: tmp.write_text(text))
    print(
        f"wrote {', '.join(names)} to {args.out} (scores {', '.join(f'{s:.3f}' for s in scores)}; "
        f"encode {t1 - t0:.2f} s, predict {1000 * (t2 - t1):.0f} ms)"
    )
    return 0


def prompts(
    args: argparse.Namespace, size: tuple[int, int]
) -> tuple[list[list[float]], list[float] | None]:
    """``(points [[x, y(, label)], ...], box [x0, y0, x1, y1] or None)`` in pixels; the
    image centre when no prompt is given. :class:`CliError` for coordinates far outside the
    image of ``size`` ``(H, W)``."""
    from ..prompts import check_prompt_reach

    points, box = list(args.point), args.box
    if not points and box is None:
        points = [[size[1] / 2, size[0] / 2, 1]]
    for flag, values in (("--point", [p[:2] for p in points]), ("--box", box or [])):
        try:
            check_prompt_reach(f"{flag} coordinates", values, size)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return points, box


def write_masks(
    out: Path, stem: str, image: np.ndarray, masks: np.ndarray, scores: np.ndarray
) -> list[str]:
    """Save ``masks`` (``N×H×W`` bool) as 0/255 PNGs and the best one over ``image`` as
    ``<stem>_overlay.png``; returns the mask files' names."""
    many = len(masks) > 1
    names = [f"{stem}_mask{i}.png" for i in range(len(masks))] if many else [f"{stem}_mask.png"]
    for name, m in zip(names, masks, strict=True):
        Image.fromarray(m.astype(np.uint8) * 255).save(out / name)
    best = masks[int(np.argmax(scores))]
    Image.fromarray(overlay(image, best, (30, 144, 255))).save(out / f"{stem}_overlay.png")
    return names


def point(text: str) -> list[float]:
    """Argument type: ``X,Y`` or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background)."""
    values = numbers((2, 3))(text)
    if len(values) == 3 and values[2] not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"label must be 1 (foreground) or 0 (background), got {values[2]:g}"
        )
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "segment", cmd_segment, EXAMPLES)
    p.add_argument(
        "image",
        nargs="?",
        type=existing_file,
        help="photo to segment (default: the bundled example)",
    )
    add_model_args(p)
    add_device_arg(p)
    add_precision_arg(p)
    p.add_argument(
        "--point",
        action="append",
        default=[],
        type=point,
        metavar="X,Y[,LABEL]",
        help="point in pixels (repeatable); label 1 = foreground (default), 0 = background",
    )
    p.add_argument("--box", type=numbers((4,)), metavar="X0,Y0,X1,Y1", help="box in pixels")
    p.add_argument("--multimask", action="store_true", help="write the 3 candidate masks")
    add_max_pixels_arg(p)
    add_out_arg(p, "mobilesam_out", "output folder")
