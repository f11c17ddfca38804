"""``mobilesam everything``: segment everything in photos and folders of photos."""

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
    add_command,
    add_max_pixels_arg,
    add_out_arg,
    add_precision_arg,
    add_quiet_arg,
    describe,
    existing_path,
    number_at_least,
    read_photo,
)
from .models import add_model_args, checkpoint_path
from .overlay import annotation_overlay

EXAMPLES = """
mobilesam everything photo.jpg --checkpoint mobile_sam.pt --out masks/
mobilesam everything photos/ more.jpg --model mobilesam --points-per-side 16 --out masks/
mobilesam everything big.jpg --crop-n-layers 1 --min-mask-region-area 100 --out masks/
"""

#: The mask generator's settings that are options; recorded in each result.
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


def cmd_everything(args: argparse.Namespace) -> int:
    """Segment everything in photos and folders of photos (folders are searched recursively).

    For each photo it writes STEM.json (COCO-style annotations: compressed RLE, area, XYWH
    box, scores, prompt point, crop box) and STEM_overlay.png (every mask in its own colour
    over the photo) under the --out folder, keeping the input folders' layout. The JSON file
    is written last, so its presence marks a finished photo; it records the settings and
    the checkpoint's sha256, and a rerun skips photos finished with the same settings and
    checkpoint and redoes the others. Unreadable photos are reported and skipped (exit code
    1 at the end). The progress bar advances per batch of prompt points.
    """
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..build import build_sam
    from ..hub import sha256_file
    from ..precision import precision_name, resolve_precision

    out = Path(args.out)
    images = plan_outputs(args.inputs, exclude=out)
    if not images:
        raise CliError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {' '.join(map(str, args.inputs))}"
        )
    ckpt = checkpoint_path(args)
    settings = {k: getattr(args, k) for k in SETTINGS}
    # the precision decided (auto resolves here), so reruns compare what was actually used
    settings["precision"] = precision_name(resolve_precision(args.precision))
    meta = {"model": {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt)}, "settings": settings}
    todo = still_to_do(images, out, meta, args.overwrite)
    if not todo:
        return 0
    gen = SamAutomaticMaskGenerator(build_sam(ckpt), output_mode="coco_rle", **settings)
    bar = progress_bar(len(todo), "everything", unit="img", enabled=not args.quiet)
    failed, total_masks, total_s = 0, 0, 0.0
    for image_path, rel in todo:
        try:  # only an unreadable photo is skipped; a failure to write stops the run
            image = read_photo(image_path, args.max_pixels)
        except (OSError, ValueError) as exc:
            failed += 1
            print(f"\nmobilesam: skipping {image_path}: {describe(exc)}", file=sys.stderr)
            bar.update(1)
            continue
        n, seconds = process_image(gen, image, image_path, out / rel, meta, bar)
        total_masks, total_s = total_masks + n, total_s + seconds
    bar.close()
    done = len(todo) - failed
    print(
        f"wrote {done} image(s) to {out}: {total_masks} masks, "
        f"{total_s / max(done, 1):.1f} s per image"
        + (f"; {failed} unreadable image(s) skipped" if failed else "")
    )
    return 1 if failed else 0


def plan_outputs(inputs: list[str], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """``(image path, output stem relative to --out)`` for files and folders (recursive, see
    :func:`~mobilesam.image_io.find_images`).

    Each file is taken once, however often it is named; files under ``exclude`` (the output
    folder, which may sit inside an input folder) are never inputs. Stems that would collide
    get the file's suffix, then a counter.
    """
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += [(f, f.relative_to(item).with_suffix("")) for f in find_images(item)]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise CliError(f"no such file or folder: {item}")
    skip = exclude.resolve() if exclude is not None else None
    taken: set[Path] = set()
    stems: set[Path] = set()
    planned = []
    for f, rel in found:
        real = f.resolve()
        if real in taken or (skip is not None and real.is_relative_to(skip)):
            continue
        taken.add(real)
        if rel in stems:  # a.jpg and a.png side by side: keep both, by full name
            rel = rel.with_name(f"{rel.name}_{f.suffix.lstrip('.').lower()}")
        base, k = rel, 2
        while rel in stems:
            rel, k = base.with_name(f"{base.name}_{k}"), k + 1
        stems.add(rel)
        planned.append((f, rel))
    return planned


def still_to_do(
    images: list[tuple[Path, Path]], out: Path, meta: dict[str, Any], overwrite: bool
) -> list[tuple[Path, Path]]:
    """The planned images whose result in ``out`` is missing, or was made with other
    settings or another checkpoint (all of them with ``overwrite``); says how many are
    skipped and how many redone."""
    todo, stale = [], 0
    for f, rel in images:
        json_path = (out / rel).with_name(rel.name + ".json")
        if overwrite or not json_path.exists():
            todo.append((f, rel))
        elif not is_done(json_path, meta, f):
            todo.append((f, rel))
            stale += 1
    if len(todo) < len(images):
        print(f"skipping {len(images) - len(todo)} image(s) already done in {out}")
    if stale:
        print(f"redoing {stale} image(s) made with other settings or another checkpoint")
    return todo


def is_done(json_path: Path, meta: dict[str, Any], image_path: Path) -> bool:
    """Whether ``json_path`` holds a finished result for ``image_path`` (output names depend
    on which photos sit side by side, so a name can pass to another photo) made with the
    same settings and the same checkpoint content (sha256) as ``meta``; unreadable files
    count as not done."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("settings") == meta["settings"]
        and record.get("model", {}).get("sha256") == meta["model"]["sha256"]
        and _same_file(record.get("image", {}).get("file_name"), image_path)
    )


def _same_file(recorded: object, image_path: Path) -> bool:
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == image_path.resolve()
    except OSError:
        return False


def process_image(
    gen: Any,
    image: np.ndarray,
    image_path: Path,
    out_stem: Path,
    meta: dict[str, Any],
    bar: Any = None,
) -> tuple[int, float]:
    """Segment one photo (``image``, read from ``image_path``) and write its overlay, then its
    JSON; returns ``(masks, seconds)``. ``bar`` advances by a fraction of one image per batch
    of prompt points."""
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


def add_generator_args(p: argparse.ArgumentParser) -> None:
    """The :data:`SETTINGS` of the mask generator, with its defaults."""
    n, count, share = number_at_least(0), number_at_least(1), number_at_least(0.0, float, 1.0)
    options = (  # flag, type, default, help
        ("--points-per-side", count, 32, "prompt grid: N×N points per image (default 32)"),
        ("--points-per-batch", count, 64, "prompt points decoded together (default 64)"),
        ("--pred-iou-thresh", share, 0.88, "keep masks with predicted IoU above (default 0.88)"),
        ("--stability-score-thresh", share, 0.95, "keep masks this stable (default 0.95)"),
        ("--box-nms-thresh", share, 0.7, "box IoU above which masks are duplicates (default 0.7)"),
        ("--crop-n-layers", n, 0, "extra layers of smaller crops (default 0)"),
        ("--crop-nms-thresh", share, 0.7, "duplicate threshold between crops (default 0.7)"),
        ("--crop-n-points-downscale-factor", count, 1, "fewer points per crop layer (default 1)"),
        (
            "--min-mask-region-area",
            n,
            0,
            "fill holes and drop islands smaller than this many pixels (default 0: off)",
        ),
    )
    for flag, kind, default, text in options:
        p.add_argument(
            flag, type=kind, default=default, metavar="N" if kind is not share else "T", help=text
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "everything", cmd_everything, EXAMPLES)
    p.add_argument(
        "inputs", nargs="+", type=existing_path, metavar="IMAGE_OR_DIR", help="photos, folders"
    )
    add_model_args(p)
    add_precision_arg(p)
    add_out_arg(p, "mobilesam_everything", "output folder")
    add_generator_args(p)
    add_max_pixels_arg(p)
    p.add_argument("--overwrite", action="store_true", help="redo images already done")
    add_quiet_arg(p)
