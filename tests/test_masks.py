"""Mask utilities for segment-everything: RLE, stability, boxes, NMS, crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mobilesam.masks import (
    MaskRuns,
    area_from_rle,
    batched_mask_to_box,
    batched_nms,
    box_iou,
    build_point_grid,
    calculate_stability_score,
    generate_crop_boxes,
    mask_to_rle,
    nms,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, h // 4 + 1, w // 4 + 1, generator=g)
    up = torch.nn.functional.interpolate(base[:, None], (h, w), mode="bilinear")[:, 0]
    return up > 0.5


def _uncrop_reference(masks: torch.Tensor, crop_box: list[int], h: int, w: int) -> torch.Tensor:
    """``(N, h', w')`` crop masks placed at ``crop_box`` (XYXY) in ``(N, h, w)`` zeros."""
    x0, y0, x1, y1 = crop_box
    out = torch.zeros(masks.shape[0], h, w, dtype=masks.dtype)
    out[:, y0:y1, x0:x1] = masks
    return out


def test_rle_round_trip_and_pycocotools():
    masks = _random_masks(6, 37, 53)
    masks[0] = True
    masks[1] = False
    for m, rle in zip(masks, mask_to_rle(masks), strict=True):
        decoded = rle_to_mask(rle)
        np.testing.assert_array_equal(decoded, m.numpy())
        assert area_from_rle(rle) == int(m.sum())
        assert sum(rle["counts"]) == 37 * 53
        coco = mask_utils.frPyObjects(rle, 37, 53)
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), m.numpy())
        ref = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        assert mask_utils.area(ref) == area_from_rle(rle)
        assert coco["counts"] == ref["counts"]


def test_stability_score():
    logits = torch.tensor([[[3.0, 0.5], [-0.5, -3.0]]])
    # > +1: one pixel; > -1: three pixels
    assert calculate_stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)
    assert calculate_stability_score(logits, 0.0, 0.1).item() == pytest.approx(2 / 2)


def test_batched_mask_to_box():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 9, 11] = True
    boxes = batched_mask_to_box(masks)
    assert boxes.tolist() == [[3, 2, 8, 4], [0, 0, 0, 0], [11, 9, 11, 9]]
    assert tuple(batched_mask_to_box(masks[None]).shape) == (1, 3, 4)


def test_nms_matches_greedy_rule():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 100
    wh = torch.rand(60, 2, generator=g) * 40 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(60, generator=g)
    keep = nms(boxes, scores, 0.5)
    # reference: plain greedy loop
    order = torch.argsort(scores, descending=True).tolist()
    iou = box_iou(boxes, boxes)
    ref = []
    for i in order:
        if all(iou[i, j] <= 0.5 for j in ref):
            ref.append(i)
    assert keep.tolist() == ref
    cats = torch.arange(60) % 2
    keep_b = batched_nms(boxes, scores, cats, 0.5)
    for c in (0, 1):
        sel = torch.nonzero(cats == c)[:, 0]
        expected = sel[nms(boxes[sel], scores[sel], 0.5)]
        assert set(keep_b[cats[keep_b] == c].tolist()) == set(expected.tolist())
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_nms_linear_memory_equals_matrix_rule():
    """The row-by-row NMS keeps exactly what the full IoU matrix rule keeps, with ties,
    degenerate (zero-area) boxes and thresholds 0 and 1."""
    g = torch.Generator().manual_seed(5)
    n = 400
    xy = (torch.rand(n, 2, generator=g) * 500).round()
    boxes = torch.cat([xy, xy + (torch.rand(n, 2, generator=g) * 200).round()], dim=1)
    boxes[:40, 2:] = boxes[:40, :2]  # zero area: IoU 0/0 is NaN, which suppresses nothing
    scores = torch.rand(n, generator=g)
    scores[:100] = 0.5  # ties keep their input order
    for threshold in (0.0, 0.3, 0.7, 1.0):
        order = torch.argsort(scores, descending=True, stable=True)
        over = (box_iou(boxes[order], boxes[order]) > threshold).numpy()
        suppressed, ref = np.zeros(n, dtype=bool), []
        for i in range(n):
            if not suppressed[i]:
                ref.append(int(order[i]))
                suppressed |= over[i]
        assert nms(boxes, scores, threshold).tolist() == ref


def test_point_grid():
    g = build_point_grid(2)
    np.testing.assert_allclose(g, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert build_point_grid(32).shape == (1024, 2)


def test_crop_boxes_and_uncrop():
    boxes, layers = generate_crop_boxes((770, 769), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 769, 770] and layers == [0, 1, 1, 1, 1]
    for b in boxes[1:]:
        assert 0 <= b[0] < b[2] <= 769 and 0 <= b[1] < b[3] <= 770
    # the four crops cover the image
    cover = np.zeros((770, 769), bool)
    for x0, y0, x1, y1 in boxes[1:]:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    crop = [100, 50, 300, 250]
    assert uncrop_boxes_xyxy(torch.tensor([[1, 2, 3, 4]]), crop).tolist() == [[101, 52, 103, 54]]
    assert uncrop_points(torch.tensor([[1.0, 2.0]]), crop).tolist() == [[101.0, 52.0]]


def test_golden_amg_rles_decode_to_their_area_and_box(reference):
    """The official generator's RLEs (amg.json) decode here to the areas and XYWH boxes it
    reported: same RLE convention and the same box rule (w = x1 - x0 on inclusive pixels)."""
    data = json.loads((reference / "golden" / "amg.json").read_text())
    for ann in data["masks"][:40]:
        m = rle_to_mask({"size": ann["size"], "counts": ann["rle_counts"]})
        assert m.shape == tuple(ann["size"])
        assert int(m.sum()) == ann["area"] == area_from_rle({"counts": ann["rle_counts"]})
        x0, y0, x1, y1 = batched_mask_to_box(torch.from_numpy(m)[None])[0].tolist()
        assert [x0, y0, x1 - x0, y1 - y0] == ann["bbox"]
        rle = mask_to_rle(torch.from_numpy(m)[None])[0]
        assert rle["counts"] == ann["rle_counts"]


def _dense_box(m: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(m)
    return [0, 0, 0, 0] if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]


def test_mask_runs_boxes_select_and_uncrop():
    masks = _random_masks(8, 31, 45, seed=5)
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, 0, 44] = masks[2, 30, 0] = True  # opposite corners
    masks[3] = False
    masks[3, 7:9, :] = True  # a full-width band (no vertical change at the edges)
    runs = MaskRuns.from_masks(masks)
    boxes = runs.boxes().tolist()
    assert boxes == [_dense_box(m) for m in masks.numpy()]
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    sub = runs.select(keep)
    assert sub.boxes().tolist() == [b for b, k in zip(boxes, keep.tolist(), strict=True) if k]
    assert sub.to_rle() == mask_to_rle(masks[keep])
    # (crop box XYXY, padded h, w): none, right, below, all four sides
    for crop, h, w in (
        ([0, 0, 45, 31], 31, 45),
        ([10, 0, 55, 31], 31, 55),
        ([0, 6, 45, 37], 37, 45),
        ([3, 4, 48, 35], 37, 50),
    ):
        padded = _uncrop_reference(masks, crop, h, w)
        assert runs.uncrop(crop, h, w).to_rle() == mask_to_rle(padded)
        assert runs.uncrop(crop, h, w).boxes().tolist() == [_dense_box(m) for m in padded.numpy()]
    one_row = torch.tensor([[[False, True, True, False]]])
    assert mask_to_rle(one_row)[0]["counts"] == [1, 2, 1]
    assert batched_mask_to_box(one_row).tolist() == [[1, 0, 2, 0]]


def test_remove_small_regions_rules():
    m = np.zeros((20, 20), dtype=bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # a 1-pixel hole
    m[16, 16] = True  # a 1-pixel island
    filled, changed = remove_small_regions(m, 5, "holes")
    assert changed and filled[5, 5] and filled[16, 16]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[16, 16] and cleaned[2:12, 2:12].all()
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and (same == cleaned).all()
    tiny = np.zeros((10, 10), dtype=bool)
    tiny[1, 1] = tiny[5, 5] = tiny[5, 6] = True  # every island small: keep the largest
    kept, _ = remove_small_regions(tiny, 50, "islands")
    assert kept.sum() == 2 and kept[5, 5] and kept[5, 6]
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(m, 5, "other")
