"""Input handling: conversions that must work, and bad input that must raise ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import ImageNotSetError, SamPredictor
from mobilesam.transforms import ResizeLongestSide, to_rgb_uint8

from .helpers import load_image


@pytest.fixture(scope="module")
def pred(embedded, cases):
    return embedded[cases["images"][0]]


def test_resize_is_pil_bilinear_bit_exact(reference):
    image = load_image(reference, "picture4.jpg")
    out = ResizeLongestSide(1024).apply_image(image)
    assert out.shape == (683, 1024, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(image).resize((1024, 683), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [((770, 769), (1024, 1023)), ((1365, 2048), (683, 1024)), ((1, 3), (341, 1024))],
)
def test_preprocess_shape_rounding(hw, expected):
    assert ResizeLongestSide.get_preprocess_shape(*hw, 1024) == expected


def test_coords_and_boxes_scale_with_rounded_size():
    t = ResizeLongestSide(1024)
    coords = t.apply_coords(np.array([[769.0, 770.0]]), (770, 769))
    np.testing.assert_allclose(coords, [[769 * 1023 / 769, 770 * 1024 / 770]])
    boxes = t.apply_boxes(np.array([[0, 0, 769, 770]]), (770, 769))
    np.testing.assert_allclose(boxes, [[0, 0, 1023, 1024]])
    bt = t.apply_boxes_torch(torch.tensor([[0.0, 0.0, 769.0, 770.0]]), (770, 769))
    np.testing.assert_allclose(bt.numpy(), boxes, rtol=1e-6)


def test_image_conversions():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., ::-1], "BGR"), rgb)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_uint8(gray[..., None])[..., 2], gray)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 17, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    u16 = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_rgb_uint8(u16), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb / 255.0), rgb)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4, 4, 3), np.uint8), "H×W×3"),
        (np.zeros((5,), np.uint8), "H×W×3"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 5, 2), np.uint8), "channels"),
        (np.full((5, 5, 3), 2.0), r"\[0, 1\]"),
        (np.full((5, 5, 3), 300, np.int32), "0..255"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images(image, match, fixture_model):
    with pytest.raises(ValueError, match=match):
        SamPredictor(fixture_model).set_image(image)


def test_bad_image_format(fixture_model):
    with pytest.raises(ValueError, match="RGB"):
        SamPredictor(fixture_model).set_image(np.zeros((4, 4, 3), np.uint8), image_format="HSV")


def test_predict_before_set_image(fixture_model):
    p = SamPredictor(fixture_model)
    for call in (
        lambda: p.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1])),
        p.get_image_embedding,
        lambda: p.predict_torch(None, None, boxes=torch.zeros(1, 4)),
    ):
        with pytest.raises(ValueError, match="set_image"):
            call()
        with pytest.raises(RuntimeError):  # what segment_anything raises
            call()
    assert issubclass(ImageNotSetError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"point_coords": np.array([[np.nan, 1.0]]), "point_labels": np.array([1])}, "NaN"),
        ({"point_coords": np.array([[np.inf, 1.0]]), "point_labels": np.array([1])}, "inf"),
        (
            {"point_coords": np.array([[1.0, 1.0], [2, 2]]), "point_labels": np.array([1])},
            "matching",
        ),
        ({"point_coords": np.array([1.0, 1.0]), "point_labels": np.array([1])}, r"\(N, 2\)"),
        ({"point_coords": np.array([[1.0, 1.0]])}, "together"),
        ({"point_coords": np.array([[1.0, 1.0]]), "point_labels": np.array([7])}, "foreground"),
        ({"box": np.array([10.0, 10.0, 5.0, 20.0])}, "x1 >= x0"),
        ({"box": np.array([10.0, 10.0, 20.0, 5.0])}, "y1 >= y0"),
        ({"box": np.array([10.0, np.nan, 20.0, 30.0])}, "NaN"),
        ({"box": np.array([1.0, 2.0, 3.0])}, "XYXY"),
        ({"box": np.array([0, 0, 9, 9]), "mask_input": np.zeros((256, 256))}, r"\(1, 256, 256\)"),
        ({"box": np.array([0, 0, 9, 9]), "mask_input": np.zeros((1, 64, 64))}, r"\(1, 256, 256\)"),
        (
            {"box": np.array([0, 0, 9, 9]), "mask_input": np.full((1, 256, 256), np.nan)},
            "NaN",
        ),
    ],
)
def test_bad_prompts(pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pred.predict(**kwargs)


def test_set_torch_image_checks_shape(fixture_model):
    p = SamPredictor(fixture_model)
    with pytest.raises(ValueError, match="resize"):
        p.set_torch_image(torch.zeros(1, 3, 512, 512), (512, 512))


def test_bgr_and_gray_inputs_give_consistent_embeddings(fixture_model):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    p = SamPredictor(fixture_model)
    p.set_image(img)
    a = p.get_image_embedding().clone()
    p.set_image(np.ascontiguousarray(img[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(p.get_image_embedding(), a, rtol=0, atol=0)
    p.set_image(img[..., 0])
    assert p.original_size == (48, 64)
    p.reset_image()
    assert not p.is_image_set


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pred_iou_thresh", float("nan")),
        ("stability_score_thresh", -0.1),
        ("box_nms_thresh", 2),
        ("crop_nms_thresh", float("inf")),
        ("crop_overlap_ratio", 5),
        ("stability_score_offset", float("nan")),
        ("min_mask_region_area", -1),
        ("pred_iou_thresh", "0.5"),
    ],
)
def test_generator_arguments_are_checked(fixture_model, name, value):
    from mobilesam import SamAutomaticMaskGenerator

    with pytest.raises(ValueError, match=name):
        SamAutomaticMaskGenerator(fixture_model, **{name: value})


def test_set_embedding_sizes_are_checked(fixture_model):
    pred = SamPredictor(fixture_model)
    features = torch.zeros(1, 256, 64, 64)
    for size in ((0, 0), (5, 0), (3,)):
        with pytest.raises(ValueError, match="original_size"):
            pred.set_embedding(features, size)
    with pytest.raises(ValueError, match="input_size"):
        pred.set_embedding(features, (10, 10), (0, 4))


def test_prompts_far_outside_the_image_are_refused(pred):
    """Far beyond the image the positional encoding loses all precision and scores would be
    NaN: prompts must lie within 10 image sizes."""
    h, w = pred.original_size
    ok = pred.predict(np.array([[-9 * w, 9 * h]]), np.array([1]))[1]
    assert np.isfinite(ok).all()
    for kw in (
        {"point_coords": np.array([[1e300, 1e300]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[0, 11 * max(h, w)]]), "point_labels": np.array([1])},
        {"box": np.array([0, 0, 1e30, 10])},
    ):
        with pytest.raises(ValueError, match="within"):
            pred.predict(**kw)
