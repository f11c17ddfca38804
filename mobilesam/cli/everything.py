"""``mobilesam everything``: segment everything in photos and folders of photos."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .._atomic import atomic_write
from ..image_io import IMAGE_SUFFIXES, find_images
from ..progress import progress_bar
from .common import (
    CliError,
    add_command,
    add_device_arg,
    add_max_pixels_arg,
    add_out_arg,
    add_precision_arg,
    add_quiet_arg,
    describe,
    existing_path,
    number_at_least,
    read_photo,
)
from .folder import ReadAhead, WriteBehind
from .models import add_model_args, checkpoint_path
from .overlay import annotation_overlay

if TYPE_CHECKING:
    from .ranks import Ranks

EXAMPLES = """
mobilesam everything photo.jpg --checkpoint mobile_sam.pt --out masks/
mobilesam everything photos/ more.jpg --model mobilesam --points-per-side 16 --out masks/
mobilesam everything big.jpg --crop-n-layers 1 --min-mask-region-area 100 --out masks/
torchrun --nproc_per_node 4 -m mobilesam everything photos/ --model mobilesam --out masks/
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
    over the photo; --no-overlay leaves it out) under the --out folder, keeping the input
    folders' layout. The JSON file is written last, so its presence marks a finished photo;
    it records the settings and the checkpoint's sha256, and a rerun skips photos finished
    with the same settings and checkpoint and redoes the others. Unreadable photos are
    reported and skipped (exit code 1 at the end). Photos are read ahead of the model and
    results written behind it, on threads. The progress bar advances per batch of prompt
    points.

    Under torchrun (torchrun --nproc_per_node N -m mobilesam everything ...) the processes
    share the photos still to do (photo i goes to process i mod N), and process 0 writes
    everything_summary.json when all are done.
    """
    from ..hub import sha256_file
    from ..precision import precision_name, resolve_precision
    from .ranks import join_ranks

    out = Path(args.out)
    images = plan_outputs(args.inputs, exclude=out)
    if not images:
        raise CliError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {' '.join(map(str, args.inputs))}"
        )
    ranks = join_ranks()
    try:
        ckpt = ranks.local_first(lambda: checkpoint_path(args))
        settings = {k: getattr(args, k) for k in SETTINGS}
        # the precision decided (auto resolves here), so reruns compare what was actually used
        settings["precision"] = precision_name(resolve_precision(args.precision))
        meta = {
            "model": {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt)},
            "settings": settings,
        }
        return run_everything(args, ranks, images, out, ckpt, meta)
    finally:
        ranks.close()


def run_everything(
    args: argparse.Namespace,
    ranks: Ranks,
    images: list[tuple[Path, Path]],
    out: Path,
    ckpt: Path,
    meta: dict[str, Any],
) -> int:
    """Rank 0 finds the photos still to do (:func:`still_to_do`) and tells the others; each
    rank does its share; rank 0 prints the totals (and under torchrun writes the summary).
    Returns the exit code, the same on every rank: 1 when some photo was unreadable."""
    overlay = not args.no_overlay
    todo = still_to_do(images, out, meta, args.overwrite, overlay) if ranks.is_main else None
    todo = ranks.broadcast(todo)
    if not todo and not ranks.launched:
        return 0
    mine = ranks.share(list(enumerate(todo)))
    results = segment_share(args, ranks, mine, out, ckpt, meta) if mine else []
    gathered = ranks.gather(results)
    failed = 0
    if gathered is not None:
        done = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        failed = sum("error" in r for r in done)
        finished = [r for r in done if "error" not in r]
        total_masks = sum(r["masks"] for r in finished)
        total_s = sum(r["seconds"] for r in finished)
        if todo:
            print(
                f"wrote {len(finished)} image(s) to {out}: {total_masks} masks, "
                f"{total_s / max(len(finished), 1):.1f} s per image"
                + (f"; {failed} unreadable image(s) skipped" if failed else "")
            )
        if ranks.launched:
            path = write_summary(out, images, todo, done, meta, ranks.world)
            print(f"{ranks.world} process(es); summary in {path}")
    return 1 if ranks.broadcast(failed) else 0


def segment_share(
    args: argparse.Namespace,
    ranks: Ranks,
    mine: list[tuple[int, tuple[Path, Path]]],
    out: Path,
    ckpt: Path,
    meta: dict[str, Any],
) -> list[dict[str, Any]]:
    """Segment this rank's photos ``mine`` (``(index in the to-do list, (photo, output
    stem))``), reading ahead and writing behind (:mod:`.folder`); returns one record per
    photo: ``index``, ``photo``, ``output``, ``rank`` and ``masks``, ``seconds`` (in
    ``generate``) or ``error`` (unreadable photo)."""
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..build import build_sam
    from .ranks import rank_device

    device = rank_device(args.device, ranks)
    overlay = not args.no_overlay
    after_write = _test_exit_hook(ranks.rank)
    bar = progress_bar(
        len(mine), "everything", unit="img", enabled=ranks.is_main and not args.quiet
    )
    results = []

    def read(entry: tuple[int, tuple[Path, Path]]) -> np.ndarray:
        return read_photo(entry[1][0], args.max_pixels)

    with ReadAhead(mine, read) as photos, WriteBehind() as writer:
        gen = SamAutomaticMaskGenerator(
            build_sam(ckpt).to(device), output_mode="coco_rle", **meta["settings"]
        )
        for loaded in photos:
            index, (image_path, rel) = loaded.item
            record = {"index": index, "photo": str(image_path), "output": rel.as_posix()}
            record["rank"] = ranks.rank
            if loaded.error is not None:  # only an unreadable photo is skipped
                print(
                    f"\nmobilesam: skipping {image_path}: {describe(loaded.error)}", file=sys.stderr
                )
                bar.update(1)
                results.append({**record, "error": describe(loaded.error)})
                continue
            anns, seconds = segment_photo(gen, loaded.image, bar)
            writer.submit(
                write_photo, loaded.image, anns, image_path, out / rel, meta, seconds, overlay,
                after_write,
            )  # fmt: skip
            results.append({**record, "masks": len(anns), "seconds": round(seconds, 3)})
        writer.drain()  # a failure to write stops the run
    bar.close()
    return results


def segment_photo(gen: Any, image: np.ndarray, bar: Any = None) -> tuple[list[dict], float]:
    """``(annotations, seconds in generate)`` of one photo (``H×W×3`` uint8); ``bar``
    advances by a fraction of one image per batch of prompt points."""
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
    return anns, time.perf_counter() - start


def write_photo(
    image: np.ndarray,
    anns: list[dict[str, Any]],
    image_path: Path,
    out_stem: Path,
    meta: dict[str, Any],
    seconds: float,
    overlay: bool = True,
    after: Callable[[], None] | None = None,
) -> None:
    """Write one photo's overlay (or, without ``overlay``, remove an earlier run's), then its
    JSON, each atomically; the JSON, last, marks the photo finished. ``after()`` runs once
    the JSON is in place."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    overlay_path = out_stem.with_name(out_stem.name + "_overlay.png")
    if overlay:
        picture = Image.fromarray(annotation_overlay(image, anns))
        atomic_write(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
    else:  # an overlay left from an earlier run would not match the new result
        overlay_path.unlink(missing_ok=True)
    h, w = image.shape[:2]
    record = {
        "image": {"file_name": str(image_path), "height": h, "width": w},
        **meta,
        "seconds": round(seconds, 3),
        "annotations": [{"id": i + 1, **a} for i, a in enumerate(anns)],
    }
    text = json.dumps(record, allow_nan=False)
    atomic_write(out_stem.with_name(out_stem.name + ".json"), lambda tmp: tmp.write_text(text))
    if after is not None:
        after()


#: The job summary's file name under torchrun (another if a photo's output takes it).
SUMMARY_NAME = "everything_summary"


def write_summary(
    out: Path,
    images: list[tuple[Path, Path]],
    todo: list[tuple[Path, Path]],
    done: list[dict[str, Any]],
    meta: dict[str, Any],
    world: int,
) -> Path:
    """Write the job's summary (``out/everything_summary.json``, atomically) and return its
    path: the photos ``done`` in this run (the ``rank`` that did each, ``masks``,
    ``seconds``), those ``unreadable`` (``error``), those ``already_done`` before it, with the
    settings and the number of processes. ``images`` are all the planned photos, ``todo``
    those this run was to do."""
    stems = {rel for _, rel in images}
    name = Path(SUMMARY_NAME)
    while name in stems:  # a photo named everything_summary.jpg keeps its own output
        name = Path(f"{name}_")
    waiting = set(todo)
    record = {
        "processes": world,
        "photos": len(images),
        "done": [{k: v for k, v in r.items() if k != "index"} for r in done if "error" not in r],
        "unreadable": [{k: v for k, v in r.items() if k != "index"} for r in done if "error" in r],
        "already_done": [
            {"photo": str(f), "output": rel.as_posix()}
            for f, rel in images
            if (f, rel) not in waiting
        ],
        **meta,
    }
    path = out / f"{name}.json"
    text = json.dumps(record, indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _test_exit_hook(rank: int) -> Callable[[], None] | None:
    """For the tests of killed ranks only: ``MOBILESAM_TEST_EXIT_AFTER=RANK:N`` makes rank
    RANK die (``os._exit(9)``, as if killed) right after writing its N-th photo."""
    spec = os.environ.get("MOBILESAM_TEST_EXIT_AFTER", "")
    target, _, count = spec.partition(":")
    if not spec or not target.isdigit() or not count.isdigit() or int(target) != rank:
        return None
    written = itertools.count(1)
    lock = threading.Lock()

    def after() -> None:
        with lock:
            if next(written) >= int(count):
                os._exit(9)

    return after


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
    images: list[tuple[Path, Path]],
    out: Path,
    meta: dict[str, Any],
    overwrite: bool,
    overlay: bool = False,
) -> list[tuple[Path, Path]]:
    """The planned images whose result in ``out`` is missing, or was made with other
    settings or another checkpoint (all of them with ``overwrite``), or, with ``overlay``,
    whose overlay is missing; says how many are skipped and how many redone."""
    todo, stale, no_overlay = [], 0, 0
    for f, rel in images:
        stem = out / rel
        json_path = stem.with_name(rel.name + ".json")
        if overwrite or not json_path.exists():
            todo.append((f, rel))
        elif not is_done(json_path, meta, f):
            todo.append((f, rel))
            stale += 1
        elif overlay and not stem.with_name(rel.name + "_overlay.png").exists():
            todo.append((f, rel))
            no_overlay += 1
    if len(todo) < len(images):
        print(f"skipping {len(images) - len(todo)} image(s) already done in {out}")
    if stale:
        print(f"redoing {stale} image(s) made with other settings or another checkpoint")
    if no_overlay:
        print(f"redoing {no_overlay} image(s) done without an overlay")
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
    add_device_arg(p)
    add_precision_arg(p)
    add_out_arg(p, "mobilesam_everything", "output folder")
    add_generator_args(p)
    add_max_pixels_arg(p)
    p.add_argument("--overwrite", action="store_true", help="redo images already done")
    p.add_argument(
        "--no-overlay",
        action="store_true",
        help="write only the JSON, no STEM_overlay.png (and a redone photo's old one is removed)",
    )
    add_quiet_arg(p)
