"""The decoder's evaluation orders.

- The CPU engine's per-image cache (:mod:`mobilesam.engine.factored_decode`) is exact
  algebra: in float64 it equals SAM's plain order to ~1e-12 of the logit scale, for every
  kind of prompt.
- In float32 it is no less accurate than the official code, both measured against a float64
  run of the official package (the fixture's logits reach ~3,300, so float32 rounding alone
  moves them by ~1e-3 in either order).
- The cache never goes stale: weights changed in place are picked up.
- The chunked upscaling equals SAM's NCHW layers.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mobilesam import SamPredictor, build_sam
from mobilesam.engine import CpuEngine, Workspace, tuning
from mobilesam.engine.factored_decode import decode_tokens
from mobilesam.engine.image_products import prepare_image_cache
from mobilesam.engine.upscale_tail import masks_from_decoded, masks_from_tokens

from .helpers import FIXTURE_CKPT, REFERENCE

OFFICIAL = REFERENCE.parent / "official"

PROMPTS = {  # (points (B, N, 2) or None, labels, boxes (B, 4) or None) in the 1024 frame
    "one point": (torch.tensor([[[500.0, 400.0]]]), torch.tensor([[1]]), None),
    "three points, batch of 2": (
        torch.tensor([[[100.0, 200.0], [700.0, 30.0], [512.0, 512.0]]] * 2)
        + torch.tensor([[[0.0]], [[37.0]]]),
        torch.tensor([[1, 0, 1]] * 2),
        None,
    ),
    "box": (None, None, torch.tensor([[264.6, 73.1, 642.9, 218.5]])),
    "box and point": (
        torch.tensor([[[453.75, 145.8]]]),
        torch.tensor([[0]]),
        torch.tensor([[264.6, 73.1, 642.9, 218.5]]),
    ),
}


def _both_orders(model, embedding, prompt, multimask=None):
    points, labels, boxes = prompt
    dt = model.pixel_mean.dtype
    pe = model.prompt_encoder
    pts = None if points is None else (points.to(dt), labels)
    with torch.no_grad():
        sparse, dense = pe(points=pts, boxes=None if boxes is None else boxes.to(dt), masks=None)
        plain = model.mask_decoder.predict_masks(embedding, pe.get_dense_pe(), sparse, dense)
        engine = CpuEngine()
        tokens = "all" if multimask is None else ("multi" if multimask else "single")
        cached = engine.decode(engine.prepare(model, embedding), sparse, None, tokens)
    return plain, cached


@pytest.mark.parametrize("name", list(PROMPTS))
def test_cached_order_is_exact_in_float64(golden, name):
    model = build_sam(FIXTURE_CKPT).double()
    emb = torch.from_numpy(golden["img1/embedding"]).double()
    (masks, iou), (c_masks, c_iou) = _both_orders(model, emb, PROMPTS[name])
    assert c_masks.shape == masks.shape and c_iou.shape == iou.shape
    assert (c_masks - masks).abs().max() <= 1e-11 * masks.abs().max()
    assert (c_iou - iou).abs().max() <= 1e-11


@pytest.mark.parametrize("multimask", [True, False])
def test_cached_order_selects_tokens_like_sam(fixture_model, golden, multimask):
    emb = torch.from_numpy(golden["img0/embedding"])
    (masks, iou), (c_masks, c_iou) = _both_orders(
        fixture_model, emb, PROMPTS["one point"], multimask
    )
    sl = slice(1, None) if multimask else slice(0, 1)
    assert c_masks.shape == masks[:, sl].shape
    scale = masks.abs().max()
    # float32: the two orders differ by rounding only (a few ulp of the largest logit)
    assert (c_masks - masks[:, sl]).abs().max() <= 2e-5 * scale
    assert (c_iou - iou[:, sl]).abs().max() <= 1e-5


def _official_low_res(reference_model, embedding, prompt):
    """The official package's prompt encoder + mask decoder, all tokens."""
    points, labels, boxes = prompt
    dt = embedding.dtype
    pe = reference_model.prompt_encoder
    pts = None if points is None else (points.to(dt), labels)
    with torch.no_grad():
        sparse, dense = pe(points=pts, boxes=None if boxes is None else boxes.to(dt), masks=None)
        masks, iou = reference_model.mask_decoder.predict_masks(
            embedding, pe.get_dense_pe(), sparse, dense
        )
    return masks, iou


@pytest.fixture(scope="module")
def official_models():
    if not (OFFICIAL / "mobile_sam").is_dir():
        pytest.skip(f"the official mobile_sam package is not at {OFFICIAL}")
    sys.path[:0] = [str(OFFICIAL), str(OFFICIAL / "stubs")]
    try:
        import mobile_sam
        from mobile_sam.modeling.prompt_encoder import PositionEmbeddingRandom
    finally:
        del sys.path[:2]

    def forward_with_coords(self, coords_input, image_size):  # the official one, minus
        coords = coords_input.clone()  # its cast to float32, so float64 stays float64
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords)

    def forward(self, size):  # likewise: the grid in the buffer's dtype, not float32
        h, w = size
        gauss = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=gauss.device, dtype=gauss.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    PositionEmbeddingRandom.forward_with_coords = forward_with_coords
    PositionEmbeddingRandom.forward = forward
    state = torch.load(FIXTURE_CKPT, weights_only=True)
    models = {}
    for dt in (torch.float32, torch.float64):
        ref = mobile_sam.sam_model_registry["vit_t"]()
        ref.load_state_dict(state)
        models[dt] = ref.eval().to(dt)
    return models


def test_cached_order_is_no_less_accurate_than_official(fixture_model, golden, official_models):
    """Against a float64 run of the official order, this project's float32 decoding (cache,
    factored attention, LayerNorm statistics) is at least as accurate as the official float32
    code, in the mean and the worst case over every logit of every prompt. A 25% allowance
    covers CPUs whose kernels round differently; the measured ratio is about 1."""
    errors = {"official": [], "ours": []}
    for key in ("img0/embedding", "img1/embedding"):
        emb = torch.from_numpy(golden[key])
        for prompt in PROMPTS.values():
            truth, truth_iou = _official_low_res(
                official_models[torch.float64], emb.double(), prompt
            )
            theirs, theirs_iou = _official_low_res(official_models[torch.float32], emb, prompt)
            _, (ours, ours_iou) = _both_orders(fixture_model, emb, prompt)
            errors["official"].append((theirs.double() - truth).abs().flatten())
            errors["ours"].append((ours.double() - truth).abs().flatten())
            assert (ours_iou.double() - truth_iou).abs().max() <= 1e-5
            assert (theirs_iou.double() - truth_iou).abs().max() <= 1e-5
    official, ours = (torch.cat(errors[k]) for k in ("official", "ours"))
    assert ours.mean() <= 1.25 * official.mean(), (ours.mean(), official.mean())
    assert ours.max() <= 1.25 * official.max(), (ours.max(), official.max())


def test_cache_follows_weight_changes(fixture_model, golden):
    model = build_sam(FIXTURE_CKPT)
    pred = SamPredictor(model)
    pred.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    pts, labels = np.array([[420.0, 385.0]]), np.array([1])
    before, _, _ = pred.predict(pts, labels, return_logits=True)
    state = model.state_dict()
    state["mask_decoder.transformer.layers.1.norm4.weight"] *= 1.5
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] *= 0.5
    model.load_state_dict(state)  # in place: the tensors' version counters move
    after, _, _ = pred.predict(pts, labels, return_logits=True)
    fresh = SamPredictor(model)
    fresh.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    expected, _, _ = fresh.predict(pts, labels, return_logits=True)
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, expected)
    pred.reset_image()
    assert pred._state is None
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(pts, labels)


def test_cache_kept_for_the_same_embedding_and_follows_it(fixture_model, golden):
    """Restoring the embedding already held (as the server does per click) keeps the cache;
    a new embedding, or an in-place change of the held one, rebuilds it."""
    pred = SamPredictor(build_sam(FIXTURE_CKPT))
    emb = torch.from_numpy(golden["img0/embedding"]).clone()
    pred.set_embedding(emb, (770, 769))
    cache = pred.image_state()
    pred.set_embedding(pred.get_image_embedding(), (770, 769))
    assert pred.image_state() is cache
    pts, labels = np.array([[420.0, 385.0]]), np.array([1])
    before, _, _ = pred.predict(pts, labels, return_logits=True)
    with torch.no_grad():
        pred.get_image_embedding().mul_(0.5)
    after, _, _ = pred.predict(pts, labels, return_logits=True)
    fresh = SamPredictor(build_sam(FIXTURE_CKPT))
    fresh.set_embedding(emb, (770, 769))  # emb is the held tensor: halved too
    expected, _, _ = fresh.predict(pts, labels, return_logits=True)
    assert pred.image_state() is not cache and not np.allclose(after, before)
    np.testing.assert_array_equal(after, expected)
    pred.set_embedding(emb.clone(), (770, 769))
    assert pred.image_state() is not cache


def test_predict_runs_in_inference_mode_without_leaking_it(fixture_model, golden):
    """``predict`` decodes in inference mode (and may rebuild the image cache there); what it
    leaves behind still works with the plain torch API, in place and with autograd on."""
    model = build_sam(FIXTURE_CKPT)
    pred = SamPredictor(model)
    pred.set_embedding(torch.from_numpy(golden["img0/embedding"]), (770, 769))
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.mul_(1.0)  # stale cache: rebuilt inside predict
    masks, scores, low = pred.predict(np.array([[420.0, 385.0]]), np.array([1]))
    assert isinstance(masks, np.ndarray) and not pred.features.is_inference()
    point = pred.transform.apply_coords(np.array([[420.0, 385.0]]), pred.original_size)
    t_masks, t_scores, t_low = pred.predict_torch(
        torch.tensor(point, dtype=torch.float32)[None], torch.tensor([[1]])
    )
    assert not t_low.is_inference()
    t_low.add_(0.0)  # an inference tensor would refuse this outside inference mode
    np.testing.assert_array_equal(t_masks[0].numpy(), masks)
    np.testing.assert_array_equal(t_scores[0].numpy(), scores)
    with torch.enable_grad():
        emb = pred.get_image_embedding().clone().requires_grad_()
        model.mask_decoder(
            emb,
            model.prompt_encoder.get_dense_pe(),
            *model.prompt_encoder(
                (torch.tensor([[[100.0, 100.0]]]), torch.tensor([[1]])), None, None
            ),
            multimask_output=True,
        )[0].sum().backward()
    assert emb.grad is not None


def test_mask_input_uses_the_plain_order(embedded, cases):
    """A dense prompt per call (``mask_input``) cannot share the image products; the predictor
    falls back to SAM's order and returns the same shapes."""
    pred = embedded[cases["images"][0]]
    pts, labels = np.array([[420.0, 385.0]]), np.array([1])
    masks, scores, low = pred.predict(pts, labels, multimask_output=True)
    refined, r_scores, r_low = pred.predict(
        pts, labels, mask_input=low[np.argmax(scores)][None], multimask_output=False
    )
    assert refined.shape == (1, *masks.shape[1:]) and r_scores.shape == (1,)
    assert r_low.shape == (1, 256, 256)


def test_chunked_upscaling_matches_nchw_layers(fixture_model, monkeypatch):
    """The engine's tail (sub-pixel matrix products, chunk by chunk, prompt by prompt) equals
    SAM's NCHW ``output_upscaling`` and product, whatever the chunk size."""
    dec = fixture_model.mask_decoder
    g = torch.Generator().manual_seed(0)
    keys, hyper = torch.randn(2, 32 * 48, 256, generator=g), torch.randn(2, 4, 32, generator=g)
    monkeypatch.setattr(tuning, "UPSCALE_CHUNK_TOKENS", 5 * 48)  # 5 grid rows, a ragged end
    with torch.no_grad():
        chunked = masks_from_tokens(dec, keys, hyper, 32, 48)
        one_by_one = torch.cat(
            [masks_from_tokens(dec, keys[i : i + 1], hyper[i : i + 1], 32, 48) for i in range(2)]
        )
        monkeypatch.setattr(tuning, "UPSCALE_CHUNK_TOKENS", 10**9)
        whole = masks_from_tokens(dec, keys, hyper, 32, 48)
        x = dec.output_upscaling(keys.transpose(1, 2).reshape(2, 256, 32, 48))
        nchw = (hyper @ x.flatten(2)).view(2, 4, 128, 192)
    assert chunked.shape == (2, 4, 128, 192)
    assert torch.equal(chunked, one_by_one)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(chunked, nchw, rtol=1e-5, atol=1e-4)


def test_workspace_and_out_give_the_same_masks(fixture_model, golden):
    """Decoding into a reused Workspace, compacting prompts within it and writing the tail
    into ``out`` change no value; a later decode may overwrite an earlier one's image
    tokens."""
    pe = fixture_model.prompt_encoder
    emb = torch.from_numpy(golden["img0/embedding"])
    points, labels, _ = PROMPTS["three points, batch of 2"]
    ws = Workspace()
    with torch.inference_mode():
        cache = prepare_image_cache(fixture_model, emb)
        sparse, _ = pe(points=(points, labels), boxes=None, masks=None)
        fresh = decode_tokens(cache, sparse, "multi")
        expected = masks_from_decoded(cache, fresh, fresh.hyper)
        reused = decode_tokens(cache, sparse, "multi", workspace=ws)
        out = torch.full_like(expected, float("nan"))
        assert masks_from_decoded(cache, reused, reused.hyper, out) is out
        assert torch.equal(out, expected)
        z = reused.image.z.data_ptr()
        picked = reused.compact(torch.tensor([1]))  # moved to the front of the same buffer
        assert picked.image.z.data_ptr() == z
        one = masks_from_decoded(cache, picked, picked.hyper)
        assert torch.equal(one, expected[1:])
        assert torch.equal(picked.iou, fresh.iou[1:])
        # the workspace's buffers are reused, not reallocated
        again = decode_tokens(cache, sparse[:1], "multi", workspace=ws)
        assert again.image.z.data_ptr() == z
        # (one prompt instead of two: the token-side products may round differently)
        diff = masks_from_decoded(cache, again, again.hyper) - expected[:1]
        assert diff.abs().max() <= 2e-5 * expected.abs().max()
        # compacting keeps any increasing subset, moved forward in place
        three = torch.tensor([[[500.0, 400.0]], [[100.0, 900.0]], [[1000.0, 20.0]]])
        sparse3, _ = pe(points=(three, torch.ones(3, 1, dtype=torch.int64)), boxes=None, masks=None)
        full = decode_tokens(cache, sparse3, "multi")
        want = masks_from_decoded(cache, full, full.hyper)
        for keep in ([0, 2], [1, 2], [2]):
            part = decode_tokens(cache, sparse3, "multi", workspace=ws).compact(torch.tensor(keep))
            assert torch.equal(masks_from_decoded(cache, part, part.hyper), want[keep])
