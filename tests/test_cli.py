"""The `python -m mobilesam segment` entry point, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from .conftest import mask_iou


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilesam", *args], capture_output=True, text=True, timeout=300
    )


def test_segment_point_matches_library(tmp_path, reference, embedded, cases):
    ckpt = reference / "checkpoints" / "mobile_sam_fixture.pt"
    image = reference / "images" / cases["images"][0]
    res = _run(
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
    res = _run("segment", "--checkpoint", ckpt, "--point", "1,2,3,4", "--out", str(tmp_path))
    assert res.returncode != 0 and "--point takes 2 or 3 numbers" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _run("segment", str(tmp_path / "nope.jpg"), "--checkpoint", ckpt)
    assert res.returncode != 0 and "cannot read image" in res.stderr
    res = _run("segment", "--checkpoint", str(tmp_path / "missing.pt"))
    assert res.returncode != 0 and "missing.pt" in res.stderr
