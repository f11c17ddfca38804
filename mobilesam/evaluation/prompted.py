"""mIoU against ground-truth masks for fixed prompts, the fine-tuning evaluation.

For each ground-truth instance of an image, three deterministic prompts:

- ``box``: the mask's tight box (XYXY, last pixel inside); single-mask output;
- ``point``: one centre point, the mask's pixel farthest from its border (inside even for a
  ring or a crescent); the best of the three multimask outputs by predicted IoU;
- ``point+click``: that point, then one correction click at the centre (farthest pixel from
  its border) of the larger error region of the ``point`` answer (a positive click in a
  missed region, a negative one in a spurious region), with the ``point`` answer's low-res
  logits as ``mask_input``; single-mask output. With no error the ``point`` answer stands.

Each IoU is computed at the image's size. The ``box`` answers, scored by their predicted IoU,
are also the COCO results that :func:`box_ap` scores (AP of instance segmentation prompted by
ground-truth boxes, as ``mobilesam eval coco`` computes it from COCO's own boxes).
Coordinates are (x, y) pixels of the original image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..predictor import SamPredictor
from .miou import Scores, mask_iou

#: The prompt kinds, in report order.
KINDS = ("box", "point", "point+click")


def center_point(mask: np.ndarray) -> np.ndarray:
    """The pixel of ``mask`` ``(H, W)`` bool farthest from its border (the image's edge
    counts as border), as ``(x, y)`` float64; the first in raster order on a tie."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], dtype=np.float64)


def correction_click(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The click that corrects ``pred`` towards ``gt`` (both ``(H, W)`` bool): the centre
    (:func:`center_point`) of the larger error region, labelled 1 for missed pixels (false
    negatives; they win a tie) or 0 for spurious ones; None when ``pred`` equals ``gt``."""
    missed, spurious = gt & ~pred, pred & ~gt
    n_missed, n_spurious = int(missed.sum()), int(spurious.sum())
    if n_missed == 0 and n_spurious == 0:
        return None
    if n_missed >= n_spurious:
        return center_point(missed), 1
    return center_point(spurious), 0


@dataclass
class PromptedResult:
    """The IoUs per kind (:class:`~.miou.Scores`), and the ``box`` answers as COCO results
    with their ground truth (for :func:`box_ap`)."""

    scores: Scores = field(default_factory=Scores)
    images: list[dict[str, Any]] = field(default_factory=list)
    gt: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: PromptedResult) -> None:
        self.scores.merge(other.scores)
        self.images += other.images
        self.gt += other.gt
        self.results += other.results

    def summary(self) -> dict[str, Any]:
        """Per kind, :meth:`Scores.summary`'s mIoU, std, n and 95% interval; and
        ``box_ap`` (AP, AP50, AP75 from :func:`box_ap`) when there are instances."""
        out: dict[str, Any] = {k: v for k, v in self.scores.summary().items()}
        if self.gt:
            out["box_ap"] = box_ap(self.images, self.gt, self.results)
        return out


def score_instances(
    predictor: SamPredictor,
    gt_masks: np.ndarray,
    categories: list[int] | None = None,
    image_id: int = 0,
) -> PromptedResult:
    """The three prompts for each of ``gt_masks`` ``(K, H, W)`` bool on the image the
    predictor holds (``set_image`` or ``set_embedding``, of the same ``(H, W)``).
    ``categories`` (default all 1) and ``image_id`` label the COCO records; empty masks are
    left out.

    Raises:
        ValueError: the masks are not the predictor's image's size.
    """
    if gt_masks.ndim != 3 or tuple(gt_masks.shape[1:]) != predictor.original_size:
        raise ValueError(
            f"ground-truth masks of shape {gt_masks.shape} do not fit the image, "
            f"{predictor.original_size} (H, W)"
        )
    out = PromptedResult()
    h, w = gt_masks.shape[1:]
    out.images.append({"id": image_id, "height": int(h), "width": int(w)})
    cats = categories if categories is not None else [1] * len(gt_masks)
    one = np.array([1])
    for k, (gt, category) in enumerate(zip(gt_masks, cats, strict=True)):
        if not gt.any():
            continue
        ys, xs = np.nonzero(gt)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
        masks, scores, _ = predictor.predict(box=box, multimask_output=False)
        out.scores.add("box", mask_iou(masks[0], gt))
        out.gt.append(_coco_record(gt, category, image_id, len(out.gt) + 1))
        out.results.append(
            {
                **_coco_record(masks[0], category, image_id, k + 1, with_box=False),
                "score": float(scores[0]),
            }
        )
        point = center_point(gt)[None]
        masks, scores, low_res = predictor.predict(point_coords=point, point_labels=one)
        best = int(np.argmax(scores))
        first = masks[best]
        out.scores.add("point", mask_iou(first, gt))
        click = correction_click(first, gt)
        if click is None:
            out.scores.add("point+click", mask_iou(first, gt))
            continue
        coords = np.concatenate([point, click[0][None]])
        masks, _, _ = predictor.predict(
            point_coords=coords,
            point_labels=np.array([1, click[1]]),
            mask_input=low_res[best][None],
            multimask_output=False,
        )
        out.scores.add("point+click", mask_iou(masks[0], gt))
    return out


def score_images(
    predictor: SamPredictor,
    samples: Iterable[tuple[np.ndarray, np.ndarray, list[int] | None]],
    progress: Callable[[int], None] | None = None,
) -> PromptedResult:
    """:func:`score_instances` over ``samples``: ``(image H×W×3 uint8 RGB, its ground-truth
    masks (K, H, W) bool, their categories or None)``, each image set on ``predictor`` in
    turn (image ids 1, 2, ...). ``progress(n)`` after the n-th image."""
    out = PromptedResult()
    for n, (image, masks, categories) in enumerate(samples, 1):
        predictor.set_image(image)
        out.merge(score_instances(predictor, masks, categories, n))
        if progress is not None:
            progress(n)
    return out


def _coco_record(
    mask: np.ndarray, category: int, image_id: int, ann_id: int, with_box: bool = True
) -> dict[str, Any]:
    """A COCO annotation (or result) of ``mask``: compressed RLE, area, bbox."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    rec: dict[str, Any] = {"image_id": image_id, "category_id": int(category), "segmentation": rle}
    if with_box:
        rec.update(
            id=ann_id,
            area=float(mask_utils.area(rle)),
            bbox=[float(v) for v in mask_utils.toBbox(rle)],
            iscrowd=0,
        )
    return rec


def box_ap(
    images: list[dict[str, Any]], gt: list[dict[str, Any]], results: list[dict[str, Any]]
) -> dict[str, float]:
    """AP, AP50 and AP75 (0-1) of ``results`` against ``gt`` (COCO records of
    :func:`score_instances`), by pycocotools' ``COCOeval`` (segm)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = sorted({a["category_id"] for a in gt})
    truth = COCO()
    truth.dataset = {
        "images": images,
        "annotations": [dict(a, id=i + 1) for i, a in enumerate(gt)],
        "categories": [{"id": c} for c in cats],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        dets = truth.loadRes([dict(r) for r in results])
        ev = COCOeval(truth, dets, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(ev.stats[i]) for i, name in enumerate(("AP", "AP50", "AP75"))}


def markdown_table(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """A Markdown table of :meth:`PromptedResult.summary` figures per kind (mIoU, and the
    box AP), before and after fine-tuning when ``after`` is given."""
    head = "| prompt | mIoU |" if after is None else "| prompt | before | after | change |"
    lines = [head, "|---|---|" if after is None else "|---|---|---|---|"]
    rows = [
        (k, before[k]["miou"], after[k]["miou"] if after else None) for k in KINDS if k in before
    ]
    if "box_ap" in before:
        rows.append(("box AP", before["box_ap"]["AP"], after["box_ap"]["AP"] if after else None))
    for name, b, a in rows:
        if a is None:
            lines.append(f"| {name} | {b:.3f} |")
        else:
            lines.append(f"| {name} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(lines) + "\n"
