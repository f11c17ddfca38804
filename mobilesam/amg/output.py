"""The output of ``SamAutomaticMaskGenerator.generate``: ``segment_anything``'s annotation
dictionaries, one per mask, with the segmentation in the chosen ``output_mode``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..masks import area_from_rle, coco_encode_rle, rle_to_mask
from .candidates import Candidates


def to_annotations(data: Candidates, output_mode: str) -> list[dict[str, Any]]:
    """One dict per row of ``data``, in order.

    Keys: ``segmentation`` (``output_mode``: ``"binary_mask"``, an ``H×W`` bool array;
    ``"uncompressed_rle"``, ``{"size": [H, W], "counts": [int, ...]}``; ``"coco_rle"``, COCO's
    compressed RLE with ``counts`` a string), ``area`` (pixels), ``bbox`` (XYWH, pixels),
    ``predicted_iou``, ``point_coords`` (``[[x, y]]`` pixels), ``stability_score`` and
    ``crop_box`` (XYWH, pixels).
    """
    rles = [{"size": r["size"], "counts": _as_list(r["counts"])} for r in data.rles]
    if output_mode == "coco_rle":
        segmentations: list[Any] = [coco_encode_rle(r) for r in rles]
    elif output_mode == "binary_mask":
        segmentations = [rle_to_mask(r) for r in rles]
    else:
        segmentations = rles
    boxes = _xyxy_to_xywh(data.boxes).tolist()
    crops = _xyxy_to_xywh(data.crop_boxes).tolist()
    ious = data.iou_preds.tolist()
    stab = data.stability.tolist()
    points = data.points.tolist()
    return [
        {
            "segmentation": segmentations[i],
            "area": area_from_rle(rles[i]),
            "bbox": boxes[i],
            "predicted_iou": ious[i],
            "point_coords": [points[i]],
            "stability_score": stab[i],
            "crop_box": crops[i],
        }
        for i in range(len(data))
    ]


def _as_list(counts: Any) -> list[int]:
    return counts.tolist() if isinstance(counts, np.ndarray) else list(counts)


def _xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out
