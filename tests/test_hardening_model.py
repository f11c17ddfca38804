"""Issue 24, the model's side: non-finite weights are refused at load and non-finite outputs
never returned (row 5); every embedding that enters is checked, and ``mask_input`` must be
finite and bounded (row 7); degenerate checkpoints are named in one line (row 8); predictors
of two precisions share one model (row 13); ONNX exports are verified against their sha256
manifest; and a property-based test of the prompt checks.

Most tests use small models with random weights (built in milliseconds), so that the encoder
runs in a fraction of a second."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mobilesam import CheckpointError, SamAutomaticMaskGenerator, SamPredictor, build_sam
from mobilesam.build import SamConfig, build_sam_from_config, sam_from_state_dict
from mobilesam.checkpoint import read_state_dict
from mobilesam.modeling.image_encoder import ViTConfig
from mobilesam.modeling.tiny_vit import TinyViTConfig
from mobilesam.predictor import DegenerateEmbeddingError, NonFiniteOutputError
from mobilesam.prompts import MASK_INPUT_LIMIT, VALID_LABELS, prepare_prompts
from mobilesam.transforms import ResizeLongestSide

from .helpers import FIXTURE_CKPT

#: A whole model small enough to run its encoder in a fraction of a second (img_size 128).
TINY = SamConfig(
    encoder=TinyViTConfig(
        img_size=128,
        embed_dims=(8, 16, 16, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        window_sizes=(2, 2, 2, 2),
        out_chans=32,
    ),
    prompt_embed_dim=32,
    mask_in_chans=4,
    decoder_depth=1,
    decoder_mlp_dim=32,
    decoder_heads=2,
    iou_head_hidden_dim=16,
)

#: Small encoders with SAM's own decoder, whose architecture ``build_sam`` detects from the
#: keys and shapes (detection infers the encoder; the decoder is always SAM's).
SMALL_TINY_VIT = SamConfig(
    encoder=TinyViTConfig(
        embed_dims=(8, 16, 16, 32),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 2, 4),
        window_sizes=(2, 2, 2, 2),
    )
)
SMALL_VIT = SamConfig(
    encoder=ViTConfig(
        img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,)
    )
)


def _random_state(cfg: SamConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_sam_from_config(cfg).state_dict().items()}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return _random_state(TINY)


def _tiny(state: dict[str, torch.Tensor]):
    """A fresh :data:`TINY` model holding ``state``."""
    model = build_sam_from_config(TINY)
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def tiny_embedding(tiny_state, images) -> torch.Tensor:
    pred = SamPredictor(_tiny(tiny_state))
    pred.set_image(images[0])
    return pred.get_image_embedding().clone()


POINT = (np.array([[30.0, 20.0]]), np.array([1]))


def _one_line_error(call, error=CheckpointError) -> str:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- row 5: non-finite weights


def test_one_nan_weight_is_refused_at_load(tmp_path):
    sd = _random_state(SMALL_TINY_VIT)
    sd["image_encoder.layers.2.blocks.1.mlp.fc2.weight"][3, 1] = float("nan")
    sd["mask_decoder.iou_token.weight"][0, 0] = float("inf")
    path = tmp_path / "one_nan.pt"
    torch.save(sd, path)
    for call in (
        lambda: build_sam(path),
        lambda: build_sam(path, "vit_t"),
        lambda: read_state_dict(path),
    ):
        message = _one_line_error(call)
        assert str(path) in message and "2 tensors" in message and "NaN/inf" in message
        assert "image_encoder.layers.2.blocks.1.mlp.fc2.weight" in message
        assert "mask_decoder.iou_token.weight" in message
        assert "fp16" not in message and "float16" not in message


def test_many_nan_weights_name_the_first_few_and_the_count(tmp_path):
    sd = _random_state(SMALL_TINY_VIT)
    bad = sorted(k for k in sd if k.startswith("mask_decoder.") and sd[k].is_floating_point())
    for key in bad:
        sd[key].fill_(float("nan"))
    torch.save(sd, tmp_path / "all_nan.pt")
    message = _one_line_error(lambda: build_sam(tmp_path / "all_nan.pt"))
    assert f"{len(bad)} tensors" in message and bad[0] in message and bad[-1] not in message


def test_the_guard_names_nan_weights_not_reduced_precision(tiny_state, images):
    """An embedding made NaN by the weights (set after loading) is blamed on them."""
    model = _tiny(tiny_state)
    with torch.no_grad():
        model.image_encoder.neck[0].weight[0, 0] = float("nan")
    message = _one_line_error(
        lambda: SamPredictor(model).set_image(images[0]), DegenerateEmbeddingError
    )
    assert "image_encoder.neck.0.weight" in message, message
    assert "float16" not in message and "fp16" not in message


# -------------------------------------------------------- row 5: non-finite scores and logits


def _broken(model, part: str):
    """``model``'s decoder made to return NaN scores (``part="scores"``) or inf logits."""
    with torch.no_grad():
        if part == "scores":
            model.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(float("nan"))
        else:
            for mlp in model.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].bias.fill_(float("inf"))
    return model


@pytest.mark.parametrize("part", ["scores", "logits"])
def test_predict_never_returns_non_finite_values(tiny_state, tiny_embedding, part):
    pred = SamPredictor(_broken(_tiny(tiny_state), part))
    pred.set_embedding(tiny_embedding, (60, 80))
    point = torch.tensor([[[40.0, 30.0]]]), torch.tensor([[1]])
    mask = torch.zeros(1, 1, 32, 32)
    for call in (
        lambda: pred.predict(*POINT),
        lambda: pred.predict(*POINT, multimask_output=False, return_logits=True),
        lambda: pred.predict(*POINT, mask_input=np.zeros((1, 32, 32), np.float32)),
        lambda: pred.predict_torch(*point),
        lambda: pred.predict_torch(*point, mask_input=mask),
    ):
        message = _one_line_error(call, NonFiniteOutputError)
        assert part[:-1] in message, message


@pytest.mark.parametrize(("part", "thresh"), [("scores", 0.88), ("scores", 0.0), ("logits", 0.0)])
def test_generate_never_returns_non_finite_values(tiny_state, tiny_embedding, images, part, thresh):
    """NaN scores are not silently filtered out (an empty answer), nor passed on."""
    gen = SamAutomaticMaskGenerator(
        _broken(_tiny(tiny_state), part), points_per_side=2, pred_iou_thresh=thresh
    )
    _one_line_error(
        lambda: gen.generate(images[0], image_embedding=tiny_embedding), NonFiniteOutputError
    )


# ------------------------------------------------------------ row 7: every embedding checked

BAD_EMBEDDINGS = {
    "NaN/inf": lambda e: e.masked_fill(torch.rand_like(e) < 0.01, float("nan")),
    "collapsed": lambda e: torch.full_like(e, 0.5),
    "overflowed": lambda e: e * 1e5,
}


@pytest.mark.parametrize("bad", sorted(BAD_EMBEDDINGS))
def test_set_embedding_checks_the_embedding(tiny_state, tiny_embedding, bad):
    pred = SamPredictor(_tiny(tiny_state))
    pred.set_embedding(tiny_embedding, (60, 80))  # a sound one is accepted
    embedding = BAD_EMBEDDINGS[bad](tiny_embedding.clone())
    message = _one_line_error(
        lambda: pred.set_embedding(embedding, (60, 80)), DegenerateEmbeddingError
    )
    assert bad in message and "set_embedding" in message
    assert not pred.is_image_set


@pytest.mark.parametrize("bad", sorted(BAD_EMBEDDINGS))
def test_generate_checks_the_given_embedding(tiny_state, tiny_embedding, images, bad):
    gen = SamAutomaticMaskGenerator(_tiny(tiny_state), points_per_side=2)
    embedding = BAD_EMBEDDINGS[bad](tiny_embedding.clone())
    message = _one_line_error(
        lambda: gen.generate(images[0], image_embedding=embedding), DegenerateEmbeddingError
    )
    assert bad in message and "image_embedding" in message


def test_the_held_embedding_changed_in_place_is_checked_again(tiny_state, tiny_embedding):
    pred = SamPredictor(_tiny(tiny_state))
    pred.set_embedding(tiny_embedding.clone(), (60, 80))
    pred.set_embedding(pred.get_image_embedding(), (60, 80))  # a server's next click
    with torch.no_grad():
        pred.get_image_embedding()[0, 0, 0, 0] = float("nan")
    with pytest.raises(DegenerateEmbeddingError, match="NaN/inf"):
        pred.set_embedding(pred.get_image_embedding(), (60, 80))


def test_mask_input_must_be_finite_and_bounded(tiny_state, tiny_embedding):
    pred = SamPredictor(_tiny(tiny_state))
    pred.set_embedding(tiny_embedding, (60, 80))
    ok = np.full((1, 32, 32), -MASK_INPUT_LIMIT, np.float32)
    assert np.isfinite(pred.predict(*POINT, mask_input=ok)[1]).all()
    for value in (3e38, 1e300, -np.inf, np.nan, 2 * MASK_INPUT_LIMIT):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nor a RuntimeWarning from a cast
            with pytest.raises(ValueError, match="mask_input"):
                pred.predict(*POINT, mask_input=np.full((1, 32, 32), value))
    for value in (3e38, -np.inf, np.nan, 2 * MASK_INPUT_LIMIT):
        with pytest.raises(ValueError, match="mask_input"):
            pred.predict_torch(None, None, torch.zeros(1, 4), torch.full((1, 1, 32, 32), value))
    for coords in (torch.tensor([[[np.nan, 1.0]]]), torch.tensor([[[1e30, 1.0]]])):
        with pytest.raises(ValueError, match="point_coords"):
            pred.predict_torch(coords, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="boxes"):
        pred.predict_torch(None, None, torch.tensor([[0.0, 0.0, np.inf, 5.0]]))


# --------------------------------------------------------- row 8: degenerate checkpoints


def _drop(prefix: str):
    return lambda sd: {k: v for k, v in sd.items() if not k.startswith(prefix)}


def _set(key: str, value: torch.Tensor):
    return lambda sd: {**sd, key: value}


E = "image_encoder."
# (state dict, change, what the one line must name)
DEGENERATE = {
    "tinyvit without the neck": (SMALL_TINY_VIT, _drop(E + "neck.0.weight"), E + "neck.0.weight"),
    "tinyvit zero-size conv": (
        SMALL_TINY_VIT,
        _set(E + "layers.0.blocks.0.conv1.c.weight", torch.zeros(0, 8, 1, 1)),
        E + "layers.0.blocks.0.conv1.c.weight",
    ),
    "tinyvit 1-d conv": (
        SMALL_TINY_VIT,
        _set(E + "layers.0.blocks.0.conv1.c.weight", torch.zeros(32)),
        E + "layers.0.blocks.0.conv1.c.weight",
    ),
    "tinyvit 1-d attention biases": (
        SMALL_TINY_VIT,
        _set(E + "layers.1.blocks.0.attn.attention_biases", torch.zeros(2)),
        E + "layers.1.blocks.0.attn.attention_biases",
    ),
    "tinyvit stage without blocks": (
        SMALL_TINY_VIT,
        _drop(E + "layers.2.blocks."),
        E + "layers.2.blocks",
    ),
    "tinyvit one stage only": (SMALL_TINY_VIT, _drop(E + "layers.1"), E + "layers.1"),
    "tinyvit empty mlp": (
        SMALL_TINY_VIT,
        _set(E + "layers.1.blocks.0.mlp.fc1.weight", torch.zeros(0, 0)),
        E + "layers.1.blocks.0.mlp.fc1.weight",
    ),
    "tinyvit empty neck": (
        SMALL_TINY_VIT,
        _set(E + "neck.0.weight", torch.zeros(256, 0, 1, 1)),
        E + "neck.0.weight",
    ),
    "vit without the neck": (SMALL_VIT, _drop(E + "neck.0.weight"), E + "neck.0.weight"),
    "vit without blocks": (SMALL_VIT, _drop(E + "blocks."), E + "blocks"),
    "vit 1-d patch embedding": (
        SMALL_VIT,
        _set(E + "patch_embed.proj.weight", torch.zeros(16)),
        E + "patch_embed.proj.weight",
    ),
    "vit zero head size": (
        SMALL_VIT,
        _set(E + "blocks.1.attn.rel_pos_h", torch.zeros(7, 0)),
        E + "blocks.1.attn.rel_pos_h",
    ),
    "vit empty mlp": (
        SMALL_VIT,
        _set(E + "blocks.0.mlp.lin1.weight", torch.zeros(0, 0)),
        E + "blocks.0.mlp.lin1.weight",
    ),
    "vit 1-d position embedding": (
        SMALL_VIT,
        _set(E + "pos_embed", torch.zeros(4)),
        E + "pos_embed",
    ),
}


@pytest.fixture(scope="module")
def small_states() -> dict[str, dict[str, torch.Tensor]]:
    return {"tiny_vit": _random_state(SMALL_TINY_VIT), "vit": _random_state(SMALL_VIT)}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_checkpoints_are_named_in_one_line(small_states, case):
    cfg, change, key = DEGENERATE[case]
    sd = change(small_states["tiny_vit" if cfg is SMALL_TINY_VIT else "vit"])
    # the unchanged state dict loads
    sam_from_state_dict(small_states["tiny_vit" if cfg is SMALL_TINY_VIT else "vit"])
    message = _one_line_error(lambda: sam_from_state_dict(sd, source="ckpt.pt"))
    assert key in message and "ckpt.pt" in message, message
    assert ("TinyViT" if cfg is SMALL_TINY_VIT else "ViT") in message, message


@pytest.mark.parametrize("model_type", ["vit_t", "vit_b"])
def test_degenerate_checkpoint_with_a_model_type(small_states, model_type):
    sd = dict(small_states["tiny_vit"])
    del sd[E + "neck.0.weight"]
    sd[E + "layers.0.blocks.0.conv1.c.weight"] = torch.zeros(0)
    message = _one_line_error(lambda: sam_from_state_dict(sd, model_type, source="ckpt.pt"))
    assert model_type in message and "ckpt.pt" in message and "missing keys" in message
    assert ("wrong shapes" if model_type == "vit_t" else "unexpected keys") in message


@pytest.mark.parametrize(
    ("sd", "match"),
    [
        ({1: torch.zeros(1)}, "key 1"),
        ({"image_encoder.x": torch.zeros(1), 2.5: torch.zeros(1)}, "key 2.5"),
        ({E + "layers.0.blocks.0.conv1.c.weight": torch.zeros(1, device="meta")}, "no data"),
    ],
)
def test_malformed_state_dicts(sd, match):
    message = _one_line_error(lambda: sam_from_state_dict(sd, source="ckpt.pt"))
    assert match in message, message


def test_fixture_without_its_neck_through_the_file(tmp_path):
    sd = torch.load(FIXTURE_CKPT, map_location="cpu", weights_only=True)
    del sd[E + "neck.0.weight"]
    path = tmp_path / "no_neck.pt"
    torch.save(sd, path)
    message = _one_line_error(lambda: build_sam(path))
    assert E + "neck.0.weight" in message and str(path) in message and "TinyViT" in message


# -------------------------------------------------- row 13: two precisions on one model


def _session(pred: SamPredictor, image: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    pred.set_image(image)
    return [pred.predict(*POINT), pred.predict(np.array([[10.0, 50.0]]), np.array([0]))]


def _same(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def test_two_precisions_on_one_model(tiny_state, images):
    alone = {
        p: [_session(SamPredictor(_tiny(tiny_state), precision=p), im) for im in images]
        for p in ("fp32", "bf16")
    }
    model = _tiny(tiny_state)
    fp32 = SamPredictor(model, precision="fp32")
    bf16 = SamPredictor(model, precision="bf16")
    for i, image in enumerate(images):  # interleaved
        fp32.set_image(image)
        bf16.set_image(image)
        first = bf16.predict(*POINT), fp32.predict(*POINT)
        other = np.array([[10.0, 50.0]]), np.array([0])
        second = bf16.predict(*other), fp32.predict(*other)
        _same([first[0], second[0]], alone["bf16"][i])
        _same([first[1], second[1]], alone["fp32"][i])
    # the shared model is left as it was
    for key, value in model.state_dict().items():
        assert value.dtype == tiny_state[key].dtype, key
        assert torch.equal(value, tiny_state[key]), key
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert next(bf16.image_encoder.parameters()).dtype == torch.bfloat16
    assert fp32.image_encoder is model.image_encoder


def test_a_cast_encoder_follows_the_models_weights(tiny_state, images):
    """The predictor's own bf16 copy is remade when the model's weights change."""
    model = _tiny(tiny_state)
    bf16 = SamPredictor(model, precision="bf16")
    _session(bf16, images[0])
    changed = {k: v * 0.5 if k.startswith(E + "neck") else v for k, v in tiny_state.items()}
    model.load_state_dict(changed)  # in place
    expected = _session(SamPredictor(_tiny(changed), precision="bf16"), images[0])
    _same(_session(bf16, images[0]), expected)
    original = tiny_state[E + "neck.0.weight"]
    model.image_encoder.neck[0].weight = torch.nn.Parameter(original.clone())  # replaced
    restored = _tiny({**changed, E + "neck.0.weight": original})
    expected = _session(SamPredictor(restored, precision="bf16"), images[0])
    _same(_session(bf16, images[0]), expected)


def test_a_model_already_in_the_predictors_dtype_is_used_as_it_is(tiny_state):
    model = _tiny(tiny_state)
    model.image_encoder.to(torch.bfloat16)
    pred = SamPredictor(model)  # leaves the encoder as it is
    assert pred.dtype == torch.bfloat16 and pred.image_encoder is model.image_encoder
    assert SamPredictor(model, precision="bf16").image_encoder is model.image_encoder
    fp32 = SamPredictor(model, precision="fp32")
    assert next(fp32.image_encoder.parameters()).dtype == torch.float32
    assert next(model.image_encoder.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------ ONNX export: sha256 manifest


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_state) -> Path:
    pytest.importorskip("onnxruntime")
    from mobilesam.onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny_onnx")
    export_onnx(_tiny(tiny_state), out)
    return out


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def test_export_writes_a_sha256_manifest(tiny_export):
    from mobilesam.hub import sha256_file

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    meta = json.loads((tiny_export / "model.json").read_text())
    names = {*meta["files"].values(), "model.json"}
    assert set(manifest["sha256"]) == names
    for name in names:
        assert manifest["sha256"][name] == sha256_file(tiny_export / name), name


@pytest.mark.parametrize("name", ["encoder.onnx", "decoder_multimask.onnx", "model.json"])
def test_a_bit_flipped_export_file_is_refused(tmp_path, tiny_export, name):
    from mobilesam.onnx import ExportIntegrityError, OnnxPredictor

    root = _copy_export(tiny_export, tmp_path / "export")
    OnnxPredictor(root)  # the intact copy loads
    _flip_byte(root / name, 0.5 if name != "model.json" else 0.02)
    message = _one_line_error(lambda: OnnxPredictor(root), ExportIntegrityError)
    assert str(root / name) in message and "sha256" in message, message
    assert isinstance(ExportIntegrityError(""), ValueError)


def test_an_export_without_a_manifest(tmp_path, tiny_export):
    from mobilesam.onnx import ExportIntegrityError, OnnxPredictor

    root = _copy_export(tiny_export, tmp_path / "export")
    (root / "manifest.json").write_text("{not json")
    message = _one_line_error(lambda: OnnxPredictor(root), ExportIntegrityError)
    assert "manifest.json" in message
    (root / "manifest.json").unlink()
    message = _one_line_error(lambda: OnnxPredictor(root), ExportIntegrityError)
    assert "manifest.json" in message and "verify=False" in message
    OnnxPredictor(root, verify=False)


def test_onnx_predictor_never_returns_non_finite_values(tiny_export, images):
    from mobilesam.onnx import OnnxPredictor

    pred = OnnxPredictor(tiny_export)
    pred.set_image(images[0])
    decoder = pred._decoder

    class Broken:  # the exported decoder, its scores or logits made NaN
        def __init__(self, index: int) -> None:
            self.index = index

        def run(self, names, feeds):
            out = decoder.run(names, feeds)
            out[self.index][..., 0] = np.nan
            return out

    for index, what in ((0, "score"), (1, "logit")):
        pred._decoder = Broken(index)
        message = _one_line_error(lambda: pred.predict(*POINT), NonFiniteOutputError)
        assert what in message and "OnnxPredictor" in message


# ------------------------------------------------------- property-based: the prompt checks

_ANY_DTYPE = st.one_of(
    hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3)
)
_ANY_ARRAY = hnp.arrays(
    _ANY_DTYPE, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
)
_ANY_LIST = st.recursive(
    st.one_of(st.floats(), st.integers(), st.text(max_size=2), st.none()),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)
_FINITE = st.floats(-200, 200)


def _anything(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), valid, _ANY_ARRAY, _ANY_LIST)


_COORDS = _anything(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.just(2)), elements=_FINITE)
)
_LABELS = _anything(hnp.arrays(np.int64, st.integers(1, 3), elements=st.sampled_from(VALID_LABELS)))
_BOX = _anything(hnp.arrays(np.float32, st.sampled_from([(4,), (1, 4)]), elements=_FINITE))
_MASK = _anything(hnp.arrays(np.float32, (1, 4, 4), elements=st.floats(-1e7, 1e7, width=32)))


@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(coords=_COORDS, labels=_LABELS, box=_BOX, mask=_MASK)
def test_prompt_checks_give_a_result_or_one_value_error(coords, labels, box, mask):
    """Any arrays (any shape, dtype and values: NaN, inf, 1e300, empty, strings, ragged
    lists) give checked prompts or one ValueError: never another exception, nor a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            p = prepare_prompts(coords, labels, box, mask, ResizeLongestSide(64), (48, 64), (4, 4))
        except ValueError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) < 400, message
            return
    for a in (p.coords, p.box, p.mask):
        assert a is None or np.isfinite(a).all()
    if p.coords is not None:
        assert p.coords.shape[1] == 2 and p.labels.shape == (len(p.coords),)
        assert np.isin(p.labels, VALID_LABELS).all() and p.labels.dtype == np.int64
    assert p.box is None or p.box.shape == (1, 4)
    if p.mask is not None:
        assert p.mask.shape == (1, 4, 4) and p.mask.dtype == np.float32
        assert np.abs(p.mask).max(initial=0) <= MASK_INPUT_LIMIT
