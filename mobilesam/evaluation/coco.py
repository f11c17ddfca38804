"""Zero-shot instance segmentation on COCO-format data, prompted by boxes (the SAM paper's
protocol, as EdgeSAM and EfficientViT-SAM report it).

Each box (the ground truth's, or a detector's from a COCO results file) prompts the model:
single-mask output, or the best of three by predicted IoU with ``multimask``. A mask is scored
by its predicted IoU times the detection score (1 for ground-truth boxes), and pycocotools'
``COCOeval(iouType="segm")`` gives AP, AP50, AP75 and AP for small, medium and large objects
(0-1). Boxes are COCO XYWH pixels; masks are at the image's size.

The ground-truth and detections files are checked as they are read (:func:`read_annotations`,
:func:`read_detections`): a malformed file is one :class:`CocoFileError` naming the file and
its first bad record, before any model runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..image_io import read_rgb
from ..predictor import SamPredictor

#: COCOeval's first six segm statistics, in order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class CocoSettings:
    """What prompts the model: ground-truth boxes (``detections`` None) or a detector's
    results file, and single-mask or best-of-three output."""

    detections: str | None = None
    multimask: bool = False
    max_images: int | None = None


def box_prompts(gt: Any, detections: list[dict] | None) -> dict[int, list[tuple[list, int, float]]]:
    """Per image id: ``(xywh box, category id, score)`` of every prompt."""
    prompts: dict[int, list[tuple[list, int, float]]] = {}
    if detections is None:
        for ann in gt.dataset.get("annotations", []):
            if not ann.get("iscrowd", 0):
                prompts.setdefault(ann["image_id"], []).append(
                    (ann["bbox"], ann["category_id"], 1.0)
                )
    else:
        for det in detections:
            prompts.setdefault(det["image_id"], []).append(
                (det["bbox"], det["category_id"], float(det.get("score", 1.0)))
            )
    return prompts


class CocoFileError(ValueError):
    """A ground-truth or detections file that is not what COCO's format says: one line
    naming the file and its first bad record."""


class _NonStandardJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonStandardJson(name)


def read_json(path: str | Path) -> Any:
    """The JSON value in the file ``path`` (UTF-8, a leading BOM allowed).

    Raises:
        OSError: the file cannot be read.
        CocoFileError: it is empty, not UTF-8, not JSON, holds NaN or Infinity (not standard
            JSON), or nests too deeply to read.
    """
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise CocoFileError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CocoFileError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "JSON must be UTF-8"
        ) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _NonStandardJson as exc:
        raise CocoFileError(f"{path}: holds {exc}, which standard JSON does not allow") from None
    except RecursionError:
        raise CocoFileError(f"{path}: nests too deeply to read") from None
    except ValueError as exc:
        raise CocoFileError(f"{path}: not JSON ({exc})") from None


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for one-line errors."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words ("an array", "a string", ...)."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), "a number")


def _is_int(value: Any, minimum: int | None = None) -> bool:
    """A JSON whole number (not a boolean), at least ``minimum`` when given."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bbox_problem(box: Any) -> str | None:
    """What is wrong with a COCO ``bbox`` (``[x, y, width, height]`` pixels), or None."""
    if box is None:
        return 'has no "bbox" (or a null one)'
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"has a bbox that is not 4 finite numbers [x, y, width, height]: {_short(box)}"
    if box[2] < 0 or box[3] < 0:
        return f"has a bbox with a negative width or height: {_short(box)}"
    return None


def _rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``), or
    None where the string is not one (a character out of range, a number cut short, a
    negative or oversized run)."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k > 6:  # cut short, or longer than any 32-bit run
                return None
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:  # runs after the second are stored as differences
            x += counts[-2]
        if not 0 <= x < 2**32:
            return None
        counts.append(x)
    return counts


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a ground-truth ``segmentation`` of an image of ``height×width``
    pixels, or None: polygons (lists of at least 3 finite ``x, y`` pairs) or an RLE
    (``{"size": [height, width], "counts": runs}``, uncompressed or compressed, whose runs
    cover the image exactly). pycocotools' C code trusts both."""
    if seg is None:
        return 'has no "segmentation"'
    if isinstance(seg, list):
        if not seg:
            return "has an empty segmentation"
        for poly in seg:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not (ok and all(_is_number(v) for v in poly)):
                return (
                    "has a segmentation polygon that is not 3 or more finite x, y pairs: "
                    f"{_short(poly)}"
                )
        return None
    if not isinstance(seg, dict):
        return f"has a segmentation that is neither polygons nor an RLE: {_short(seg)}"
    if seg.get("size") != [height, width]:
        return (
            f"has an RLE segmentation of size {_short(seg.get('size'))}; the image is "
            f"[{height}, {width}] (height, width)"
        )
    counts = seg.get("counts")
    if isinstance(counts, str):
        counts = _rle_string_counts(counts)
    elif not (isinstance(counts, list) and all(_is_int(c, 0) for c in counts)):
        counts = None
    if counts is None or sum(counts) != height * width:
        return "has an RLE segmentation whose counts do not cover the image"
    return None


def _category_ids(doc: dict, path: str | Path) -> set[int]:
    ids: set[int] = set()
    for i, cat in enumerate(doc["categories"]):
        if not (isinstance(cat, dict) and _is_int(cat.get("id"))):
            raise CocoFileError(f"{path}: categories[{i}] has no whole-number id: {_short(cat)}")
        if cat["id"] in ids:
            raise CocoFileError(f"{path}: categories[{i}]: id {cat['id']} appears twice")
        ids.add(cat["id"])
    return ids


def _image_sizes(doc: dict, path: str | Path) -> dict[int, tuple[int, int]]:
    """``{image id: (height, width)}``, each image record checked."""
    sizes: dict[int, tuple[int, int]] = {}
    for i, im in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        if not (isinstance(im, dict) and _is_int(im.get("id"))):
            raise CocoFileError(f"{where} has no whole-number id: {_short(im)}")
        where += f" (id {im['id']})"
        if im["id"] in sizes:
            raise CocoFileError(f"{where}: the id appears twice")
        name = im.get("file_name")
        if not (isinstance(name, str) and name.strip()):
            raise CocoFileError(f'{where} has no "file_name" (text), got {_short(name)}')
        if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
            raise CocoFileError(f"{where}: file_name {_short(name)} leaves the images folder")
        for key in ("height", "width"):
            if not _is_int(im.get(key), 1):
                raise CocoFileError(f'{where} has no positive whole-number "{key}"')
        sizes[im["id"]] = (im["height"], im["width"])
    return sizes


def check_annotations(doc: Any, path: str | Path) -> None:
    """Raise :class:`CocoFileError` naming ``path`` and the first bad record of ``doc``, a
    parsed COCO ground-truth file: an object with ``images`` (id, file_name inside the images
    folder, height, width), ``categories`` (id) and ``annotations`` (id, image_id and
    category_id that exist, bbox, area, iscrowd 0 or 1, and a segmentation that fits its
    image). Ids are whole numbers, each used once."""
    if not isinstance(doc, dict):
        raise CocoFileError(
            f"{path}: holds {_json_kind(doc)}, not an object with images, annotations and "
            "categories"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise CocoFileError(f'{path}: has no "{key}" list')
    categories, sizes = _category_ids(doc, path), _image_sizes(doc, path)
    seen: set[int] = set()
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not (isinstance(ann, dict) and _is_int(ann.get("id"))):
            raise CocoFileError(f"{where} has no whole-number id: {_short(ann)}")
        where += f" (id {ann['id']})"
        if ann["id"] in seen:
            raise CocoFileError(f"{where}: id {ann['id']} appears twice")
        seen.add(ann["id"])
        for key, known, what in (
            ("image_id", sizes, "images"),
            ("category_id", categories, "categories"),
        ):
            if key not in ann:
                raise CocoFileError(f'{where} has no "{key}"')
            if not _is_int(ann[key]) or ann[key] not in known:
                raise CocoFileError(f"{where}: {key} {_short(ann[key])} is not in {what}")
        problem = _bbox_problem(ann.get("bbox")) or (
            None
            if _is_number(ann.get("area")) and ann["area"] >= 0
            else f"has no area (a finite number ≥ 0): {_short(ann.get('area'))}"
        )
        if problem is None and ann.get("iscrowd", 0) not in (0, 1):
            problem = f"has an iscrowd that is not 0 or 1: {_short(ann.get('iscrowd'))}"
        if problem is None:
            problem = _segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])
        if problem is not None:
            raise CocoFileError(f"{where} {problem}")


def read_annotations(path: str | Path) -> Any:
    """A COCO ground-truth file as a ``pycocotools.coco.COCO``, checked first
    (:func:`read_json`, :func:`check_annotations`).

    Raises:
        OSError: the file cannot be read.
        CocoFileError: a malformed file (naming it and its first bad record).
    """
    from pycocotools.coco import COCO

    doc = read_json(path)
    check_annotations(doc, path)
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
    return gt


def read_detections(path: str | Path) -> list[dict]:
    """A COCO results file: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` (score optional, a finite number; ids whole numbers). Detections of images
    the ground truth does not list are ignored later.

    Raises:
        OSError: the file cannot be read.
        CocoFileError: a malformed file, naming it and the first bad detection.
    """
    dets = read_json(path)
    if not isinstance(dets, list):
        raise CocoFileError(f"{path} must hold a list of detections, got {_json_kind(dets)}")
    for i, det in enumerate(dets):
        if not (isinstance(det, dict) and {"image_id", "category_id", "bbox"} <= det.keys()):
            raise CocoFileError(
                f"{path}: detection {i} must have image_id, category_id and bbox, got "
                f"{_short(det, 80)}"
            )
        problem = _bbox_problem(det["bbox"])
        for key in ("image_id", "category_id"):
            if problem is None and not _is_int(det[key]):
                problem = f"has {key} {_short(det[key])}, not a whole number"
        if problem is None and not _is_number(det.get("score", 1.0)):
            problem = f"has a score that is not a finite number: {_short(det.get('score'))}"
        if problem is not None:
            raise CocoFileError(f"{path}: detection {i} {problem}")
    return dets


def segment_image(
    predictor: SamPredictor, image: np.ndarray, prompts: list, multimask: bool
) -> list[dict]:
    """COCO results (``segmentation`` as compressed RLE) for one image's box prompts."""
    from pycocotools import mask as mask_utils

    predictor.set_image(image)
    results = []
    for (x, y, w, h), category, score in prompts:
        box = np.array([x, y, x + max(w, 1e-3), y + max(h, 1e-3)])
        masks, ious, _ = predictor.predict(box=box, multimask_output=multimask)
        best = int(np.argmax(ious))
        rle = mask_utils.encode(np.asfortranarray(masks[best].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {"segmentation": rle, "category_id": category, "score": float(ious[best]) * score}
        )
    return results


def evaluate_coco(
    predictor: SamPredictor,
    images_dir: str | Path,
    annotations: str | Path | Any,
    settings: CocoSettings = CocoSettings(),
    progress: Callable[[int, int], None] | None = None,
    detections: list[dict] | None = None,
) -> dict[str, Any]:
    """Run the protocol; returns ``{"AP": …, …, "images": n, "prompts": n}`` (AP in 0-1,
    -1 where COCOeval has no objects of that size).

    ``annotations`` is the ground-truth file, or a ``COCO`` from :func:`read_annotations`;
    ``detections``, already read (:func:`read_detections`), replaces reading
    ``settings.detections``. The same as :func:`segment_coco_images` over
    :func:`coco_image_ids`, then :func:`score_coco` (which is how several processes share
    the images: each segments some, one scores all).

    Raises:
        CocoFileError: a malformed ground-truth or detections file.
        ValueError: a photo that cannot be decoded, or whose size is not its record's.
        FileNotFoundError: a photo the ground truth names is missing.
    """
    gt = read_annotations(annotations) if isinstance(annotations, (str, Path)) else annotations
    dets = detections
    if dets is None and settings.detections is not None:
        dets = read_detections(settings.detections)
    image_ids = coco_image_ids(gt, settings.max_images)
    per_image = segment_coco_images(
        predictor, images_dir, gt, box_prompts(gt, dets), image_ids, settings.multimask, progress
    )
    return score_coco(gt, image_ids, per_image)


def coco_image_ids(gt: Any, max_images: int | None = None) -> list[int]:
    """The ids of the images evaluated: all of the ground truth's, sorted, the first
    ``max_images`` of them when given. Every one counts, even without prompts: the objects
    of an image the detector found nothing in are misses."""
    return sorted(gt.getImgIds())[:max_images]


def segment_coco_images(
    predictor: SamPredictor,
    images_dir: str | Path,
    gt: Any,
    prompts: dict[int, list[tuple[list, int, float]]],
    image_ids: list[int],
    multimask: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[int, list[dict]]]:
    """``(image id, COCO results of its prompts)`` for each of ``image_ids``, in order
    (``prompts`` from :func:`box_prompts`; an image without prompts has no results).
    ``progress(done, total)`` after each image.

    Raises:
        ValueError: a photo that cannot be decoded, or whose size is not its record's.
        FileNotFoundError: a photo the ground truth names is missing.
    """
    out: list[tuple[int, list[dict]]] = []
    for done, image_id in enumerate(image_ids, 1):
        results: list[dict] = []
        if prompts.get(image_id):
            info = gt.loadImgs(image_id)[0]
            path = Path(images_dir) / info["file_name"]
            image = read_rgb(path)
            if image.shape[:2] != (info["height"], info["width"]):
                h, w = image.shape[:2]
                raise ValueError(
                    f"{path} is {w}×{h} pixels, but its record in the annotations (image id "
                    f"{image_id}) says {info['width']}×{info['height']}"
                )
            for r in segment_image(predictor, image, prompts[image_id], multimask):
                results.append({"image_id": image_id, **r})
        out.append((image_id, results))
        if progress is not None:
            progress(done, len(image_ids))
    return out


def score_coco(
    gt: Any, image_ids: list[int], per_image: list[tuple[int, list[dict]]]
) -> dict[str, Any]:
    """COCOeval (segm) over ``image_ids`` of the results ``per_image`` (from
    :func:`segment_coco_images`, in any order and from any number of calls: they are put in
    image-id order first, so the figures never depend on who segmented what); returns
    ``{"AP": …, …, "images": n, "prompts": n}``."""
    from pycocotools.cocoeval import COCOeval

    results = [r for _, rs in sorted(per_image, key=lambda item: item[0]) for r in rs]
    stats = [-1.0] * len(METRICS)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [float(v) for v in ev.stats[: len(METRICS)]]
    return {
        **dict(zip(METRICS, stats, strict=True)),
        "images": len(image_ids),
        "prompts": len(results),
    }


def markdown(result: dict[str, Any], title: str) -> str:
    """A one-table report of :func:`evaluate_coco`'s result."""
    head = "| " + " | ".join(METRICS) + " |"
    rule = "|" + "---|" * len(METRICS)
    row = "| " + " | ".join(f"{result[k]:.3f}" for k in METRICS) + " |"
    counts = f"{result['images']} images, {result['prompts']} prompts."
    return f"# {title}\n\n{head}\n{rule}\n{row}\n\n{counts}\n"
