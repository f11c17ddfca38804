"""The decoder's evaluation orders: folded attention, the shared image across prompts and the
chunked upscaling all compute SAM's decoder (checked against the plain order and SAM's NCHW
layers), and the folded order reproduces the golden masks."""

from __future__ import annotations

import pytest
import torch

from mobilesam.modeling.transformer import Attention


@pytest.mark.parametrize(("nq", "nk"), [(7, 4096), (4096, 7), (7, 7)])
@pytest.mark.parametrize(("bq", "bk"), [(3, 3), (3, 1), (1, 3)])
def test_folded_attention_equals_plain(nq, nk, bq, bk):
    torch.manual_seed(0)
    attn = Attention(256, 8, downsample_rate=2)
    for p in attn.parameters():  # non-trivial biases too
        torch.nn.init.normal_(p, std=0.1)
    q, k, v = torch.randn(bq, nq, 256), torch.randn(bk, nk, 256), torch.randn(bk, nk, 256)
    with torch.no_grad():
        plain = attn(q, k, v)
        folded = attn(q, k, v, folded=True)
        # reference: every prompt against its own materialised copy
        b = max(bq, bk)
        expanded = attn(*(t.expand(b, -1, -1).contiguous() for t in (q, k, v)))
    assert plain.shape == folded.shape == (b, nq, 256)
    torch.testing.assert_close(plain, expanded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)


def _decode(model, emb, pts, folded=False, shared=True):
    labels = torch.ones(pts.shape[:2], dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    if not shared:
        emb, dense = emb.expand(pts.shape[0], -1, -1, -1).contiguous(), dense.contiguous()
    with torch.no_grad():
        return model.mask_decoder(
            emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True, folded_attention=folded
        )


def test_shared_image_is_exact_and_folded_is_close(fixture_model, embedded, cases):
    emb = embedded[cases["images"][0]].get_image_embedding()
    pts = torch.tensor([[[100.0, 200.0]], [[512.0, 512.0]], [[900.0, 40.0]]])
    shared, iou_s = _decode(fixture_model, emb, pts)
    per_prompt, iou_p = _decode(fixture_model, emb, pts, shared=False)
    assert torch.equal(shared, per_prompt) and torch.equal(iou_s, iou_p)
    folded, iou_f = _decode(fixture_model, emb, pts, folded=True)
    scale = shared.abs().max()
    assert (folded - shared).abs().max() <= 2e-6 * scale
    assert (iou_f - iou_s).abs().max() <= 1e-5
    assert ((folded > 0) != (shared > 0)).float().mean() < 1e-4


def test_chunked_upscaling_matches_nchw_layers(fixture_model, monkeypatch):
    dec = fixture_model.mask_decoder
    g = torch.Generator().manual_seed(0)
    keys, hyper = torch.randn(2, 32 * 48, 256, generator=g), torch.randn(2, 4, 32, generator=g)
    with torch.no_grad():
        chunked = dec.masks_from_tokens(keys, hyper, 32, 48)
        assert dec.UPSCALE_CHUNK_TOKENS < 32 * 48  # the chunked path ran
        monkeypatch.setattr(dec, "UPSCALE_CHUNK_TOKENS", 10**9)
        whole = dec.masks_from_tokens(keys, hyper, 32, 48)
        x = dec.output_upscaling(keys.transpose(1, 2).reshape(2, 256, 32, 48))
        nchw = (hyper @ x.flatten(2)).view(2, 4, 128, 192)
    assert chunked.shape == (2, 4, 128, 192)
    assert torch.equal(chunked, whole)
    torch.testing.assert_close(chunked, nchw, rtol=1e-5, atol=1e-4)
