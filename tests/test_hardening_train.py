"""Issue 24, the training and evaluation rows: a diverging run (row 6), malformed COCO and
detection files (row 9), a damaged teacher cache (row 10), a config file that is not UTF-8 or
nests too deeply (row 11), and an undecodable photo in ``distill cache``. Each one reaches the
user as one line and an exit code, never a traceback; nothing with NaN is ever written."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam.cli import main
from mobilesam.training.cache import CacheConfig, CacheReader, build_cache
from mobilesam.training.data import collect_image_refs

from .helpers import FIXTURE_CKPT


def _strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as every other JSON reader does."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobilesam: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """``mobilesam argv...`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def teacher_ckpt(reference) -> Path:
    return reference / "checkpoints" / "distill_teacher.pt"


class _StubTeacher:
    """What :func:`build_cache` uses of a teacher, with an encoder that costs nothing: the
    embedding of an input is its mean, broadcast to ``256×64×64`` (training tests need a
    real cache, not a real teacher)."""

    img_size = 1024
    device = torch.device("cpu")
    prompt_encoder = type("PE", (), {"embed_dim": 256, "image_embedding_size": (64, 64)})()

    def eval(self):
        return self

    def to(self, device):
        return self

    def image_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean().expand(x.shape[0], 256, 64, 64).clone()


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """A finished teacher cache of two tiny photos (two entries, one shard)."""
    root = tmp_path_factory.mktemp("hardening_cache")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    cache = root / "cache"
    refs = collect_image_refs([str(photos)])
    build_cache(_StubTeacher(), refs, cache, CacheConfig(), progress=False)
    return cache


# --------------------------------------------------------------------------- row 6: divergence


def _train_args(cache: Path, teacher_ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill", "train", "--cache", str(cache), "--teacher-checkpoint", str(teacher_ckpt),
        "--out", str(out), "--student", "vit_t_small", "--batch-size", "1", "--epochs", "2",
        "--save-every", "1", "--warmup-steps", "1", "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _all_finite(obj) -> bool:
    """Whether every tensor and float in ``obj`` (nested dicts, lists) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


def test_lr_1e30_stops_with_one_line_and_keeps_the_last_finite_checkpoint(
    capsys, tmp_path, small_cache, teacher_ckpt
):
    """``distill train --lr 1e30`` wrote a student.pt of NaN and a summary.json with a bare
    NaN, and exited 0. Now the first non-finite loss stops the run (exit 1, one line); last.pt,
    if any was due, is the last finite one; nothing else is written; metrics.jsonl is JSON."""
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, *_train_args(small_cache, teacher_ckpt, out, "--lr", "1e30"))
    line = _one_error_line(err)
    assert code == 1 and "diverged" in line and "lr" in line, err
    assert not (out / "student.pt").exists() and not (out / "summary.json").exists()
    rows = [_strict_json(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(_all_finite(r) for r in rows)
    if (out / "last.pt").exists():  # saved at every step before the loss went non-finite
        state = torch.load(out / "last.pt", weights_only=True)
        assert _all_finite(state["student"]) and _all_finite(state["optimizer"])
        assert state["step"] == len(rows) and f"step {state['step']}" in line
    assert not list(out.glob("*.part"))
    _strict_json((out / "config.json").read_text())


def test_no_checkpoint_with_non_finite_values_is_written(tmp_path, small_cache, teacher_ckpt):
    """Before every checkpoint write (last.pt, student.pt) the tensors are checked: a
    non-finite one refuses the write, naming it, and the previous file stays."""
    from mobilesam.build import build_image_encoder
    from mobilesam.training import train as train_mod
    from mobilesam.training.teacher import export_student, read_teacher_heads

    cfg = train_mod.TrainConfig(
        cache=str(small_cache), out=str(tmp_path), teacher_checkpoint=str(teacher_ckpt),
        student="vit_t_small", batch_size=1, device="cpu",
    )  # fmt: skip
    run = train_mod._prepare_run(cfg, 0, 1, torch.device("cpu"))
    train_mod._save_last(run, 1)
    before = (tmp_path / "last.pt").read_bytes()
    name, param = next(iter(run.student.named_parameters()))
    with torch.no_grad():
        param[0] = float("nan")
    with pytest.raises(RuntimeError, match=rf"diverged by step 2: non-finite values in {name}"):
        train_mod._save_last(run, 2)
    assert (tmp_path / "last.pt").read_bytes() == before and not list(tmp_path.glob("*.part"))

    heads = read_teacher_heads(teacher_ckpt)
    encoder = build_image_encoder(train_mod.STUDENT_PRESETS["vit_t_small"])
    with torch.no_grad():
        encoder.neck[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*image_encoder\.neck\.0\.weight"):
        export_student(encoder, heads, tmp_path / "student.pt")
    assert not (tmp_path / "student.pt").exists() and not list(tmp_path.glob("*.part"))


def test_decoder_stage_divergence_stops_it(tmp_path, small_cache, teacher_ckpt):
    """The optional decoder stage stops at its first non-finite loss too (here a student
    whose embeddings are NaN), before any NaN reaches metrics.jsonl."""
    from mobilesam.training import train as train_mod
    from mobilesam.training.teacher import build_teacher_heads, read_teacher_heads

    class NanStudent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 256, 64, 64), float("nan"))

    cfg = train_mod.TrainConfig(
        cache=str(small_cache), out=str(tmp_path), teacher_checkpoint=str(teacher_ckpt),
        student="vit_t_small", batch_size=1, finetune_decoder_steps=3, mask_points=1,
    )  # fmt: skip
    cpu = torch.device("cpu")
    heads = build_teacher_heads(read_teacher_heads(teacher_ckpt), (64, 64), 1024, cpu)
    dataset = train_mod.CacheDataset(CacheReader(small_cache), 1024)
    with pytest.raises(RuntimeError, match="decoder stage diverged at step 1"):
        train_mod.finetune_decoder(NanStudent(), heads, cfg, dataset, cpu, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_diverged_decoder_stage_leaves_the_encoder_stage_to_export(
    tmp_path, monkeypatch, small_cache, teacher_ckpt
):
    """After the decoder stage diverges, last.pt holds the finished encoder stage: resuming
    with the stage off writes student.pt and a summary.json of standard JSON."""
    from dataclasses import replace

    from mobilesam.training import train as train_mod

    cfg = train_mod.TrainConfig(
        cache=str(small_cache), out=str(tmp_path), teacher_checkpoint=str(teacher_ckpt),
        student="vit_t_small", batch_size=1, max_steps=1, finetune_decoder_steps=2,
    )  # fmt: skip
    real = train_mod.mask_distillation_loss
    monkeypatch.setattr(train_mod, "mask_distillation_loss", lambda *a, **k: real(*a, **k) * 0 / 0)
    with pytest.raises(RuntimeError, match="decoder stage diverged at step 1") as info:
        train_mod.train(cfg, progress=False)
    assert "finetune_decoder_steps=0" in str(info.value)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "student.pt").exists()
    monkeypatch.undo()
    summary = train_mod.train(replace(cfg, finetune_decoder_steps=0), resume=True, progress=False)
    assert summary["steps_this_run"] == 0 and (tmp_path / "student.pt").is_file()
    assert _strict_json((tmp_path / "summary.json").read_text())["steps"] == 1


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--weight-decay", "nan"),
     ("--clip-grad", "nan"), ("--min-lr-ratio", "nan")],
)  # fmt: skip
def test_non_finite_hyperparameters_are_usage_errors(capsys, tmp_path, flag, value):
    base = ["distill", "train", "--cache", "c", "--teacher-checkpoint", "t", "--out", tmp_path]
    code, _, err = _cli(capsys, *base, flag, value)
    assert code == 2 and flag in _one_error_line(err)


def test_non_finite_hyperparameters_in_a_config_file_or_the_library(capsys, tmp_path):
    from mobilesam.training.train import TrainConfig, train

    config = tmp_path / "recipe.toml"
    config.write_text('[train]\ncache = "c"\nteacher_checkpoint = "t"\nlr = nan\n')
    code, _, err = _cli(capsys, "distill", "train", "--config", config, "--out", tmp_path)
    assert code == 2 and "lr" in _one_error_line(err) and "recipe.toml" in err
    cfg = TrainConfig(cache="c", out=str(tmp_path), teacher_checkpoint="t", lr=float("inf"))
    with pytest.raises(ValueError, match="lr must be a finite number"):
        train(cfg, progress=False)


# --------------------------------------------------------------------------- row 10: cache


def _manifest_cases() -> list[tuple[str, object]]:
    """(case id, what to do to a good manifest dict, or the file's bytes)."""

    def drop(*path):
        def edit(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]

        return edit

    def put(value, *path):
        def edit(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return edit

    return [
        ("no embedding_shape", drop("embedding_shape")),
        ("embedding_shape a string", put("256x64x64", "embedding_shape")),
        ("embedding_shape of two", put([256, 64], "embedding_shape")),
        ("embedding_shape negative", put([256, -64, 64], "embedding_shape")),
        ("no shards", drop("shards")),
        ("shards a dict", put({}, "shards")),
        ("shard a list", put([[]], "shards")),
        ("shard without file", drop("shards", 0, "file")),
        ("shard file outside", put("../../elsewhere.pt", "shards", 0, "file")),
        ("shard sha256 a number", put(5, "shards", 0, "sha256")),
        ("entries null", put(None, "shards", 0, "entries")),
        ("entry a string", put(["x"], "shards", 0, "entries")),
        ("entry without key", drop("shards", 0, "entries", 0, "key")),
        ("entry without path", drop("shards", 0, "entries", 0, "path")),
        ("entry path a number", put(3, "shards", 0, "entries", 0, "path")),
        ("entry without view_params", drop("shards", 0, "entries", 0, "view_params")),
        ("view crop of two", put({"crop": [1, 2]}, "shards", 0, "entries", 0, "view_params")),
        ("member a list", put([], "shards", 0, "entries", 0, "member")),
        ("source a string", put("x", "shards", 0, "entries", 0, "source")),
        ("manifest a list", b"[]"),
        ("not JSON", b"{not json"),
        ("empty", b""),
        ("not UTF-8", b'{"shards": "\xff\xfe"}'),
    ]


@pytest.mark.parametrize(("case", "damage"), _manifest_cases(), ids=lambda x: str(x)[:30])
def test_a_damaged_manifest_is_one_line_naming_the_cache(tmp_path, small_cache, case, damage):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    path = cache / "manifest.json"
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        manifest = json.loads(path.read_text())
        damage(manifest)
        path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as info:
        reader = CacheReader(cache)
        reader.entry(0)  # what training reads first
        reader.stale_sources()
    message = str(info.value)
    assert message.startswith(f"the cache at {cache} is damaged (manifest.json"), message
    assert message.endswith("rebuild it with `mobilesam distill cache`") and "\n" not in message


def test_a_shard_whose_content_does_not_fit_its_manifest_is_damaged(tmp_path, small_cache):
    """A shard that passes its checksum but holds no embeddings, or too few."""
    from mobilesam.hub import sha256_file

    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for content in ({"other": torch.zeros(2)}, {"embeddings": torch.zeros(1, 256, 64, 64)}):
        torch.save(content, cache / "shard_00000.pt")
        manifest["shards"][0]["sha256"] = sha256_file(cache / "shard_00000.pt")
        (cache / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=r"is damaged \(shard_00000\.pt"):
            CacheReader(cache).entry(1)


def test_a_damaged_sidecar_is_recomputed_and_never_copied(tmp_path, small_cache):
    """A shard sidecar without its entries (valid JSON) is recomputed by a rerun, not copied
    into the manifest; one another rank left damaged is one line from write_manifest."""
    from mobilesam.training.cache import CacheDamaged, write_manifest

    photos = small_cache.parent / "photos"
    refs = collect_image_refs([str(photos)])
    cache = tmp_path / "cache"
    build_cache(_StubTeacher(), refs, cache, CacheConfig(), progress=False)
    side = cache / "shard_00000.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({k: v for k, v in meta.items() if k != "entries"}))
    build_cache(_StubTeacher(), refs, cache, CacheConfig(), progress=False)
    assert len(CacheReader(cache)) == 2
    side.write_text("[1, 2]")
    with pytest.raises(CacheDamaged, match=r"shard_00000\.json is not a complete shard sidecar"):
        write_manifest(cache, 1, _StubTeacher(), CacheConfig(), "stub", None)


def test_a_teacher_embedding_with_nan_is_refused(tmp_path, small_cache):
    class NanTeacher(_StubTeacher):
        def image_encoder(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 256, 64, 64), 1e6)  # over float16's range

    refs = collect_image_refs([str(small_cache.parent / "photos")])
    with pytest.raises(ValueError, match=r"embedding of photos/0\.png .*in float16"):
        build_cache(NanTeacher(), refs, tmp_path, CacheConfig(), progress=False)
    assert not list(tmp_path.glob("shard_*"))


def test_distill_train_on_a_damaged_cache_is_one_line(capsys, tmp_path, small_cache, teacher_ckpt):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["embedding_shape"]  # the issue's KeyError: 'embedding_shape'
    (cache / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _cli(capsys, *_train_args(cache, teacher_ckpt, tmp_path / "run"))
    line = _one_error_line(err)
    assert code == 1 and f"the cache at {cache} is damaged" in line
    assert "embedding_shape" in line and "distill cache" in line


# --------------------------------------------------------------------------- row 11: --config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[train]\nstudent = "vit_t\xe9"\n', "is not UTF-8"),
        (b"\xff\xfe[\x00t\x00r\x00a\x00i\x00n\x00]\x00", "is not UTF-8"),
        (b"[train]\nlr = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nests too deeply"),
        (b"[train]\nlr = " + b"{a=" * 5000 + b"1" + b"}" * 5000 + b"\n", "nests too deeply"),
        (b"[train]\nlr = [" + b"1," * 100_000 + b"]\n", "must be a single value"),
    ],
    ids=["latin-1", "utf-16", "deep arrays", "deep tables", "long list"],
)
def test_config_file_not_utf8_or_too_deep_is_one_line_naming_it(capsys, tmp_path, content, message):
    config = tmp_path / "recipe.toml"
    config.write_bytes(content)
    code, _, err = _cli(capsys, "distill", "train", "--config", config, "--out", tmp_path)
    line = _one_error_line(err)
    assert code == 2 and str(config) in line and message in line and len(line) < 400, line


# --------------------------------------------------------------------------- distill cache


def test_distill_cache_skips_an_undecodable_photo_and_goes_on(
    capsys, caplog, monkeypatch, tmp_path, teacher_ckpt
):
    """``distill cache`` on 1.jpg, a junk 2.jpg and 3.jpg whose EXIF is damaged (issue 24,
    row 1: Pillow raised AttributeError on it): 2.jpg is skipped with a warning naming it and
    counted in the summary, the others are cached. (The teacher is a stand-in: only the
    reading is under test; test_distill runs the real teacher from the command line.)"""
    import logging

    from mobilesam import build

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / "1.jpg")
    (photos / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 junk, not a JPEG " * 8)
    (photos / "3.jpg").write_bytes(_exif_mutant())
    monkeypatch.setattr(build, "build_sam", lambda *args, **kw: _StubTeacher())
    with caplog.at_level(logging.WARNING, logger="mobilesam.training"):
        code, out, err = _cli(
            capsys, "distill", "cache", "--checkpoint", teacher_ckpt, "--data", photos,
            "--out", tmp_path / "cache", "--device", "cpu", "--quiet",
        )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    assert "2 embeddings of 3 images" in out and "1 unreadable skipped" in out
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "photos/2.jpg" in warned[0] and "cannot decode" in warned[0]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [k for s in manifest["shards"] for k in s["unreadable"]] == ["photos/2.jpg"]
    assert len(CacheReader(tmp_path / "cache")) == 2


def _exif_mutant() -> bytes:
    """A JPEG with Orientation 6 whose XResolution tag (RATIONAL) was turned into
    ImageDescription: Pillow's ``exif_transpose`` raised AttributeError on it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x011A] = 72.0  # XResolution, RATIONAL
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 120, 30)).save(buf, format="JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    at = data.find(b"\x01\x1a\x00\x05")  # the tag id and type, big-endian
    if at < 0:
        at = data.find(b"\x1a\x01\x05\x00")  # little-endian
        data[at : at + 2] = b"\x0e\x01"
    else:
        data[at : at + 2] = b"\x01\x0e"
    assert at > 0
    return bytes(data)


# --------------------------------------------------------------------------- row 9: eval coco


def _good_coco() -> dict:
    """A valid ground truth: one 32×24 image, one polygon and one RLE annotation."""
    return {
        "images": [{"id": 1, "file_name": "1.png", "height": 24, "width": 32}],
        "annotations": [
            {
                "id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80.0,
                "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
            },
            {
                "id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 24], "area": 768,
                "iscrowd": 1, "segmentation": {"size": [24, 32], "counts": [0, 768]},
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip


def _good_detections() -> list:
    return [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "score": 0.5}]


def _edit(fn):
    """A case: the good ground truth changed in place by ``fn``."""

    def make():
        doc = _good_coco()
        fn(doc)
        return json.dumps(doc).encode()

    return make


def _ann(**changes):
    def fn(doc):
        for key, value in changes.items():
            if value is _DROP:
                del doc["annotations"][0][key]
            else:
                doc["annotations"][0][key] = value

    return _edit(fn)


def _img(**changes):
    def fn(doc):
        for key, value in changes.items():
            if value is _DROP:
                del doc["images"][0][key]
            else:
                doc["images"][0][key] = value

    return _edit(fn)


def _det(**changes):
    def make():
        dets = _good_detections()
        for key, value in changes.items():
            if value is _DROP:
                del dets[0][key]
            else:
                dets[0][key] = value
        return json.dumps(dets).encode()

    return make


_DROP = object()

#: (id, which file is bad, its content (a function giving bytes), words the error must hold)
COCO_CASES = [
    ("gt not JSON", "gt", lambda: b"{oops", "not JSON"),
    ("gt not UTF-8", "gt", lambda: b'{"images": "\xff\xfe"}', "not UTF-8"),
    ("gt empty", "gt", lambda: b"", "empty"),
    ("gt a list", "gt", lambda: b"[]", "an object"),
    ("gt a string", "gt", lambda: b'"coco"', "an object"),
    ("gt NaN", "gt", lambda: b'{"images": NaN}', "NaN"),
    ("gt deep", "gt", lambda: b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    ("no images", "gt", _edit(lambda d: d.pop("images")), '"images"'),
    ("images a dict", "gt", _edit(lambda d: d.update(images={})), '"images"'),
    ("no categories", "gt", _edit(lambda d: d.pop("categories")), '"categories"'),
    ("category no id", "gt", _edit(lambda d: d["categories"][0].pop("id")), "categories[0]"),
    ("no annotations", "gt", _edit(lambda d: d.pop("annotations")), '"annotations"'),
    ("image a number", "gt", _edit(lambda d: d.update(images=[5])), "images[0]"),
    ("image no id", "gt", _img(id=_DROP), "images[0]"),
    ("image no file_name", "gt", _img(file_name=_DROP), "file_name"),
    ("image null file_name", "gt", _img(file_name=None), "file_name"),
    ("image file_name outside", "gt", _img(file_name="../../etc/passwd"), "file_name"),
    ("image no height", "gt", _img(height=_DROP), "height"),
    ("image width string", "gt", _img(width="32"), "width"),
    ("ann a string", "gt", _edit(lambda d: d.update(annotations=["x"])), "annotations[0]"),
    ("ann no id", "gt", _ann(id=_DROP), "annotations[0]"),
    ("ann duplicate id", "gt", _edit(lambda d: d["annotations"][1].update(id=1)), "id 1"),
    ("ann no bbox", "gt", _ann(bbox=_DROP), "bbox"),
    ("ann null bbox", "gt", _ann(bbox=None), "bbox"),
    ("ann string bbox", "gt", _ann(bbox="2,2,10,8"), "bbox"),
    ("ann bbox of 3", "gt", _ann(bbox=[2, 2, 10]), "bbox"),
    ("ann bbox negative", "gt", _ann(bbox=[2, 2, -10, 8]), "bbox"),
    ("ann bbox infinite", "gt", lambda: _good_coco_text().replace(b"[2, 2, 10, 8]", b"[2, 2, 1e999, 8]"), "bbox"),  # noqa: E501
    ("ann bbox bools", "gt", _ann(bbox=[True, True, True, True]), "bbox"),
    ("ann no segmentation", "gt", _ann(segmentation=_DROP), "segmentation"),
    ("ann string segmentation", "gt", _ann(segmentation="poly"), "segmentation"),
    ("ann empty polygon", "gt", _ann(segmentation=[]), "segmentation"),
    ("ann polygon of 4", "gt", _ann(segmentation=[[1, 2, 3, 4]]), "segmentation"),
    ("ann polygon odd", "gt", _ann(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "segmentation"),
    ("rle bad counts", "gt", _edit(lambda d: d["annotations"][1].update(segmentation={"size": [24, 32], "counts": "garbage!!~~"})), "segmentation"),  # noqa: E501
    ("rle empty counts", "gt", _edit(lambda d: d["annotations"][1].update(segmentation={"size": [24, 32], "counts": ""})), "segmentation"),  # noqa: E501
    ("rle wrong size", "gt", _edit(lambda d: d["annotations"][1].update(segmentation={"size": [10, 10], "counts": [0, 100]})), "segmentation"),  # noqa: E501
    ("rle short counts", "gt", _edit(lambda d: d["annotations"][1].update(segmentation={"size": [24, 32], "counts": [5, 5]})), "segmentation"),  # noqa: E501
    ("ann no category_id", "gt", _ann(category_id=_DROP), "category_id"),
    ("ann unknown category", "gt", _ann(category_id=7), "category_id"),
    ("ann unknown image", "gt", _ann(image_id=9), "image_id"),
    ("ann no area", "gt", _ann(area=_DROP), "area"),
    ("ann iscrowd string", "gt", _ann(iscrowd="no"), "iscrowd"),
    ("dets not JSON", "dets", lambda: b"[{", "not JSON"),
    ("dets not UTF-8", "dets", lambda: b"[\xff]", "not UTF-8"),
    ("dets empty", "dets", lambda: b"", "empty"),
    ("dets an object", "dets", lambda: b'{"annotations": []}', "a list"),
    ("det a number", "dets", lambda: b"[1]", "detection 0"),
    ("det no bbox", "dets", _det(bbox=_DROP), "bbox"),
    ("det null bbox", "dets", _det(bbox=None), "bbox"),
    ("det string bbox", "dets", _det(bbox="1 2 3 4"), "bbox"),
    ("det string score", "dets", _det(score="high"), "score"),
    ("det infinite score", "dets", lambda: json.dumps(_good_detections()).encode().replace(b"0.5", b"1e999"), "score"),  # noqa: E501
    ("det string image_id", "dets", _det(image_id="1"), "image_id"),
]  # fmt: skip


def _good_coco_text() -> bytes:
    return json.dumps(_good_coco()).encode()


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("coco_images")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(folder / "1.png")
    return folder


def test_the_good_files_are_accepted(coco_images, tmp_path):
    """The base the cases below damage is valid: it reads and scores."""
    pytest.importorskip("pycocotools")
    from mobilesam.evaluation.coco import read_annotations, read_detections

    (tmp_path / "gt.json").write_bytes(_good_coco_text())
    (tmp_path / "dets.json").write_bytes(json.dumps(_good_detections()).encode())
    gt = read_annotations(tmp_path / "gt.json")
    assert gt.getImgIds() == [1] and len(gt.getAnnIds()) == 2
    assert len(read_detections(tmp_path / "dets.json")) == 1


@pytest.mark.parametrize(("case", "which", "content", "words"), COCO_CASES, ids=lambda x: x)
def test_malformed_coco_files_are_one_line_naming_the_file_and_record(
    capsys, tmp_path, coco_images, case, which, content, words
):
    """Each malformed ground-truth or detections file: exit 1, one line naming the file and
    the first bad record; never a traceback (9 of them were, before)."""
    pytest.importorskip("pycocotools")
    gt, dets = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_bytes(content() if which == "gt" else _good_coco_text())
    dets.write_bytes(content() if which == "dets" else json.dumps(_good_detections()).encode())
    code, _, err = _cli(
        capsys, "eval", "coco", "--checkpoint", FIXTURE_CKPT, "--images", coco_images,
        "--annotations", gt, "--detections", dets, "--out", tmp_path / "out", "--quiet",
    )  # fmt: skip
    line = _one_error_line(err)
    bad = gt if which == "gt" else dets
    assert code == 1 and str(bad) in line and words in line and len(line) < 500, line
    assert not (tmp_path / "out" / "coco.json").exists()


def test_malformed_coco_cases_cover_the_issue():
    assert len(COCO_CASES) >= 23


def test_an_image_whose_size_differs_from_its_record_is_one_line(capsys, tmp_path, coco_images):
    pytest.importorskip("pycocotools")
    doc = _good_coco()
    doc["images"][0]["height"] = 25
    doc["annotations"][1]["segmentation"]["size"] = [25, 32]
    doc["annotations"][1]["segmentation"]["counts"] = [0, 800]
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    code, _, err = _cli(
        capsys, "eval", "coco", "--checkpoint", FIXTURE_CKPT, "--images", coco_images,
        "--annotations", tmp_path / "gt.json", "--out", tmp_path / "out", "--quiet",
    )  # fmt: skip
    line = _one_error_line(err)
    assert code == 1 and "1.png" in line and "32×24" in line and "32×25" in line, line


def test_eval_json_outputs_refuse_nan():
    """coco.json and miou.json are standard JSON: a NaN figure is refused, naming the file,
    never written as a bare NaN (test_coco reads a real coco.json strictly)."""
    from mobilesam.cli.evaluate import strict_json

    assert _strict_json(strict_json({"AP": 0.5, "APs": -1.0}, Path("coco.json")))["AP"] == 0.5
    with pytest.raises(ValueError, match=r"not writing out/coco\.json: a result is NaN"):
        strict_json({"AP": float("nan")}, Path("out/coco.json"))
