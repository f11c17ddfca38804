"""The `python -m mobilesam segment` entry point, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .helpers import mask_iou, run_cli


def test_segment_point_matches_library(tmp_path, reference, embedded, cases):
    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    image = reference / "images" / cases["images"][0]
    res = run_cli(
        "segment",
        str(image),
        "--checkpoint",
        str(ckpt),
        "--point",
        "642.1,459.3",
        "--multimask",
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    stem = image.stem
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    masks, scores, _ = embedded[image.name].predict(
        point_coords=np.array([[642.1, 459.3]]), point_labels=np.array([1])
    )
    np.testing.assert_allclose(report["scores"], scores, atol=1e-6)
    for i, m in enumerate(masks):
        png = np.array(Image.open(tmp_path / f"{stem}_mask{i}.png"))
        assert png.shape == m.shape and png.dtype == np.uint8
        assert set(np.unique(png)) <= {0, 255}
        assert mask_iou(png > 0, m) == 1.0
    assert (tmp_path / f"{stem}_overlay.png").is_file()


def test_segment_bad_arguments(tmp_path, reference):
    ckpt = str(reference / "checkpoints" / "mobile_sam_fixture.pt")
    res = run_cli("segment", "--checkpoint", ckpt, "--point", "1,2,3,4", "--out", str(tmp_path))
    assert res.returncode != 0 and "--point takes 2 or 3 numbers" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli("segment", str(tmp_path / "nope.jpg"), "--checkpoint", ckpt)
    assert res.returncode != 0 and "cannot read image" in res.stderr
    res = run_cli("segment", "--checkpoint", str(tmp_path / "missing.pt"))
    assert res.returncode != 0 and "missing.pt" in res.stderr
    res = run_cli("segment", "--checkpoint", ckpt, "--point", "10,10,0.7")
    assert res.returncode == 2 and "label must be 1 (foreground) or 0" in res.stderr


def test_export_and_bench_bad_arguments(reference):
    """Usage errors stop before any model is loaded: exit 2, one line."""
    for args, message in (
        (("export", "--checkpoint", "x.pt", "--quantize-parts", "encoder"), "needs --quantize"),
        (("export", "--checkpoint", "x.pt", "--quantize-parts", "all"), "invalid choice"),
        (("bench", "--checkpoint", "x.pt", "--repeats", "0"), "--repeats must be >= 1"),
        (("bench", "--checkpoint", "x.pt", "--threads", "0"), "--threads must be >= 1"),
    ):
        res = run_cli(*args)
        assert res.returncode == 2 and message in res.stderr, res.stderr


def test_everything_writes_json_and_overlay_then_skips(tmp_path, reference):
    from pycocotools import mask as mask_utils

    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    small = Image.open(reference / "images" / "picture1.jpg").convert("RGB").resize((256, 256))
    small.save(photos / "a.jpg")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "sub" / "b.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    args = ("everything", str(photos), "--checkpoint", str(ckpt), "--out", str(out))
    res = run_cli(*args, "--points-per-side", "4")
    assert res.returncode == 1, res.stderr  # one unreadable image
    assert "broken.jpg" in res.stderr and "skipping" in res.stderr
    for stem in ("a", "sub/b"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image"]["height"] == record["image"]["width"] == 256
        assert record["settings"]["points_per_side"] == 4
        anns = record["annotations"]
        assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        for a in anns:
            m = mask_utils.decode(a["segmentation"])
            assert m.shape == (256, 256) and int(m.sum()) == a["area"]
        overlay = np.array(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape == (256, 256, 3)
    assert not (out / "broken.json").exists()
    # a rerun skips finished images and retries only the broken one
    before = (out / "a.json").stat().st_mtime_ns
    res = run_cli(*args, "--points-per-side", "4", "--quiet")
    assert "skipping 2 image(s) already done" in res.stdout
    assert (out / "a.json").stat().st_mtime_ns == before
    record = json.loads((out / "a.json").read_text())
    assert len(record["model"]["sha256"]) == 64
    # other settings (or another checkpoint): the results are redone, never reused
    res = run_cli(*args, "--points-per-side", "3", "--quiet")
    assert "redoing 2 image(s) made with other settings or another checkpoint" in res.stdout
    record = json.loads((out / "a.json").read_text())
    assert record["settings"]["points_per_side"] == 3
    record["model"]["sha256"] = "0" * 64  # as if made with another checkpoint
    (out / "a.json").write_text(json.dumps(record))
    res = run_cli(*args, "--points-per-side", "3", "--quiet")
    assert "redoing 1 image(s)" in res.stdout


def test_everything_bad_input(tmp_path):
    res = run_cli("everything", str(tmp_path / "missing.jpg"), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "no such file or directory" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("everything", str(empty))
    assert res.returncode == 2 and "no images" in res.stderr


def test_help_lists_commands_with_examples():
    res = run_cli("--help")
    assert res.returncode == 0 and "segment" in res.stdout and "everything" in res.stdout
    for cmd in ("segment", "everything", "export", "distill", "eval", "bench", "serve"):
        res = run_cli(cmd, "--help")
        assert res.returncode == 0 and "examples:" in res.stdout


def test_export_writes_onnx_and_model_json(tmp_path, reference):
    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    res = run_cli("export", "--checkpoint", str(ckpt), "--out", str(tmp_path), "--opset", "17")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["model"] == "mobile_sam_fixture"
    for name in ("encoder.onnx", "decoder.onnx", "decoder_multimask.onnx"):
        assert (tmp_path / name).stat().st_size > 1000
    res = run_cli("export", "--checkpoint", str(ckpt), "--out", str(tmp_path), "--quantize", "fp4")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_bench_prints_and_writes_json(tmp_path, reference):
    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    out = tmp_path / "bench.json"
    res = run_cli(
        "bench",
        "--checkpoint",
        str(ckpt),
        "--repeats",
        "1",
        "--threads",
        "2",
        "--everything",
        "--points-per-side",
        "2",
        "--precision",
        "bf16",
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["encoder_s"] > 0 and data["predict_ms"] > 0 and data["threads"] == 2
    assert data["precision"] == "bf16" and isinstance(data["everything_masks"], int)
    assert "encoder_s" in res.stdout
    res = run_cli("bench", "--checkpoint", str(ckpt), "--precision", "fp64")
    assert res.returncode == 2 and "--precision" in res.stderr


def test_serve_bad_arguments(tmp_path):
    """Usage errors exit 2, a missing checkpoint 1; always one line."""
    for args, code, message in (
        (("--checkpoint", "x.pt", "--port", "0"), 2, "--port must be 1-65535"),
        (("--checkpoint", "x.pt", "--max-pixels", "-3"), 2, "--max-pixels must be positive"),
        (("--checkpoint", str(tmp_path / "missing.pt")), 1, "neither an existing file"),
    ):
        res = run_cli("serve", *args)
        assert res.returncode == code and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_serve_starts_on_loopback_and_serves_the_page(reference):
    """``mobilesam serve`` as a user starts it: binds 127.0.0.1, says where the page is,
    serves ``/`` and ``/healthz``, and stops on SIGINT."""
    import signal
    import socket
    import time

    pytest.importorskip("uvicorn")
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mobilesam",
            "serve",
            "--checkpoint",
            str(ckpt),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "static/app.js" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert f"page at http://127.0.0.1:{port}/" in err
    assert "warning" not in err


def test_everything_inputs_dedupe_exclude_output_and_never_collide(tmp_path):
    """Inputs: each file once, nothing from inside --out, and no two images share an output
    stem (so no image's JSON or overlay overwrites another's)."""
    from mobilesam.cli.everything import collect_images

    photos = tmp_path / "photos"
    for rel in ("a.jpg", "a.png", "b.jpg", "masks/b_overlay.png"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(b"x")
    for d in ("d1", "d2", "d3"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "c.jpg").write_bytes(b"x")
    inputs = [str(photos), str(photos / "b.jpg")] + [
        str(tmp_path / d / "c.jpg") for d in ("d1", "d2", "d3")
    ]
    found = collect_images(inputs, exclude=photos / "masks")
    names = [f.relative_to(tmp_path).as_posix() for f, _ in found]
    stems = [rel.as_posix() for _, rel in found]
    assert names == [
        "photos/a.jpg",
        "photos/a.png",
        "photos/b.jpg",
        "d1/c.jpg",
        "d2/c.jpg",
        "d3/c.jpg",
    ]
    assert stems == ["a", "a_png", "b", "c", "c_jpg", "c_jpg_2"]


def test_version_out_checks_and_interrupt(tmp_path, reference):
    from mobilesam import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"mobilesam {__version__}"
    ckpt = str(reference / "checkpoints" / "mobile_sam_fixture.pt")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in ("/dev/null/x", str(blocker), str(blocker / "below")):
        res = run_cli("segment", "--checkpoint", ckpt, "--out", out)
        assert res.returncode == 2, res.stderr
        assert "is not a writable folder" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    # Ctrl-C: exit 130, one line
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilesam", "bench", "--checkpoint", ckpt, "--repeats", "200"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)  # past start-up (imports, model load): inside the command
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mobilesam: interrupted" and "Traceback" not in err


def test_error_texts_for_wrong_kinds_of_file(tmp_path, reference):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    res = run_cli("segment", "--checkpoint", str(text))
    assert res.returncode == 1 and "not a PyTorch file?" in res.stderr
    ckpt = str(reference / "checkpoints" / "mobile_sam_fixture.pt")
    res = run_cli("segment", str(tmp_path), "--checkpoint", ckpt, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "it is a folder" in res.stderr


def test_far_prompts_are_a_usage_error_and_no_json_holds_nan(tmp_path, reference):
    ckpt = str(reference / "checkpoints" / "mobile_sam_fixture.pt")
    res = run_cli("segment", "--checkpoint", ckpt, "--point", "1e300,1e300", "--out", str(tmp_path))
    assert res.returncode == 2 and "--point coordinates must lie within" in res.stderr
    assert not list(tmp_path.glob("*.json"))


def test_missing_extras_are_reported_before_any_work(monkeypatch, capsys, tmp_path):
    import importlib.util

    from mobilesam.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnx", "matplotlib") else real(name, *a),
    )
    missing_ckpt = str(tmp_path / "never_read.pt")  # would fail if any work started
    assert main(["export", "--checkpoint", missing_ckpt, "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "mobilesam[onnx]"' in capsys.readouterr().err
    args = ["eval", "miou", "--model", missing_ckpt, "--reference", missing_ckpt]
    assert main([*args, "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert 'pip install "mobilesam[eval]"' in capsys.readouterr().err
