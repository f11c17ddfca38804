"""Devices: choosing one (``resolve_device``, ``--device``), building and moving a model
there, and the predictor and the generator following the model's device.

No GPU is needed. The code that other devices run is exercised on CPU tensors: the plain
engine (every device but the CPU runs it) against the CPU engine, the autocast path with
CPU autocast, and the whole inference path with PyTorch's default device set to ``meta``, so
that any tensor made without ``device=`` (which would land on the CPU beside CUDA inputs)
fails loudly. The engines agree to float rounding, not bit for bit (see test_engine.py):
the tolerances below are far above rounding and far below a wrong operation.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import (
    DeviceUnavailable,
    SamAutomaticMaskGenerator,
    SamPredictor,
    build_sam,
    resolve_device,
    sam_model_registry,
)
from mobilesam.cli import main
from mobilesam.engine import engine_for
from mobilesam.precision import autocast_dtype

from .helpers import FIXTURE_CKPT, mask_iou

NO_CUDA = not torch.cuda.is_available()
LOGIT_RTOL = 1e-3  # of the largest logit magnitude (the fixture's reach ~3,300)
IOU_TOL = 1e-4
MASK_IOU_MIN = 0.99
POINT, LABEL = np.array([[420.0, 385.0]]), np.array([1])
BOX = np.array([200.0, 60.0, 500.0, 180.0])


@pytest.fixture(scope="module")
def embedding(golden) -> torch.Tensor:
    """picture1's golden embedding ``(1, 256, 64, 64)``: the decoder's tests need no encoder."""
    return torch.from_numpy(golden["img0/embedding"])


@pytest.fixture
def meta_default_device():
    """Tensors made without ``device=`` land on ``meta``, which no real tensor mixes with."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


# --------------------------------------------------------------------------- choosing


def test_resolve_device_names_what_is_there():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if NO_CUDA:
        assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
        with pytest.raises(DeviceUnavailable, match=r"'cuda:1' is not available here \(avail"):
            resolve_device("cuda:1")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_build_sam_refuses_a_missing_device_before_loading(tmp_path):
    missing = tmp_path / "absent.pt"  # never opened: the device is checked first
    for build in (
        lambda: build_sam(missing, device="cuda"),
        lambda: sam_model_registry["vit_t"](checkpoint=missing, device="cuda"),
    ):
        with pytest.raises(DeviceUnavailable, match="available: cpu"):
            build()


def test_build_sam_and_the_registry_take_a_device():
    sam = sam_model_registry["vit_t"](checkpoint=FIXTURE_CKPT, device="cpu")
    assert {p.device.type for p in sam.parameters()} == {"cpu"} and sam.device.type == "cpu"


def test_predictor_and_generator_follow_the_models_device(fixture_model):
    """The engine follows the model (``"cpu"`` on the CPU, ``"plain"`` elsewhere), also when
    the model moves after the predictor was made; an explicit engine stays."""
    sam = copy.deepcopy(fixture_model)
    auto, fixed = SamPredictor(sam), SamPredictor(sam, engine="cpu")
    generator = SamAutomaticMaskGenerator(sam, points_per_side=2)
    assert auto.engine.name == generator.predictor.engine.name == "cpu"
    sam.to("meta")  # another kind of device, without a GPU
    assert auto.device.type == generator.predictor.device.type == "meta"
    assert auto.engine.name == generator.predictor.engine.name == "plain"
    assert fixed.engine.name == "cpu"
    assert SamPredictor(sam).engine.name == engine_for(None, "cuda").name == "plain"


def test_autocast_only_on_cuda():
    assert autocast_dtype("cuda", torch.bfloat16) == torch.bfloat16
    assert autocast_dtype(torch.device("cuda", 1), torch.float16) == torch.float16
    assert autocast_dtype("cuda", torch.float32) is None
    assert autocast_dtype("cpu", torch.bfloat16) is None


# --------------------------------------------------------------------------- the CLI


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["segment", "bench", "serve"])
def test_cli_missing_device_is_one_line_exit_2(capsys, command):
    code = main([command, "--checkpoint", str(FIXTURE_CKPT), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "device 'cuda' is not available here (available: cpu)" in err[0]
    assert err[0].startswith("mobilesam: error: argument --device")


def test_cli_segment_on_the_cpu_device(capsys, tmp_path):
    photo = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(photo)
    argv = ["segment", photo, "--checkpoint", FIXTURE_CKPT, "--device", "cpu", "--out", tmp_path]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "small.json").read_text())["device"] == "cpu"


# --------------------------------------------------------------------------- other devices' code


def _same(a, b):
    (m_a, s_a, l_a), (m_b, s_b, l_b) = a, b
    assert m_a.shape == m_b.shape and s_a.dtype == s_b.dtype == l_a.dtype == np.float32
    assert np.abs(l_a - l_b).max() <= LOGIT_RTOL * np.abs(l_b).max()
    assert np.abs(s_a - s_b).max() <= IOU_TOL
    assert all(mask_iou(x, y) >= MASK_IOU_MIN for x, y in zip(m_a, m_b, strict=True))


def test_generator_plain_engine_equals_the_cpu_engine(fixture_model, embedding):
    """Segment everything through the plain engine (what a GPU runs) gives the CPU engine's
    masks: matched one to one, each at mask IoU >= 0.99 with close scores."""
    out = {}
    for engine in ("plain", "cpu"):
        gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=3, engine=engine)
        assert gen.predictor.engine.name == engine
        out[engine] = gen.generate(image_embedding=embedding, original_size=(770, 769))
    plain, cpu = out["plain"], out["cpu"]
    assert len(cpu) >= 5 and abs(len(plain) - len(cpu)) <= 1  # a score tie may flip one
    matched = 0
    for a in plain:
        best = max(cpu, key=lambda b: mask_iou(a["segmentation"], b["segmentation"]))
        if mask_iou(a["segmentation"], best["segmentation"]) >= MASK_IOU_MIN:
            matched += 1
            assert abs(a["predicted_iou"] - best["predicted_iou"]) <= IOU_TOL
            assert abs(a["stability_score"] - best["stability_score"]) <= 0.01
    assert matched >= min(len(plain), len(cpu)) - 1


def test_autocast_path_on_cpu_tensors(monkeypatch, fixture_model, embedding):
    """The CUDA bf16 path (autocast around the decoder, float32 outputs), run with CPU
    autocast: masks at IoU >= 0.99 of float32's."""
    import mobilesam.predictor as predictor_module

    monkeypatch.setattr(
        predictor_module,
        "autocast",
        lambda device, dtype: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
    )
    fp32 = SamPredictor(fixture_model, engine="plain")
    bf16 = SamPredictor(fixture_model, precision="bf16", engine="plain")
    results = []
    for p in (fp32, bf16):
        p.set_embedding(embedding, (770, 769))
        results.append(p.predict(POINT, LABEL))
    (m32, s32, _), (m16, s16, l16) = results
    assert s16.dtype == l16.dtype == np.float32
    assert np.abs(s16 - s32).max() < 0.05
    assert all(mask_iou(a, b) >= MASK_IOU_MIN for a, b in zip(m16, m32, strict=True))


@pytest.mark.parametrize("engine", ["plain", "cpu"])
def test_no_tensor_is_made_off_the_inputs_device(
    meta_default_device, fixture_model, embedding, engine
):
    """With the default device set to ``meta``, any tensor made without ``device=`` would be
    a meta tensor and fail when it meets the real ones: prompts, boxes, mask inputs, the
    batch step and segment everything all make theirs on the input's device."""
    p = SamPredictor(fixture_model, engine=engine)
    p.set_embedding(embedding, (770, 769))
    masks, _, low = p.predict(POINT, LABEL, BOX)
    assert masks.shape == (3, 770, 769)
    logits, _, _ = p.predict(
        POINT, LABEL, mask_input=low[:1], multimask_output=False, return_logits=True
    )
    assert logits.dtype == np.float32
    low_res, iou, index = p.decode_points(np.array([[10.0, 20.0], [400.0, 380.0]]), 0.5)
    assert low_res.device.type == iou.device.type == index.device.type == "cpu"
    gen = SamAutomaticMaskGenerator(fixture_model, points_per_side=2, engine=engine)
    assert gen.generate(image_embedding=embedding, original_size=(770, 769))


# --------------------------------------------------------------------------- benchmarks/gpu.py


@pytest.fixture(scope="module")
def gpu_benchmark():
    """``benchmarks/gpu.py`` as a module (its whole dry run takes too long for a test; the
    pieces are checked here, the steps themselves by running the script)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _broken_step(run):
    raise RuntimeError("CUDA out of\nmemory")


def test_gpu_benchmark_reports_a_failed_step_and_runs_the_others(gpu_benchmark):
    b, cpu = gpu_benchmark, torch.device("cpu")
    run = b.Run(cpu, b.Plan.quick(cpu), None, None, None, {})
    saved = []
    steps = {"first": lambda r: {"x": 1}, "broken": _broken_step, "memory": b.step_memory}
    failed = b.run_steps(run, steps, lambda: saved.append(list(run.results)))
    assert failed == ["broken"] and saved == [["first"], ["first", "broken"], list(steps)]
    assert run.results["first"]["x"] == 1
    assert run.results["broken"]["error"] == "RuntimeError: CUDA out of memory"
    assert "no GPU" in run.results["memory"]["note"]
    assert ("broken", "FAILED", "RuntimeError: CUDA out of memory", "-", "-") in run.rows


def test_gpu_benchmark_times_every_side_interleaved(gpu_benchmark):
    b, cpu = gpu_benchmark, torch.device("cpu")
    run = b.Run(cpu, replace(b.Plan.quick(cpu), warmup=1), None, None, None, {})
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times, peaks = b.timed(run, fns, rounds=2, inner=2)
    assert calls == ["a", "b"] + (["a"] * 2 + ["b"] * 2) * 2
    assert [len(t) for t in times.values()] == [2, 2] and peaks == {"a": None, "b": None}
    masks = [{"segmentation": np.eye(6, dtype=bool)}, {"segmentation": np.ones((6, 6), bool)}]
    assert b.match_masks(masks, masks[::-1]) == {"matched": 2, "of": 2}
    assert b.match_masks(masks, []) == {"matched": 0, "of": 2}


def test_gpu_benchmark_without_a_gpu_writes_json_with_partial_results(
    gpu_benchmark, monkeypatch, tmp_path, capsys
):
    """No CUDA and no --device: it says so and dry-runs on the CPU; a failing step leaves the
    JSON with the other steps' results and exit code 1."""
    b, out = gpu_benchmark, tmp_path / "gpu.json"
    monkeypatch.setitem(b.STEPS, "predict", _broken_step)
    monkeypatch.setattr(b.torch.cuda, "is_available", lambda: False)
    argv = ["gpu.py", "--steps", "predict", "memory", "--official", "none", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert b.main() == 1
    assert "no GPU is present" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["device"] == {"type": "cpu"} and data["plan"]["batches"] == [2]
    assert data["steps"]["predict"]["error"].startswith("RuntimeError")
    assert "note" in data["steps"]["memory"]
