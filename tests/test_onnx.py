"""ONNX export and ONNX Runtime: encoder and decoder parity, SAM's public decoder interface
(golden ``onnx_semantics``), OnnxPredictor vs SamPredictor (the guard and reduced precision:
``test_precision.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from .helpers import FIXTURE_CKPT, load_image, mask_iou
from .test_golden_parity import PROMPT_CASES, _case, _prompt_kwargs

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def onnx_predictors(export_dir, reference, cases):
    from mobilesam.onnx import OnnxPredictor

    out = {}
    for name in cases["images"]:
        p = OnnxPredictor(export_dir)
        p.set_image(load_image(reference, name))
        out[name] = p
    return out


def _decoder(export_dir, name="decoder.onnx"):
    return ort.InferenceSession(str(export_dir / name), providers=["CPUExecutionProvider"])


def _run(sess, emb, coords, labels, orig, mask=None):
    return sess.run(
        None,
        {
            "image_embeddings": emb.astype(np.float32),
            "point_coords": np.asarray(coords, np.float32)[None],
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": (np.zeros((1, 1, 256, 256)) if mask is None else mask).astype(np.float32),
            "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
            "orig_im_size": np.asarray(orig, np.float32),
        },
    )


def test_model_json(export_dir):
    from mobilesam.hub import sha256_file

    meta = json.loads((export_dir / "model.json").read_text())
    assert meta["checkpoint_sha256"] == sha256_file(FIXTURE_CKPT)
    assert meta["opset"] == 17 and meta["mobilesam_version"]
    assert meta["preprocessing"]["img_size"] == 1024
    assert meta["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    for f in meta["files"].values():
        assert (export_dir / f).is_file()
    hashes = json.loads((export_dir / "manifest.json").read_text())["sha256"]
    assert set(hashes) == {*meta["files"].values(), "model.json"}


@pytest.mark.parametrize("img", [0, 1])
def test_encoder_matches_torch(onnx_predictors, embedded, cases, img):
    name = cases["images"][img]
    ours = onnx_predictors[name].get_image_embedding()
    ref = embedded[name].get_image_embedding().numpy()
    assert ours.shape == (1, 256, 64, 64)
    assert np.abs(ours - ref).max() <= 2e-3
    assert onnx_predictors[name].input_size == embedded[name].input_size


@pytest.mark.parametrize("img", [0, 1])
def test_decoder_reproduces_golden_onnx_semantics(export_dir, golden, cases, img):
    from mobilesam.transforms import ResizeLongestSide

    case = _case(cases, f"img{img}/onnx_semantics")
    orig = load_image_size(case["image"])
    coords = ResizeLongestSide(1024).apply_coords(np.array(case["point_coords"]), orig)
    coords = np.concatenate([coords, [[0.0, 0.0]]])
    labels = [*case["point_labels"], -1]
    masks, iou, low = _run(
        _decoder(export_dir), golden[f"img{img}/embedding"], coords, labels, orig
    )
    g_logits = golden[f"img{img}/onnx_semantics/masks_logits"]
    g_score = golden[f"img{img}/onnx_semantics/scores"]
    assert masks.shape == (1, 1, *orig) and low.shape == (1, 1, 256, 256)
    assert np.abs(masks.reshape(g_logits.shape) - g_logits).max() <= 5e-3
    assert np.abs(iou.reshape(g_score.shape) - g_score).max() <= 1e-3


def load_image_size(name: str) -> tuple[int, int]:
    from PIL import Image

    from .helpers import REFERENCE

    with Image.open(REFERENCE / "images" / name) as im:
        return im.height, im.width


@pytest.mark.parametrize("n_points", [1, 2, 5])
@pytest.mark.parametrize("orig", [(770, 769), (333, 1201)])
def test_decoder_dynamic_points_sizes_and_mask(export_dir, fixture_model, golden, n_points, orig):
    """One export serves any number of points, any orig_im_size and a mask input, and agrees
    with the torch module it was traced from."""
    from mobilesam.onnx import SamOnnxDecoder

    rng = np.random.default_rng(n_points)
    emb = golden["img0/embedding"]
    coords = rng.uniform(0, 700, (n_points, 2))
    labels = rng.integers(0, 2, n_points).astype(float)
    labels[-1] = -1 if n_points > 1 else 1
    mask = rng.normal(0, 5, (1, 1, 256, 256))
    module = SamOnnxDecoder(fixture_model).eval()
    for m in (None, mask):
        masks, iou, low = _run(_decoder(export_dir), emb, coords, labels, orig, m)
        with torch.no_grad():
            ref = module(
                torch.from_numpy(emb),
                torch.tensor(coords, dtype=torch.float)[None],
                torch.tensor(labels, dtype=torch.float)[None],
                torch.tensor(mask if m is not None else np.zeros_like(mask), dtype=torch.float),
                torch.tensor([0.0 if m is None else 1.0]),
                torch.tensor(orig, dtype=torch.float),
            )
        assert masks.shape == (1, 1, *orig)
        np.testing.assert_allclose(low, ref[2].numpy(), atol=5e-3 * max(1, np.abs(low).max() / 1e3))
        np.testing.assert_allclose(iou, ref[1].numpy(), atol=1e-4)
        assert ((masks > 0) == (ref[0].numpy() > 0)).mean() > 0.9999


@pytest.mark.parametrize("img", [0, 1])
@pytest.mark.parametrize("name", PROMPT_CASES)
def test_onnx_predictor_equals_sam_predictor(onnx_predictors, embedded, cases, img, name):
    key = f"img{img}/{name}"
    case = _case(cases, key)
    kw = _prompt_kwargs(case)
    ours = onnx_predictors[case["image"]].predict(**kw, multimask_output=case["multimask_output"])
    ref = embedded[case["image"]].predict(**kw, multimask_output=case["multimask_output"])
    for a, b in zip(ours[0], ref[0], strict=True):
        assert mask_iou(a, b) >= 0.99
    assert np.abs(ours[1] - ref[1]).max() <= 1e-3
    assert ours[0].dtype == np.bool_ and ours[2].shape == ref[2].shape
    # refinement with a mask input goes through the same path
    best = int(np.argmax(ref[1]))
    m1, s1, _ = onnx_predictors[case["image"]].predict(
        **kw, mask_input=ref[2][best][None], multimask_output=False
    )
    m2, s2, _ = embedded[case["image"]].predict(
        **kw, mask_input=ref[2][best][None], multimask_output=False
    )
    assert mask_iou(m1[0], m2[0]) >= 0.99 and abs(float(s1[0] - s2[0])) <= 1e-3


def test_onnx_predictor_mask_only_prompt(onnx_predictors, embedded, cases):
    """No points and no box: no padding point either (as SAM's prompt encoder does), so the
    ONNX graph runs with zero prompt points and agrees with the torch predictor."""
    name = cases["images"][0]
    _, scores, low = embedded[name].predict(np.array([[400, 380]]), np.array([1]))
    mask_in = low[int(np.argmax(scores))][None]
    m1, s1, l1 = onnx_predictors[name].predict(mask_input=mask_in, multimask_output=False)
    m2, s2, l2 = embedded[name].predict(mask_input=mask_in, multimask_output=False)
    assert mask_iou(m1[0], m2[0]) >= 0.99 and abs(float(s1[0] - s2[0])) <= 1e-3
    assert l1.shape == l2.shape == (1, 256, 256)


def test_fp16_export_leaves_the_model_alone(tmp_path, fixture_model):
    """Exporting the float16 encoder converts a copy: the caller's model stays float32."""
    from mobilesam.onnx.export import export_encoder

    export_encoder(fixture_model, tmp_path / "encoder.fp16.onnx", 17, torch.float16)
    assert (tmp_path / "encoder.fp16.onnx").stat().st_size > 1000
    assert {p.dtype for p in fixture_model.parameters()} == {torch.float32}


def test_onnx_predictor_errors(tmp_path, export_dir, onnx_predictors, cases):
    from mobilesam.onnx import OnnxPredictor

    p = OnnxPredictor(export_dir, encoder="int8", decoder="int8")
    with pytest.raises(ValueError, match="set_image"):
        p.predict(np.array([[10, 10]]), np.array([1]))
    pred = onnx_predictors[cases["images"][0]]
    with pytest.raises(ValueError, match="point_labels"):
        pred.predict(np.array([[10, 10]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="mask_input"):
        pred.predict(np.array([[10, 10]]), np.array([1]), mask_input=np.zeros((256, 256)))
    partial = tmp_path / "no_fp16"  # an export without the fp16 encoder
    partial.mkdir()
    meta = json.loads((export_dir / "model.json").read_text())
    del meta["files"]["encoder_fp16"]
    (partial / "model.json").write_text(json.dumps(meta))
    for name in meta["files"].values():
        (partial / name).symlink_to(export_dir / name)
    with pytest.raises(FileNotFoundError, match="fp16"):
        OnnxPredictor(partial, encoder="fp16", verify=False)  # (its model.json was edited)
    with pytest.raises(FileNotFoundError, match="model.json"):
        OnnxPredictor(export_dir / "missing")
    # an export directory from before the low-res token decoder is named as such
    old = export_dir.parent / "old_export"
    old.mkdir(exist_ok=True)
    meta = json.loads((export_dir / "model.json").read_text())
    meta["files"]["decoder_multimask"] = "decoder.onnx"  # SAM's interface: 3 outputs
    (old / "model.json").write_text(json.dumps(meta))
    for name in ("encoder.onnx", "decoder.onnx"):
        (old / name).symlink_to(export_dir / name)
    with pytest.raises(ValueError, match="older mobilesam"):
        OnnxPredictor(old, verify=False)  # (older exports have no manifest.json)


@pytest.mark.parametrize(("src", "dst"), [((256, 256), (1024, 1024)), ((1024, 682), (1365, 2048))])
def test_traceable_bilinear_matches_interpolate(src, dst):
    """The ONNX graph's resize follows PyTorch's coordinate rounding (ONNX Runtime's Resize
    does not: 1e-2 off on steep logits at ~1000-pixel coordinates)."""
    from mobilesam.postprocess import bilinear_graph

    x = torch.randn(1, 2, *src, generator=torch.Generator().manual_seed(0)) * 500
    ref = torch.nn.functional.interpolate(x, dst, mode="bilinear", align_corners=False)
    out = bilinear_graph(x, *dst)
    assert out.shape == ref.shape
    assert ((out - ref).abs() / (ref.abs() + 1)).max() <= 1e-6 * 100
