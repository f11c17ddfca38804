"""The inference engines (:mod:`mobilesam.engine`): both give the same masks and scores, the
batch API and the embedding-only ``generate`` agree with the plain calls, the choice of engine
is explicit, and ``modeling/`` stays SAM's modules.

The two engines evaluate the same arithmetic in different orders (the CPU engine's factored
form, native kernels; SAM's order), so they agree to float32 rounding, not bit for bit: the
fixture's logits reach ~3,300, and the tolerances below are far above rounding (measured
~1e-6 of the largest logit) and far below a wrong operation (O(1) of it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam import SamAutomaticMaskGenerator, SamPredictor
from mobilesam.engine import ENGINES, CpuEngine, Engine, PlainEngine, engine_for

from .helpers import mask_iou

#: Low-res logits may differ by this fraction of the largest magnitude between engines.
LOGIT_RTOL = 1e-3
IOU_TOL = 1e-4
MASK_IOU_MIN = 0.99

PROMPTS = {  # in the original frame of a 770×769 image
    "one point": {"point_coords": np.array([[420.0, 385.0]]), "point_labels": np.array([1])},
    "three points": {
        "point_coords": np.array([[100.0, 200.0], [600.0, 30.0], [400.0, 500.0]]),
        "point_labels": np.array([1, 0, 1]),
    },
    "box": {"box": np.array([200.0, 60.0, 500.0, 180.0])},
    "box and point": {
        "point_coords": np.array([[350.0, 120.0]]),
        "point_labels": np.array([0]),
        "box": np.array([200.0, 60.0, 500.0, 180.0]),
    },
}


@pytest.fixture(scope="module")
def engine_predictors(fixture_model, golden):
    """``{(engine, image index): SamPredictor}`` on the golden embeddings (no encoder run)."""
    out = {}
    for engine in ENGINES:
        for img in (0, 1):
            p = SamPredictor(fixture_model, engine=engine)
            p.set_embedding(torch.from_numpy(golden[f"img{img}/embedding"]), (770, 769))
            out[engine, img] = p
    return out


def _assert_same(a, b):
    """Outputs ``(masks, scores, low_res)`` of ``predict`` from the two engines."""
    (m_a, s_a, l_a), (m_b, s_b, l_b) = a, b
    assert m_a.shape == m_b.shape and l_a.shape == l_b.shape and s_a.shape == s_b.shape
    assert np.abs(l_a - l_b).max() <= LOGIT_RTOL * np.abs(l_b).max()
    assert np.abs(s_a - s_b).max() <= IOU_TOL
    for x, y in zip(m_a, m_b, strict=True):
        assert mask_iou(x > 0 if x.dtype != bool else x, y > 0 if y.dtype != bool else y) >= (
            MASK_IOU_MIN
        )


@pytest.mark.parametrize("img", [0, 1])
@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_engines_give_the_same_masks(engine_predictors, img, name, multimask):
    outs = [
        engine_predictors[engine, img].predict(**PROMPTS[name], multimask_output=multimask)
        for engine in ("cpu", "plain")
    ]
    _assert_same(*outs)


def test_engines_agree_on_all_tokens_logits_and_mask_input(engine_predictors):
    cpu, plain = engine_predictors["cpu", 0], engine_predictors["plain", 0]
    point = cpu.transform.apply_coords(PROMPTS["three points"]["point_coords"], (770, 769))
    coords = torch.tensor(point, dtype=torch.float32)[None].repeat(2, 1, 1)
    coords[1] += 17.0  # a batch of two prompts
    labels = torch.tensor([[1, 0, 1]] * 2)
    low = {}
    for p in (cpu, plain):
        l_all, s_all = p.predict_low_res_torch(coords, labels, multimask_output=None)
        assert l_all.shape == (2, 4, 256, 256) and s_all.shape == (2, 4)
        low[p.engine.name] = (l_all, s_all)
    (l_c, s_c), (l_p, s_p) = low["cpu"], low["plain"]
    assert (l_c - l_p).abs().max() <= LOGIT_RTOL * l_p.abs().max()
    assert (s_c - s_p).abs().max() <= IOU_TOL
    kw = PROMPTS["one point"]
    logits = [p.predict(**kw, return_logits=True) for p in (cpu, plain)]
    _assert_same(*logits)
    # a mask input runs SAM's order in both engines
    mask_input = logits[1][2][np.argmax(logits[1][1])][None]
    refined = [p.predict(**kw, mask_input=mask_input, multimask_output=False) for p in (cpu, plain)]
    _assert_same(*refined)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_decode_points_equals_predict_per_point(engine_predictors, engine):
    pred = engine_predictors[engine, 1]
    points = np.array([[420.0, 385.0], [100.0, 700.0], [650.0, 90.0], [300.0, 300.0]])
    low, iou, index = pred.decode_points(points, 0.0, batch_size=3)  # two passes: 3 + 1
    assert low.shape == (12, 256, 256) and iou.shape == (12,) and index.shape == (12,)
    assert index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    each = [pred.predict(pt[None], np.array([1]), multimask_output=True) for pt in points]
    ref_low = np.concatenate([e[2] for e in each])
    ref_iou = np.concatenate([e[1] for e in each])
    # (a batch of prompts may round differently from one prompt)
    assert np.abs(low.numpy() - ref_low).max() <= 2e-5 * np.abs(ref_low).max()
    assert np.abs(iou.numpy() - ref_iou).max() <= 1e-5
    # the IoU filter keeps exactly the masks whose score passes, in order
    thresh = float(np.median(ref_iou))
    low_f, iou_f, index_f = pred.decode_points(points, thresh)
    keep = ref_iou > thresh
    assert index_f.tolist() == np.repeat(np.arange(4), 3)[keep].tolist()
    assert np.abs(iou_f.numpy() - ref_iou[keep]).max() <= 1e-5
    assert np.abs(low_f.numpy() - ref_low[keep]).max() <= 2e-5 * np.abs(ref_low).max()
    none = pred.decode_points(points, 1.0)
    assert none[0].shape == (0, 256, 256) and len(none[1]) == len(none[2]) == 0
    with pytest.raises(ValueError, match=r"\(n, 2\) points"):
        pred.decode_points(points[0], 0.0)
    with pytest.raises(ValueError, match="NaN"):
        pred.decode_points(np.array([[np.nan, 3.0]]), 0.0)


def test_generate_from_an_embedding_alone(fixture_model, embedded, reference):
    """No pixels needed: the embedding and the original size give the same masks as the
    image (whose encoder run gives that same embedding)."""
    from .helpers import load_image

    image = load_image(reference, "picture1.jpg")
    emb = embedded["picture1.jpg"].get_image_embedding()
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=4, pred_iou_thresh=0.8)
    from_image = gen.generate(image)
    alone = gen.generate(image_embedding=emb, original_size=image.shape[:2])
    assert len(alone) == len(from_image) > 0
    for a, b in zip(alone, from_image, strict=True):
        assert a["bbox"] == b["bbox"] and a["point_coords"] == b["point_coords"]
        assert mask_iou(a["segmentation"], b["segmentation"]) >= MASK_IOU_MIN
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-5
    with pytest.raises(ValueError, match="original_size"):
        gen.generate(image_embedding=emb)
    with pytest.raises(ValueError, match="needs an image"):
        gen.generate()
    with pytest.raises(ValueError, match="not the image's size"):
        gen.generate(image, image_embedding=emb, original_size=(10, 10))
    layered = SamAutomaticMaskGenerator(fixture_model, points_per_side=2, crop_n_layers=1)
    with pytest.raises(ValueError, match="crop_n_layers=1"):
        layered.generate(image_embedding=emb, original_size=image.shape[:2])


def test_generator_passes_its_engine_on(fixture_model):
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=2, engine="plain")
    assert isinstance(gen.predictor.engine, PlainEngine)


def test_engine_choice():
    assert isinstance(engine_for(None, "cpu"), CpuEngine)
    assert isinstance(engine_for("auto", torch.device("cpu")), CpuEngine)
    assert isinstance(engine_for(None, "cuda"), PlainEngine)  # a device name; no GPU needed
    assert isinstance(engine_for("auto", "meta"), PlainEngine)
    assert isinstance(engine_for("cpu", "cuda"), CpuEngine)  # explicit wins
    assert isinstance(engine_for("plain", "cpu"), PlainEngine)
    mine = PlainEngine()
    assert engine_for(mine, "cpu") is mine
    for bad in ("gpu", "", 3):
        with pytest.raises(ValueError, match="'auto', 'plain', 'cpu'"):
            engine_for(bad, "cpu")
    assert {name: cls.name for name, cls in ENGINES.items()} == {"plain": "plain", "cpu": "cpu"}
    assert all(issubclass(cls, Engine) for cls in ENGINES.values())


def test_predictor_engine_argument(fixture_model):
    assert SamPredictor(fixture_model).engine.name == "cpu"
    assert SamPredictor(fixture_model, engine="plain").engine.name == "plain"
    with pytest.raises(ValueError, match="engine must be one of"):
        SamPredictor(fixture_model, engine="fast")


def test_cpu_engine_refuses_another_engines_state(fixture_model, golden):
    emb = torch.from_numpy(golden["img0/embedding"])
    state = PlainEngine().prepare(fixture_model, emb)
    with pytest.raises(ValueError, match="its own prepare"):
        CpuEngine().decode(state, torch.zeros(1, 2, 256))


MODELING = Path(mobilesam.__file__).parent / "modeling"


def test_modeling_is_sams_modules_only():
    """No global mode flag chooses arithmetic in ``modeling/``, and it imports nothing from
    the engine or the native kernels (it is what training, export and the plain engine run)."""
    flags = re.compile(r"is_tracing|is_compiling|is_grad_enabled")
    imports = re.compile(
        r"^\s*(from\s+(mobilesam|\.\.)\.?(engine|native)\b|import\s+mobilesam\.(engine|native)"
        r"|from\s+\.\.\s+import\s+.*\b(engine|native)\b)",
        re.MULTILINE,
    )
    offenders = []
    for path in sorted(MODELING.glob("*.py")):
        text = path.read_text()
        offenders += [f"{path.name}: {m.group(0)}" for m in flags.finditer(text)]
        offenders += [f"{path.name}: {m.group(0).strip()}" for m in imports.finditer(text)]
    assert not offenders, offenders
