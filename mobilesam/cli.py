"""Command line: ``mobilesam segment`` (more subcommands arrive with their issues).

The library never imports this module.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = """examples:
  mobilesam segment --point 400,380                      # bundled photo, official weights
  mobilesam segment photo.jpg --checkpoint mobile_sam.pt --point 120,80 --point 300,200,0
  mobilesam segment photo.jpg --model mobilesam --box 10,20,300,400 --multimask --out masks/
"""


def example_image() -> Path:
    """Path of the bundled example photo (769×770, from the MobileSAM repository)."""
    return Path(str(resources.files("mobilesam") / "assets" / "example.jpg"))


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if len(vals) not in n:
        raise CliError(f"{what} takes {' or '.join(map(str, n))} numbers, got {text!r}")
    return vals


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.array(color, np.float32)
    return out.astype(np.uint8)


def cmd_segment(args: argparse.Namespace) -> int:
    from . import SamPredictor, build_sam
    from .hub import resolve_checkpoint

    image_path = Path(args.image) if args.image else example_image()
    try:
        image = np.array(Image.open(image_path).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read image {image_path}: {exc}") from None
    points = [_floats(p, (2, 3), "--point") for p in args.point]
    box = _floats(args.box, (4,), "--box") if args.box else None
    if not points and box is None:
        h, w = image.shape[:2]
        points = [[w / 2, h / 2, 1]]
    ckpt = resolve_checkpoint(args.checkpoint or args.model, progress=True)
    model = build_sam(ckpt)
    predictor = SamPredictor(model)
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
    Image.fromarray(_overlay(image, masks[best], (30, 144, 255))).save(out / f"{stem}_overlay.png")
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
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    print(
        f"wrote {', '.join(names)} to {out} (scores {', '.join(f'{s:.3f}' for s in scores)}; "
        f"encode {t1 - t0:.2f} s, predict {1000 * (t2 - t1):.0f} ms)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilesam",
        description="MobileSAM: fast promptable segmentation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser(
        "segment",
        help="segment an image from point / box prompts",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("image", nargs="?", help="photo to segment (default: the bundled example)")
    src = seg.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="path to an official-format checkpoint")
    src.add_argument(
        "--model",
        default="mobilesam",
        help="model-zoo name, downloaded and verified (default mobilesam)",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"mobilesam: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()
        print(
            f"mobilesam: error: {' '.join(first) if first else type(exc).__name__}", file=sys.stderr
        )
        return 1
