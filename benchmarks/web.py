"""The in-browser site's figures: encoder and decoder milliseconds per variant and back end in
Chromium (WebAssembly SIMD with N threads, cross-origin isolated; WebGPU with --webgpu),
the same graphs through ONNX Runtime in Python on the same CPU and threads, and each
variant's download size (raw and gzip-compressed, as static hosts serve it).

Usage: ``python benchmarks/web.py [--site DIR | --checkpoint CKPT] [--ort-web PATH]
[--threads 2] [--repeats 5] [--variants fp32,int8,fp16] [--webgpu] [--screenshot PATH]
[--json PATH]``

Without ``--site`` it exports one (int8, int8-dynamic and fp16 included) into a temporary
folder. The browser is the system's ``chromium``, driven by Playwright, as in the tests.
Every path (each variant in the browser, and in Python) is loaded and warmed up first, then
timed in turn, round after round (``--repeats`` rounds; three clicks per round): medians.
The browser's encoder time is the encoder graph alone (the page shows it with its
preprocessing graph, reported apart).
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    argument_parser,
    machine_info,
    print_table,
    summary,
    write_json,
)

from mobilesam.web import runtime  # noqa: E402
from mobilesam.web.server import RunningSite  # noqa: E402

CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
PHOTO = REFERENCE / "images" / "picture1.jpg"
CLICK = (400, 380)
PAGE = ["index.html", "site.json", "static/app.js", "static/style.css", "static/browser.mjs"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def download(site_dir: Path, site: dict, variant: str, backend: str) -> dict:
    """What a browser fetches for ``variant`` on ``backend``: bytes raw and gzip -6."""
    runtime_files = [f.name for f in runtime.FILES if f.backend == backend]
    v = site["variants"][variant]
    files = [*PAGE, *(f"ort/{n}" for n in runtime_files), site["preprocess"], v["encoder"],
             v["decoder"]]  # fmt: skip
    raw = zipped = 0
    for f in files:
        data = (site_dir / f).read_bytes()
        raw += len(data)
        zipped += len(gzip.compress(data, compresslevel=6))
    return {"files": files, "raw_bytes": raw, "gzip_bytes": zipped}


class PythonOrt:
    """The site's encoder and decoder graphs of one variant through onnxruntime in Python
    (CPU provider, ``threads`` intra-op threads), on the photo the page opens."""

    def __init__(self, site_dir: Path, site: dict, variant: str, threads: int) -> None:
        import onnxruntime as ort
        from PIL import Image

        from mobilesam.transforms import prepare_image

        def session(path: str):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            # no spinning once a run ends: the browser's turn comes next, on the same cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(
                str(site_dir / path), opts, providers=["CPUExecutionProvider"]
            )

        rgb = np.array(Image.open(PHOTO).convert("RGB"))
        image, _ = prepare_image(rgb, 1024)
        self.encoder = session(site["variants"][variant]["encoder"])
        self.decoder = session(site["variants"][variant]["decoder"])
        self.image = {"image": image.numpy()}
        (embedding,) = self.encoder.run(None, self.image)
        h, w = rgb.shape[:2]
        self.prompt = {
            "image_embeddings": embedding,
            "point_coords": np.array([[CLICK, (0, 0)]], np.float32),
            "point_labels": np.array([[1, -1]], np.float32),
            "orig_im_size": np.array([h, w], np.float32),
            "multimask": np.array([1.0], np.float32),
        }
        self.decoder.run(None, self.prompt)

    def encode(self) -> float:
        t = time.perf_counter()
        self.encoder.run(None, self.image)
        return time.perf_counter() - t

    def decode(self) -> float:
        t = time.perf_counter()
        self.decoder.run(None, self.prompt)
        return time.perf_counter() - t


def agreement(site_dir: Path, site: dict, variants: list[str], checkpoint: str) -> dict:
    """Mean and lowest mask IoU of each variant's graphs (preprocess, encoder, web decoder,
    through onnxruntime in Python) against ``SamPredictor`` fp32, over 20 random clicks on
    each of picture1.jpg and picture4.jpg; None when the site holds other weights."""
    import onnxruntime as ort
    from PIL import Image

    from mobilesam import SamPredictor, sam_model_registry
    from mobilesam.evaluation.miou import mask_iou
    from mobilesam.hub import sha256_file

    if site.get("checkpoint_sha256") not in (None, sha256_file(checkpoint)):
        return {}
    model = sam_model_registry["vit_t"](checkpoint=checkpoint)
    session = lambda p: ort.InferenceSession(str(site_dir / p), providers=["CPUExecutionProvider"])  # noqa: E731
    preprocess = session(site["preprocess"])
    graphs = {v: (session(site["variants"][v]["encoder"]), session(site["variants"][v]["decoder"]))
              for v in variants}  # fmt: skip
    ious: dict[str, list[float]] = {v: [] for v in variants}
    rng = np.random.default_rng(0)
    for name in ("picture1.jpg", "picture4.jpg"):
        rgb = np.array(Image.open(REFERENCE / "images" / name).convert("RGB"))
        h, w = rgb.shape[:2]
        predictor = SamPredictor(model)
        predictor.set_image(rgb)
        clicks = np.stack([rng.uniform(0, w, 20), rng.uniform(0, h, 20)], 1)
        refs = []
        for xy in clicks:
            masks, scores, _ = predictor.predict(xy[None], np.array([1]), multimask_output=True)
            refs.append(masks[int(np.argmax(scores))])
        (image, _) = preprocess.run(None, {"pixels": rgb})
        for v, (encoder, decoder) in graphs.items():
            (embedding,) = encoder.run(None, {"image": image})
            for xy, ref in zip(clicks, refs, strict=True):
                mask, _ = decoder.run(None, {
                    "image_embeddings": embedding,
                    "point_coords": np.array([[xy, (0, 0)]], np.float32),
                    "point_labels": np.array([[1, -1]], np.float32),
                    "orig_im_size": np.array([h, w], np.float32),
                    "multimask": np.array([1.0], np.float32),
                })  # fmt: skip
                ious[v].append(mask_iou(mask.astype(bool), ref))
    return {v: {"miou": float(np.mean(x)), "min": float(np.min(x))} for v, x in ious.items()}


def _ready(page, since: int) -> None:
    page.wait_for_function(
        f"() => mobilesamState.seq > {since} && mobilesamState.busy === 0"
        " && ['ready', 'error'].includes(document.getElementById('status').dataset.state)",
        timeout=300_000,
    )
    if page.evaluate("() => document.getElementById('status').dataset.state") == "error":
        raise RuntimeError(page.locator("#status").inner_text())


class BrowserPage:
    """The page with one variant and back end; :meth:`encode` opens the photo, :meth:`decode`
    clicks once (after clearing): each returns the milliseconds the page measured
    (performance.now around the graph runs), the encoder's without preprocessing."""

    def __init__(self, chromium, url: str, variant: str, backend: str, threads: int) -> None:
        self.page = chromium.new_page(viewport={"width": 1280, "height": 900})
        self.page.goto(f"{url}?variant={variant}&backend={backend}&threads={threads}")
        self.page.wait_for_function("() => mobilesamState.timing.engine !== null", timeout=120_000)
        self.engine = self.page.evaluate("() => mobilesamState.timing.engine")
        self.encode()  # warm-up, and the photo the clicks need
        self.decode()

    def encode(self) -> tuple[float, float]:
        """(preprocessing, encoder) seconds."""
        self.page.bring_to_front()  # a background tab runs slower
        seq = self.page.evaluate("() => mobilesamState.seq")
        self.page.set_input_files("#file", str(PHOTO))
        _ready(self.page, seq)
        detail = self.page.evaluate("() => mobilesamState.timing.detail")
        return detail["preprocessMs"] / 1e3, detail["encoderMs"] / 1e3

    def decode(self) -> float:
        self.page.bring_to_front()
        self.page.keyboard.press("Escape")  # clear
        box = self.page.locator("#marks").bounding_box()
        w, h = self.page.evaluate("() => [mobilesamState.width, mobilesamState.height]")
        seq = self.page.evaluate("() => mobilesamState.seq")
        self.page.mouse.click(
            box["x"] + (CLICK[0] + 0.5) * box["width"] / w,
            box["y"] + (CLICK[1] + 0.5) * box["height"] / h,
        )
        _ready(self.page, seq)
        return self.page.evaluate("() => mobilesamState.timing.decoderMs") / 1e3


def measure(chromium, url, site_dir, site, variants, backends, threads, repeats) -> dict:
    """Every variant and back end, and Python ORT, timed in turn round after round (after one
    warm-up each): machine noise hits every path alike."""
    paths = {}
    for variant in variants:
        paths[(variant, "python_ort")] = PythonOrt(site_dir, site, variant, threads)
        for backend in backends:
            paths[(variant, backend)] = BrowserPage(chromium, url, variant, backend, threads)
    times: dict = {key: {"preprocess": [], "encoder": [], "decoder": []} for key in paths}
    for _ in range(repeats):
        for key, path in paths.items():
            encoded = path.encode()
            if isinstance(encoded, tuple):
                times[key]["preprocess"].append(encoded[0])
                encoded = encoded[1]
            times[key]["encoder"].append(encoded)
        for _ in range(3):  # clicks are short: three per round
            for key, path in paths.items():
                times[key]["decoder"].append(path.decode())
    out: dict = {}
    for (variant, where), t in times.items():
        row = {name: summary(v) for name, v in t.items() if v}
        if where != "python_ort":
            row["engine"] = paths[(variant, where)].engine
            paths[(variant, where)].page.close()
            out.setdefault(variant, {})[f"download_{where}"] = download(
                site_dir, site, variant, where
            )
        out.setdefault(variant, {})[where] = row
    return out


def screenshot(chromium, url: str, path: Path) -> None:
    """The page on a 390×844 touch screen after a tap (int8, the default variant)."""
    context = chromium.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    page.goto(url + "?threads=2")
    page.wait_for_function("() => mobilesamState.timing.engine !== null", timeout=120_000)
    seq = page.evaluate("() => mobilesamState.seq")
    page.set_input_files("#file", str(PHOTO))
    _ready(page, seq)
    box = page.locator("#marks").bounding_box()
    seq = page.evaluate("() => mobilesamState.seq")
    page.touchscreen.tap(
        box["x"] + (CLICK[0] + 0.5) * box["width"] / 769,
        box["y"] + (CLICK[1] + 0.5) * box["height"] / 770,
    )
    _ready(page, seq)
    kind = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    options = {"quality": 82} if kind == "jpeg" else {}
    page.screenshot(path=str(path), type=kind, full_page=False, **options)
    context.close()


def build(args, workdir: Path) -> Path:
    from mobilesam import sam_model_registry
    from mobilesam.web import build_site

    model = sam_model_registry["vit_t"](checkpoint=args.checkpoint)
    out = workdir / "site"
    build_site(model, out, quantize="int8", int8="both", fp16=True, ort_web=args.ort_web,
               checkpoint=args.checkpoint)  # fmt: skip
    return out


def main() -> None:
    import json

    from playwright.sync_api import sync_playwright

    ap = argument_parser(__doc__)
    ap.add_argument("--site", help="an exported site (default: export one)")
    ap.add_argument("--checkpoint", default=str(CKPT), help="weights to export (default fixture)")
    ap.add_argument("--ort-web", help="local onnxruntime-web copy (see mobilesam export --web)")
    ap.add_argument("--threads", type=int, default=2, help="WebAssembly and ORT threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="fp32,int8,int8-dynamic,fp16")
    ap.add_argument("--webgpu", action="store_true", help="also time WebGPU (needs a GPU)")
    ap.add_argument("--screenshot", help="write the phone-viewport screenshot here")
    ap.add_argument("--json", help="output path (default benchmarks/results/web.json)")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mobilesam-web-"))
    try:
        site_dir = Path(args.site) if args.site else build(args, workdir)
        site = json.loads((site_dir / "site.json").read_text())
        variants = [v for v in args.variants.split(",") if v in site["variants"]]
        backends = ["wasm", "webgpu"] if args.webgpu else ["wasm"]
        chromium_bin = shutil.which("chromium") or shutil.which("chromium-browser")
        results: dict = {"variants": {}}
        with RunningSite(site_dir) as served, sync_playwright() as pw:
            flags = CHROMIUM_ARGS + (
                ["--enable-unsafe-webgpu"] if args.webgpu else ["--disable-gpu"]
            )
            chromium = pw.chromium.launch(executable_path=chromium_bin, headless=True, args=flags)
            results["chromium"] = chromium.version
            results["variants"] = measure(
                chromium, served.url, site_dir, site, variants, backends, args.threads,
                args.repeats,
            )  # fmt: skip
            results["agreement"] = agreement(site_dir, site, variants, args.checkpoint)
            if args.screenshot:
                screenshot(chromium, served.url, Path(args.screenshot))
            chromium.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    import onnxruntime

    results.update(
        machine=machine_info(),
        threads=args.threads,
        repeats=args.repeats,
        onnxruntime_python=onnxruntime.__version__,
        onnxruntime_web=runtime.VERSION,
        date=time.strftime("%Y-%m-%d"),
    )
    rows = []
    ms = lambda s: f"{1e3 * s['median_s']:.0f}"  # noqa: E731
    for variant, row in results["variants"].items():
        for backend in backends:
            b = row[backend]
            size = row[f"download_{backend}"]
            ratio = b["encoder"]["median_s"] / row["python_ort"]["encoder"]["median_s"]
            rows.append((
                variant, b["engine"].split(" · ")[1], ms(b["encoder"]),
                ms(row["python_ort"]["encoder"]), f"{ratio:.2f}x",
                ms(b["preprocess"]), ms(b["decoder"]), ms(row["python_ort"]["decoder"]),
                f"{size['raw_bytes'] / 1e6:.1f}", f"{size['gzip_bytes'] / 1e6:.1f}",
                f"{results['agreement'].get(variant, {}).get('miou', float('nan')):.4f}",
            ))  # fmt: skip
    print(
        f"Chromium {results['chromium']}, onnxruntime-web {runtime.VERSION}, onnxruntime "
        f"{onnxruntime.__version__} (Python), {args.threads} threads, medians of {args.repeats}"
    )
    print_table(
        rows,
        ("variant", "browser back end", "encoder ms", "ORT Python ms", "ratio", "preprocess ms",
         "decoder ms", "ORT Python decoder ms", "download MB", "gzip MB", "mIoU"),
    )  # fmt: skip
    print(f"wrote {write_json('web', results, args.json)}")


if __name__ == "__main__":
    main()
