"""``build_site``: the model as a self-contained static site that runs it in the browser.

Layout of the folder it writes::

    index.html          the click-to-segment page (mobilesam/serve/static, in-browser back end)
    static/             app.js, style.css, browser.mjs: the same files `mobilesam serve` uses
    models/             preprocess.onnx, encoder[.int8|.fp16].onnx, decoder[.int8].onnx
    ort/                ONNX Runtime Web's runtime files (one pinned version, verified)
    site.json           what the page loads: variants, files, sizes, sha256, runtime
    manifest.json       sha256 of every file above, written last (a complete site)

Any static host serves it; threads need the cross-origin-isolation headers
(:mod:`mobilesam.web.server` sends them). Once written it needs no network.

The graphs hold the arithmetic, so the page does none: ``preprocess.onnx``
(:class:`~mobilesam.onnx.preprocess.SamOnnxPreprocess`: Pillow's resize, normalisation and
padding, byte for byte), the encoder as ``mobilesam export`` writes it, and the web decoder
(:class:`~mobilesam.onnx.wrapper.SamOnnxWebDecoder`: prompts in the photo's pixels, the
thresholded mask at its size). Variants: ``fp32`` always; ``int8`` (``quantize="int8"``:
both networks' weights stored as int8 with per-channel scales, dequantized to float32 in the
graph, :func:`mobilesam.onnx.compact.store_weights_int8`: a quarter of the download, float32
speed and arithmetic; ONNX Runtime Web's int8 kernels run slower than its float32 ones, so
``mobilesam export``'s dynamic quantization is only offered as ``int8-dynamic``, on
request); ``fp16`` (``fp16=True``: the float16 encoder, for WebGPU).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from . import runtime

#: The page's files, shared with ``mobilesam serve`` (``mobilesam/serve/static``).
PAGE_FILES = ("index.html", "app.js", "style.css", "browser.mjs")
SITE_JSON = "site.json"
#: The exported page's own policy: its files only, WebAssembly compiled from them, and the
#: blob:/data: URLs the page makes for downloads and masks.
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "img-src 'self' data: blob:; connect-src 'self' data: blob:; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'"
)
INT8_KINDS = ("weights", "dynamic", "both")
_BACKEND_MARK = '<html lang="en" data-backend="server">'


def page_file(name: str) -> bytes:
    """The bytes of one of :data:`PAGE_FILES`, from the installed package."""
    if name not in PAGE_FILES:
        raise ValueError(f"no page file {name!r}")
    return (resources.files("mobilesam") / "serve" / "static" / name).read_bytes()


def browser_index() -> str:
    """The page's ``index.html`` switched to the in-browser back end, with :data:`CSP`."""
    html = page_file("index.html").decode()
    if html.count(_BACKEND_MARK) != 1:
        raise RuntimeError("index.html lacks its data-backend attribute: a damaged install?")
    html = html.replace(_BACKEND_MARK, _BACKEND_MARK.replace('"server"', '"browser"'))
    meta = f'  <meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    return html.replace('  <meta charset="utf-8">\n', '  <meta charset="utf-8">\n' + meta, 1)


def check_site_folder(out: Path) -> None:
    """ValueError unless ``out`` is new, empty, or an earlier site (written over)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_JSON).is_file():
        raise ValueError(
            f"{out} is not empty and holds no exported site: choose a new or empty folder"
        )


def build_site(
    model: Any,
    out_dir: str | Path,
    *,
    quantize: str | None = None,
    fp16: bool = False,
    ort_web: str | Path | None = None,
    webgpu: bool = True,
    opset: int = 17,
    checkpoint: str | Path | None = None,
    model_name: str = "mobilesam",
    onnx_dir: str | Path | None = None,
    int8: str = "weights",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the in-browser site for ``model`` (a :class:`~mobilesam.modeling.sam.Sam`)
    into ``out_dir``; returns the ``site.json`` record.

    Args:
        quantize: ``"int8"`` adds the int8 variant (the page's default then).
        fp16: adds the float16-encoder variant (WebGPU's default when present).
        ort_web: a local copy of onnxruntime-web (see :func:`mobilesam.web.runtime.copy_runtime`);
            None: ``$MOBILESAM_ORT_WEB``, else the download cache (downloaded once).
        webgpu: also ship ONNX Runtime Web's WebGPU build (~29 MB on disk, downloaded only by
            browsers with WebGPU).
        onnx_dir: take the encoders from this ``mobilesam export`` folder (verified against its
            manifest) instead of exporting them again.
        int8: what ``quantize="int8"`` writes: ``"weights"`` (the ``int8`` variant: int8
            weights, float32 arithmetic, :func:`~mobilesam.onnx.compact.store_weights_int8`),
            ``"dynamic"`` (``int8-dynamic``: ``mobilesam export``'s dynamic quantization,
            int8 arithmetic, slower than float32 in WebAssembly), or ``"both"``.
        progress: show a runtime download's progress on stderr.

    Raises:
        ValueError: ``out_dir`` is a non-empty folder that holds no site, or a bad option.
        runtime.RuntimeNotFound, runtime.RuntimeMismatch: no (valid) onnxruntime-web copy.
    """
    import torch

    from ..onnx.compact import store_conv_weights_fp16, store_weights_int8
    from ..onnx.export import (
        export_encoder,
        export_web_decoder,
        quantize_int8,
        verify_export,
        write_manifest,
    )
    from ..onnx.preprocess import export_preprocess

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if int8 not in INT8_KINDS:
        raise ValueError(f"int8 must be one of {INT8_KINDS}, got {int8!r}")
    out = Path(out_dir)
    check_site_folder(out)
    _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    backends = ("wasm", "webgpu") if webgpu else ("wasm",)
    # the runtime first: offline without a copy fails before minutes of export
    ort_sha = runtime.copy_runtime(out / "ort", ort_web, backends, progress=progress)
    if model.training or model.pixel_mean.dtype != torch.float32:
        import copy

        model = copy.deepcopy(model).float().eval()
    models = out / "models"
    models.mkdir(exist_ok=True)
    source = Path(onnx_dir) if onnx_dir is not None else None

    def encoder_file(name: str, dtype: torch.dtype) -> None:
        if source is not None:
            verify_export(source, [name])
            shutil.copyfile(source / name, models / name)
        else:
            export_encoder(model, models / name, opset, dtype)

    order = export_preprocess(models / "preprocess.onnx", opset, model.img_size)
    encoder_file("encoder.onnx", torch.float32)
    export_web_decoder(model, models / "decoder.onnx", opset)
    variants = {"fp32": {"encoder": "models/encoder.onnx", "decoder": "models/decoder.onnx"}}
    if quantize == "int8" and int8 in ("weights", "both"):
        for part in ("encoder", "decoder"):
            store_weights_int8(models / f"{part}.onnx", models / f"{part}.int8.onnx")
        variants["int8"] = {
            "encoder": "models/encoder.int8.onnx",
            "decoder": "models/decoder.int8.onnx",
        }
    if quantize == "int8" and int8 in ("dynamic", "both"):
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            for part in ("encoder", "decoder"):
                q = Path(tmp) / f"{part}.int8.onnx"
                if part == "encoder" and source is not None and (source / q.name).is_file():
                    verify_export(source, [q.name])
                    shutil.copyfile(source / q.name, q)
                else:
                    quantize_int8(models / f"{part}.onnx", q)
                store_conv_weights_fp16(q, models / f"{part}.int8-dynamic.onnx")
        variants["int8-dynamic"] = {
            "encoder": "models/encoder.int8-dynamic.onnx",
            "decoder": "models/decoder.int8-dynamic.onnx",
        }
    if fp16:
        encoder_file("encoder.fp16.onnx", torch.float16)
        variants["fp16"] = {"encoder": "models/encoder.fp16.onnx", "decoder": "models/decoder.onnx"}
    _write_page(out)
    record = _site_record(
        out, model, variants, order, ort_sha, backends, opset, checkpoint, model_name
    )
    atomic_write(out / SITE_JSON, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    files = [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file()]
    write_manifest(out, [f for f in files if f != "manifest.json"])
    return record


def _remove_previous(out: Path) -> None:
    """Before writing over an earlier site: remove the files its manifest lists (and its
    site.json first, so an interrupted export is never taken for a complete site), so no
    stale variant stays behind. Nothing else in the folder is touched."""
    from ..onnx.export import MANIFEST

    try:
        listed = json.loads((out / MANIFEST).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        listed = {}
    for name in [SITE_JSON, MANIFEST, *listed]:
        path = (out / name).resolve()
        if path.is_relative_to(out.resolve()) and path.is_file():
            path.unlink()


def _write_page(out: Path) -> None:
    static = out / "static"
    static.mkdir(exist_ok=True)
    for name in PAGE_FILES[1:]:
        data = page_file(name)
        atomic_write(static / name, lambda tmp, d=data: tmp.write_bytes(d))
    html = browser_index()
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(html))


def _site_record(
    out: Path,
    model: Any,
    variants: dict[str, dict[str, str]],
    order: str,
    ort_sha: dict[str, str],
    backends: tuple[str, ...],
    opset: int,
    checkpoint: str | Path | None,
    model_name: str,
) -> dict[str, Any]:
    from PIL import __version__ as pillow_version

    from .. import __version__
    from ..hub import sha256_file

    models = sorted({"models/preprocess.onnx", *(f for v in variants.values() for f in v.values())})
    return {
        "format": 1,
        "model": model_name,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "mobilesam_version": __version__,
        "opset": opset,
        "preprocess": "models/preprocess.onnx",
        "variants": variants,
        "default_variant": next(v for v in ("int8", "int8-dynamic", "fp32") if v in variants),
        "preprocessing": {
            "img_size": model.img_size,
            "resize": "Pillow BILINEAR on uint8 RGB, in its fixed-point arithmetic",
            "pass_order": order,
            "pillow_version": pillow_version,
        },
        "runtime": {
            "name": "onnxruntime-web",
            "version": runtime.VERSION,
            "license": "MIT",
            "source": runtime.TARBALL_URL,
            "dir": "ort/",
            "backends": list(backends),
            "entry": {b: f"ort/{runtime.ENTRY[b]}" for b in backends},
        },
        "sizes": {f: (out / f).stat().st_size for f in models},
        "sha256": {f: sha256_file(out / f) for f in models}
        | {f"ort/{name}": digest for name, digest in ort_sha.items()},
    }
