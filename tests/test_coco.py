"""``mobilesam eval coco`` end to end on a tiny COCO file built here: a model scored against
annotations made from its own box-prompted masks reaches AP = 1; a perturbed model scores
lower."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SamPredictor, build_sam

from .helpers import FIXTURE_CKPT, load_image

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory, reference):
    from pycocotools import mask as mask_utils

    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    pred = SamPredictor(build_sam(FIXTURE_CKPT))
    images, annotations = [], []
    for image_id, name in enumerate(("picture1.jpg", "picture4.jpg"), 1):
        photo = Image.fromarray(load_image(reference, name))
        photo = photo.resize((photo.width // 4, photo.height // 4))
        photo.save(root / "images" / f"{image_id}.png")
        array = np.array(photo)
        h, w = array.shape[:2]
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        pred.set_image(array)
        for k, (x0, y0, x1, y1) in enumerate(
            ((0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.9), (0.2, 0.5, 0.45, 0.95))
        ):
            box = [x0 * w, y0 * h, x1 * w, y1 * h]
            # best of three, as --multimask picks (this fixture's single masks are empty)
            masks, ious, _ = pred.predict(box=np.array(box), multimask_output=True)
            mask = masks[int(np.argmax(ious))]
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 + k % 2,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(doc))
    return root


def _eval(root, ckpt, out, *extra):
    res = subprocess.run(
        [sys.executable, "-m", "mobilesam", "eval", "coco", "--checkpoint", str(ckpt),
         "--images", str(root / "images"), "--annotations", str(root / "instances.json"),
         "--out", str(out), "--quiet", "--multimask", *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads((out / "coco.json").read_text(), parse_constant=_refuse)  # standard JSON


def _refuse(name: str):
    raise AssertionError(f"coco.json holds {name}, which standard JSON does not allow")


def test_own_masks_score_ap_one_and_a_perturbed_model_less(tiny_coco, tmp_path):
    own = _eval(tiny_coco, FIXTURE_CKPT, tmp_path / "own")
    assert set(own) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "settings"}
    assert own["AP"] == pytest.approx(1.0) and own["AP50"] == pytest.approx(1.0)
    assert (tmp_path / "own" / "coco.md").read_text().startswith("# ")
    sd = torch.load(FIXTURE_CKPT, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k.startswith("mask_decoder.") and v.is_floating_point() and v.numel() > 1:
            sd[k] = v + 1.0 * v.std() * torch.randn(v.shape, generator=g)
    perturbed = tmp_path / "perturbed.pt"
    torch.save(sd, perturbed)
    worse = _eval(tiny_coco, perturbed, tmp_path / "worse")
    assert worse["AP"] < own["AP"] - 0.05


def test_detections_file_and_errors(tiny_coco, tmp_path):
    gt = json.loads((tiny_coco / "instances.json").read_text())
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in gt["annotations"]
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    result = _eval(
        tiny_coco, FIXTURE_CKPT, tmp_path / "d", "--detections", str(tmp_path / "dets.json"),
        "--max-images", "1",
    )  # fmt: skip
    assert result["images"] == 1 and result["settings"]["detections"].endswith("dets.json")
    # a detector that finds nothing in image 2: its objects are misses, not left out
    first_only = [d for d in dets if d["image_id"] == 1]
    (tmp_path / "first.json").write_text(json.dumps(first_only))
    partial = _eval(
        tiny_coco, FIXTURE_CKPT, tmp_path / "p", "--detections", str(tmp_path / "first.json")
    )
    assert partial["images"] == 2 and partial["prompts"] == len(first_only)
    assert partial["AP"] < 0.9
    from mobilesam.evaluation.coco import read_detections

    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="bad.json must hold a list"):
        read_detections(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match="detection 0 must have image_id, category_id and bbox"):
        read_detections(tmp_path / "bad2.json")
    res = subprocess.run(
        [sys.executable, "-m", "mobilesam", "eval", "coco", "--checkpoint", str(FIXTURE_CKPT),
         "--images", str(tiny_coco), "--annotations", str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "--annotations" in res.stderr and "no such file" in res.stderr
