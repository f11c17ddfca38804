"""``SamPredictor.set_image_batch`` / ``predict_batch`` (sam2's batch API): images of
different sizes encoded together give each image's ``set_image`` + ``predict`` results.

The batched encoder call may round differently from one image at a time (other kernel
blockings), so embeddings and logits are compared with tolerances far above float32 rounding
and far below a wrong operation; masks by IoU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilesam import DegenerateEmbeddingError, ImageNotSetError, SamPredictor
from mobilesam.batch_predictor import ENCODER_BATCH_BYTES, ImageBatch, max_encoder_batch
from mobilesam.build import MODEL_CONFIGS

from .helpers import load_image, mask_iou

EMB_ATOL = 1e-3  # the golden parity's embedding tolerance is 2e-3
LOGIT_RTOL = 1e-3  # of the largest logit magnitude
IOU_TOL = 1e-3
MASK_IOU_MIN = 0.99
CASES = ["one_point_multimask", "three_points_pos_neg", "box", "box_and_point"]


@pytest.fixture(scope="module")
def batched(fixture_model, reference, cases):
    """picture1 (769×770) and picture4 (2048×1365) in one encoder call."""
    p = SamPredictor(fixture_model)
    p.set_image_batch([load_image(reference, name) for name in cases["images"]])
    return p


def _prompts(cases: dict, name: str) -> list[dict]:
    """The golden case ``name`` of each image, as predict's keyword arguments."""
    out = []
    for img in (0, 1):
        case = next(c for c in cases["cases"] if c["key"] == f"img{img}/{name}")
        out.append(
            {
                "point_coords": np.array(case["point_coords"]) if "point_coords" in case else None,
                "point_labels": np.array(case["point_labels"]) if "point_labels" in case else None,
                "box": np.array(case["box"]) if "box" in case else None,
            }
        )
    return out


def _same(batch_out, single_out):
    (m_b, s_b, l_b), (m_s, s_s, l_s) = batch_out, single_out
    assert m_b.shape == m_s.shape and m_b.dtype == m_s.dtype
    assert s_b.shape == s_s.shape and l_b.shape == l_s.shape
    assert s_b.dtype == l_b.dtype == np.float32
    assert np.abs(l_b - l_s).max() <= LOGIT_RTOL * np.abs(l_s).max()
    assert np.abs(s_b - s_s).max() <= IOU_TOL
    for a, b in zip(m_b, m_s, strict=True):
        assert mask_iou(a > 0, b > 0) >= MASK_IOU_MIN


def test_embeddings_equal_set_image(batched, embedded, cases):
    emb = batched.get_image_embedding()
    assert tuple(emb.shape) == (2, 256, 64, 64) and emb.dtype == torch.float32
    assert batched.is_image_set and batched.is_batch
    for i, name in enumerate(cases["images"]):
        single = embedded[name].get_image_embedding()
        assert torch.allclose(emb[i : i + 1], single, rtol=0, atol=EMB_ATOL)


@pytest.mark.parametrize("name", CASES)
def test_predict_batch_equals_predict_per_image(batched, embedded, cases, name):
    prompts = _prompts(cases, name)
    multimask = name in ("one_point_multimask", "box_and_point")  # as the golden cases run
    masks, scores, low_res = batched.predict_batch(
        [p["point_coords"] for p in prompts],
        [p["point_labels"] for p in prompts],
        [p["box"] for p in prompts],
        multimask_output=multimask,
    )
    assert len(masks) == len(scores) == len(low_res) == 2
    for i, image in enumerate(cases["images"]):
        single = embedded[image].predict(**prompts[i], multimask_output=multimask)
        _same((masks[i], scores[i], low_res[i]), single)


def test_none_entries_mask_inputs_and_logits(batched, embedded, cases):
    """Whole lists and single entries may be None; mask inputs and return_logits work per
    image as in predict."""
    point, box = np.array([[420.0, 385.0]]), np.array([600.0, 300.0, 1400.0, 900.0])
    masks, scores, low = batched.predict_batch([point, None], [np.array([1]), None], [None, box])
    refined = batched.predict_batch(
        None, None, [box, box], [low[0][:1], None], multimask_output=False, return_logits=True
    )
    first, second = (embedded[name] for name in cases["images"])
    _same((masks[0], scores[0], low[0]), first.predict(point, np.array([1])))
    _same((masks[1], scores[1], low[1]), second.predict(box=box))
    expected = first.predict(
        box=box, mask_input=low[0][:1], multimask_output=False, return_logits=True
    )
    assert refined[0][0].dtype == np.float32 and refined[0][0].shape == (1, 770, 769)
    _same(tuple(r[0] for r in refined), expected)
    _same(
        tuple(r[1] for r in refined),
        second.predict(box=box, multimask_output=False, return_logits=True),
    )


def test_batch_and_single_modes_are_kept_apart(fixture_model, batched, golden):
    with pytest.raises(ImageNotSetError, match="batch of 2 images .* use predict_batch"):
        batched.predict(np.array([[10.0, 10.0]]), np.array([1]))
    with pytest.raises(ImageNotSetError, match="use predict_batch"):
        batched.decode_points(np.array([[10.0, 10.0]]), 0.0)
    with pytest.raises(ValueError, match="point_coords_batch has 1 entries for 2 images"):
        batched.predict_batch([np.array([[1.0, 1.0]])], [np.array([1])])
    with pytest.raises(ValueError, match="predict_batch: image 1: point_labels must"):
        batched.predict_batch([None, np.array([[1.0, 1.0]])], [None, np.array([7])])

    p = SamPredictor(fixture_model)
    with pytest.raises(ImageNotSetError, match="set_image_batch"):
        p.predict_batch()
    p.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    with pytest.raises(ImageNotSetError, match="holds one image from set_image: use predict"):
        p.predict_batch()
    assert not p.is_batch
    p._batch = ImageBatch(
        torch.from_numpy(golden["img0/embedding"]).repeat(2, 1, 1, 1),
        [(770, 769)] * 2,
        [(1024, 1023)] * 2,
    )  # as set_image_batch leaves it, without an encoder run
    p.is_image_set = True
    assert p.is_batch and p.get_image_embedding().shape[0] == 2
    p.reset_image()
    assert not p.is_batch and not p.is_image_set


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((4, 5, 3), np.uint8), "expects a list of H×W×3 images, got ndarray"),
        ([], "at least one image"),
        ([np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 7), np.uint8)], "image 1: image must"),
    ],
)
def test_set_image_batch_refuses_bad_input_in_one_line(fixture_model, images, message):
    p = SamPredictor(fixture_model)
    with pytest.raises(ValueError, match=message):
        p.set_image_batch(images)
    assert not p.is_image_set and not p.is_batch


def test_encoder_chunks_within_the_memory_bound(monkeypatch, fixture_model, golden):
    """``max_batch`` images per encoder call, in order, each embedding checked (naming its
    image); the default bound follows the activation estimate."""
    real = torch.from_numpy(golden["img0/embedding"])
    calls = []

    def fake_encoder(self, x):
        calls.append(x.shape[0])
        # a real embedding, shifted per image by its input's mean, so the order shows
        return real + x.mean(dim=(1, 2, 3), keepdim=True).float()

    monkeypatch.setattr(SamPredictor, "embed_torch", fake_encoder)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8 + i, 10, 3), dtype=np.uint8) for i in range(5)]
    p = SamPredictor(fixture_model)
    p.set_image_batch(images, max_batch=2)
    assert calls == [2, 2, 1]
    batch = p.get_image_embedding()
    for i, image in enumerate(images):
        q = SamPredictor(fixture_model)
        calls.clear()
        q.set_image(image)
        assert torch.allclose(batch[i : i + 1], q.get_image_embedding(), rtol=0, atol=1e-5)
    assert p._batch.original_sizes == [(8 + i, 10) for i in range(5)]
    assert p._batch.input_sizes[0] == q.transform.get_preprocess_shape(8, 10, 1024)

    monkeypatch.setattr(
        SamPredictor, "embed_torch", lambda self, x: real.expand(len(x), -1, -1, -1) * 0
    )
    with pytest.raises(DegenerateEmbeddingError, match="set_image_batch .*image 0"):
        p.set_image_batch(images[:2])
    assert not p.is_image_set
    with pytest.raises(ValueError, match="max_batch must be an int >= 1"):
        p.set_image_batch(images, max_batch=0)

    encoder = fixture_model.image_encoder
    assert max_encoder_batch(encoder, torch.float32) == 16
    assert max_encoder_batch(encoder, torch.bfloat16) == 32
    vit_h = type("Encoder", (), {"cfg": MODEL_CONFIGS["vit_h"].encoder})()
    assert max_encoder_batch(vit_h, torch.float32) == 2
    assert ENCODER_BATCH_BYTES == 4 * 2**30


def test_set_image_batch_makes_no_tensor_off_the_device(fixture_model):
    """The batch path through the plain engine (what a GPU runs) with the default device set
    to ``meta``: a tensor made without ``device=`` would fail. (One image: one encoder run;
    several are checked above.)"""
    image = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    p = SamPredictor(fixture_model, engine="plain")
    torch.set_default_device("meta")
    try:
        p.set_image_batch([image])
        masks, _, _ = p.predict_batch([np.array([[5.0, 5.0]])], [np.array([1])], [None])
    finally:
        torch.set_default_device(None)
    assert [m.shape for m in masks] == [(3, 30, 50)]
