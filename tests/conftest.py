"""Shared fixtures. Expensive work (model load, image embeddings) happens once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import FIXTURE_CKPT, REFERENCE, load_image


def pytest_configure(config: pytest.Config) -> None:
    # two threads, or one per xdist worker (`-n 2` runs two workers on the 2 cores)
    threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
    torch.set_num_threads(max(1, min(threads, torch.get_num_threads())))


@pytest.fixture(scope="session")
def reference() -> Path:
    """``../shared/reference``. Missing, its tests skip, or fail when
    ``MOBILESAM_REQUIRE_REFERENCE=1`` (``.ci/run`` sets it, so CI never passes by skipping)."""
    if not REFERENCE.is_dir():
        message = f"reference fixtures not found at {REFERENCE}"
        if os.environ.get("MOBILESAM_REQUIRE_REFERENCE") == "1":
            pytest.fail(message + " (MOBILESAM_REQUIRE_REFERENCE=1)")
        pytest.skip(message)
    return REFERENCE


@pytest.fixture(scope="session")
def golden(reference: Path) -> dict[str, np.ndarray]:
    with np.load(reference / "golden" / "golden.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def cases(reference: Path) -> dict:
    return json.loads((reference / "golden" / "cases.json").read_text())


@pytest.fixture(scope="session")
def fixture_model(reference: Path):
    from mobilesam import sam_model_registry

    return sam_model_registry["vit_t"](
        checkpoint=reference / "checkpoints" / "mobile_sam_fixture.pt"
    )


@pytest.fixture(scope="session")
def embedded(fixture_model, reference: Path, cases: dict):
    """``{image name: SamPredictor with that image set}``: one encoder pass per golden image."""
    from mobilesam import SamPredictor

    out = {}
    for name in cases["images"]:
        p = SamPredictor(fixture_model)
        p.set_image(load_image(reference, name))
        out[name] = p
    return out


@pytest.fixture(scope="session")
def live_server(fixture_model):
    """Base URL of ``mobilesam serve``'s app on uvicorn at 127.0.0.1 (a free port), shared
    by the load and browser tests; stopped at the end of the session."""
    pytest.importorskip("fastapi")
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from mobilesam.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(fixture_model), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.1)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, fixture_model, reference):
    """The fixture model exported to ONNX, with int8 and fp16-encoder variants (needs
    onnxruntime)."""
    pytest.importorskip("onnxruntime")
    from mobilesam.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    export_onnx(fixture_model, out, quantize="int8", fp16=True, checkpoint=FIXTURE_CKPT)
    return out
