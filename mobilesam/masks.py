"""Mask and box utilities for segment-everything: point grids, crops, stability, boxes,
NMS and run-length encoding.

Conventions: boxes are XYXY in pixels (x to the right, y down); masks are ``(..., H, W)``
tensors; RLE is uncompressed and column-major (Fortran order, as COCO), with the first count
being of zeros. Every function is vectorised torch or numpy code: no Python loop over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n², 2)`` (x, y) points in ``[0, 1]``, cell centres of an ``n×n`` grid, x fastest."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale: int) -> list[np.ndarray]:
    """One grid per crop layer: layer ``i`` has ``n_per_side / scale**i`` points a side."""
    return [build_point_grid(int(n_per_side / (scale**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """SAM's crop pyramid: the full image, then ``2^i × 2^i`` overlapping crops per layer ``i``.

    Args:
        im_size: ``(H, W)``.
        n_layers: number of crop layers below the full image.
        overlap_ratio: overlap as a fraction of the shorter side (scaled per layer).

    Returns:
        XYXY crop boxes and the layer index of each.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i in range(n_layers):
        per_side = 2 ** (i + 1)
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = _crop_len(im_w, per_side, overlap)
        crop_h = _crop_len(im_h, per_side, overlap)
        x0s = [int((crop_w - overlap) * k) for k in range(per_side)]
        y0s = [int((crop_h - overlap) * k) for k in range(per_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(i + 1)
    return boxes, layers


def _crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
    return int(np.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Shift ``(N, 4)`` XYXY boxes from crop to image coordinates."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device, dtype=boxes.dtype)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Shift ``(N, 2)`` (x, y) points from crop to image coordinates."""
    return points + torch.tensor(crop_box[:2], device=points.device, dtype=points.dtype)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """``(N,)`` bool: the box touches an edge of the crop that is not an edge of the image."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def calculate_stability_score(
    masks: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU between the masks thresholded at ``t + offset`` and at ``t - offset``.

    Args:
        masks: ``(..., H, W)`` logits.

    Returns:
        ``(...)`` float32 scores in ``[0, 1]`` (1 for two empty masks is not special-cased:
        0/0 gives NaN, as in SAM).
    """
    inter = (masks > (mask_threshold + threshold_offset)).sum((-1, -2), dtype=torch.int32)
    union = (masks > (mask_threshold - threshold_offset)).sum((-1, -2), dtype=torch.int32)
    return inter.float() / union.float()


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive pixel indices) of ``(..., H, W)`` bool masks.

    Empty masks give ``[0, 0, 0, 0]``. Returns int64 ``(..., 4)``.
    """
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    return MaskRuns.from_masks(masks.reshape(-1, h, w)).boxes().reshape(*lead, 4)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``(N, 4)`` XYXY boxes (``(x1 - x0) * (y1 - y0)``)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` IoU of XYXY boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's rule: by descending score, drop boxes whose IoU with a kept
    box is ``> iou_threshold``. Returns kept indices, highest score first.

    Each kept box is compared with the boxes after it, in float32 with the arithmetic of
    :func:`box_iou`, so memory stays linear in the number of boxes (an ``N × N`` IoU matrix
    of a few thousand candidates is hundreds of MB)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float().cpu().numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(len(b)):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = b[i + 1 :]
            wh = np.minimum(b[i, 2:], rest[:, 2:]) - np.maximum(b[i, :2], rest[:, :2])
            np.clip(wh, 0, None, out=wh)
            inter = wh[:, 0] * wh[:, 1]
            suppressed[i + 1 :] |= inter / (area[i] + area[i + 1 :] - inter) > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS applied independently per category ``idxs`` (boxes of different categories never
    suppress each other). Returns kept indices, highest score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = idxs.to(boxes.dtype) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def mask_to_rle(masks: torch.Tensor) -> list[dict]:
    """Uncompressed column-major RLE of ``(B, H, W)`` bool masks (first count is zeros)."""
    return MaskRuns.from_masks(masks).to_rle()


@dataclass(frozen=True)
class MaskRuns:
    """Where ``(B, H, W)`` bool masks change value down their columns.

    Both the column-major RLE and the tight boxes follow from these few change points plus
    each mask's first and last row, so a batch of masks is read once, in memory order (no
    transposed copy), and everything after that is sparse. ``(x, y)`` are pixel column and row.

    Attributes:
        height, width: mask size.
        top, bottom: ``(B, W)`` bool, rows ``0`` and ``H - 1``.
        index, row, col: ``(K,)`` int64: mask ``index`` differs between ``(col, row - 1)``
            and ``(col, row)``, ``1 <= row < H``.
        rising: ``(K,)`` bool: the change is 0 → 1 (foreground starts at ``row``).
    """

    height: int
    width: int
    top: torch.Tensor
    bottom: torch.Tensor
    index: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    rising: torch.Tensor

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> MaskRuns:
        if masks.dim() != 3 or masks.dtype != torch.bool:
            raise ValueError(
                f"expected (B, H, W) bool masks, got {tuple(masks.shape)} {masks.dtype}"
            )
        _, h, w = masks.shape
        index, row, col = (masks[:, 1:, :] != masks[:, :-1, :]).nonzero(as_tuple=True)
        row = row + 1
        return cls(
            h,
            w,
            masks[:, 0, :].clone(),
            masks[:, -1, :].clone(),
            index,
            row,
            col,
            masks[index, row, col],
        )

    def __len__(self) -> int:
        return self.top.shape[0]

    def select(self, keep: torch.Tensor) -> MaskRuns:
        """The masks where the ``(B,)`` bool ``keep`` is true, in order."""
        keep = keep.to(torch.bool)
        new_index = torch.cumsum(keep, 0) - 1
        sel = keep[self.index]
        return MaskRuns(
            self.height,
            self.width,
            self.top[keep],
            self.bottom[keep],
            new_index[self.index[sel]],
            self.row[sel],
            self.col[sel],
            self.rising[sel],
        )

    def uncrop(self, crop_box: list[int], orig_h: int, orig_w: int) -> MaskRuns:
        """The same masks zero-padded from ``crop_box`` (XYXY) to ``(orig_h, orig_w)``."""
        x0, y0, x1, y1 = crop_box
        if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
            return self
        b = len(self)
        parts = [(self.index, self.row + y0, self.col + x0, self.rising)]
        top = self.top.new_zeros(b, orig_w)
        bottom = self.bottom.new_zeros(b, orig_w)
        if y0 > 0:  # the crop's first row now starts below background
            i, c = self.top.nonzero(as_tuple=True)
            parts.append((i, torch.full_like(i, y0), c + x0, torch.ones_like(i, dtype=torch.bool)))
        else:
            top[:, x0:x1] = self.top
        if y1 < orig_h:  # ... and its last row now ends above background
            i, c = self.bottom.nonzero(as_tuple=True)
            parts.append((i, torch.full_like(i, y1), c + x0, torch.zeros_like(i, dtype=torch.bool)))
        else:
            bottom[:, x0:x1] = self.bottom
        index, row, col, rising = (torch.cat(t) for t in zip(*parts, strict=True))
        return MaskRuns(orig_h, orig_w, top, bottom, index, row, col, rising)

    def boxes(self) -> torch.Tensor:
        """Tight XYXY boxes, inclusive pixel indices, ``(B, 4)`` int64; empty masks give 0s."""
        b, h, w = len(self), self.height, self.width
        dev = self.top.device
        if h == 0 or w == 0:
            return torch.zeros(b, 4, dtype=torch.long, device=dev)
        # A column holds foreground iff its first pixel does or its value changes.
        col_fg = self.top.clone()
        col_fg[self.index, self.col] = True
        xs = torch.arange(w, device=dev)
        left = torch.where(col_fg, xs, w).amin(dim=-1)
        right = torch.where(col_fg, xs, -1).amax(dim=-1)
        # First foreground row: 0 if row 0 has any, else the earliest 0 → 1 change.
        top = torch.where(self.top.any(-1), 0, h).to(torch.long)
        r = self.rising
        top = top.scatter_reduce(0, self.index[r], self.row[r], "amin")
        # Last foreground row: H - 1 if the last row has any, else before the latest 1 → 0.
        bottom = torch.where(self.bottom.any(-1), h - 1, -1).to(torch.long)
        bottom = bottom.scatter_reduce(0, self.index[~r], self.row[~r] - 1, "amax")
        out = torch.stack([left, top, right, bottom], dim=-1)
        return torch.where(col_fg.any(-1, keepdim=True), out, torch.zeros_like(out))

    def to_rle(self, as_list: bool = True) -> list[dict]:
        """Uncompressed column-major RLE, one dict per mask (first count is zeros).

        ``as_list=False`` keeps ``counts`` as int32 numpy arrays: a twentieth of the memory of
        Python int lists, for RLE held in bulk (the generator converts its survivors only).
        """
        b, h, w = len(self), self.height, self.width
        n = h * w
        # Change points in the column-major scan: within columns, and where a column's last
        # pixel differs from the next column's first.
        wrap_i, wrap_x = (self.bottom[:, :-1] != self.top[:, 1:]).nonzero(as_tuple=True)
        index = torch.cat([self.index, wrap_i])
        pos = torch.cat([self.col * h + self.row, (wrap_x + 1) * h])
        order = torch.argsort(index * n + pos)
        per_mask = torch.bincount(index, minlength=b).tolist()
        cuts = pos[order].cpu().numpy()
        starts_with_one = self.top[:, 0].cpu().numpy() if n else np.zeros(b, dtype=bool)
        out = []
        offset = 0
        for i in range(b):
            bounds = np.concatenate([[0], cuts[offset : offset + per_mask[i]], [n]])
            offset += per_mask[i]
            if starts_with_one[i]:
                bounds = np.concatenate([[0], bounds])
            counts = np.diff(bounds)
            if not as_list:
                out.append({"size": [h, w], "counts": counts.astype(np.int32)})
            else:
                out.append({"size": [h, w], "counts": counts.tolist()})
        return out


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode an uncompressed RLE to an ``(H, W)`` bool array."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def area_from_rle(rle: dict) -> int:
    """Foreground pixel count of an uncompressed RLE."""
    return int(np.asarray(rle["counts"][1::2], dtype=np.int64).sum())


def coco_encode_rle(rle: dict) -> dict:
    """Uncompressed RLE → COCO compressed RLE (``counts`` a UTF-8 string), via pycocotools."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """SAM's small-region cleanup of one ``(H, W)`` bool mask, 8-connected.

    ``mode="holes"`` fills background components smaller than ``area_thresh`` pixels;
    ``mode="islands"`` drops foreground components smaller than that (keeping the largest if
    all are small). Returns the new mask and whether anything changed.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    labels, n = ndimage.label(mask ^ holes, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if holes:
        fill = np.concatenate([[False], small])
        return mask | fill[labels], True
    keep = ~small if (~small).any() else np.arange(n) == int(np.argmax(sizes))
    return np.concatenate([[False], keep])[labels], True


def rle_counts(rle: dict) -> np.ndarray:
    """The run lengths of an RLE as an int64 array (first count is zeros, column-major).

    ``rle["counts"]`` is either uncompressed (a list or array of ints) or COCO's compressed
    string (``bytes`` or ``str``, as pycocotools writes it; decoded here with numpy, without
    a Python loop over characters, exactly as pycocotools' ``rleFrString``).

    Raises:
        ValueError: a compressed string that is not one (a character out of range, a number
            cut short).
    """
    counts = rle["counts"]
    if not isinstance(counts, (str, bytes)):
        return np.asarray(counts, dtype=np.int64).reshape(-1)
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() >= 64:
        raise ValueError("not a COCO compressed RLE string: a character is out of range")
    last = (c & 0x20) == 0  # a number's last character has no "more" bit
    if not last[-1]:
        raise ValueError("not a COCO compressed RLE string: the last number is cut short")
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    group = np.cumsum(np.concatenate([[0], last[:-1].astype(np.int64)]))
    shift = 5 * (np.arange(c.size) - starts[group])
    if shift.max() > 30:  # seven characters at most: 35 bits hold any 32-bit run
        raise ValueError("not a COCO compressed RLE string: a number is too long")
    x = np.zeros(starts.size, dtype=np.int64)
    np.add.at(x, group, (c & 0x1F) << shift)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0  # sign bit of the last 5-bit group
    x[negative] -= np.int64(1) << (shift[ends][negative] + 5)
    # runs after the second are stored as differences to the run two before
    out = x.copy()
    out[1::2] = np.cumsum(x[1::2])
    if out.size > 2:
        out[2::2] = np.cumsum(x[2::2])
    return out


def rle_foreground_index(counts: np.ndarray) -> np.ndarray:
    """Column-major flat indices (``x * H + y``) of an RLE's foreground pixels, in order,
    from its run lengths (:func:`rle_counts`): ``O(area)`` work, never ``O(H × W)``."""
    counts = np.asarray(counts, dtype=np.int64)
    bounds = np.cumsum(counts)
    starts = bounds[0::2][: counts[1::2].size]  # a foreground run starts where zeros end
    lengths = counts[1::2]
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    total = int(lengths.sum())
    # index k of run r is starts[r] + (k - first k of run r)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total, dtype=np.int64)
