"""Zero-shot instance segmentation on COCO-format data, prompted by boxes (the SAM paper's
protocol, as EdgeSAM and EfficientViT-SAM report it).

Each box (the ground truth's, or a detector's from a COCO results file) prompts the model:
single-mask output, or the best of three by predicted IoU with ``multimask``. A mask is scored
by its predicted IoU times the detection score (1 for ground-truth boxes), and pycocotools'
``COCOeval(iouType="segm")`` gives AP, AP50, AP75 and AP for small, medium and large objects
(0-1). Boxes are COCO XYWH pixels; masks are at the image's size.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


def read_detections(path: str | Path) -> list[dict]:
    """A COCO results file: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` (score optional). ValueError naming the file and the first bad record."""
    dets = json.loads(Path(path).read_text())
    if not isinstance(dets, list):
        raise ValueError(f"{path} must hold a list of detections, got {type(dets).__name__}")
    for i, det in enumerate(dets):
        if not (isinstance(det, dict) and {"image_id", "category_id", "bbox"} <= det.keys()):
            raise ValueError(
                f"{path}: detection {i} must have image_id, category_id and bbox, got {det!r:.80}"
            )
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
    annotations: str | Path,
    settings: CocoSettings = CocoSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol; returns ``{"AP": …, …, "images": n, "prompts": n}`` (AP in 0-1,
    -1 where COCOeval has no objects of that size)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(annotations))
    dets = None if settings.detections is None else read_detections(settings.detections)
    prompts = box_prompts(gt, dets)
    # every image counts: the objects of an image the detector found nothing in are misses
    image_ids = sorted(gt.getImgIds())[: settings.max_images]
    results: list[dict] = []
    for done, image_id in enumerate(image_ids, 1):
        if prompts.get(image_id):
            info = gt.loadImgs(image_id)[0]
            image = read_rgb(Path(images_dir) / info["file_name"])
            for r in segment_image(predictor, image, prompts[image_id], settings.multimask):
                results.append({"image_id": image_id, **r})
        if progress is not None:
            progress(done, len(image_ids))
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
