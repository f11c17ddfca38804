"""Helpers the tests import (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mobilesam.evaluation.miou import mask_iou

__all__ = ["FIXTURE_CKPT", "REFERENCE", "load_image", "mask_iou", "run_cli"]

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FIXTURE_CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"


def load_image(reference: Path, name: str) -> np.ndarray:
    """``reference/images/name`` as ``H×W×3`` uint8 RGB."""
    return np.array(Image.open(reference / "images" / name).convert("RGB"))


def run_cli(
    *args: str, module: str = "mobilesam", timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m module args...`` in a child process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )
