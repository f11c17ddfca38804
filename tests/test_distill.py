"""Distillation toolkit: sources (folders, SA-1B tars), deterministic split, the teacher
cache (manifest, resume, corruption, ranks), training (loss falls, exact resumption) and the
official-format student checkpoint."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SamPredictor, build_sam, sam_model_registry
from mobilesam.cli import main
from mobilesam.training.cache import CacheConfig, CacheReader, build_cache
from mobilesam.training.data import ImageReader, collect_image_refs, select
from mobilesam.training.teacher import export_student, read_teacher_heads
from mobilesam.training.train import STUDENT_PRESETS, TrainConfig, train

from .helpers import load_image, run_cli


@pytest.fixture(scope="session")
def teacher_ckpt(reference):
    return reference / "checkpoints" / "distill_teacher.pt"


@pytest.fixture(scope="session")
def teacher(teacher_ckpt):
    return build_sam(teacher_ckpt)


@pytest.fixture(scope="session")
def sources(tmp_path_factory, reference):
    """A folder with two small photos and a broken file, and an SA-1B-style tar."""
    root = tmp_path_factory.mktemp("src")
    photos = root / "photos"
    photos.mkdir()
    img = Image.fromarray(load_image(reference, "picture1.jpg")).resize((160, 160))
    img.save(photos / "a.jpg")
    img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(photos / "b.png")
    (photos / "broken.jpg").write_bytes(b"not an image")
    tar_path = root / "sa_000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, im in [("sa_1.jpg", img.rotate(90)), ("sa_2.jpg", img.rotate(180))]:
            buf = io.BytesIO()
            im.save(buf, format="JPEG")
            info = tarfile.TarInfo(name)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        ann = json.dumps({"annotations": []}).encode()
        info = tarfile.TarInfo("sa_1.json")
        info.size = len(ann)
        tar.addfile(info, io.BytesIO(ann))
    return [str(photos), str(tar_path)]


def test_sources_and_split(sources):
    refs = collect_image_refs(sources)
    keys = [r.key for r in refs]
    assert keys == sorted(keys)
    assert "sa_000000.tar/sa_1.jpg" in keys and "photos/b.png" in keys
    assert not any(k.endswith(".json") for k in keys)
    reader = ImageReader()
    tar_ref = next(r for r in refs if r.member == "sa_2.jpg")
    assert reader.read(tar_ref).shape == (160, 160, 3)
    assert reader.try_read(next(r for r in refs if r.key.endswith("broken.jpg"))) is None
    reader.close()
    train_refs = select(refs, split="train", val_fraction=0.5, seed=1)
    val_refs = select(refs, split="val", val_fraction=0.5, seed=1)
    assert {r.key for r in train_refs}.isdisjoint(r.key for r in val_refs)
    assert len(train_refs) + len(val_refs) == len(refs)
    assert select(refs, split="train", val_fraction=0.5, seed=1) == train_refs
    big = [type(refs[0])(f"k{i}", "x") for i in range(2000)]
    assert 10 <= len(select(big, fraction=0.01)) <= 35
    with pytest.raises(ValueError, match="fraction"):
        select(refs, fraction=0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, teacher, sources, teacher_ckpt):
    from mobilesam.hub import sha256_file

    out = tmp_path_factory.mktemp("cache")
    refs = collect_image_refs(sources)
    manifest = build_cache(
        teacher,
        refs,
        out,
        CacheConfig(shard_size=3, views=1),
        teacher_name="fixture",
        teacher_sha256=sha256_file(teacher_ckpt),
        progress=False,
    )
    assert manifest is not None
    return out


def test_cache_manifest_and_embeddings(cache_dir, teacher, sources):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["teacher"] == "fixture" and manifest["teacher_checkpoint_sha256"]
    assert manifest["embedding_shape"] == [256, 64, 64]
    assert manifest["config"]["dtype"] == "float16" and manifest["config"]["views"] == 1
    unreadable = [k for s in manifest["shards"] for k in s["unreadable"]]
    assert unreadable == ["photos/broken.jpg"]
    assert manifest["n_entries"] == 4 * 2  # 4 readable images × (original + 1 view)
    reader = CacheReader(cache_dir)
    ref, view, emb = reader.entry(0)
    assert emb.dtype == torch.float16 and tuple(emb.shape) == (256, 64, 64)
    assert view.flip is False and view.crop is None  # entry #0 of an image: the original
    pred = SamPredictor(teacher)
    pred.set_image(ImageReader().read(ref))
    ref_emb = pred.get_image_embedding()[0]
    assert (emb.float() - ref_emb).abs().max() <= 2e-3 * max(1.0, float(ref_emb.abs().max()))
    aug_ref, aug_view, _ = reader.entry(1)
    assert aug_ref.key == ref.key and aug_view.crop is not None


def test_cache_reader_verifies_each_shard_once(cache_dir, monkeypatch):
    import pickle

    from mobilesam.training import cache as cache_mod

    shard = torch.load(cache_dir / "shard_00000.pt", weights_only=True)
    assert set(shard) == {"embeddings"}  # keys and views live in the sidecar and manifest
    hashed = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    reader = CacheReader(cache_dir, keep=1)
    last = len(reader) - 1
    assert reader.shard_of(0) != reader.shard_of(last)
    for i in (0, last, 0, last):  # keep=1: each shard is loaded twice, hashed once
        reader.entry(i)
    assert len(hashed) == 2
    copy = pickle.loads(pickle.dumps(reader))  # as a spawned DataLoader worker gets it
    assert copy._loaded == {}
    copy.entry(0)
    assert len(hashed) == 2


def test_cache_resume_corruption_and_ranks(tmp_path, teacher, sources):
    refs = collect_image_refs(sources)[:3]
    cfg = CacheConfig(shard_size=1)
    # two ranks, run one after the other: disjoint shards, manifest once both are done
    assert build_cache(teacher, refs, tmp_path, cfg, rank=1, world=2, progress=False) is None
    assert {p.name for p in tmp_path.glob("*.pt")} == {"shard_00001.pt"}
    manifest = build_cache(teacher, refs, tmp_path, cfg, rank=0, world=2, progress=False)
    assert manifest is not None and len(manifest["shards"]) == 3
    shard = tmp_path / "shard_00000.pt"
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    build_cache(teacher, refs, tmp_path, cfg, progress=False)  # resume: nothing to redo
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == before
    shard.write_bytes(shard.read_bytes()[:1000])  # truncate
    with pytest.raises(OSError, match="checksum"):
        CacheReader(tmp_path).entry(0)
    build_cache(teacher, refs, tmp_path, cfg, progress=False)
    assert shard.stat().st_mtime_ns != before["shard_00000.pt"]
    CacheReader(tmp_path).entry(0)  # repaired


def _cfg(cache_dir, out, teacher_ckpt, **kw) -> TrainConfig:
    base = dict(
        cache=str(cache_dir),
        out=str(out),
        teacher_checkpoint=str(teacher_ckpt),
        student="vit_t_small",
        epochs=2,
        batch_size=2,
        lr=2e-3,
        save_every=1,
        max_steps=3,
        warmup_steps=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_resumes_exactly(tmp_path, cache_dir, teacher_ckpt):
    straight = train(_cfg(cache_dir, tmp_path / "a", teacher_ckpt), progress=False)
    assert straight["steps"] == 3
    b = _cfg(cache_dir, tmp_path / "b", teacher_ckpt)
    part = train(b, progress=False, stop_after=2)
    assert part["steps"] == 2 and not (tmp_path / "b" / "student.pt").exists()
    with pytest.raises(FileExistsError, match="resume"):  # a new run would clobber it
        train(b, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.002 in the checkpoint, 0\.001 now"):
        train(_cfg(cache_dir, tmp_path / "b", teacher_ckpt, lr=1e-3), resume=True)
    with pytest.raises(ValueError, match="epochs"):  # it sets the LR schedule's length
        train(_cfg(cache_dir, tmp_path / "b", teacher_ckpt, epochs=3), resume=True)
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:  # logged after last.pt, then a crash
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    b = _cfg(cache_dir, tmp_path / "b", teacher_ckpt, save_every=2)  # may change on resume
    resumed = train(b, resume=True, progress=False)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["save_every"] == 1
    assert resumed["steps"] == 3 and resumed["steps_this_run"] == 1
    a_sd = torch.load(tmp_path / "a" / "student.pt", weights_only=True)
    b_sd = torch.load(tmp_path / "b" / "student.pt", weights_only=True)
    assert a_sd.keys() == b_sd.keys()
    # Resuming replays the same steps. The same kernels give bit-identical weights (a SIGKILL
    # and --resume ended bit-identical). Where a process's kernels round differently (other
    # blocking on AVX-512, fewer threads on a loaded machine), AdamW turns a float32 rounding
    # difference in a near-zero gradient into up to about one step (lr) of movement per step,
    # so single elements are bounded in units of lr. A wrong resume (lost moments, restarted
    # schedule, other batches) moves most weights by ~lr, so the mean stays far below that.
    lr = json.loads((tmp_path / "a" / "config.json").read_text())["lr"]
    diffs = []
    for k in a_sd:
        d = (a_sd[k].double() - b_sd[k].double()).abs()
        assert d.max() <= 2 * lr * straight["steps"], k
        diffs.append(d.flatten())
    assert torch.cat(diffs).mean() <= 0.02 * lr
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    a_losses = [
        json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(np.isfinite(a_losses))
    # the artefact is an official-format checkpoint with the teacher's decoder
    teacher_sd = torch.load(teacher_ckpt, weights_only=True)
    for k, v in teacher_sd.items():
        if k.startswith(("prompt_encoder.", "mask_decoder.")):
            assert torch.equal(a_sd[k], v)
    model = build_sam(tmp_path / "a" / "student.pt")
    assert model.image_encoder.cfg.embed_dims == STUDENT_PRESETS["vit_t_small"].embed_dims


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, cache_dir, teacher_ckpt) -> tuple[Path, dict]:
    """Two epochs of ``vit_t_small`` on the cache, uninterrupted, in this process (a DataLoader
    worker, as in the CLI runs it is compared with): its folder and summary."""
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = TrainConfig(
        cache=str(cache_dir), out=str(out), teacher_checkpoint=str(teacher_ckpt),
        student="vit_t_small", epochs=2, batch_size=2, lr=2e-3, warmup_steps=1, num_workers=1,
    )  # fmt: skip
    return out, train(cfg, progress=False)


def test_loss_falls(uninterrupted_run):
    out, summary = uninterrupted_run
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == summary["steps"] == 8 and summary["last_loss"] == losses[-1]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_vit_t_student_loads_with_the_registry(tmp_path, teacher_ckpt, reference):
    from mobilesam.build import build_image_encoder

    torch.manual_seed(0)
    student = build_image_encoder(STUDENT_PRESETS["vit_t"])
    export_student(student, read_teacher_heads(teacher_ckpt), tmp_path / "s.pt")
    model = sam_model_registry["vit_t"](checkpoint=tmp_path / "s.pt")
    pred = SamPredictor(model)
    pred.set_image(load_image(reference, "picture1.jpg")[::4, ::4].copy())
    masks, scores, _ = pred.predict(np.array([[50, 50]]), np.array([1]))
    assert masks.shape == (3, 193, 193) and np.isfinite(scores).all()


def test_bad_training_arguments(tmp_path, cache_dir, teacher_ckpt):
    with pytest.raises(ValueError, match="student"):
        train(_cfg(cache_dir, tmp_path, teacher_ckpt, student="vit_z"), progress=False)
    with pytest.raises(ValueError, match="mode"):
        train(_cfg(cache_dir, tmp_path, teacher_ckpt, mode="coupled"), progress=False)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(_cfg(cache_dir, tmp_path / "new", teacher_ckpt), resume=True, progress=False)
    with pytest.raises(ValueError, match="batch"):
        train(_cfg(cache_dir, tmp_path, teacher_ckpt, batch_size=64), progress=False)


def test_cli_cache_then_torchrun_ddp_train(tmp_path, sources, teacher_ckpt):
    """The commands as a user runs them: cache from a folder, then two gloo ranks under
    torchrun; rank 0 alone writes the metrics and the checkpoint."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    res = run_cli(
        "distill",
        "cache",
        "--checkpoint",
        str(teacher_ckpt),
        "--data",
        sources[0],
        "--out",
        str(cache),
        "--shard-size",
        "2",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "2 embeddings of 3 images" in res.stdout and "1 unreadable skipped" in res.stdout
    config = tmp_path / "recipe.toml"
    config.write_text(
        f'[train]\ncache = "{cache}"\nteacher_checkpoint = "{teacher_ckpt}"\n'
        f'student = "vit_t_small"\nbatch_size = 1\nmax_steps = 2\nnum_workers = 0\n'
    )
    train_args = ("distill", "train", "--config", str(config), "--out", str(run))
    res = run_cli(
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "mobilesam",
        *train_args,
        "--device",
        "cpu",
        "--quiet",
        module="torch.distributed.run",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (run / "student.pt").is_file() and (run / "last.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["ranks_in_sync"] is True
    bad = run_cli(*train_args, "--student", "vit_q")
    assert bad.returncode != 0 and "student must be one of" in bad.stderr


def test_eval_miou_identical_and_different(tmp_path, sources, teacher_ckpt, reference):
    fixture = reference / "checkpoints" / "mobile_sam_fixture.pt"

    def run(model, out):
        code = main(
            [
                "eval",
                "miou",
                "--checkpoint",
                str(model),
                "--reference-checkpoint",
                str(teacher_ckpt),
                "--data",
                sources[0],
                "--n-prompts",
                "3",
                "--distances",
                "40",
                "--out",
                str(out),
                "--quiet",
            ]
        )  # in this process: the CLI's own tests cover the subprocess entry point
        assert code == 0
        return json.loads((out / "miou.json").read_text())["summary"]

    same = run(teacher_ckpt, tmp_path / "same")
    assert set(same) == {"point", "box", "two_points@40"}
    assert json.loads((tmp_path / "same" / "miou.json").read_text())["images"] == 2  # not broken
    assert all(s["miou"] == 1.0 and s["n"] >= 2 for s in same.values())
    diff = run(fixture, tmp_path / "diff")
    assert diff["point"]["miou"] < 1.0
    assert (tmp_path / "diff" / "miou.png").stat().st_size > 1000
    assert "| point |" in (tmp_path / "diff" / "miou.md").read_text()


def test_semi_coupled_mode_trains(tmp_path, cache_dir, teacher_ckpt):
    """The ablation: a mask loss through the teacher's frozen decoder, against the teacher's
    own masks for random points and their boxes."""
    s = train(
        _cfg(cache_dir, tmp_path, teacher_ckpt, mode="semi-coupled", max_steps=2, mask_points=2),
        progress=False,
    )
    assert s["steps"] == 2 and np.isfinite(s["last_loss"]) and s["last_loss"] > 0
    teacher_sd = torch.load(teacher_ckpt, weights_only=True)
    student_sd = torch.load(tmp_path / "student.pt", weights_only=True)
    for k, v in teacher_sd.items():  # the frozen decoder left unchanged
        if k.startswith("mask_decoder."):
            assert torch.equal(student_sd[k], v)


def test_finetune_decoder_stage(tmp_path, cache_dir, teacher_ckpt, monkeypatch):
    """The decoder stage, which uses the teacher's prompt encoder and mask decoder: the
    teacher's checkpoint is read once and its image encoder never built (only the student)."""
    from mobilesam.modeling.image_encoder import ImageEncoderViT
    from mobilesam.modeling.tiny_vit import TinyViT

    built, teacher_reads = [], []
    for cls in (ImageEncoderViT, TinyViT):
        real_init = cls.__init__

        def init(self, *args, _real=real_init, **kw):
            built.append(type(self).__name__)
            _real(self, *args, **kw)

        monkeypatch.setattr(cls, "__init__", init)
    real_load = torch.load

    def load(f, *args, **kw):
        if Path(str(f)) == Path(teacher_ckpt):
            teacher_reads.append(kw.get("weights_only"))
        return real_load(f, *args, **kw)

    monkeypatch.setattr(torch, "load", load)
    cfg = _cfg(
        cache_dir, tmp_path, teacher_ckpt, max_steps=1, mask_points=2, finetune_decoder_steps=2
    )
    s = train(cfg, progress=False)
    monkeypatch.undo()
    assert built == ["TinyViT"]  # the student; the teacher's encoder is never built
    assert teacher_reads == [True]  # once, with weights_only=True
    assert len(s["finetune_decoder_losses"]) == 2
    teacher_sd = torch.load(teacher_ckpt, weights_only=True)
    student_sd = torch.load(tmp_path / "student.pt", weights_only=True)
    changed = [
        k
        for k in teacher_sd
        if k.startswith("mask_decoder.") and not torch.equal(student_sd[k], teacher_sd[k])
    ]
    assert changed, "the fine-tuned decoder should differ from the teacher's"
    assert all(
        torch.equal(student_sd[k], teacher_sd[k])
        for k in teacher_sd
        if k.startswith("prompt_encoder.")
    )
    build_sam(tmp_path / "student.pt")  # still an official-format checkpoint


class _Planted:
    """Unpickling this runs code: what a shared run folder's last.pt could hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_planted_checkpoint(tmp_path, cache_dir, teacher_ckpt):
    """last.pt loads with weights_only=True: a file that would run code is refused with a
    message naming it, and nothing runs."""
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "student": _Planted(str(marker))}, out / "last.pt")
    with pytest.raises(RuntimeError, match=r"refusing to resume from .*last\.pt"):
        train(_cfg(cache_dir, out, teacher_ckpt), resume=True, progress=False)
    assert not marker.exists()
    # what training writes loads under weights_only=True
    part = _cfg(cache_dir, tmp_path / "ok", teacher_ckpt)
    train(part, progress=False, stop_after=1)
    state = torch.load(tmp_path / "ok" / "last.pt", weights_only=True)
    assert set(state) >= {"student", "optimizer", "scheduler", "step", "rng", "config"}


def test_a_crash_while_writing_the_manifest_leaves_the_old_one(
    tmp_path, cache_dir, teacher, monkeypatch
):
    """manifest.json marks a finished cache: it is written atomically, never half."""
    from mobilesam.training.cache import write_manifest

    for side in cache_dir.glob("shard_*.json"):
        shutil.copy(side, tmp_path / side.name)
    n_shards = len(list(tmp_path.glob("shard_*.json")))
    (tmp_path / "manifest.json").write_text("old")
    real_write = Path.write_text

    def crash(self, text, *args, **kw):  # half the text reaches the disk, then it fails
        real_write(self, text[: len(text) // 2], *args, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(tmp_path, n_shards, teacher, CacheConfig(), "fixture", None)
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_text() == "old"
    assert not list(tmp_path.glob("*.part"))
    assert write_manifest(tmp_path, n_shards, teacher, CacheConfig(), "fixture", None)
    assert json.loads((tmp_path / "manifest.json").read_text())["n_entries"] == 8


def test_unreadable_manifest_is_one_line_naming_it(tmp_path):
    for text in ("{not json", '{"shards": 3}', "[]"):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(
            ValueError, match=rf"the cache at {tmp_path} is damaged \(manifest\.json"
        ):
            CacheReader(tmp_path)


def test_cache_is_content_addressed_and_works_from_anywhere(
    tmp_path, teacher, sources, teacher_ckpt, monkeypatch
):
    """An image edited after caching: the rerun recomputes its shard only, and training on a
    cache whose sources changed is refused unless allowed. Sources are stored as absolute
    paths relative to the cache folder, so the cache reads from another working directory
    and moves with its data."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.png"):
        (photos / name).write_bytes((Path(sources[0]) / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    refs = collect_image_refs(["photos"])  # relative paths, as a user would give them
    cfg = CacheConfig(shard_size=1)
    manifest = build_cache(teacher, refs, tmp_path / "cache", cfg, progress=False)
    recorded = [e["path"] for s in manifest["shards"] for e in s["entries"]]
    assert not any(Path(p).is_absolute() for p in recorded)  # relative to the cache folder
    cache = tmp_path / "cache"
    shard_of = {
        str((cache / s["entries"][0]["path"]).resolve()): s["file"] for s in manifest["shards"]
    }
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")}

    edited = photos / "a.jpg"
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(edited)
    monkeypatch.chdir(tmp_path / "photos")  # another working directory
    reader = CacheReader(tmp_path / "cache")
    assert reader.stale_sources() == [str(edited.resolve())]
    reader.entry(0)  # still readable from here
    run = _cfg(tmp_path / "cache", tmp_path / "run", teacher_ckpt, batch_size=1, max_steps=1)
    with pytest.raises(ValueError, match=r"stale: .*a\.jpg changed"):
        train(run, progress=False)
    train(replace(run, allow_stale_cache=True), progress=False)

    moved = tmp_path / "moved"  # the cache and its data moved together
    moved.mkdir()
    shutil.copytree(tmp_path / "cache", moved / "cache")
    shutil.copytree(photos, moved / "photos")
    stale = CacheReader(moved / "cache").stale_sources()
    assert stale == [str((moved / "photos" / "a.jpg").resolve())]
    CacheReader(moved / "cache").entry(1)

    monkeypatch.chdir(tmp_path)
    build_cache(teacher, refs, tmp_path / "cache", cfg, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")}
    redone = {name for name in after if after[name] != stamps[name]}
    assert redone == {shard_of[str(edited.resolve())]}
    assert CacheReader(tmp_path / "cache").stale_sources() == []


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, cache_dir, teacher_ckpt, uninterrupted_run
):
    """`distill train` in a subprocess (a DataLoader worker, two epochs) is killed with SIGKILL
    mid-epoch, resumed with --resume, and ends with the weights of an uninterrupted run: equal
    where the same kernels run both, else within float32-grounded bounds in units of lr (see
    test_training_resumes_exactly)."""
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "mobilesam", "distill", "train", "--cache", str(cache_dir),
            "--out", str(out), "--teacher-checkpoint", str(teacher_ckpt), "--student",
            "vit_t_small", "--epochs", "2", "--batch-size", "2", "--lr", "2e-3",
            "--save-every", "1", "--warmup-steps", "1", "--num-workers", "1", "--quiet", *extra,
        ]  # fmt: skip

    steps_per_epoch = len(CacheReader(cache_dir)) // 2
    straight = uninterrupted_run[0]  # the same settings, in this process
    proc = subprocess.Popen(command(tmp_path / "b"), stderr=subprocess.PIPE)
    last, deadline, step = tmp_path / "b" / "last.pt", time.monotonic() + 300, 0
    while time.monotonic() < deadline and step < steps_per_epoch + 1:  # into the 2nd epoch
        time.sleep(0.2)
        if last.is_file():
            try:
                step = int(torch.load(last, weights_only=True)["step"])
            except Exception:  # noqa: BLE001 (the file is being replaced)
                continue
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b" / "student.pt").exists()
    assert step < 2 * steps_per_epoch, "the run finished before it could be killed"
    resumed = subprocess.run(
        command(tmp_path / "b", "--resume"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    a_sd = torch.load(straight / "student.pt", weights_only=True)
    b_sd = torch.load(tmp_path / "b" / "student.pt", weights_only=True)
    lr, total = 2e-3, 2 * steps_per_epoch
    diffs = []
    for k in a_sd:
        d = (a_sd[k].double() - b_sd[k].double()).abs()
        assert d.max() <= 2 * lr * total, k
        diffs.append(d.flatten())
    assert torch.cat(diffs).mean() <= 0.02 * lr


def test_tar_members_are_stamped_by_their_own_bytes(sources):
    """A tar member's content key is the member's sha256, read from the member alone: the
    whole tar (thousands of images in SA-1B) is never hashed to key one image."""
    import hashlib

    from mobilesam.training.cache import SourceStamps

    tar_path = sources[1]
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile("sa_1.jpg").read()
    stamps = SourceStamps()
    stamp = stamps(tar_path, "sa_1.jpg")
    assert stamp["sha256"] == hashlib.sha256(member).hexdigest()
    assert stamp["size"] == Path(tar_path).stat().st_size
    assert stamps(tar_path, "missing.jpg")["sha256"] is None
    stamps.close()
