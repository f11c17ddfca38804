"""The encoder's fast inference (``mobilesam.engine.encoder.encode_fast``) against TinyViT's
plain ``forward``: the same arithmetic to float rounding, in bands of any size, in float32 and
bfloat16; everything it does not speed up runs the encoder's own ``forward``."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

import mobilesam.modeling.tiny_vit as tiny_vit_module
from mobilesam.engine import encoder as fast
from mobilesam.engine import tuning
from mobilesam.engine.encoder import encode_fast
from mobilesam.modeling.image_encoder import ImageEncoderViT, ViTConfig
from mobilesam.modeling.tiny_vit import Conv2d_BN, TinyViT, TinyViTConfig

#: Windows of 3 and 5 tokens do not divide the odd grids below: attention pads its windows.
SMALL = TinyViTConfig(
    img_size=128,
    embed_dims=(8, 16, 24, 32),
    depths=(2, 1, 2, 1),
    num_heads=(1, 2, 3, 4),
    window_sizes=(3, 3, 5, 3),
    out_chans=16,
)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def _randomise(enc: TinyViT, seed: int = 0) -> TinyViT:
    """Random BatchNorm statistics and attention biases (a fresh TinyViT has the identity
    BatchNorm, zero biases and zero-initialised MBConv projections)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            elif isinstance(m, tiny_vit_module.Attention):
                m.attention_biases.normal_(0.0, 0.5, generator=gen)
    return enc.eval()


@pytest.fixture(scope="module")
def small() -> TinyViT:
    torch.manual_seed(0)
    return _randomise(TinyViT(SMALL))


def _plain(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return enc(x)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float32 rounding: the same per-value arithmetic, in other kernels."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous()
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_fixture_checkpoint_float32(fixture_model):
    enc = fixture_model.image_encoder
    x = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    _close(encode_fast(enc, x), _plain(enc, x))


@pytest.mark.parametrize("size", [(128, 96), (72, 136)])
def test_small_tinyvit_batch_of_two_odd_sizes(small, size):
    """Non-square inputs, one of them not a multiple of 32 (odd grids in every stage)."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    _close(encode_fast(small, x), _plain(small, x))


@pytest.mark.parametrize("side", [224, 256])
def test_tiny_bands_equal_the_whole_map(fixture_model, monkeypatch, side):
    """With tiny bands every block crosses band edges (halo rows for the 3×3 convolutions,
    whole window rows for attention) and the last band is partial."""
    enc = fixture_model.image_encoder
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    whole = _plain(enc, x)
    monkeypatch.setattr(tuning, "BAND_TOKENS", 3 * side // 4)
    monkeypatch.setattr(tuning, "ATTN_BAND_TOKENS", side)
    _close(encode_fast(enc, x), whole)


@pytest.mark.parametrize("gelu_in_conv", [True, False])
def test_bfloat16(fixture_model, small, monkeypatch, gelu_in_conv):
    """In bf16 (SDPA attention, and oneDNN's convolution + GELU where it runs, or its
    fallback) the fast path is as close to the float32 embedding as the plain bf16 forward."""
    if not gelu_in_conv:
        monkeypatch.setattr(fast, "gelu_conv_available", lambda: False)
    cases = [
        (fixture_model.image_encoder, torch.randn(1, 3, 192, 256)),
        (small, torch.randn(2, 3, 96, 128)),
    ]
    for enc, x in cases:
        ref = _plain(enc, x)
        enc_bf = copy.deepcopy(enc).to(torch.bfloat16)
        got = encode_fast(enc_bf, x.bfloat16())
        plain = _plain(enc_bf, x.bfloat16())
        assert got.dtype == torch.bfloat16 and got.shape == ref.shape
        assert _rel_rms(got, plain) < 2e-2
        assert _rel_rms(got, ref) <= 1.5 * _rel_rms(plain, ref) + 1e-3


def test_gelu_conv_check_is_a_bool():
    """The private oneDNN op is feature-checked once; either answer is valid."""
    assert fast.gelu_conv_available() in (True, False)
    assert fast.gelu_conv_available() is fast.gelu_conv_available()


def test_training_mode_runs_the_plain_forward_exactly():
    """In training mode BatchNorm uses the batch's statistics, which bands would change:
    ``encode_fast`` is then the encoder's own forward, with autograd as the caller has it."""
    enc = TinyViT(SMALL).train()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    got = encode_fast(enc, x)
    assert got.requires_grad
    assert torch.equal(got, enc(x))


def test_other_encoders_run_their_own_forward():
    """SAM's ViT encoders are not banded: ``encode_fast`` is their ``forward``."""
    torch.manual_seed(0)
    vit = ImageEncoderViT(
        ViTConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2,
                  global_attn_indexes=(1,), out_chans=16)
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encode_fast(vit, x), vit(x))


def test_fast_path_records_no_graph_and_plain_forward_is_differentiable(small):
    """``encode_fast`` is inference whatever the grad mode; the plain forward is what
    training differentiates (eval-mode BatchNorm included)."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():
        got = encode_fast(small, x.clone().requires_grad_())
        xg = x.clone().requires_grad_()
        plain = small(xg)
        plain.square().mean().backward()
    assert not got.requires_grad
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    _close(got, plain.detach())
    small.zero_grad(set_to_none=True)


def test_folded_conv_bn_equals_conv_then_batchnorm():
    torch.manual_seed(0)
    m = Conv2d_BN(6, 6, ks=3, pad=1, groups=3)
    _randomise(m)
    x = torch.randn(2, 6, 9, 7)
    weight, bias = m.folded()
    with torch.no_grad():
        folded = torch.nn.functional.conv2d(x, weight, bias, 1, 1, 1, 3)
        torch.testing.assert_close(folded, m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_vit.py", "image_encoder.py"])
def test_encoder_modules_have_no_mode_flags(name):
    """SAM's modules: no global mode chooses their arithmetic, nothing from the engine."""
    source = (Path(tiny_vit_module.__file__).parent / name).read_text()
    for flag in ("is_tracing", "is_compiling", "is_grad_enabled", "_convolution_pointwise"):
        assert flag not in source, flag
    assert not re.search(r"^\s*(from|import) .*\b(engine|native)\b", source, re.M)
