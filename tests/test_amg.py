"""Segment-everything: parity with the official generator's output (amg.json), output
formats, crop layers, small-region cleanup, argument checking."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from mobilesam import SamAutomaticMaskGenerator
from mobilesam.automatic_mask_generator import STAGES
from mobilesam.masks import batched_mask_to_box, box_iou, rle_to_mask
from mobilesam.predictor import SamPredictor

from .helpers import load_image


def _coco(rles: list[dict]) -> list[dict]:
    return [mask_utils.frPyObjects(r, *r["size"]) for r in rles]


def _match(golden: list[dict], ours: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching by mask IoU: (golden index, our index, IoU) of each pair."""
    g = _coco([{"size": a["size"], "counts": a["rle_counts"]} for a in golden])
    o = _coco([a["segmentation"] for a in ours])
    iou = np.asarray(mask_utils.iou(o, g, [0] * len(g))).T  # (golden, ours)
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


@pytest.fixture(scope="session")
def amg_golden(reference) -> dict:
    return json.loads((reference / "golden" / "amg.json").read_text())


@pytest.fixture(scope="session")
def picture1(reference) -> np.ndarray:
    return load_image(reference, "picture1.jpg")


@pytest.fixture(scope="session")
def amg_output(fixture_model, amg_golden, picture1) -> list[dict]:
    gen = SamAutomaticMaskGenerator(
        fixture_model, output_mode="uncompressed_rle", **amg_golden["settings"]
    )
    start = time.perf_counter()
    out = gen.generate(picture1)
    elapsed = time.perf_counter() - start
    # every stage ran, and the stages do not overlap
    assert list(gen.stage_times) == list(STAGES)
    assert all(t > 0 for t in gen.stage_times.values())
    assert sum(gen.stage_times.values()) <= elapsed
    return out


def test_parity_with_official_generator(amg_golden, amg_output):
    golden = amg_golden["masks"]
    assert abs(len(amg_output) - len(golden)) <= 0.02 * len(golden)
    g_idx, o_idx, iou = _match(golden, amg_output)
    good = iou >= 0.99
    assert good.sum() >= 0.97 * len(golden), f"only {good.sum()} of {len(golden)} matched"
    for gi, oi in zip(g_idx[good], o_idx[good], strict=True):
        g, o = golden[gi], amg_output[oi]
        assert abs(g["predicted_iou"] - o["predicted_iou"]) <= 1e-3
        assert abs(g["stability_score"] - o["stability_score"]) <= 1e-3
        # a pixel whose logit is within float32 rounding of 0 may flip between any two
        # float32 implementations (or CPUs); a lone such pixel can move a box edge by 2 px
        assert np.abs(np.array(g["bbox"]) - np.array(o["bbox"])).max() <= 2
        assert o["crop_box"] == g["crop_box"]
        np.testing.assert_allclose(o["point_coords"], g["point_coords"], atol=1e-6)


def test_annotation_fields_are_consistent(amg_output, picture1):
    h, w = picture1.shape[:2]
    for ann in amg_output[:60]:
        assert set(ann) == {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
        }
        m = rle_to_mask(ann["segmentation"])
        assert m.shape == (h, w)
        assert ann["area"] == int(m.sum())
        x0, y0, x1, y1 = batched_mask_to_box(torch.from_numpy(m)[None])[0].tolist()
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert ann["predicted_iou"] > 0.88 and ann["stability_score"] >= 0.95
        assert ann["crop_box"] == [0, 0, w, h]


def test_sorted_by_nms_and_no_heavy_overlap(amg_output):
    scores = [a["predicted_iou"] for a in amg_output]
    assert scores == sorted(scores, reverse=True)
    boxes = torch.tensor([a["bbox"] for a in amg_output], dtype=torch.float)
    boxes[:, 2:] += boxes[:, :2]
    iou = box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    assert float(iou.max()) <= 0.7 + 1e-6


@pytest.fixture(scope="session")
def small_image(picture1) -> np.ndarray:
    return np.ascontiguousarray(picture1[::2, ::2])  # 385×385: cheaper encoder crops


@pytest.fixture(scope="session")
def small_embedding(fixture_model, small_image) -> torch.Tensor:
    """``small_image``'s embedding: one encoder pass for the tests on the whole small image."""
    predictor = SamPredictor(fixture_model)
    predictor.set_image(small_image)
    return predictor.get_image_embedding()


def test_output_modes_agree(fixture_model, small_image, small_embedding):
    def generate(**kw):
        gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=4, **kw)
        return gen.generate(small_image, image_embedding=small_embedding)

    out_rle = generate(output_mode="uncompressed_rle")
    out_bin = generate()
    out_coco = generate(output_mode="coco_rle")
    assert len(out_rle) == len(out_bin) == len(out_coco) > 0
    for a, b, c in zip(out_rle, out_bin, out_coco, strict=True):
        m = b["segmentation"]
        assert m.dtype == np.bool_ and m.shape == small_image.shape[:2]
        np.testing.assert_array_equal(rle_to_mask(a["segmentation"]), m)
        assert isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(c["segmentation"]).astype(bool), m)
        assert a["area"] == b["area"] == c["area"] == int(m.sum())


def test_precomputed_embedding_gives_the_same_masks(
    fixture_model, picture1, embedded, cases, monkeypatch
):
    """``generate(image, image_embedding=...)`` skips the encoder for the whole-image crop and
    gives exactly what encoding the image itself gives; a wrong-shaped embedding is refused."""
    assert cases["images"][0] == "picture1.jpg"
    features = embedded["picture1.jpg"].get_image_embedding()
    kw = {"points_per_side": 4, "output_mode": "uncompressed_rle"}
    gen = SamAutomaticMaskGenerator(fixture_model, **kw)
    encoded = []
    monkeypatch.setattr(gen.predictor, "set_image", lambda *a, **k: encoded.append(a))
    reused = gen.generate(picture1, image_embedding=features)
    assert encoded == []
    fresh = SamAutomaticMaskGenerator(fixture_model, **kw).generate(picture1)
    assert len(reused) > 0
    assert [x["segmentation"] for x in reused] == [x["segmentation"] for x in fresh]
    assert [x["predicted_iou"] for x in reused] == [x["predicted_iou"] for x in fresh]
    with pytest.raises(ValueError, match="features must have shape"):
        gen.generate(picture1, image_embedding=features[:, :8])


def test_decoder_batching_does_not_change_masks(fixture_model, small_image, small_embedding):
    def generate(**kw):
        gen = SamAutomaticMaskGenerator(
            fixture_model, points_per_side=4, output_mode="uncompressed_rle", **kw
        )
        return gen.generate(small_image, image_embedding=small_embedding)

    a = generate(decoder_batch_size=1)
    b = generate(points_per_batch=7, decoder_batch_size=5, max_upsample_bytes=1)
    assert [x["segmentation"] for x in a] == [x["segmentation"] for x in b]
    np.testing.assert_allclose(
        [x["predicted_iou"] for x in a], [x["predicted_iou"] for x in b], atol=1e-6
    )


def test_crop_layers(fixture_model, small_image, small_embedding):
    h, w = small_image.shape[:2]
    gen = SamAutomaticMaskGenerator(
        fixture_model,
        points_per_side=4,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        output_mode="uncompressed_rle",
    )
    out = gen.generate(small_image, image_embedding=small_embedding)
    crops = {tuple(a["crop_box"]) for a in out}
    assert len(crops) >= 2, "expected masks from the full image and from crops"
    for ann in out:
        m = rle_to_mask(ann["segmentation"])
        assert m.shape == (h, w) and ann["area"] == int(m.sum())
        cx, cy, cw, ch = ann["crop_box"]
        assert not m[:, : max(cx, 0)].any() and not m[: max(cy, 0)].any()
        assert not m[cy + ch :].any() and not m[:, cx + cw :].any()
        (px, py) = ann["point_coords"][0]
        assert cx <= px <= cx + cw and cy <= py <= cy + ch
        x0, y0, bw, bh = ann["bbox"]
        ys, xs = np.nonzero(m)
        assert [x0, y0, bw, bh] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


def test_min_mask_region_area_removes_small_islands_and_holes(
    fixture_model, small_image, small_embedding
):
    area = 400
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=4, min_mask_region_area=area)
    out = gen.generate(small_image, image_embedding=small_embedding)
    assert out
    eight = np.ones((3, 3), dtype=bool)
    for ann in out:
        m = ann["segmentation"]
        labels, n = ndimage.label(m, structure=eight)
        sizes = np.bincount(labels.ravel())[1:]
        assert n == 1 or (sizes >= area).all()
        holes, _ = ndimage.label(~m, structure=eight)
        hole_sizes = np.bincount(holes.ravel())[1:]
        assert (hole_sizes >= area).all()
        assert ann["area"] == int(m.sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points_per_side": None}, "Exactly one of points_per_side or point_grids"),
        ({"point_grids": [np.zeros((4, 2))]}, "Exactly one"),
        ({"output_mode": "png"}, "output_mode"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"points_per_side": 0}, "points_per_side"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"points_per_side": None, "point_grids": [np.full((3, 2), 2.0)]}, r"\[0, 1\]"),
        ({"points_per_side": None, "point_grids": [np.zeros((3, 3))]}, r"\(N, 2\)"),
        (
            {"points_per_side": None, "point_grids": [np.zeros((3, 2))], "crop_n_layers": 1},
            "one grid per layer",
        ),
        ({"decoder_batch_size": 0}, "decoder_batch_size"),
        ({"max_upsample_bytes": 0}, "max_upsample_bytes"),
    ],
)
def test_bad_arguments(fixture_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamAutomaticMaskGenerator(fixture_model, **kwargs)


def test_settings_read_as_segment_anything_attributes(fixture_model):
    """The checked arguments read back under segment_anything's names (``point_grids``: the
    grid of every layer); assigning one, as segment_anything users do, is checked and rebuilds
    what depends on it."""
    gen = SamAutomaticMaskGenerator(
        fixture_model, points_per_side=8, pred_iou_thresh=0.5, crop_n_layers=1
    )
    assert (gen.points_per_side, gen.pred_iou_thresh, gen.crop_n_layers) == (8, 0.5, 1)
    assert gen.stability_score_thresh == 0.95 and gen.output_mode == "binary_mask"
    assert [g.shape for g in gen.point_grids] == [(64, 2), (64, 2)]
    gen.pred_iou_thresh = 0.9
    assert gen.pred_iou_thresh == gen.settings.pred_iou_thresh == 0.9
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        gen.pred_iou_thresh = 1.5
    assert gen.pred_iou_thresh == 0.9  # a refused value changes nothing
    gen.points_per_side = 4
    assert [g.shape for g in gen.point_grids] == [(16, 2), (16, 2)]
    gen.point_grids = [np.array([[0.5, 0.5]])] * 2
    assert gen.points_per_side is None and [g.shape for g in gen.point_grids] == [(1, 2)] * 2


def test_explicit_point_grid_and_bad_image(fixture_model, small_image, small_embedding):
    grid = np.array([[0.5, 0.5], [0.25, 0.25]])
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=None, point_grids=[grid])
    out = gen.generate(small_image, image_embedding=small_embedding)
    assert 1 <= len(out) <= 6
    for ann in out:
        px, py = ann["point_coords"][0]
        assert (px, py) in {(192.5, 192.5), (96.25, 96.25)}
    with pytest.raises(ValueError, match="channels"):
        gen.generate(np.zeros((10, 10, 5), dtype=np.uint8))


def test_points_rejected_by_predicted_iou_are_never_upscaled(
    fixture_model, picture1, embedded, monkeypatch
):
    """Predicted IoUs come from the IoU token, before upscaling: a point none of whose three
    masks passes ``pred_iou_thresh`` skips the transposed convolutions entirely."""
    from mobilesam.engine import cpu

    upscaled = []
    original = cpu.masks_from_decoded

    def spy(cache, decoded, hyper, out=None):
        upscaled.append(hyper.shape[0])
        return original(cache, decoded, hyper, out)

    monkeypatch.setattr(cpu, "masks_from_decoded", spy)
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=6, pred_iou_thresh=0.97)
    out = gen.generate(picture1, image_embedding=embedded["picture1.jpg"].get_image_embedding())
    assert 0 < sum(upscaled) < 36  # some points passed, some were skipped
    assert all(a["predicted_iou"] > 0.97 for a in out)
