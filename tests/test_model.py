"""Architecture, state-dict and checkpoint-loading invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilesam import CheckpointError, build_sam, sam_model_registry
from mobilesam.build import MODEL_CONFIGS, build_sam_from_config
from mobilesam.checkpoint import DROP_PREFIXES, detect_model_type, read_state_dict
from mobilesam.modeling.image_encoder import ImageEncoderViT, ViTConfig

from .helpers import load_image


@pytest.fixture(scope="session")
def manifest(reference):
    return json.loads((reference / "state_dict_manifest.json").read_text())


@pytest.mark.parametrize("model_type", ["vit_t", "vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_manifest(manifest, model_type):
    with torch.device("meta"):
        model = build_sam_from_config(MODEL_CONFIGS[model_type])
    ours = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    }
    official = {k: (shape, dtype) for k, shape, dtype in manifest[model_type]["keys"]}
    dropped = {k for k in official if k.startswith(DROP_PREFIXES)}
    if model_type == "vit_t":
        assert dropped == {
            "image_encoder.head.weight",
            "image_encoder.head.bias",
            "image_encoder.norm_head.weight",
            "image_encoder.norm_head.bias",
        }
    else:
        assert not dropped
    expected = {k: v for k, v in official.items() if k not in dropped}
    assert set(ours) == set(expected)
    assert ours == expected


def test_detect_model_type(reference):
    sd = read_state_dict(reference / "checkpoints" / "mobile_sam_fixture.pt")
    assert detect_model_type(sd) == "vit_t"
    for mt in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            meta = build_sam_from_config(MODEL_CONFIGS[mt]).state_dict()
        assert detect_model_type(meta) == mt
    with pytest.raises(CheckpointError, match="not a SAM"):
        detect_model_type({"foo.weight": torch.zeros(1)})


def test_checkpoint_wrappers_and_prefixes(tmp_path, reference, fixture_model):
    sd = torch.load(reference / "checkpoints" / "mobile_sam_fixture.pt", weights_only=True)
    wrapped = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped, path)
    model = build_sam(path)  # architecture detected from the keys
    ref = fixture_model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_strict_errors_name_every_key(tmp_path, reference):
    sd = torch.load(reference / "checkpoints" / "mobile_sam_fixture.pt", weights_only=True)
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = torch.zeros(2)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 255)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        sam_model_registry["vit_t"](checkpoint=path)
    msg = str(err.value)
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: mask_decoder.extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 255) vs model (1, 256)" in msg


def test_wrong_architecture_is_named(reference):
    with pytest.raises(CheckpointError, match="missing keys: image_encoder.blocks.0"):
        sam_model_registry["vit_b"](checkpoint=reference / "checkpoints" / "mobile_sam_fixture.pt")


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        build_sam(bad)
    with pytest.raises(FileNotFoundError):
        build_sam(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown model_type"):
        build_sam(model_type="vit_x")


def test_attention_bias_not_stale_after_load_and_dtype(reference, embedded, golden, cases):
    """Official TinyViT caches its attention bias at eval(): loading weights later goes stale.
    Here a model put in eval() *before* loading must give the golden embedding."""
    from mobilesam.checkpoint import load_state_dict_strict

    model = build_sam(model_type="vit_t").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model.image_encoder(x)
        load_state_dict_strict(
            model, read_state_dict(reference / "checkpoints" / "mobile_sam_fixture.pt")
        )
        after = model.image_encoder(x)
        assert not torch.allclose(before, after)
        ref = embedded[cases["images"][0]].model.image_encoder(x)
        torch.testing.assert_close(after, ref, rtol=0, atol=0)
        # A dtype change is honoured too (no cached float32 copies).
        model64 = model.double()
        out64 = model64.image_encoder(x.double())
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), ref, rtol=0, atol=1e-4)


def test_token_grid_derived_from_input(fixture_model):
    enc = fixture_model.image_encoder
    with torch.no_grad():
        assert tuple(enc(torch.zeros(1, 3, 512, 512)).shape) == (1, 256, 32, 32)
        assert tuple(enc(torch.zeros(2, 3, 256, 384)).shape) == (2, 256, 16, 24)


def test_vit_small_encoder_parity(reference):
    cfg_json = json.loads((reference / "vit_small" / "sam_vit_small.json").read_text())
    c = cfg_json["encoder_config"]
    cfg = ViTConfig(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        out_chans=c["out_chans"],
        qkv_bias=c["qkv_bias"],
        use_rel_pos=c["use_rel_pos"],
        window_size=c["window_size"],
        global_attn_indexes=tuple(c["global_attn_indexes"]),
        layer_norm_eps=cfg_json["layer_norm_eps"],
    )
    sd = read_state_dict(reference / "vit_small" / "sam_vit_small_encoder.pt")
    from mobilesam.checkpoint import infer_vit_config

    assert infer_vit_config(sd) == cfg
    enc = ImageEncoderViT(cfg).eval()
    enc.load_state_dict({k.removeprefix("image_encoder."): v for k, v in sd.items()}, strict=True)

    from mobilesam.modeling.sam import PIXEL_MEAN, PIXEL_STD
    from mobilesam.transforms import ResizeLongestSide

    image = load_image(reference, cfg_json["image"])
    resized = ResizeLongestSide(1024).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
    x = torch.nn.functional.pad(x, (0, 1024 - x.shape[-1], 0, 1024 - x.shape[-2]))
    with torch.no_grad():
        out = enc(x).numpy()
    expected = np.load(reference / "vit_small" / "sam_vit_small_embedding.npy")
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 2e-3


@pytest.mark.parametrize("window", [1, 2, 5, 7, 14])
def test_attention_bias_index_is_the_official_enumeration(window):
    """The closed form of TinyViT's bias index equals the official code's enumeration
    (offsets numbered in order of first appearance over token pairs in row-major order)."""
    import itertools

    from mobilesam.modeling.tiny_vit import relative_offset_index

    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    want = [
        offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
        for a in points
        for b in points
    ]
    idxs, n = relative_offset_index(window)
    assert n == len(offsets)
    assert idxs.tolist() == torch.tensor(want).view(len(points), -1).tolist()
