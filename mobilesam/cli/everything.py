"""``mobilesam everything``: segment everything in photos and folders of photos.

For each image it writes ``<stem>.json`` (COCO-style annotations: compressed RLE, area, XYWH
box, scores, prompt point, crop box) and ``<stem>_overlay.png`` (every mask in its own colour
over the photo). The JSON is written last, by rename, so its presence marks a finished image,
and it records the settings and the checkpoint's sha256: a rerun skips images finished with the
same settings and checkpoint and redoes the others. Unreadable images are reported and skipped.
The progress bar advances per batch of prompt points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._atomic import atomic_write
from ..image_io import IMAGE_SUFFIXES, find_images
from ..progress import progress_bar
from .common import (
    CliError,
    add_model_args,
    add_precision_arg,
    distinct_colors,
    read_rgb,
)

EXAMPLES = """examples:
  mobilesam everything photo.jpg --checkpoint mobile_sam.pt --out masks/
  mobilesam everything photos/ more.jpg --model mobilesam --points-per-side 16 --out masks/
  mobilesam everything big.jpg --crop-n-layers 1 --min-mask-region-area 100 --out masks/
"""

SETTINGS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)


def collect_images(inputs: list[str], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """``(image path, output stem relative to --out)`` for files and folders (recursive).

    Each file is taken once, however often it is named; files under ``exclude`` (the output
    folder, which may sit inside an input folder) are never inputs. Stems that would collide
    get the file's suffix, then a counter.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(f, f.relative_to(path).with_suffix("")) for f in find_images(path)]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            raise CliError(f"no such file or directory: {item}")
    taken: set[Path] = set()
    seen: set[Path] = set()
    unique = []
    for f, rel in found:
        real = f.resolve()
        if real in taken or (skip is not None and real.is_relative_to(skip)):
            continue
        taken.add(real)
        if rel in seen:  # a.jpg and a.png side by side: keep both, by full name
            rel = rel.with_name(f"{rel.name}_{f.suffix.lstrip('.').lower()}")
        base, k = rel, 2
        while rel in seen:
            rel, k = base.with_name(f"{base.name}_{k}"), k + 1
        seen.add(rel)
        unique.append((f, rel))
    return unique


def annotation_overlay(image: np.ndarray, anns: list[dict[str, Any]]) -> np.ndarray:
    """The annotations' masks (COCO RLE) painted over the photo in distinct colours, largest
    first so small ones stay visible; one mask is decoded at a time."""
    from pycocotools import mask as mask_utils

    out = image.astype(np.float32)
    colors = distinct_colors(len(anns)).astype(np.float32)
    for i in sorted(range(len(anns)), key=lambda i: -anns[i]["area"]):
        m = mask_utils.decode(anns[i]["segmentation"]).astype(bool)
        out[m] = 0.5 * out[m] + 0.5 * colors[i]
    return out.astype(np.uint8)


def process_image(
    gen: Any, image_path: Path, out_stem: Path, meta: dict[str, Any], bar: Any = None
) -> tuple[int, float]:
    """Segment one photo and write its JSON and overlay; returns (masks, seconds). ``bar``
    advances by a fraction of one image per batch of prompt points."""
    image = read_rgb(image_path)
    start = time.perf_counter()
    shown = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if bar is not None:
            bar.update(done / total - shown)
            shown = done / total

    anns = gen.generate(image, progress=progress)
    if bar is not None and shown < 1.0:
        bar.update(1.0 - shown)
    seconds = time.perf_counter() - start
    h, w = image.shape[:2]
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(annotation_overlay(image, anns)).save(
        out_stem.with_name(out_stem.name + "_overlay.png")
    )
    record = {
        "image": {"file_name": str(image_path), "height": h, "width": w},
        **meta,
        "seconds": round(seconds, 3),
        "annotations": [{"id": i + 1, **a} for i, a in enumerate(anns)],
    }
    text = json.dumps(record, allow_nan=False)
    atomic_write(out_stem.with_name(out_stem.name + ".json"), lambda tmp: tmp.write_text(text))
    return len(anns), seconds


def is_done(json_path: Path, meta: dict[str, Any]) -> bool:
    """Whether ``json_path`` holds a finished result made with the same settings and the same
    checkpoint content (sha256) as ``meta``; unreadable files count as not done."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("settings") == meta["settings"]
        and record.get("model", {}).get("sha256") == meta["model"]["sha256"]
    )


def cmd_everything(args: argparse.Namespace) -> int:
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..build import build_sam
    from ..hub import resolve_checkpoint, sha256_file
    from ..precision import precision_name, resolve_precision

    out = Path(args.out)
    images = collect_images(args.inputs, exclude=out)
    if not images:
        raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {' '.join(args.inputs)}")
    ckpt = resolve_checkpoint(args.checkpoint or args.model, progress=True)
    settings = {k: getattr(args, k) for k in SETTINGS}
    # the precision decided (auto resolves here), so reruns compare what was actually used
    settings["precision"] = precision_name(resolve_precision(args.precision))
    meta = {"model": {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt)}, "settings": settings}
    todo, stale = [], 0
    for f, rel in images:
        json_path = (out / rel).with_name(rel.name + ".json")
        if args.overwrite or not json_path.exists():
            todo.append((f, rel))
        elif not is_done(json_path, meta):
            todo.append((f, rel))
            stale += 1
    if len(todo) < len(images):
        print(f"skipping {len(images) - len(todo)} image(s) already done in {out}")
    if stale:
        print(f"redoing {stale} image(s) made with other settings or another checkpoint")
    if not todo:
        return 0
    model = build_sam(ckpt)
    gen = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **settings)
    failed: list[str] = []
    total_masks, total_s = 0, 0.0
    bar = progress_bar(len(todo), "everything", unit="img", enabled=not args.quiet)
    for image_path, rel in todo:
        try:
            n, seconds = process_image(gen, image_path, out / rel, meta, bar)
            total_masks += n
            total_s += seconds
        except (CliError, ValueError) as exc:
            failed.append(str(image_path))
            print(f"\nmobilesam: skipping {image_path}: {exc}", file=sys.stderr)
            bar.update(1)
    bar.close()
    done = len(todo) - len(failed)
    print(
        f"wrote {done} image(s) to {out}: {total_masks} masks, "
        f"{total_s / max(done, 1):.1f} s per image"
        + (f"; {len(failed)} unreadable image(s) skipped" if failed else "")
    )
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "everything",
        help="segment everything in photos (COCO-style JSON + overlay per image)",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="photos and/or folders")
    add_model_args(p)
    p.add_argument("--out", default="mobilesam_everything", help="output directory")
    p.add_argument("--points-per-side", type=int, default=32, help="prompt grid (default 32)")
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--crop-n-layers", type=int, default=0, help="extra crop layers (default 0)")
    p.add_argument("--crop-nms-thresh", type=float, default=0.7)
    p.add_argument("--crop-n-points-downscale-factor", type=int, default=1)
    p.add_argument(
        "--min-mask-region-area",
        type=int,
        default=0,
        help="fill holes / drop islands smaller than this many pixels (default 0: off)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo images already done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_precision_arg(p)
    p.set_defaults(func=cmd_everything)
