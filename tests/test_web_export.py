"""``mobilesam export --web``: the in-browser site.

- the graphs that take the page's arithmetic: ``preprocess.onnx`` equals the Python
  pipeline's input byte for byte (Pillow's resize), the web decoder equals ``SamPredictor``;
- the runtime files: pinned, verified, a one-line error offline;
- the page in Chromium (Playwright, the system's ``chromium`` as in ``test_web.py``), served by
  a static-only server with every request elsewhere blocked: the fp32 export's masks match
  ``SamPredictor``'s (click, box, negative point) at IoU ≥ 0.99, read from the downloaded
  PNG; the int8 export's at IoU ≥ 0.95 on a 390×844 touch viewport (tap, long-press).

The site needs a copy of onnxruntime-web: ``$MOBILESAM_ORT_WEB`` (``.ci/run`` provides one
with ``npm pack``) or the tarball in the download cache. Without one these tests skip, and
fail under CI.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .helpers import FIXTURE_CKPT, mask_iou

ort = pytest.importorskip("onnxruntime")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def ort_web() -> Path:
    """A local copy of the pinned onnxruntime-web (never downloaded by the tests)."""
    from mobilesam.hub import default_cache_dir
    from mobilesam.web import runtime

    env = os.environ.get(runtime.ENV)
    if env:
        path = Path(env)
        if not path.exists():
            pytest.fail(f"${runtime.ENV} names {path}, which does not exist")
        return path
    cached = default_cache_dir() / runtime.TARBALL
    if cached.is_file():
        return cached
    message = (
        f"no copy of onnxruntime-web {runtime.VERSION}: set ${runtime.ENV} to the .tgz of "
        f"`npm pack onnxruntime-web@{runtime.VERSION}` (.ci/run does)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def web_site(tmp_path_factory, fixture_model, export_dir, ort_web) -> Path:
    """The fixture model's site, fp32 and int8, encoders taken from the session's export."""
    from mobilesam.web import build_site

    out = tmp_path_factory.mktemp("web") / "site"
    build_site(
        fixture_model,
        out,
        quantize="int8",
        ort_web=ort_web,
        checkpoint=FIXTURE_CKPT,
        onnx_dir=export_dir,
        progress=False,
    )
    return out


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _best(predictor, **prompt) -> np.ndarray:
    """``SamPredictor``'s mask as the page chooses it: the highest-scoring output."""
    masks, scores, _ = predictor.predict(**prompt)
    return masks[int(np.argmax(scores))]


# ------------------------------------------------------------------ the graphs


def test_site_layout(web_site):
    from mobilesam.onnx.export import verify_export
    from mobilesam.web import runtime

    site = json.loads((web_site / "site.json").read_text())
    assert site["variants"].keys() == {"fp32", "int8"} and site["default_variant"] == "int8"
    assert site["runtime"]["version"] == runtime.VERSION
    for entry in site["runtime"]["entry"].values():
        assert (web_site / entry).is_file()
    html = (web_site / "index.html").read_text()
    assert 'data-backend="browser"' in html and "wasm-unsafe-eval" in html
    for name in ("app.js", "style.css", "browser.mjs"):
        assert (web_site / "static" / name).is_file()
    files = [str(p.relative_to(web_site)) for p in web_site.rglob("*") if p.is_file()]
    verify_export(web_site, [f for f in files if f != "manifest.json"])  # every file's sha256
    # the int8 variant is the smallest: its convolution weights are stored as float16
    sizes = site["sizes"]
    assert sizes["models/encoder.int8.onnx"] < 0.35 * sizes["models/encoder.onnx"]


@pytest.mark.parametrize(
    "shape",
    [(770, 769, 4), (333, 1201, 3), (1024, 700, 4), (37, 50, 3), (2100, 600, 4), (5, 1400, 4)],
)
def test_preprocess_graph_equals_prepare_image(web_site, shape):
    """Resize (Pillow's BILINEAR, its fixed-point arithmetic and its order of passes: a tall
    photo, 2100×600, goes vertical-first on Pillow 13), normalisation and padding: the same
    float32 values as the Python pipeline, for RGBA (canvas) and RGB input."""
    from mobilesam.transforms import prepare_image

    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    image, input_size = _session(web_site / "models" / "preprocess.onnx").run(
        None, {"pixels": pixels}
    )
    ref, ref_size = prepare_image(np.ascontiguousarray(pixels[..., :3]), 1024)
    assert tuple(input_size) == ref_size
    assert np.array_equal(image, ref.numpy())


@pytest.mark.parametrize(
    "prompt",
    [
        {"point_coords": [[400, 380]], "point_labels": [1], "multimask_output": True},
        {"box": [264.6, 73.1, 642.9, 218.5], "multimask_output": False},
        {"point_coords": [[400, 380], [470.5, 385.5]], "point_labels": [1, 0]},
        {"point_coords": [[453.7, 145.8]], "point_labels": [0], "box": [264.6, 73.1, 642.9, 218.5]},
    ],
)
def test_web_decoder_equals_sam_predictor(web_site, embedded, cases, prompt):
    """Prompts in the photo's pixels, SAM's layout (points, box corners or a padding point);
    out: the thresholded mask at the photo's size, as SamPredictor + the best score."""
    predictor = embedded[cases["images"][0]]
    prompt = {"multimask_output": False, **prompt}
    coords = list(prompt.get("point_coords", []))
    labels = list(prompt.get("point_labels", []))
    if "box" in prompt:
        coords += [prompt["box"][:2], prompt["box"][2:]]
        labels += [2, 3]
    else:
        coords, labels = [*coords, [0, 0]], [*labels, -1]
    h, w = predictor.original_size
    mask, score = _session(web_site / "models" / "decoder.onnx").run(
        None,
        {
            "image_embeddings": predictor.get_image_embedding().numpy(),
            "point_coords": np.array([coords], np.float32),
            "point_labels": np.array([labels], np.float32),
            "orig_im_size": np.array([h, w], np.float32),
            "multimask": np.array([float(prompt["multimask_output"])], np.float32),
        },
    )
    kwargs = {k: np.array(v) for k, v in prompt.items() if k != "multimask_output"}
    masks, scores, _ = predictor.predict(**kwargs, multimask_output=prompt["multimask_output"])
    best = int(np.argmax(scores))
    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    assert mask.any() == masks[best].any()  # (the fixture's box-only token-0 mask is empty)
    assert mask_iou(mask.astype(bool), masks[best]) >= 0.99
    assert abs(float(score[0]) - float(scores[best])) <= 1e-3


@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_compact_weights_change_little(export_dir, tmp_path, kind):
    """Weights stored smaller behind a DequantizeLinear (int8, per channel: every MatMul,
    Gemm and convolution) or a Cast (float16: the convolutions int8 dynamic quantization
    leaves): same graph, outputs within the weights' rounding."""
    from mobilesam.onnx.compact import store_conv_weights_fp16, store_weights_int8

    src = export_dir / "decoder_multimask.onnx"
    store = store_weights_int8 if kind == "int8" else store_conv_weights_fp16
    n = store(src, tmp_path / "d.onnx")
    ratio = (tmp_path / "d.onnx").stat().st_size / src.stat().st_size
    assert n >= 1 and ratio < (0.3 if kind == "int8" else 1.0)
    rng = np.random.default_rng(0)
    feeds = {
        "image_embeddings": rng.normal(0, 1, (1, 256, 64, 64)).astype(np.float32),
        "point_coords": np.array([[[500.0, 400.0], [0.0, 0.0]]], np.float32),
        "point_labels": np.array([[1.0, -1.0]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    a = _session(src).run(None, feeds)[1]
    b = _session(tmp_path / "d.onnx").run(None, feeds)[1]
    assert np.abs(a - b).max() <= (3e-2 if kind == "int8" else 2e-3) * np.abs(a).max()
    assert ((a > 0) == (b > 0)).mean() > 0.995


# ------------------------------------------------------------------ the runtime files


def test_runtime_from_dist_folder_and_mismatch(tmp_path, ort_web):
    """A dist/ folder (npm install) works as the tarball does; a changed file is named."""
    from mobilesam.web import RuntimeMismatch, runtime

    dist = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    runtime.copy_runtime(dist, ort_web, ("wasm",))  # unpack the wasm files: a dist/ folder
    out = runtime.copy_runtime(tmp_path / "ort", dist.parent, ("wasm",))
    assert set(out) == {f.name for f in runtime.files_for(("wasm",))}
    (dist / "ort.wasm.min.mjs").write_text("// another version")
    with pytest.raises(RuntimeMismatch, match=r"ort\.wasm\.min\.mjs.*npm install onnxruntime-web@"):
        runtime.copy_runtime(tmp_path / "ort2", dist, ("wasm",))
    with pytest.raises(FileNotFoundError, match="asyncify"):
        runtime.copy_runtime(tmp_path / "ort3", dist, ("wasm", "webgpu"))


def test_runtime_offline_is_one_line(tmp_path, monkeypatch):
    """No copy, nothing cached, no network: one line naming the URL and where to save it."""
    from mobilesam.web import RuntimeNotFound, runtime

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError("Network is unreachable"))

    monkeypatch.setenv("MOBILESAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.ENV, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeNotFound) as info:
        runtime.copy_runtime(tmp_path / "ort", None, ("wasm",), progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert runtime.TARBALL_URL in message and str(tmp_path / "cache" / runtime.TARBALL) in message
    assert "--ort-web" in message and "Network is unreachable" in message


def test_cli_errors(tmp_path, capsys):
    """Bad --web/--ort-web arguments: one line, before any export; `serve --web` of a folder
    that holds no site likewise."""
    from mobilesam.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err.strip()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, err = run("export", "--checkpoint", FIXTURE_CKPT, "--web", busy)
    assert code == 2 and "not empty" in err and len(err.splitlines()) == 1
    code, err = run(
        "export", "--checkpoint", FIXTURE_CKPT, "--web", tmp_path / "s",
        "--ort-web", tmp_path / "missing",
    )  # fmt: skip
    assert code == 2 and "--ort-web" in err and len(err.splitlines()) == 1
    code, err = run("export", "--checkpoint", FIXTURE_CKPT, "--web", tmp_path / "s",
                    "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "--out and --web" in err
    code, err = run("serve", "--web", busy)
    assert code == 1 and "index.html" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()  # (main makes --out before any command runs)


def test_static_server_headers(web_site):
    """Cross-origin isolation (threads), module and wasm MIME types, no folder listings."""
    from mobilesam.web.server import RunningSite

    with RunningSite(web_site) as site:
        with urllib.request.urlopen(site.url) as res:
            assert res.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert res.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(site.url + "ort/ort-wasm-simd-threaded.mjs") as res:
            assert res.headers["Content-Type"].startswith("text/javascript")
        req = urllib.request.Request(site.url + "ort/ort-wasm-simd-threaded.wasm", method="HEAD")
        with urllib.request.urlopen(req) as res:
            assert res.headers["Content-Type"] == "application/wasm"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(site.url + "models/")
        assert info.value.code == 404


# ------------------------------------------------------------------ the page in Chromium


@pytest.fixture(scope="module")
def browser(web_site):
    """Headless Chromium and the site on a static-only server: ``(browser, url)``."""
    from mobilesam.web.server import RunningSite

    from .test_web import CHROMIUM_ARGS, _chromium, _sync_playwright

    sync_playwright = _sync_playwright()
    executable = _chromium()
    with RunningSite(web_site) as site, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium, site.url
        chromium.close()


def _offline_page(browser, **context_options):
    """A page in a new context where every request not to the static server is aborted
    (and recorded), with console errors collected."""
    chromium, url = browser
    context = chromium.new_context(accept_downloads=True, **context_options)
    blocked: list[str] = []
    errors: list[str] = []

    def route(r):
        if r.request.url.startswith(url):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return context, page, blocked, errors


def _load(page, url: str, query: str) -> str:
    page.goto(url + query)
    page.wait_for_function("() => mobilesamState.timing.engine !== null", timeout=60_000)
    return page.evaluate("() => mobilesamState.timing.engine")


def _open_photo(page, reference: Path) -> None:
    page.set_input_files("#file", str(reference / "images" / "picture1.jpg"))
    page.wait_for_function(
        "() => mobilesamState.id !== null && document.getElementById('status').dataset.state"
        " === 'ready'",
        timeout=120_000,
    )


def _wait_prompts(page, n: int) -> None:
    page.wait_for_function(
        f"() => mobilesamState.prompts.length === {n} && mobilesamState.mask !== null"
        " && document.getElementById('stage').getAttribute('aria-busy') === 'false'"
        " && document.getElementById('status').dataset.state === 'ready'",
        timeout=60_000,
    )


def _downloaded_mask(page, tmp_path: Path) -> np.ndarray:
    from PIL import Image

    with page.expect_download() as dl:
        page.click("#download-png")
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    with Image.open(path) as im:
        assert im.mode == "L" and path.name == "picture1_mask.png"
        return np.array(im) > 0


def _point(page, index: int = -1) -> tuple[list[list[float]], list[int]]:
    points = [p for p in page.evaluate("() => mobilesamState.prompts") if p["kind"] == "point"]
    return [[p["x"], p["y"]] for p in points], [p["label"] for p in points]


def test_page_fp32_matches_sam_predictor(browser, reference, embedded, cases, tmp_path):
    """Desktop, fp32, WebAssembly with 2 threads (cross-origin isolated): click, negative
    point, box; each mask, from the downloaded PNG, matches SamPredictor's."""
    from .test_web import _click_at, _overlay

    context, page, blocked, errors = _offline_page(browser, viewport={"width": 1280, "height": 900})
    engine = _load(page, browser[1], "?variant=fp32&threads=2")
    assert "WebAssembly SIMD, 2 threads" in engine and "fp32" in engine
    assert page.evaluate("() => crossOriginIsolated")
    _open_photo(page, reference)
    assert page.evaluate("() => [mobilesamState.width, mobilesamState.height]") == [769, 770]
    predictor = embedded[cases["images"][0]]

    _click_at(page, 400, 380)
    _wait_prompts(page, 1)
    coords, labels = _point(page)
    shown = _downloaded_mask(page, tmp_path)
    assert np.array_equal(_overlay(page)[..., 3] > 0, shown)
    ref = _best(predictor, point_coords=np.array(coords), point_labels=np.array(labels),
                multimask_output=True)  # fmt: skip
    assert mask_iou(shown, ref) >= 0.99

    _click_at(page, 470, 385, button="right")  # a negative point: two points, one mask
    _wait_prompts(page, 2)
    coords, labels = _point(page)
    assert labels == [1, 0]
    ref = _best(predictor, point_coords=np.array(coords), point_labels=np.array(labels),
                multimask_output=False)  # fmt: skip
    assert mask_iou(_downloaded_mask(page, tmp_path), ref) >= 0.99

    page.click("#clear")
    box = page.locator("#marks").bounding_box()
    sx, sy = box["width"] / 769, box["height"] / 770
    page.mouse.move(box["x"] + 265 * sx, box["y"] + 73 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 643 * sx, box["y"] + 218 * sy, steps=4)
    page.mouse.up()
    _wait_prompts(page, 1)
    (drawn,) = page.evaluate("() => mobilesamState.prompts")
    assert drawn["kind"] == "box"
    xyxy = np.array([drawn["x0"], drawn["y0"], drawn["x1"], drawn["y1"]])
    ref = _best(predictor, box=xyxy, multimask_output=False)
    shown = _overlay(page)[..., 3] > 0  # (the fixture's box-only mask is empty: no PNG)
    assert shown.any() == ref.any() and mask_iou(shown, ref) >= 0.99
    _click_at(page, 450, 150)  # a point in the box: SAM's box-and-points layout
    _wait_prompts(page, 2)
    coords, labels = _point(page)
    ref = _best(predictor, point_coords=np.array(coords), point_labels=np.array(labels),
                box=xyxy, multimask_output=False)  # fmt: skip
    shown = _downloaded_mask(page, tmp_path)
    assert shown.any() and mask_iou(shown, ref) >= 0.99
    timing = page.evaluate("() => mobilesamState.timing")
    assert timing["encoderMs"] > 0 and timing["decoderMs"] > 0
    assert "decoder" in page.locator("#engine").inner_text()
    context.close()
    assert blocked == [] and errors == []


def test_page_int8_phone_touch(browser, reference, embedded, cases, tmp_path):
    """A 390×844 touch screen, the default (int8) variant: the layout fits, a tap gives the
    mask (IoU ≥ 0.95 against fp32 SamPredictor), a long press adds a negative point."""
    context, page, blocked, errors = _offline_page(
        browser,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    engine = _load(page, browser[1], "?threads=2")
    assert "int8" in engine
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    _open_photo(page, reference)
    marks = page.locator("#marks").bounding_box()
    assert marks["width"] <= 390
    sx, sy = marks["width"] / 769, marks["height"] / 770
    page.touchscreen.tap(marks["x"] + 400.5 * sx, marks["y"] + 380.5 * sy)
    _wait_prompts(page, 1)
    coords, labels = _point(page)
    assert labels == [1] and abs(coords[0][0] - 400.5) < 2 and abs(coords[0][1] - 380.5) < 2
    ref = _best(embedded[cases["images"][0]], point_coords=np.array(coords),
                point_labels=np.array(labels), multimask_output=True)  # fmt: skip
    assert mask_iou(_downloaded_mask(page, tmp_path), ref) >= 0.95

    cdp = context.new_cdp_session(page)  # a long press: touch, hold, release
    at = {"x": marks["x"] + 470.5 * sx, "y": marks["y"] + 385.5 * sy}
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at]})
    page.wait_for_timeout(700)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    _wait_prompts(page, 2)
    assert _point(page)[1] == [1, 0]
    context.close()
    assert blocked == [] and errors == []
