"""Folder jobs at scale (issue 26): the cheap overlay, reading ahead and writing behind, and
``everything`` and ``eval`` under ``torchrun`` (CPU, gloo, 2 processes): the same results as
one process, every photo once, and a killed rank's job completed by a rerun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam.cli import main

from .helpers import FIXTURE_CKPT, REFERENCE

TEACHER_CKPT = REFERENCE / "checkpoints" / "distill_teacher.pt"


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m torch.distributed.run --nproc_per_node 2 -m mobilesam args...`` on a
    free port, one thread per process (``args`` starting with a ``.py`` file: that script
    instead of ``-m mobilesam``). Its output is collected by :func:`finish`."""
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    full_env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(port), **(env or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(port)]
    command += [] if str(args[0]).endswith(".py") else ["-m", "mobilesam"]
    command += list(map(str, args))
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for a job of :func:`start_torchrun` (at most 5 minutes)."""
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_process(*args: object) -> tuple[int, str, str]:
    """``mobilesam args...`` in this process with one thread, as each torchrun rank has here
    (so the floating-point work is the same), capturing stdout and stderr."""
    import contextlib
    import io

    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def _without_timing(path: Path) -> dict:
    record = json.loads(path.read_text())
    record.pop("seconds")
    return record


def _old_overlay(image: np.ndarray, anns: list[dict]) -> np.ndarray:
    """The overlay as it was painted before issue 26: every mask decoded at full size."""
    from pycocotools import mask as mask_utils

    from mobilesam.cli.overlay import distinct_colors

    out = image.astype(np.float32)
    colors = distinct_colors(len(anns)).astype(np.float32)
    for i in sorted(range(len(anns)), key=lambda i: -anns[i]["area"]):
        m = mask_utils.decode(anns[i]["segmentation"]).astype(bool)
        out[m] = 0.5 * out[m] + 0.5 * colors[i]
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- overlay and RLE


def test_rle_counts_reads_coco_strings_as_pycocotools_does():
    from pycocotools import mask as mask_utils

    from mobilesam.masks import rle_counts, rle_foreground_index

    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        if trial % 5 == 0:
            mask[:] = trial % 2  # all background, all foreground
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle_counts(rle)  # bytes, as pycocotools returns them
        assert counts.sum() == h * w
        assert np.array_equal(counts, rle_counts({"counts": rle["counts"].decode()}))
        back = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
        assert back["counts"] == rle["counts"]
        assert np.array_equal(rle_foreground_index(counts), np.flatnonzero(mask.T))
    with pytest.raises(ValueError, match="cut short"):
        rle_counts({"counts": "1P"})  # "P" carries the "more" bit and nothing follows
    with pytest.raises(ValueError, match="out of range"):
        rle_counts({"counts": " 1"})


def test_overlay_painted_from_runs_is_the_old_overlay_bit_for_bit():
    """Overlapping masks 0-40 deep (past float32's exact range) in every format the
    generator outputs: the same picture as decoding and blending each mask at full size."""
    from pycocotools import mask as mask_utils

    from mobilesam.cli.overlay import annotation_overlay
    from mobilesam.masks import rle_counts

    rng = np.random.default_rng(1)
    h, w = 37, 53
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    anns = []
    for _ in range(40):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 40)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"segmentation": rle, "area": int(mask.sum())})
    anns.append({"segmentation": anns[0]["segmentation"], "area": anns[0]["area"]})  # a tie
    expected = _old_overlay(image, anns)
    assert np.array_equal(annotation_overlay(image, anns), expected)
    uncompressed = [
        {**a, "segmentation": {"size": [h, w], "counts": rle_counts(a["segmentation"]).tolist()}}
        for a in anns
    ]
    assert np.array_equal(annotation_overlay(image, uncompressed), expected)
    binary = [{**a, "segmentation": mask_utils.decode(a["segmentation"]) > 0} for a in anns]
    assert np.array_equal(annotation_overlay(image, binary), expected)
    assert np.array_equal(annotation_overlay(image, []), image)
    with pytest.raises(ValueError, match="size"):
        annotation_overlay(image[:-1], anns)


# --------------------------------------------------------------------------- the pipeline


def test_read_ahead_keeps_order_errors_and_warnings_in_turn():
    import threading

    from mobilesam.cli.folder import ReadAhead, WriteBehind

    seen_threads = set()

    def read(i: int) -> np.ndarray:
        seen_threads.add(threading.current_thread().name)
        if i == 2:
            raise ValueError("cannot decode the image: broken")
        if i == 3:
            warnings.warn(f"photo {i} has odd EXIF", UserWarning, stacklevel=1)
        return np.full((2, 2, 3), i, np.uint8)

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: shown.append(str(message))
        order = []
        with ReadAhead(range(6), read, depth=2) as photos:
            for loaded in photos:
                order.append(loaded.item)
                # a warning of photo 3 is shown when photo 3's turn comes, not when read
                assert shown == ([] if loaded.item < 3 else ["photo 3 has odd EXIF"])
                if loaded.item == 2:
                    assert loaded.image is None and "broken" in str(loaded.error)
                else:
                    assert loaded.error is None and int(loaded.image[0, 0, 0]) == loaded.item
    assert order == list(range(6)) and seen_threads and "MainThread" not in seen_threads

    done = []
    with WriteBehind(workers=2, limit=2) as writer:
        for i in range(5):
            writer.submit(done.append, i)
        writer.drain()
    assert sorted(done) == list(range(5))

    def fail() -> None:
        raise OSError(28, "No space left on device", "/full/disk/a.json")

    with pytest.raises(OSError, match="No space left"), WriteBehind() as writer:
        writer.submit(fail)
        writer.drain()


def test_no_overlay_writes_json_only_and_a_missing_overlay_is_redone(tmp_path, capsys):
    from mobilesam.cli.everything import still_to_do, write_photo

    image = np.zeros((6, 4, 3), np.uint8)
    anns = [{"segmentation": {"size": [6, 4], "counts": [0, 24]}, "area": 24}]
    meta = {"model": {"checkpoint": "c.pt", "sha256": "0" * 64}, "settings": {"a": 1}}
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    stem = tmp_path / "out" / "a"
    write_photo(image, anns, photo, stem, meta, 1.23456)
    overlay = tmp_path / "out" / "a_overlay.png"
    assert np.array(Image.open(overlay)).shape == (6, 4, 3)
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    assert record["seconds"] == 1.235 and record["annotations"][0]["id"] == 1
    planned = [(photo, Path("a"))]
    assert still_to_do(planned, tmp_path / "out", meta, False, overlay=True) == []
    write_photo(image, anns, photo, stem, meta, 1.0, overlay=False)  # a redo without overlay
    assert not overlay.exists() and (tmp_path / "out" / "a.json").is_file()
    assert still_to_do(planned, tmp_path / "out", meta, False, overlay=False) == []
    assert still_to_do(planned, tmp_path / "out", meta, False, overlay=True) == planned
    assert "redoing 1 image(s) done without an overlay" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*.part"))


# --------------------------------------------------------------------------- ranks


def test_shares_take_every_item_once_and_threads_are_split(monkeypatch):
    from mobilesam.cli.ranks import Ranks, join_ranks, rank_device, usable_cores

    items = [f"photo{i}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        shares = [Ranks(rank, world).share(items) for rank in range(world)]
        taken = [x for share in shares for x in share]
        assert sorted(taken) == sorted(items) and len(taken) == len(items)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares[0][0] == "photo0" and (world == 1 or shares[1][0] == "photo1")
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    alone = join_ranks()
    assert (alone.rank, alone.world, alone.launched) == (0, 1, False)
    assert alone.gather("x") == ["x"] and alone.broadcast(5) == 5
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        join_ranks()
    threads = torch.get_num_threads()
    try:
        assert rank_device("cpu", Ranks(1, 2, 1, 2, launched=True)).type == "cpu"
        assert torch.get_num_threads() == max(1, usable_cores() // 2)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, reference) -> Path:
    """``photos/``: three small photos and an undecodable one (in order: broken.jpg, p0, p1,
    p2); ``coco/``: a COCO instances file over two of them, with box and polygon annotations
    (no model needed to make it)."""
    root = tmp_path_factory.mktemp("scale")
    folder = root / "photos"
    folder.mkdir()
    picture = Image.open(reference / "images" / "picture1.jpg").convert("RGB")
    for i, (x, y) in enumerate(((0, 0), (300, 300), (100, 400))):
        picture.crop((x, y, x + 160, y + 120)).save(folder / f"p{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "coco" / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, name in enumerate(("p0.jpg", "p2.jpg"), 1):
        photo = Image.open(folder / name)
        photo.save(root / "coco" / "images" / f"{image_id}.png")
        w, h = photo.size
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for k, (x0, y0, x1, y1) in enumerate(((0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.9))):
            box = [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
            polygon = [box[0], box[1], box[0] + box[2], box[1], box[0], box[1] + box[3]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 + k,
                    "bbox": box,
                    "segmentation": [polygon],
                    "area": box[2] * box[3] / 2,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "coco" / "instances.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def jobs(inputs, tmp_path_factory) -> dict:
    """The same commands in one process (``single/``) and in two torchrun jobs of 2 processes
    (``shared/``), each one-process run made while a job runs:

    1. ``-m mobilesam everything`` in which rank 1 dies (``os._exit(9)``, as if killed with
       ``kill -9``) right after writing its first photo (rank 1 has photos ``i % 2 == 1`` of
       broken.jpg, p0, p1, p2: p0 and p2); torchrun then stops rank 0.
    2. The rerun of that ``everything``, then ``eval coco`` and ``eval miou``, one after
       another in each process of one job (``tests/torchrun_commands.py``: one start-up of
       Python and torch for the three).
    """
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("jobs")
    single, shared = out / "single", out / "shared"
    photos, coco_dir = inputs / "photos", inputs / "coco"
    everything = ("everything", photos, "--checkpoint", FIXTURE_CKPT, "--points-per-side", "4")
    coco = (
        *("eval", "coco", "--checkpoint", FIXTURE_CKPT, "--images", coco_dir / "images"),
        *("--annotations", coco_dir / "instances.json", "--multimask"),
    )
    miou = (
        *("eval", "miou", "--checkpoint", FIXTURE_CKPT, "--reference-checkpoint", TEACHER_CKPT),
        *("--data", photos, "--n-prompts", "3", "--max-images", "3"),
    )
    commands = [(*c, "--quiet") for c in (everything, coco, miou)]
    job = start_torchrun(*commands[0], "--out", shared, env={"MOBILESAM_TEST_EXIT_AFTER": "1:1"})
    alone = [one_process(*commands[0], "--out", single)]
    crashed = finish(job)
    before = {p.stem: p.stat().st_mtime_ns for p in shared.glob("p?.json")}
    argv = [[*map(str, c), "--out", str(shared)] for c in commands]
    job = start_torchrun(Path(__file__).with_name("torchrun_commands.py"), json.dumps(argv))
    alone += [one_process(*c, "--out", single) for c in commands[1:]]
    rerun = finish(job)
    return {
        "single": single,
        "shared": shared,
        "alone": alone,
        "crashed": crashed,
        "before": before,
        "rerun": rerun,
    }


def test_everything_under_torchrun_equals_one_process_and_survives_a_killed_rank(jobs):
    single, shared, crashed, rerun = (jobs[k] for k in ("single", "shared", "crashed", "rerun"))
    code, _, err = jobs["alone"][0]
    assert code == 1 and err.count("skipping") == 1, err
    stems = ["p0", "p1", "p2"]
    assert crashed.returncode != 0 and "exitcode  : 9" in crashed.stderr, crashed.stderr
    assert "p0" in jobs["before"] and "p2" not in jobs["before"]  # killed mid-share
    # the rerun skips what is finished and completes the rest
    assert f"skipping {len(jobs['before'])} image(s) already done" in rerun.stdout, rerun.stderr
    assert "codes [1, 0, 0]" in rerun.stdout  # everything: 1, for broken.jpg
    summary = json.loads((shared / "everything_summary.json").read_text())
    done = [r["output"] for r in summary["done"]]
    already = [r["output"] for r in summary["already_done"]]
    assert sorted(done + already) == stems and sorted(already) == sorted(jobs["before"])
    # each photo of this run by one rank: of the photos left to do, i % 2 goes to rank i % 2
    left = [r["output"] for r in summary["unreadable"] + summary["done"]]
    left = sorted(left, key=lambda o: ["broken", *stems].index(o))
    ranks = {r["output"]: r["rank"] for r in summary["unreadable"] + summary["done"]}
    assert [ranks[o] for o in left] == [i % 2 for i in range(len(left))]
    assert [r["output"] for r in summary["unreadable"]] == ["broken"]
    assert summary["processes"] == 2 and summary["photos"] == 4
    for stem, mtime in jobs["before"].items():  # nothing done twice
        assert (shared / f"{stem}.json").stat().st_mtime_ns == mtime
    for stem in stems:  # the same results as one process, overlays included
        assert _without_timing(shared / f"{stem}.json") == _without_timing(single / f"{stem}.json")
        a = np.array(Image.open(shared / f"{stem}_overlay.png"))
        assert np.array_equal(a, np.array(Image.open(single / f"{stem}_overlay.png")))


def test_eval_under_torchrun_equals_one_process(jobs):
    assert "codes [1, 0, 0]" in jobs["rerun"].stdout, jobs["rerun"].stderr
    for code, _, err in jobs["alone"][1:]:
        assert code == 0, err
    for name in ("coco.json", "miou.json"):
        single = json.loads((jobs["single"] / name).read_text())
        assert json.loads((jobs["shared"] / name).read_text()) == single  # every figure
    figures = json.loads((jobs["shared"] / "miou.json").read_text())
    assert figures["images"] == 2  # broken.jpg is skipped, p0 and p1 scored
    assert 0 < figures["summary"]["point"]["miou"] < 1
    assert json.loads((jobs["shared"] / "coco.json").read_text())["prompts"] == 4
