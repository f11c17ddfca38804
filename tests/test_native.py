"""The native decoder kernels (:mod:`mobilesam.engine.native`) against the decoder's PyTorch order.

Both compute the same arithmetic in a different order of rounding: products of at most a few
hundred float32 terms, softmax, LayerNorm and GELU (the kernels' exp is ~1 ulp, their erf the
same Abramowitz-Stegun formula as PyTorch's vectorised one, ~1e-7 absolute; a bf16 tail's is a
rational one, ~3e-7, held to bf16 tolerances in test_precision.py). So they agree to
a few float32 ulps of the largest value; 2e-5 of it is the tolerance used throughout the
decoder tests, and 1e-5 for the IoU scores (in [0, 1]).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mobilesam import SamPredictor, build_sam
from mobilesam.engine import native
from mobilesam.engine.factored_decode import decode_tokens
from mobilesam.engine.image_products import prepare_image_cache
from mobilesam.engine.upscale_tail import masks_from_decoded, native_tail

from .helpers import FIXTURE_CKPT

pytestmark = pytest.mark.skipif(
    native.kernels() is None, reason=f"native kernels unavailable: {native.status()}"
)


#: multimask_output → the engine's token selection
TOKENS = {True: "multi", False: "single", None: "all"}


def _both_tails(cache, sparse, multimask, monkeypatch):
    """The cached decoder (transformer and tail) with and without the native kernels; the
    tails also on the same decoded tokens, so that only the tail differs."""
    tokens = TOKENS[multimask]
    with torch.inference_mode():
        decoded = decode_tokens(cache, sparse, tokens, kernels=native.kernels())
        fused = masks_from_decoded(cache, decoded, decoded.hyper)
        with monkeypatch.context() as m:
            m.setattr(native, "kernels", lambda: None)
            plain = masks_from_decoded(cache, decoded, decoded.hyper)
            ref = decode_tokens(cache, sparse, tokens)
            ref_masks = masks_from_decoded(cache, ref, ref.hyper)
    _assert_close(decoded.hyper, ref.hyper)
    assert (decoded.iou - ref.iou).abs().max() <= 1e-5
    _assert_close(fused, ref_masks)
    return fused, plain


def _assert_close(fused, plain):
    assert fused.shape == plain.shape and fused.dtype == plain.dtype
    assert (fused - plain).abs().max() <= 2e-5 * plain.abs().max()


@pytest.mark.parametrize("multimask", [True, False, None])
def test_native_decoder_matches_torch_on_the_fixture(fixture_model, golden, multimask, monkeypatch):
    """Real weights and embedding, a batch of 3 prompts, every token selection."""
    pe = fixture_model.prompt_encoder
    emb = torch.from_numpy(golden["img1/embedding"])
    points = torch.tensor([[[500.0, 400.0]], [[100.0, 900.0]], [[1000.0, 20.0]]])
    with torch.no_grad():
        sparse, _ = pe(points=(points, torch.ones(3, 1, dtype=torch.int64)), boxes=None, masks=None)
        cache = prepare_image_cache(fixture_model, emb)
    fused, plain = _both_tails(cache, sparse, multimask, monkeypatch)
    _assert_close(fused, plain)


@pytest.mark.parametrize("side", [5, 20, 64])
def test_native_decoder_on_other_grids_and_depths(side, monkeypatch):
    """Random weights on grids whose rows split into uneven tasks (5: one task; 20: tail
    tasks of 6 rows and a last one of 2, attention chunks of 512 tokens and a last one of
    400), and transformers of depth 2, 1 and 0 (no factored terms)."""
    torch.manual_seed(side)
    model = build_sam(FIXTURE_CKPT)
    decoder = model.mask_decoder
    model.prompt_encoder.image_embedding_size = (side, side)  # its PE and dense on this grid
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        emb = torch.randn(1, 256, side, side)
        sparse = torch.randn(2, 3, 256)
        for depth in (2, 1, 0):
            decoder.transformer.layers = decoder.transformer.layers[:depth]
            cache = prepare_image_cache(model, emb)
            fused, plain = _both_tails(cache, sparse, True, monkeypatch)
            assert fused.shape == (2, 3, 4 * side, 4 * side)
            _assert_close(fused, plain)


def test_native_tail_not_used_where_it_does_not_apply(fixture_model):
    """fp16 tails and a tanh GELU keep the PyTorch tail; bf16 runs natively where the kernels
    take bf16 products. Tensors that require gradients are not applicable (a property of the
    tensors; no global mode is read)."""
    decoder, cpu = fixture_model.mask_decoder, torch.device("cpu")
    assert not native.applicable(torch.zeros(2, requires_grad=True))
    with torch.no_grad():
        assert native_tail(decoder, cpu, torch.float32) is not None
        assert native_tail(decoder, cpu, torch.float16) is None
        bf16 = native_tail(decoder, cpu, torch.bfloat16) is not None
        assert bf16 == native.kernels().bf16
        act = decoder.output_upscaling[4]
        try:
            act.approximate = "tanh"
            assert native_tail(decoder, cpu, torch.float32) is None
        finally:
            act.approximate = "none"


def test_bf16_predictor_tail(golden):
    """bf16 precision runs the native tail with bf16 products where the kernels have them,
    and otherwise keeps the native float32 tail rather than PyTorch's slower bf16 one."""
    pred = SamPredictor(build_sam(FIXTURE_CKPT), precision="bf16")
    pred.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    assert pred.dtype == torch.bfloat16
    expected = torch.bfloat16 if native.kernels().bf16 else torch.float32
    assert pred.image_state().upscale.dtype == expected


def test_bf16_tail_keeps_the_native_transformer(golden, monkeypatch):
    """A bf16 tail does not turn the transformer's float32 native kernels off."""
    calls = []
    original = native.DecoderKernels.token_attention

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(native.DecoderKernels, "token_attention", counted)
    pred = SamPredictor(build_sam(FIXTURE_CKPT), precision="bf16")
    pred.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    pred.predict(np.array([[420.0, 385.0]]), np.array([1]))
    assert len(calls) == 3  # two layers and the final attention


def test_native_build_is_reused_and_can_be_turned_off(tmp_path):
    """The library is built once per cache directory; ``MOBILESAM_NATIVE=0`` turns it off."""
    code = "import mobilesam.engine.native as n; print(n.status())"
    env = {**os.environ, "MOBILESAM_CACHE": str(tmp_path)}

    def run(**extra):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run().startswith("on")
    (built,) = (tmp_path / "native").glob("*/decoder_kernels.so")
    stamp = built.stat().st_mtime_ns
    assert run().startswith("on") and built.stat().st_mtime_ns == stamp
    assert run(MOBILESAM_NATIVE="0").startswith("off: MOBILESAM_NATIVE")
    assert run(CC="/nonexistent/cc", PATH="/nonexistent").startswith("off")


def test_native_tail_checks_its_output_buffer(fixture_model, golden):
    """``out`` must have the logits' shape, float32 and be contiguous: a clear error, not a
    write past a buffer."""
    pe = fixture_model.prompt_encoder
    emb = torch.from_numpy(golden["img1/embedding"])
    points = torch.tensor([[[500.0, 400.0]]])
    with torch.inference_mode():
        sparse, _ = pe(points=(points, torch.ones(1, 1, dtype=torch.int64)), boxes=None, masks=None)
        cache = prepare_image_cache(fixture_model, emb)
        decoded = decode_tokens(cache, sparse, "multi")
        good = masks_from_decoded(cache, decoded, decoded.hyper)
        for bad in (
            torch.empty(1, 2, 256, 256),
            torch.empty(1, 3, 256, 256, dtype=torch.float64),
            torch.empty(1, 3, 256, 512)[..., ::2],
        ):
            with pytest.raises(ValueError, match="out must be"):
                masks_from_decoded(cache, decoded, decoded.hyper, bad)
        out = torch.empty_like(good)
        assert torch.equal(masks_from_decoded(cache, decoded, decoded.hyper, out), good)


@pytest.mark.skipif(
    native.kernels() is None or not native.kernels().linear_cols,
    reason="the token-linear kernel needs AVX-512 native kernels",
)
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 21, 40])
@pytest.mark.parametrize("relu", [False, True])
def test_token_linear_matches_torch(rows, relu):
    """The small-row linear kernel gives ``F.linear`` (then ReLU) to float32 rounding, for
    any number of rows (blocks of 8, padded) and a weight of several column blocks."""
    k, g = native.kernels(), torch.Generator().manual_seed(rows)
    cols = k.linear_cols
    weight, bias = torch.randn(3 * cols, 40, generator=g), torch.randn(3 * cols, generator=g)
    x = torch.randn(rows, 40, generator=g)
    want = torch.nn.functional.linear(x, weight, bias)
    want = want.relu() if relu else want
    got = k.token_linear(x.view(1, rows, 40), k.pack_linear(weight), bias, relu).view(rows, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    no_bias = k.token_linear(x, k.pack_linear(weight), None)
    torch.testing.assert_close(no_bias, x @ weight.t(), rtol=1e-5, atol=1e-5)
    assert k.pack_linear(torch.randn(cols + 1, 4)) is None  # not whole blocks: PyTorch's


def test_token_linears_fall_back_to_the_module(fixture_model):
    """Layers with many rows, or layers the kernel does not take, run the module itself."""
    from mobilesam.engine.token_linears import TokenLinears

    linears = TokenLinears.of(fixture_model.mask_decoder)
    if linears is None:
        pytest.skip("the token-linear kernel is not offered here")
    layer = fixture_model.mask_decoder.transformer.layers[0].mlp.lin1
    many = torch.randn(200, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(linears(layer, many), layer(many))
        few = many[:5]
        torch.testing.assert_close(linears(layer, few, relu=True), layer(few).relu())
        other = torch.nn.Linear(4, 3)
        torch.testing.assert_close(linears(other, torch.ones(2, 4)), other(torch.ones(2, 4)))
