"""The ``mobilesam`` command line: exit codes, one-line errors, help texts, ``--model`` and
``--config``, and each command's output.

Most tests call ``mobilesam.cli.main(argv)`` in this process (its return value is the exit
code); a few run ``python -m mobilesam`` as a user would, for what only a real process shows.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mobilesam.cli import main

from .helpers import FIXTURE_CKPT, load_image, mask_iou, run_cli

#: Every command and subcommand, as typed after ``mobilesam``.
COMMANDS = (
    ("segment",),
    ("everything",),
    ("export",),
    ("distill",),
    ("distill", "cache"),
    ("distill", "train"),
    ("eval",),
    ("eval", "miou"),
    ("eval", "coco"),
    ("bench",),
    ("serve",),
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``mobilesam argv...`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobilesam: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- exit codes


@pytest.fixture
def paths(tmp_path):
    """Names the usage-error table uses: a checkpoint, a folder, a JSON file, a missing path."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f.json").write_text("{}")
    return {
        "{ckpt}": str(FIXTURE_CKPT),
        "{dir}": str(tmp_path / "d"),
        "{json}": str(tmp_path / "f.json"),
        "{missing}": str(tmp_path / "missing.pt"),
        "{out}": str(tmp_path / "out"),
    }


USAGE_ERRORS = [
    ("frob", "invalid choice: 'frob'"),
    ("segment --point 1,2,3,4", "argument --point: takes 2 or 3 numbers"),
    ("segment --point 10,10,0.7", "label must be 1 (foreground) or 0 (background)"),
    ("segment --box 1,2,3", "argument --box: takes 4 numbers"),
    ("segment --checkpoint {missing}", "argument --checkpoint: no such file"),
    ("segment --checkpoint {ckpt} --model mobilesam", "not allowed with argument"),
    ("segment {dir} --checkpoint {ckpt}", "is a folder"),
    ("segment --config {json}", "unrecognized arguments: --config"),
    ("everything {missing}", "no such file or folder"),
    ("everything {dir} --points-per-side 0", "--points-per-side: must be at least 1"),
    ("everything {dir} --pred-iou-thresh 1.5", "at most 1"),
    ("export --checkpoint {ckpt} --quantize-parts encoder --out {out}", "needs --quantize"),
    ("export --checkpoint {ckpt} --quantize fp4", "invalid choice"),
    ("bench --checkpoint {ckpt} --repeats 0", "--repeats: must be at least 1"),
    ("bench --checkpoint {ckpt} --threads 0", "--threads: must be at least 1"),
    ("bench --checkpoint {ckpt} --precision fp64", "--precision: invalid choice"),
    ("serve --checkpoint {ckpt} --port 0", "--port: must be at least 1 and at most 65535"),
    ("serve --checkpoint {ckpt} --max-pixels -3", "--max-pixels: must be at least 1"),
    ("distill", "required: STEP"),
    ("distill cache --out {out}", "required: --checkpoint, --data"),
    ("distill train --cache {dir} --out {out}", "required: --teacher-checkpoint"),
    ("distill train --cache c --out o --teacher-checkpoint t --mode coupled", "invalid choice"),
    ("distill train --cache c --out o --teacher-checkpoint t --epochs x", "expected int"),
    ("distill train --cache c --out o --teacher-checkpoint t --epochs 0", "at least 1"),
    ("distill train --cache c --out o --teacher-checkpoint t --min-lr-ratio 2", "at most 1"),
    ("distill cache --checkpoint {ckpt} --data {dir} --out {out} --shard-size 0", "least 1"),
    ("distill cache --checkpoint {ckpt} --data {dir} --out {out} --views -1", "least 0"),
    ("eval", "required: METRIC"),
    ("eval miou --checkpoint {ckpt} --data {dir}", "--reference-checkpoint --reference-model"),
    ("eval miou --model mobilesam --reference-model mobilesam", "required: --data"),
    ("eval miou --model mobilesam --reference-model vit_t --data x --n-prompts 0", "at least 1"),
    ("eval coco --checkpoint {ckpt} --images {missing} --annotations {json}", "no such folder"),
    ("eval coco --checkpoint {ckpt} --images {dir} --annotations {missing}", "no such file"),
    ("eval coco --images {dir} --annotations {json}", "--checkpoint --model is required"),
    ("eval coco --model mobilesam --images {dir} --annotations {json} --max-images 0", "least 1"),
]


@pytest.mark.parametrize(("line", "message"), USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line(capsys, paths, line, message):
    argv = [paths.get(word, word) for word in line.split()]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert message in one_error_line(err)


def test_runtime_failures_exit_1_with_one_line(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, message in (
        (["segment", "--checkpoint", notes, "--out", tmp_path], "not a PyTorch file?"),
        (
            ["distill", "train", "--cache", empty, "--teacher-checkpoint", notes]
            + ["--out", tmp_path / "run"],
            "manifest.json",  # no cache there
        ),
        (
            ["eval", "miou", "--checkpoint", FIXTURE_CKPT, "--reference-checkpoint", notes]
            + ["--data", empty, "--out", tmp_path],
            "no images",
        ),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 1, err
        assert message in one_error_line(err) and "Traceback" not in err


def test_version_help_and_interrupt(capsys, monkeypatch, tmp_path):
    from mobilesam import __version__
    from mobilesam.cli import bench

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"mobilesam {__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(f"    {c[0]}" in out for c in COMMANDS)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "cmd_bench", interrupted)
    code, _, err = run(capsys, "bench", "--checkpoint", FIXTURE_CKPT)
    assert code == 130 and err.strip() == "mobilesam: interrupted"


def test_out_must_be_a_writable_folder(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in ("/dev/null/x", blocker, blocker / "below"):
        code, _, err = run(capsys, "segment", "--checkpoint", FIXTURE_CKPT, "--out", out)
        assert code == 2 and "is not a writable folder" in one_error_line(err)


def test_exit_codes_reach_the_shell(tmp_path):
    """As a user runs it: a usage error is exit 2 and one line, before any model is loaded."""
    res = run_cli("segment", "--checkpoint", str(FIXTURE_CKPT), "--point", "1,2,3,4")
    assert res.returncode == 2 and "--point: takes 2 or 3 numbers" in one_error_line(res.stderr)


# --------------------------------------------------------------------------- help texts


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_a_description_and_examples_without_markup(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    description = out.split("\n\n", 1)[1].split("\npositional arguments:")[0]
    description = description.split("\noptions:")[0].strip()
    assert len(description) > 150, description
    for paragraph in description.split("\n\n"):
        assert paragraph.rstrip().endswith((".", ".)", '")')), paragraph
    examples = out.split("\nexamples:\n")[1]
    assert f"mobilesam {' '.join(command)}" in examples
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", "`"):
        assert markup not in out, markup


# --------------------------------------------------------------------------- --model, --config

#: The commands with --model, with the other options they require.
MODEL_COMMANDS = (
    ["segment"],
    ["everything", "{dir}"],
    ["export"],
    ["bench"],
    ["serve"],
    ["eval", "miou", "--reference-model", "mobilesam", "--data", "{dir}"],
    ["eval", "coco", "--images", "{dir}", "--annotations", "{json}"],
)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_model_is_a_zoo_name_in_every_command(capsys, paths, command):
    from mobilesam.cli import build_parser

    argv = [paths.get(word, word) for word in command]
    args = build_parser().parse_args([*argv, "--model", "vit_t"])
    assert args.model == "vit_t" and args.checkpoint is None
    args = build_parser().parse_args([*argv, "--checkpoint", str(FIXTURE_CKPT)])
    assert str(args.checkpoint) == str(FIXTURE_CKPT)
    code, _, err = run(capsys, *argv, "--model", FIXTURE_CKPT)
    line = one_error_line(err)
    assert code == 2 and "not a model-zoo name" in line and "use --checkpoint" in line


def test_eval_miou_reference_is_a_model_or_a_checkpoint(capsys, paths):
    base = ["eval", "miou", "--model", "mobilesam", "--data", paths["{dir}"]]
    code, _, err = run(capsys, *base, "--reference-model", FIXTURE_CKPT)
    assert code == 2 and "use --reference-checkpoint" in one_error_line(err)


def test_download_failure_says_where_to_put_the_file_and_which_flag(capsys, monkeypatch, tmp_path):
    """The library's error, reworded by type (not by its text) into the command's options."""
    from mobilesam import hub

    def offline(name, **kwargs):
        entry = hub.MODEL_ZOO["mobilesam"]
        dest = hub.default_cache_dir() / entry.filename
        message = "Downloading failed: offline.\nmore\n(or use build_sam(path))."
        raise hub.DownloadError(message, entry.url, dest)

    monkeypatch.setenv("MOBILESAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "download_weights", offline)
    code, _, err = run(capsys, "segment", "--out", tmp_path)
    line = one_error_line(err)
    assert code == 1 and "Downloading failed: offline" in line and "build_sam" not in line
    assert hub.MODEL_ZOO["mobilesam"].url in line and str(tmp_path / "cache") in line
    assert "pass --checkpoint PATH" in line


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    import dataclasses

    from mobilesam.cli import build_parser
    from mobilesam.training.train import TrainConfig

    base = ["distill", "train", "--cache", "c", "--out", "o", "--teacher-checkpoint", "t"]
    args = build_parser().parse_args(base)
    expected = dataclasses.asdict(TrainConfig(cache="c", out="o", teacher_checkpoint="t"))
    assert {k: getattr(args, k) for k in expected} == expected  # every field, its default
    config = tmp_path / "recipe.toml"
    config.write_text(
        '[train]\ncache = "c2"\nteacher-checkpoint = "t2"\nmin_lr_ratio = 0.1\n'
        "finetune_decoder = 3\nnum-workers = 4\nallow_stale_cache = true\n"
    )
    args = build_parser().parse_args(
        ["distill", "train", "--config", str(config), "--out", "o", "--num-workers", "1"]
    )
    assert (args.cache, args.teacher_checkpoint, args.min_lr_ratio) == ("c2", "t2", 0.1)
    assert (args.finetune_decoder_steps, args.num_workers, args.allow_stale_cache) == (3, 1, True)
    config.write_text('[cache]\ncheckpoint = "t.pt"\ndata = "photos"\nout = "cache"\n')
    args = build_parser().parse_args(["distill", "cache", "--config", str(config)])
    assert (args.checkpoint, args.data, args.out) == ("t.pt", ["photos"], "cache")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[train]\nbogus = 1\nlr = 0.1\n", "unknown key bogus"),
        ("[train]\nmode = 'coupled'\n", "mode = 'coupled' is not one of"),
        ("[train]\nbatch_size = 'eight'\n", "batch_size = 'eight'"),
        ("[train]\nepochs = 2.5\n", "epochs = 2.5: expected int"),
        ("[train]\nresume = 1\n", "resume must be true or false"),
        ("[cache]\nseed = 1\n", "has no [train] table"),
        ("[train\n", "is not valid TOML"),
    ],
)
def test_config_file_errors_exit_2_naming_the_key(capsys, tmp_path, table, message):
    config = tmp_path / "recipe.toml"
    config.write_text(table)
    code, _, err = run(capsys, "distill", "train", "--config", config, "--out", tmp_path)
    assert code == 2 and message in one_error_line(err)
    code, _, err = run(capsys, "distill", "train", "--config", tmp_path / "nope.toml")
    assert code == 2 and "cannot read --config" in one_error_line(err)


# --------------------------------------------------------------------------- the commands


def test_segment_as_a_user_runs_it_matches_library(tmp_path, reference, cases, fixture_model):
    from mobilesam import SamPredictor

    image = reference / "images" / cases["images"][0]
    res = run_cli(
        *("segment", str(image), "--checkpoint", str(FIXTURE_CKPT), "--point", "642.1,459.3"),
        *("--multimask", "--out", str(tmp_path)),
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / f"{image.stem}.json").read_text())
    predictor = SamPredictor(fixture_model)
    predictor.set_image(load_image(reference, image.name))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[642.1, 459.3]]), point_labels=np.array([1])
    )
    np.testing.assert_allclose(report["scores"], scores, atol=1e-6)
    for i, m in enumerate(masks):
        png = np.array(Image.open(tmp_path / f"{image.stem}_mask{i}.png"))
        assert png.shape == m.shape and png.dtype == np.uint8
        assert set(np.unique(png)) <= {0, 255}
        assert mask_iou(png > 0, m) == 1.0
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()


def test_far_prompts_are_a_usage_error_and_no_json_holds_nan(capsys, tmp_path):
    argv = ["segment", "--checkpoint", FIXTURE_CKPT, "--point", "1e300,1e300", "--out", tmp_path]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--point coordinates must lie within" in one_error_line(err)
    assert not list(tmp_path.glob("*.json"))


def test_everything_writes_json_and_overlay_then_skips(capsys, tmp_path, reference):
    from pycocotools import mask as mask_utils

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    small = Image.open(reference / "images" / "picture1.jpg").convert("RGB").resize((256, 256))
    small.save(photos / "a.jpg")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "sub" / "b.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    argv = ("everything", photos, "--checkpoint", FIXTURE_CKPT, "--out", out, "--quiet")
    code, _, err = run(capsys, *argv, "--points-per-side", "4")
    assert code == 1, err  # one unreadable image
    assert "skipping" in err and "broken.jpg" in err and "cannot decode" in err
    for stem in ("a", "sub/b"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image"]["height"] == record["image"]["width"] == 256
        assert record["settings"]["points_per_side"] == 4
        anns = record["annotations"]
        assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        for a in anns:
            m = mask_utils.decode(a["segmentation"])
            assert m.shape == (256, 256) and int(m.sum()) == a["area"]
        assert np.array(Image.open(out / f"{stem}_overlay.png")).shape == (256, 256, 3)
    assert not (out / "broken.json").exists()
    # a rerun skips finished images and retries only the broken one
    before = (out / "a.json").stat().st_mtime_ns
    _, stdout, _ = run(capsys, *argv, "--points-per-side", "4")
    assert "skipping 2 image(s) already done" in stdout
    assert (out / "a.json").stat().st_mtime_ns == before
    assert len(json.loads((out / "a.json").read_text())["model"]["sha256"]) == 64
    # other settings or another checkpoint: the results are redone, never reused
    from mobilesam.cli.everything import plan_outputs, still_to_do

    record = json.loads((out / "a.json").read_text())
    planned = plan_outputs([str(photos)], exclude=out)
    meta = {"model": record["model"], "settings": record["settings"]}
    assert [f.name for f, _ in still_to_do(planned, out, meta, overwrite=False)] == ["broken.jpg"]
    other_settings = {**meta, "settings": {**meta["settings"], "points_per_side": 3}}
    assert len(still_to_do(planned, out, other_settings, overwrite=False)) == 3
    other_model = {**meta, "model": {**meta["model"], "sha256": "0" * 64}}
    assert len(still_to_do(planned, out, other_model, overwrite=False)) == 3
    assert "redoing 2 image(s) made with other settings or another checkpoint" in (
        capsys.readouterr().out
    )
    # another photo now takes the name "a" (names depend on which photos sit side by side):
    # a.jpg's result must not pass for it
    (photos / "a.jpg").rename(photos / "a.png")
    planned = plan_outputs([str(photos)], exclude=out)
    todo = still_to_do(planned, out, meta, overwrite=False)
    assert sorted(f.name for f, _ in todo) == ["a.png", "broken.jpg"]


def test_everything_without_images_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "everything", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "no images" in one_error_line(err)


def test_plan_outputs_dedupes_excludes_the_output_and_never_collides(tmp_path):
    """Inputs: each file once, nothing from inside --out, and no two images share an output
    stem (so no image's JSON or overlay overwrites another's)."""
    from mobilesam.cli.everything import plan_outputs

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
    found = plan_outputs(inputs, exclude=photos / "masks")
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


def test_export_writes_onnx_and_model_json(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    code, _, err = run(capsys, "export", "--checkpoint", FIXTURE_CKPT, "--out", tmp_path)
    assert code == 0, err
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["model"] == "mobile_sam_fixture"
    for name in ("encoder.onnx", "decoder.onnx", "decoder_multimask.onnx"):
        assert (tmp_path / name).stat().st_size > 1000


def test_bench_prints_and_writes_json(capsys, tmp_path):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        code, stdout, err = run(
            capsys,
            *("bench", "--checkpoint", FIXTURE_CKPT, "--repeats", "1", "--threads", "1"),
            *("--everything", "--points-per-side", "2", "--precision", "bf16", "--json", out),
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["encoder_s"] > 0 and data["predict_ms"] > 0 and data["threads"] == 1
    assert data["precision"] == "bf16" and isinstance(data["everything_masks"], int)
    assert "encoder_s" in stdout


def test_missing_extras_are_reported_before_any_work(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnx", "matplotlib", "uvicorn") else real(name, *a),
    )
    empty = tmp_path / "empty.pt"  # would fail if any work started
    empty.write_bytes(b"")
    for argv, extra in (
        (["export", "--checkpoint", empty, "--out", tmp_path / "o"], "onnx"),
        (["serve", "--checkpoint", empty], "serve"),
        (
            ["eval", "miou", "--checkpoint", empty, "--reference-checkpoint", empty]
            + ["--data", tmp_path, "--out", tmp_path / "e"],
            "eval",
        ),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f'pip install "mobilesam[{extra}]"' in one_error_line(err)


def test_serve_starts_on_loopback_and_serves_the_page():
    """``mobilesam serve`` as a user starts it: binds 127.0.0.1, says where the page is,
    serves ``/`` and ``/healthz``, and stops on SIGINT."""
    pytest.importorskip("uvicorn")
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilesam", "serve", "--checkpoint", str(FIXTURE_CKPT)]
        + ["--port", str(port)],
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
    assert re.search(rf"page at http://127\.0\.0\.1:{port}/", err)
    assert "warning" not in err
