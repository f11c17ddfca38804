"""Mask and box utilities for segment-everything: point grids, crops, stability, boxes,
NMS and run-length encoding.

Conventions: boxes are XYXY in pixels (x to the right, y down); masks are ``(..., H, W)``
tensors; RLE is uncompressed and column-major (Fortran order, as COCO), with the first count
being of zeros. Every function is vectorised torch or numpy code: no Python loop over pixels.
"""

from __future__ import annotations

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


def uncrop_masks(
    masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int
) -> torch.Tensor:
    """Zero-pad ``(N, h, w)`` crop masks back to ``(N, orig_h, orig_w)``."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


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
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.long, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, ys, -1).amax(dim=-1)
    top = torch.where(rows, ys, h).amin(dim=-1)
    right = torch.where(cols, xs, -1).amax(dim=-1)
    left = torch.where(cols, xs, w).amin(dim=-1)
    out = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    return torch.where(empty[..., None], torch.zeros_like(out), out)


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
    box is ``> iou_threshold``. Returns kept indices, highest score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    over = (box_iou(boxes[order].float(), boxes[order].float()) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(order.numel(), dtype=bool)
    keep = []
    for i in range(order.numel()):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
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
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)  # column-major
    change = flat[:, 1:] ^ flat[:, :-1]
    idx_b, idx_pos = change.nonzero(as_tuple=True)
    out = []
    for i in range(b):
        cuts = idx_pos[idx_b == i] + 1
        bounds = torch.cat(
            [
                torch.zeros(1, dtype=cuts.dtype, device=cuts.device),
                cuts,
                torch.tensor([h * w], dtype=cuts.dtype, device=cuts.device),
            ]
        )
        counts = (bounds[1:] - bounds[:-1]).tolist()
        if bool(flat[i, 0]):
            counts = [0, *counts]
        out.append({"size": [h, w], "counts": counts})
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
    return int(sum(rle["counts"][1::2]))
