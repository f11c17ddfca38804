"""The click-to-segment page in a real browser: Playwright drives headless Chromium from the
system's ``chromium`` package (never a downloaded browser) against uvicorn on 127.0.0.1.

Skipped when Playwright or Chromium is missing, except under CI (``CI`` set), where a
missing browser is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .helpers import mask_iou

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _sync_playwright():
    """Playwright's ``sync_playwright``; skips the test without it (fails under ``CI``)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    sync_playwright = _sync_playwright()
    executable = _chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
            accept_downloads=True,
        )
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield page, errors
        context.close()


def _overlay(page) -> np.ndarray:
    """The ``#overlay`` canvas as an ``H×W×4`` uint8 array (its pixels are the photo's),
    passed out of the page as base64 (a JSON array of millions of numbers is slow)."""
    data = page.evaluate(
        """() => {
            const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = '';
            for (let i = 0; i < d.length; i += 0x8000) {
                s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
            }
            return {w: c.width, h: c.height, b64: btoa(s)};
        }"""
    )
    px = np.frombuffer(base64.b64decode(data["b64"]), np.uint8)
    return px.reshape(data["h"], data["w"], 4)


def _wait_ready(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(
        "() => document.getElementById('stage').getAttribute('aria-busy') === 'false'"
        " && document.getElementById('status').dataset.state === 'ready'",
        timeout=timeout_ms,
    )


def _click_at(page, x: float, y: float, button: str = "left") -> None:
    """Click the photo at image pixel ``(x, y)``."""
    box = page.locator("#marks").bounding_box()
    w, h = page.evaluate("() => [mobilesamState.width, mobilesamState.height]")
    page.mouse.click(
        box["x"] + (x + 0.5) * box["width"] / w,
        box["y"] + (y + 0.5) * box["height"] / h,
        button=button,
    )


def test_click_to_segment(live_server, browser_page, reference, embedded, cases, tmp_path: Path):
    page, errors = browser_page
    page.goto(live_server)
    assert page.title().startswith("mobilesam")
    assert page.locator("#status").get_attribute("data-state") == "idle"

    # upload: the page shows busy while the server encodes, then ready
    photo = reference / "images" / "picture1.jpg"
    page.set_input_files("#file", str(photo))
    page.wait_for_function(
        "() => document.getElementById('status').dataset.state !== 'idle'", timeout=10_000
    )
    _wait_ready(page)
    assert page.evaluate("() => [mobilesamState.width, mobilesamState.height]") == [769, 770]
    assert not _overlay(page)[..., 3].any()

    # left click: a positive point, and the overlay is the library's mask for it
    _click_at(page, 420, 385)
    page.wait_for_function("() => mobilesamState.mask !== null")
    _wait_ready(page)
    first = _overlay(page)[..., 3] > 0
    assert first.any()
    prompts = page.evaluate("() => mobilesamState.prompts")
    assert [(p["kind"], p["label"]) for p in prompts] == [("point", 1)]
    assert abs(prompts[0]["x"] - 420.5) < 1 and abs(prompts[0]["y"] - 385.5) < 1

    predictor = embedded[cases["images"][0]]  # picture1.jpg, embedded once per session
    masks, scores, _ = predictor.predict(
        np.array([[prompts[0]["x"], prompts[0]["y"]]]), np.array([1]), multimask_output=True
    )
    assert mask_iou(first, masks[int(np.argmax(scores))]) >= 0.999

    # right click: a negative point changes the overlay
    _click_at(page, 470, 385, button="right")
    page.wait_for_function("() => mobilesamState.prompts.length === 2")
    _wait_ready(page)
    second = _overlay(page)[..., 3] > 0
    labels = [p["label"] for p in page.evaluate("() => mobilesamState.prompts")]
    assert labels == [1, 0]
    assert (first != second).sum() > 100
    page.screenshot(path=str(tmp_path / "points.png"))

    # undo brings the first mask back; a drag draws a box
    page.click("#undo")
    page.wait_for_function("() => mobilesamState.prompts.length === 1")
    _wait_ready(page)
    assert mask_iou(_overlay(page)[..., 3] > 0, first) >= 0.999
    box = page.locator("#marks").bounding_box()
    sx, sy = box["width"] / 769, box["height"] / 770
    page.mouse.move(box["x"] + 200 * sx, box["y"] + 200 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 400 * sx, box["y"] + 300 * sy, steps=5)
    page.mouse.move(box["x"] + 600 * sx, box["y"] + 500 * sy, steps=5)
    page.mouse.up()
    page.wait_for_function("() => mobilesamState.prompts.some(p => p.kind === 'box')")
    _wait_ready(page)
    drawn = [p for p in page.evaluate("() => mobilesamState.prompts") if p["kind"] == "box"][0]
    assert abs(drawn["x0"] - 200) < 2 and abs(drawn["y1"] - 500) < 2

    # downloads: the mask PNG and COCO JSON match what is shown
    with page.expect_download() as dl:
        page.click("#download-png")
    png_path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(png_path)
    from PIL import Image

    shown = _overlay(page)[..., 3] > 0
    assert png_path.name == "picture1_mask.png"
    assert np.array_equal(np.array(Image.open(png_path)) > 0, shown)
    with page.expect_download() as dl:
        page.click("#download-coco")
    coco = json.loads(Path(dl.value.path()).read_text())
    ann = coco["annotations"][0]
    assert coco["images"][0]["width"] == 769 and ann["area"] == int(shown.sum())
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects(ann["segmentation"], 770, 769)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), shown)

    # Everything: many coloured masks; then a clear empties the overlay
    page.select_option("#pps", "8")
    page.click("#everything")
    page.wait_for_function("() => mobilesamState.mode === 'everything'", timeout=180_000)
    _wait_ready(page)
    overlay = _overlay(page)
    count = page.evaluate("() => mobilesamState.annotations.length")
    colours = {tuple(c) for c in overlay[overlay[..., 3] > 0][:, :3].tolist()}
    assert count >= 2 and len(colours) >= 2
    assert "masks" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "everything.png"), full_page=True)
    assert (tmp_path / "everything.png").stat().st_size > 10_000
    page.click("#clear")
    assert not _overlay(page)[..., 3].any()
    assert errors == []


def test_page_reports_bad_upload(live_server, browser_page, tmp_path: Path):
    page, errors = browser_page
    page.goto(live_server)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function(
        "() => document.getElementById('status').dataset.state === 'error'", timeout=30_000
    )
    assert "broken.jpg" in page.locator("#status").inner_text()
    assert page.locator("#stage").get_attribute("aria-busy") == "false"
    errors.clear()  # the failed fetch/decoding is reported by the page, as intended
