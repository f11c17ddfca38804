"""``Candidates``: the masks segment-everything has kept so far, as parallel arrays, and the
steps that act on all of them at once: box NMS, the shift from a crop to the image, and SAM's
small-region cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..masks import (
    batched_mask_to_box,
    mask_to_rle,
    nms,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)

#: Where candidates live, whatever the model's device: their RLE is read on the CPU anyway.
CPU = torch.device("cpu")


def _empty(*size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(size, dtype=dtype, device=CPU)


@dataclass
class Candidates:
    """One row per mask, all on the CPU.

    Attributes:
        rles: uncompressed column-major RLE (``counts`` an int32 array or a list), image size.
        boxes: ``(N, 4)`` int64 XYXY, inclusive pixel indices.
        iou_preds: ``(N,)`` float32 predicted IoU.
        stability: ``(N,)`` float32 stability score in ``[0, 1]``.
        points: ``(N, 2)`` float64 (x, y) pixels of each mask's prompt point.
        crop_boxes: ``(N, 4)`` int64 XYXY crop each mask came from.
    """

    rles: list[dict] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: _empty(0, 4, dtype=torch.long))
    iou_preds: torch.Tensor = field(default_factory=lambda: _empty(0, dtype=torch.float32))
    stability: torch.Tensor = field(default_factory=lambda: _empty(0, dtype=torch.float32))
    points: torch.Tensor = field(default_factory=lambda: _empty(0, 2, dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: _empty(0, 4, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: torch.Tensor) -> Candidates:
        """Rows ``keep`` (int indices, in that order)."""
        keep = keep.cpu()
        return Candidates(
            rles=[self.rles[i] for i in keep.tolist()],
            boxes=self.boxes[keep],
            iou_preds=self.iou_preds[keep],
            stability=self.stability[keep],
            points=self.points[keep],
            crop_boxes=self.crop_boxes[keep],
        )

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        """The rows of ``parts``, in order."""
        if not parts:
            return Candidates()
        return Candidates(
            rles=[r for p in parts for r in p.rles],
            boxes=torch.cat([p.boxes for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            stability=torch.cat([p.stability for p in parts]),
            points=torch.cat([p.points for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
        )

    def nms(self, scores: torch.Tensor, iou_threshold: float) -> Candidates:
        """The rows box NMS keeps (highest ``(N,)`` score first; a box whose IoU with a kept
        one is ``> iou_threshold`` goes), in score order."""
        return self.select(nms(self.boxes.float(), scores, iou_threshold))

    def uncrop(self, crop_box: list[int]) -> Candidates:
        """Boxes and points shifted from the crop ``crop_box`` (XYXY) to the image, and
        ``crop_box`` recorded on every row."""
        return replace(
            self,
            boxes=uncrop_boxes_xyxy(self.boxes, crop_box),
            points=uncrop_points(self.points, crop_box),
            crop_boxes=torch.tensor([crop_box], dtype=torch.long, device=CPU).expand(len(self), 4),
        )


def without_small_regions(data: Candidates, min_area: int, nms_thresh: float) -> Candidates:
    """SAM's cleanup: fill holes and drop islands smaller than ``min_area`` pixels, then NMS
    preferring masks the cleanup left unchanged; changed masks that survive get their new RLE
    and box."""
    if len(data) == 0:
        return data
    rles, boxes, unchanged = list(data.rles), data.boxes.clone(), []
    for i, rle in enumerate(data.rles):
        mask, changed_holes = remove_small_regions(rle_to_mask(rle), min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        unchanged.append(not (changed_holes or changed_islands))
        if not unchanged[-1]:  # an unchanged mask keeps its RLE and box
            m = torch.from_numpy(mask)[None]
            rles[i], boxes[i] = mask_to_rle(m)[0], batched_mask_to_box(m)[0]
    scores = torch.tensor(unchanged, dtype=torch.float, device=CPU)
    return replace(data, rles=rles, boxes=boxes).nms(scores, nms_thresh)
