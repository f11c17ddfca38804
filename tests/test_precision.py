"""One precision setting: names and ``auto``, the embedding guard (calibrated on real and
degraded images, forced through every reduced-precision path), and measured agreement of bf16
with float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilesam.precision as precision_mod
from mobilesam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from mobilesam.engine import native
from mobilesam.precision import resolve_precision
from mobilesam.predictor import (
    MAX_EMBEDDING_MAGNITUDE,
    MIN_SPATIAL_VARIATION,
    DegenerateEmbeddingError,
    check_embedding,
)

from .helpers import FIXTURE_CKPT, load_image, mask_iou
from .test_golden_parity import PROMPT_CASES, _case, _prompt_kwargs


def test_precision_names():
    assert resolve_precision(None) == torch.float32
    assert resolve_precision("fp32") == resolve_precision("float32") == torch.float32
    assert resolve_precision("BF16") == resolve_precision(torch.bfloat16) == torch.bfloat16
    assert resolve_precision("fp16") == torch.float16
    for bad in ("int8", "fp64", torch.int8, torch.float64):
        with pytest.raises(ValueError, match="precision"):
            resolve_precision(bad)


def test_auto_follows_bf16_units_and_never_picks_fp16(monkeypatch):
    """``auto`` is bf16 exactly where the CPU reports bf16 units (see
    test_native_boundary.py for the full table)."""
    for flags, expected in [({"avx2"}, torch.float32), ({"avx512_bf16"}, torch.bfloat16)]:
        features = precision_mod.CpuFeatures("GenuineIntel", frozenset(flags))
        monkeypatch.setattr(precision_mod, "cpu_features", lambda f=features: f)
        assert resolve_precision("auto") == expected
    assert resolve_precision("auto", "meta") == torch.float32


def _embedding(seed: int, variation: float) -> np.ndarray:
    """A (1, 32, 8, 8) embedding whose channels vary over the grid by ``variation`` of
    their offsets' magnitude."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(size=(1, 32, 1, 1))
    return offsets + variation * rng.normal(size=(1, 32, 8, 8))


def test_guard_passes_real_and_degraded_images(fixture_model, reference):
    """Calibration: the reference photos and degraded inputs (uniform, noise, tiny) all give
    embeddings well inside the guard's bounds."""
    pred = SamPredictor(fixture_model)
    rng = np.random.default_rng(0)
    images = [load_image(reference, "picture1.jpg"), load_image(reference, "picture4.jpg")]
    images += [np.full((60, 80, 3), v, np.uint8) for v in (0, 128, 255)]
    images += [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), np.zeros((1, 1, 3), np.uint8)]
    for image in images:
        pred.set_image(image)
        e = pred.get_image_embedding().flatten(2)
        variation = float(e.std(-1).median() / e.pow(2).mean().sqrt())
        assert variation > 4 * MIN_SPATIAL_VARIATION
        assert float(e.abs().max()) < MAX_EMBEDDING_MAGNITUDE / 100


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.full((1, 32, 8, 8), 3.0), "collapsed"),
        (lambda: np.zeros((1, 32, 8, 8)), "collapsed"),
        (lambda: _embedding(0, 0.01), "collapsed"),  # spatial variation 1% of magnitude
        (lambda: _embedding(0, 1.0) * 1e5, "overflowed"),
        (lambda: np.where(np.eye(8)[None, None] > 0, np.inf, _embedding(1, 1.0)), "NaN/inf"),
        (lambda: np.where(np.eye(8)[None, None] > 0, np.nan, _embedding(1, 1.0)), "NaN/inf"),
    ],
)
def test_guard_rejects(make, message):
    check_embedding(_embedding(0, 1.0), "ok")
    with pytest.raises(DegenerateEmbeddingError, match=message):
        check_embedding(make(), "test")


BAD_EMBEDDINGS = {
    "collapsed": lambda e: torch.zeros_like(e) + e.mean((2, 3), keepdim=True),
    "overflowed": lambda e: e * 1e5,
    "inf": lambda e: e.masked_fill(torch.rand_like(e.float()) < 0.01, torch.inf),
}


@pytest.fixture(scope="module")
def real_embedding(embedded) -> torch.Tensor:
    """picture1's fp32 embedding, degraded by the guard tests in place of a fresh encoder run
    (which would only reproduce it)."""
    return embedded["picture1.jpg"].get_image_embedding()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", sorted(BAD_EMBEDDINGS))
def test_guard_fires_on_every_torch_path(reference, real_embedding, dtype, bad):
    model = sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT)
    pred = SamPredictor(model, dtype=dtype)
    # the encoder in `dtype` (as the predictor's engine runs it) returns picture1's
    # embedding, degraded
    pred.engine.encode = lambda encoder, x: BAD_EMBEDDINGS[bad](real_embedding.to(x.dtype))
    with pytest.raises(DegenerateEmbeddingError, match="SamPredictor"):
        pred.set_image(load_image(reference, "picture1.jpg"))
    assert not pred.is_image_set


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("bad", sorted(BAD_EMBEDDINGS))
def test_guard_fires_on_every_onnx_path(export_dir, reference, real_embedding, variant, bad):
    from mobilesam.onnx import OnnxPredictor

    pred = OnnxPredictor(export_dir, encoder=variant, decoder=variant)

    class Broken:  # the exported encoder, picture1's embedding degraded
        def run(self, names, feeds):
            assert feeds["image"].shape == (1, 3, 1024, 1024)
            return [BAD_EMBEDDINGS[bad](real_embedding.clone()).numpy()]

    pred._encoder = Broken()
    with pytest.raises(DegenerateEmbeddingError, match=f"OnnxPredictor \\({variant}"):
        pred.set_image(load_image(reference, "picture1.jpg"))


def test_bf16_predictor_agrees_with_fp32(reference, cases, embedded):
    """Measured on an AMX CPU: mean mask IoU 0.997, worst 0.985 over the 8 golden prompt cases.
    The floors leave room for other CPUs' bf16 arithmetic (AVX512-BF16, or emulated)."""
    model = sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT)
    pred = SamPredictor(model, precision="bf16")
    assert next(pred.image_encoder.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model is kept
    ious = []
    for i, name in enumerate(cases["images"]):
        pred.set_image(load_image(reference, name))
        assert pred.get_image_embedding().dtype == torch.float32
        for key in PROMPT_CASES:
            kw = _prompt_kwargs(_case(cases, f"img{i}/{key}"))
            masks, scores, low = pred.predict(**kw)
            ref, _, _ = embedded[name].predict(**kw)
            assert scores.dtype == np.float32 and low.dtype == np.float32
            ious.append(np.mean([mask_iou(a, b) for a, b in zip(masks, ref, strict=True)]))
    assert np.mean(ious) >= 0.98 and min(ious) >= 0.95, ious


@pytest.mark.parametrize("tail", ["pytorch", "native"])
def test_bf16_decoder_tail_on_the_same_embedding(reference, cases, monkeypatch, tail):
    """``precision="bf16"`` also runs the decoder's upscaling tail in bf16: PyTorch's (all in
    bf16), or the native one (:mod:`mobilesam.engine.native`: bf16 products with float32 sums,
    LayerNorm and GELUs in float32); the transformer, the IoU scores and the returned logits
    stay float32. On one float32 embedding, so that only the tail differs: bf16 keeps 8
    significant bits (relative rounding 2⁻⁹), and the tail rounds a handful of times, so the
    logits may move by a few 2⁻⁸ of their largest magnitude (measured: 0.8% PyTorch, 0.3%
    native; allowed: 3%). Measured mask IoU: mean 0.997, worst 0.980."""
    name = cases["images"][0]
    if tail == "pytorch":
        monkeypatch.setattr(native, "kernels", lambda: None)
    elif native.kernels() is None or not native.kernels().bf16:
        pytest.skip(f"no native bf16 tail here (it needs AVX512-BF16): {native.status()}")
    fp32 = SamPredictor(sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT))
    fp32.set_image(load_image(reference, name))
    bf16 = SamPredictor(sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT), precision="bf16")
    bf16.set_embedding(fp32.get_image_embedding(), fp32.original_size)
    assert bf16.image_state().upscale.dtype == torch.bfloat16
    assert fp32.image_state().upscale.dtype == torch.float32
    ious = []
    for key in PROMPT_CASES:
        kw = _prompt_kwargs(_case(cases, f"img0/{key}"))
        masks, scores, low = bf16.predict(**kw)
        ref_masks, ref_scores, ref_low = fp32.predict(**kw)
        assert low.dtype == np.float32 and masks.dtype == bool
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
        assert np.abs(low - ref_low).max() <= 0.03 * np.abs(ref_low).max()
        ious += [mask_iou(a, b) for a, b in zip(masks, ref_masks, strict=True)]
    assert np.mean(ious) >= 0.98 and min(ious) >= 0.9, ious


def test_bf16_everything_agrees_with_fp32(reference):
    """Segment everything with a bf16 encoder against float32 (16×16 grid, picture1)."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    from .test_amg import _coco

    image = load_image(reference, "picture1.jpg")
    out = {}
    for precision in ("fp32", "bf16"):
        model = sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT)
        gen = SamAutomaticMaskGenerator(
            model, points_per_side=16, output_mode="uncompressed_rle", precision=precision
        )
        out[precision] = gen.generate(image)
    a, b = (_coco([m["segmentation"] for m in out[k]]) for k in ("fp32", "bf16"))
    iou = np.asarray(mask_utils.iou(b, a, [0] * len(a))).T
    rows, cols = linear_sum_assignment(-iou)
    matched = int((iou[rows, cols] >= 0.99).sum())
    assert abs(len(out["bf16"]) - len(out["fp32"])) <= 0.1 * len(out["fp32"])
    assert matched >= 0.8 * len(out["fp32"]), (matched, len(out["fp32"]))


# measured on an AMX CPU (mean mask IoU against torch fp32 over every mask of the 8 golden
# prompt cases) and the floors the test holds: int8 is ONNX Runtime's dynamic quantization
ONNX_AGREEMENT = {
    ("int8", "fp32"): (0.9912, 0.97),
    ("fp32", "int8"): (0.9717, 0.93),
    ("int8", "int8"): (0.9706, 0.93),
    ("fp16", "fp32"): (0.9996, 0.99),
}


@pytest.mark.parametrize(("encoder", "decoder"), sorted(ONNX_AGREEMENT))
def test_onnx_reduced_precision_agrees_with_fp32(
    export_dir, reference, cases, embedded, encoder, decoder
):
    from mobilesam.onnx import OnnxPredictor

    pred = OnnxPredictor(export_dir, encoder=encoder, decoder=decoder)
    ious = []
    for i, name in enumerate(cases["images"]):
        pred.set_image(load_image(reference, name))
        for key in PROMPT_CASES:
            kw = _prompt_kwargs(_case(cases, f"img{i}/{key}"))
            masks = pred.predict(**kw)[0]
            ref = embedded[name].predict(**kw)[0]
            ious += [mask_iou(a, b) for a, b in zip(masks, ref, strict=True)]
    assert np.mean(ious) >= ONNX_AGREEMENT[(encoder, decoder)][1]
