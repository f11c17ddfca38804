"""Fine-tuning on your own masks (issue 27): it learns (val mIoU against the ground truth of
the synthetic shapes rises), kill -9 and --resume give bit-identical weights, two gloo ranks
step like one process with the same global batch, a planted last.pt is refused, broken data
is skipped and counted, and the result is an official-format checkpoint."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import build_sam, sam_model_registry
from mobilesam.cli import main
from mobilesam.training.finetune import FinetuneConfig, finetune
from mobilesam.training.instances import read_coco, read_mask_folder
from mobilesam.training.prompt_sim import correction_clicks, initial_prompts

from .helpers import FIXTURE_CKPT
from .shapes import make_shapes

#: The short run the tests share: MobileSAM built for 128-pixel inputs (its weights do not
#: depend on the size), decoder only, on cached embeddings.
IMG_SIZE = 128


@pytest.fixture(scope="session")
def shapes(tmp_path_factory, reference) -> Path:
    """The synthetic shapes dataset (COCO): 32 images of 128 pixels, 144 instances."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n_images=32, size=IMG_SIZE, seed=0)
    return root


@pytest.fixture(scope="session")
def embeddings(tmp_path_factory) -> Path:
    """One embedding cache for every run of the session (built by the first)."""
    return tmp_path_factory.mktemp("embeddings")


def _cfg(shapes: Path, embeddings: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(
        out=str(out),
        checkpoint=str(FIXTURE_CKPT),
        coco=str(shapes / "annotations.json"),
        images=str(shapes / "images"),
        img_size=IMG_SIZE,
        cache=str(embeddings),
        val_fraction=0.25,
        masks_per_image=4,
        corrections=1,
        epochs=1,
        batch_size=2,
        lr=1e-3,
        device="cpu",
        evaluate=False,
    )
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="session")
def learned(tmp_path_factory, shapes, embeddings) -> tuple[Path, dict]:
    """400 steps of decoder fine-tuning (one image and 4 masks a step, no correction round:
    the cheapest form of the recipe), scored on 8 val images before and after: its folder
    and summary. The fixture's decoder gives logits of ±1000; for about 100 steps the
    fine-tuning brings them down (its masks get worse), then they follow the shapes."""
    out = tmp_path_factory.mktemp("learned")
    cfg = _cfg(
        shapes, embeddings, out, epochs=1000, max_steps=400, batch_size=1, lr=5e-4,
        warmup_steps=30, corrections=0, save_every=400, evaluate=True, max_eval_images=8,
    )  # fmt: skip
    return out, finetune(cfg, progress=False)


def test_decoder_finetuning_raises_val_miou_and_writes_an_official_checkpoint(learned):
    """Measured on this setting with two AdamW implementations (which round differently):
    box +0.31 and +0.32, point +0.05 and +0.04, point+click +0.08 and +0.08, their mean
    +0.14 and +0.15 (at 300 steps: box +0.23, mean +0.12). The bounds keep half."""
    out, summary = learned
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    gains = {k: after[k]["miou"] - before[k]["miou"] for k in ("box", "point", "point+click")}
    assert gains["box"] >= 0.15 and np.mean(list(gains.values())) >= 0.07, gains
    assert before["box"]["n"] >= 30 and after["box_ap"]["AP"] > before["box_ap"]["AP"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == summary["steps"] == 400
    assert {"focal", "dice", "iou_mse", "grad_norm", "lr"} <= rows[0].keys()
    # the result: an official-format checkpoint, the fixture's but for the mask decoder
    sd, fixture = _state(out / "model.pt"), _state(FIXTURE_CKPT)
    changed = [k for k in sd if not torch.equal(sd[k], fixture[k])]
    assert changed and all(k.startswith("mask_decoder.") for k in changed)
    build_sam(out / "model.pt")  # strict
    assert sam_model_registry["vit_t"](checkpoint=out / "model.pt").img_size == 1024


def test_train_adds_the_prompt_encoder_and_the_last_encoder_stage(tmp_path, shapes, embeddings):
    """--train prompt_encoder image_encoder:1: those train too (no embedding cache, the
    images go through the encoder at every step); the earlier stages and every BatchNorm
    statistic stay as they were."""
    cfg = _cfg(
        shapes, embeddings, tmp_path, max_steps=2, batch_size=1,
        train=("prompt_encoder", "image_encoder:1"),
    )  # fmt: skip
    finetune(cfg, progress=False)
    sd, fixture = _state(tmp_path / "model.pt"), _state(FIXTURE_CKPT)
    changed = {".".join(k.split(".")[:2]) for k in sd if not torch.equal(sd[k], fixture[k])}
    assert changed >= {"mask_decoder.transformer", "prompt_encoder.point_embeddings"}
    assert {k for k in changed if k.startswith("image_encoder.")} == {
        "image_encoder.layers",
        "image_encoder.neck",
    }
    assert not any(
        k.startswith("image_encoder.layers.") and not k.startswith("image_encoder.layers.3.")
        and not torch.equal(sd[k], fixture[k])
        for k in sd
    )  # fmt: skip
    assert all(torch.equal(sd[k], fixture[k]) for k in sd if "running_" in k)
    assert not (tmp_path / "embeddings").exists()


def test_prompt_simulation_follows_the_recipe():
    """Boxes or points with equal probability; box noise of 10% of the side, at most 20
    pixels of a 1024-pixel input; points inside the mask; clicks from the error region."""
    masks = np.zeros((400, 100, 120), bool)
    masks[:, 20:60, 30:90] = True  # x 30..89, y 20..59: sides 59 and 39
    p = initial_prompts(masks, 1024, np.random.default_rng(0))
    assert 0.4 < p.is_box.mean() < 0.6
    xs, ys = p.points[~p.is_box].T.astype(int)
    assert masks[0][ys, xs].all() and len(set(xs)) > 20
    noise = p.boxes[p.is_box] - np.array([30, 20, 89, 59])
    assert np.abs(noise).max() <= 20 and 0.07 < noise[:, 0].std() / 59 < 0.13
    assert 0.07 < noise[:, 1].std() / 39 < 0.13
    small = initial_prompts(masks, 256, np.random.default_rng(1))
    assert np.abs(small.boxes[small.is_box] - np.array([30, 20, 89, 59])).max() <= 5
    gt, pred = torch.zeros(3, 8, 8, dtype=torch.bool), torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[0, :4] = True  # missed: a positive click in rows 0-3
    pred[1, :, :2] = True  # spurious: a negative click in columns 0-1
    xy, labels = correction_clicks(pred, gt, 4.0, torch.Generator().manual_seed(0))
    assert labels[:, 0].tolist() == [1, 0, -1]  # the third has no error: not a point
    assert xy[0, 0, 1] < 16 and xy[1, 0, 0] < 8


def test_prompted_evaluation_fixed_prompts():
    """The centre point lies inside even a ring; the correction click goes to the centre of
    the larger error; score_images scores every instance with the three prompts."""
    from mobilesam import SamPredictor
    from mobilesam.evaluation.prompted import center_point, correction_click, score_images
    from mobilesam.training.finetune import load_model

    yy, xx = np.mgrid[0:64, 0:64]
    ring = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 400) & ((yy - 32) ** 2 + (xx - 32) ** 2 >= 100)
    x, y = center_point(ring).astype(int)
    assert ring[y, x]
    gt = np.zeros((64, 64), bool)
    gt[10:30, 10:50] = True
    pred = gt.copy()
    pred[10:30, 30:50] = False  # 400 missed pixels
    pred[40:45, 0:10] = True  # 50 spurious ones
    (cx, cy), label = correction_click(pred, gt)
    assert label == 1 and 30 <= cx < 50 and 10 <= cy < 30
    assert correction_click(gt, gt) is None
    predictor = SamPredictor(load_model(FIXTURE_CKPT, IMG_SIZE))
    image = np.zeros((64, 64, 3), np.uint8)
    result = score_images(predictor, [(image, np.stack([ring, gt]), None)])
    summary = result.summary()
    assert [summary[k]["n"] for k in ("box", "point", "point+click")] == [2, 2, 2]
    assert 0 <= summary["box_ap"]["AP"] <= 1


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_sigkill_then_resume_is_bit_identical(tmp_path, shapes, embeddings):
    """`mobilesam finetune` killed with SIGKILL after its second checkpoint, then resumed,
    ends with exactly the weights of an uninterrupted run."""
    cfg = _cfg(shapes, embeddings, tmp_path / "straight", max_steps=5, save_every=1)
    finetune(cfg, progress=False)
    args = [
        "finetune", "--checkpoint", str(FIXTURE_CKPT), "--coco", cfg.coco, "--images",
        cfg.images, "--img-size", str(IMG_SIZE), "--cache", cfg.cache, "--val-fraction",
        "0.25", "--masks-per-image", "4", "--corrections", "1", "--epochs", "1",
        "--batch-size", "2", "--lr", "1e-3", "--max-steps", "5", "--save-every", "1",
        "--device", "cpu", "--no-evaluate", "--quiet", "--out", str(tmp_path / "killed"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "mobilesam", *args], env=env)
    last, step, deadline = tmp_path / "killed" / "last.pt", 0, time.monotonic() + 120
    while step < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if last.is_file():
            try:
                step = int(_state(last)["step"])
            except Exception:  # noqa: BLE001 (being replaced)
                continue
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and 2 <= step < 5
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert main([*args, "--resume"]) == 0
    a, b = _state(tmp_path / "straight" / "model.pt"), _state(tmp_path / "killed" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]


def test_two_gloo_ranks_step_like_one_process(tmp_path, shapes, embeddings):
    """torchrun with 2 CPU processes of batch 1 ends with the weights of one process of
    batch 2 (the same global batches and prompts), within float tolerance; ranks in sync."""
    one = _cfg(shapes, embeddings, tmp_path / "one", max_steps=3, batch_size=2)
    finetune(one, progress=False)
    config = tmp_path / "ddp.toml"
    config.write_text(
        "[finetune]\n"
        + "".join(
            f"{k} = {json.dumps(v)}\n"
            for k, v in {
                "checkpoint": str(FIXTURE_CKPT), "coco": one.coco, "images": one.images,
                "img_size": IMG_SIZE, "cache": one.cache, "val_fraction": 0.25,
                "masks_per_image": 4, "corrections": 1, "epochs": 1, "batch_size": 1,
                "lr": 1e-3, "max_steps": 3, "device": "cpu", "evaluate": False,
            }.items()
        )
    )  # fmt: skip
    res = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(_free_port()), "-m", "mobilesam", "finetune",
            "--config", str(config), "--out", str(tmp_path / "two"), "--quiet",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks_in_sync"] is True and summary["steps"] == 3
    a, b = _state(tmp_path / "one" / "model.pt"), _state(tmp_path / "two" / "model.pt")
    lr, diffs = 1e-3, []
    for k in a:
        d = (a[k].double() - b[k].double()).abs()
        assert d.max() <= 2 * lr * 3, k  # an element moves at most about lr per step
        diffs.append(d.flatten())
    assert torch.cat(diffs).mean() <= 1e-3 * lr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Planted:
    """Unpickling this runs code: what a shared run folder's last.pt could hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_last_pt_is_refused(tmp_path, shapes, embeddings):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "model": _Planted(str(marker))}, out / "last.pt")
    with pytest.raises(RuntimeError, match=r"refusing to resume from .*last\.pt"):
        finetune(_cfg(shapes, embeddings, out), resume=True, progress=False)
    assert not marker.exists()
    with pytest.raises(FileExistsError, match="resume"):  # nor is it overwritten
        finetune(_cfg(shapes, embeddings, out), progress=False)


# --------------------------------------------------------------------------- broken data


def _bad_coco(root: Path) -> Path:
    """Four images (one missing on disk) and annotations with each kind of damage."""
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / name)
    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": square},  # good
        {"image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},  # 2 points
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [20, 30], "counts": ""}},
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [20, 30], "counts": [600]}},
        {"image_id": 1, "category_id": 9, "segmentation": square},  # unlisted category
        {"image_id": 7, "category_id": 1, "segmentation": square},  # unlisted image
        {"image_id": 4, "category_id": 1, "segmentation": square},  # its file is missing
        {"image_id": 2, "category_id": 1, "segmentation": square, "iscrowd": 1},
        {"image_id": 3, "category_id": 1, "segmentation": square},  # good
    ]
    doc = {
        "images": [
            {"id": i, "file_name": n, "height": 20, "width": 30}
            for i, n in ((1, "a.png"), (2, "b.png"), (3, "c.png"), (4, "gone.png"))
        ],
        "annotations": [dict(a, id=i + 1) for i, a in enumerate(anns)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = root / "bad.json"
    path.write_text(json.dumps(doc))
    return path


def test_bad_coco_records_are_skipped_counted_and_named(tmp_path, caplog):
    path = _bad_coco(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mobilesam.training"):
        data = read_coco(path, tmp_path / "images")
    assert [im.ref.key for im in data.images] == ["images/a.png", "images/c.png"]
    assert data.n_instances == 2 and data.crowd == 1
    assert data.skipped == {
        "malformed or empty masks": 3,
        "annotations of unlisted categories": 1,
        "annotations of unlisted images": 1,
        "missing images": 1,
        "annotations of skipped images": 1,
    }
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and all("\n" not in x for x in lines)
    assert all(str(path) in x for x in lines if "annotations[" in x)
    assert any("gone.png" in x and "missing" in x for x in lines)
    assert any("annotations[1]" in x and "3 or more" in x for x in lines)
    assert any("annotations[3]" in x and "empty mask" in x for x in lines)
    assert any("category_id 9" in x for x in lines) and any("image_id 7" in x for x in lines)
    assert data.images[0].decode().sum() == 100  # the good square, 10×10


def test_a_file_that_is_not_coco_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    (tmp_path / "images").mkdir()
    for content in (b"{oops", b"[]", b'{"images": []}'):
        bad.write_bytes(content)
        code = main(
            ["finetune", "--checkpoint", str(FIXTURE_CKPT), "--coco", str(bad), "--images",
             str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--quiet"]
        )  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and str(bad) in err[0], err
        assert "Traceback" not in err[0]


def test_mask_folder_layouts_and_their_damage(tmp_path, caplog):
    """One PNG per instance, or one label image; broken masks skipped and named."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "sub").mkdir(parents=True)
    for name in ("one.jpg", "sub/two.png", "three.png", "four.png", "five.png"):
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(images / name)
    (masks / "one").mkdir(parents=True)
    square = np.zeros((16, 24), np.uint8)
    square[2:6, 3:9] = 255
    Image.fromarray(square).save(masks / "one" / "0.png")
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(masks / "one" / "1.png")  # empty
    Image.fromarray(square[:8]).save(masks / "one" / "2.png")  # another size
    labels = np.zeros((16, 24), np.uint16)
    labels[0:4, 0:4], labels[10:16, 10:20] = 3, 700
    (masks / "sub").mkdir()
    Image.fromarray(labels).save(masks / "sub" / "two.png")
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(masks / "three.png")  # no instance
    (masks / "five.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="mobilesam.training"):
        data = read_mask_folder(tmp_path)
    assert [im.ref.key for im in data.images] == ["images/one.jpg", "images/sub/two.png"]
    two = data.images[1].decode()
    assert two.shape == (2, 16, 24) and [int(m.sum()) for m in two] == [16, 60]
    assert data.images[0].decode().sum() == 24
    assert data.skipped == {
        "empty masks": 2,
        "masks of another size than their image": 1,
        "images without masks": 1,
        "unreadable masks": 1,
    }
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and any("four.png" in x for x in lines)


def test_finetune_options(tmp_path, shapes, embeddings):
    """Bad settings are one line each, before any work; --train parts are checked."""
    for kw, words in (
        ({"train": ("decoder",)}, "not one of prompt_encoder"),
        ({"masks": "x"}, "one of the two"),
        ({"coco": None}, "one of the two"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"img_size": 100}, "multiple of 16"),
    ):
        with pytest.raises(ValueError, match=words):
            finetune(replace(_cfg(shapes, embeddings, tmp_path / str(len(words))), **kw))
