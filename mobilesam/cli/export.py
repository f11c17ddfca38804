"""``mobilesam export``: ONNX encoder and decoder (SAM's public interface) plus model.json;
with ``--web DIR``, a static site that runs the whole model in the browser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..onnx.export import QUANTIZE_PARTS
from .common import CliError, add_command, require_extra
from .models import add_model_args, load_model

EXAMPLES = """
mobilesam export --checkpoint mobile_sam.pt --out onnx/
mobilesam export --model mobilesam --out onnx/ --quantize int8 --fp16
mobilesam export --checkpoint mobile_sam.pt --out onnx/ --quantize int8 --quantize-parts encoder
mobilesam export --model mobilesam --web site/ --quantize int8
mobilesam export --model mobilesam --web site/ --ort-web node_modules/onnxruntime-web/dist
"""

DEFAULT_OUT = "mobilesam_onnx"


def cmd_export(args: argparse.Namespace) -> int:
    """Export the model to ONNX: the image encoder and the prompt decoder.

    The decoder has SAM's public ONNX interface (point coordinates and labels, a low-res
    mask input, the original image size); it comes as decoder.onnx (one mask) and
    decoder_multimask.onnx (three). model.json records the files, the checkpoint's sha256,
    the decoder's inputs and outputs and how to preprocess a photo. --quantize int8 also
    writes dynamic int8 models, --fp16 a float16 encoder. Needs the onnx extra (pip install
    "mobilesam[onnx]").

    --web DIR writes a self-contained static site instead: the click-to-segment page running
    the whole model in the browser with ONNX Runtime Web (onnxruntime-web, one pinned version,
    sha256-checked: from --ort-web, else downloaded once from the npm registry into the
    download cache; no npm or Node needed). Serve it with any static host, or with
    mobilesam serve --web DIR (the headers WebAssembly threads need).
    """
    require_extra("onnx", "onnx", "onnxruntime")
    if args.quantize_parts is not None and args.quantize is None:
        raise CliError("--quantize-parts needs --quantize int8")
    if args.web is not None:
        return _export_web(args)
    if args.ort_web is not None or args.no_webgpu:
        raise CliError("--ort-web and --no-webgpu go with --web DIR")
    from ..onnx.export import export_onnx
    from . import check_out_dir

    args.out = args.out or DEFAULT_OUT
    check_out_dir(args)  # (main checks --out only when given: the default is decided here)
    model, ckpt = load_model(args)
    out = Path(args.out)
    record = export_onnx(
        model,
        out,
        opset=args.opset,
        quantize=args.quantize,
        quantize_parts=args.quantize_parts or "both",
        fp16=args.fp16,
        checkpoint=ckpt,
        model_name=Path(str(ckpt)).stem,
    )
    print(f"wrote {', '.join(record['files'].values())} and model.json to {out}")
    return 0


def _export_web(args: argparse.Namespace) -> int:
    from ..web import runtime
    from ..web.site import build_site, check_site_folder

    if args.out is not None:
        raise CliError("--out and --web name two different exports: give one")
    if args.quantize_parts not in (None, "both"):
        raise CliError("--web quantizes both networks: drop --quantize-parts")
    out = Path(args.web)
    try:
        check_site_folder(out)
    except ValueError as exc:
        raise CliError(f"--web {exc}") from None
    ort_web = args.ort_web or os.environ.get(runtime.ENV) or None
    if ort_web is not None and not Path(ort_web).expanduser().exists():
        raise CliError(
            f"--ort-web {ort_web}: no such file or folder (the dist/ folder of `npm install "
            f"onnxruntime-web@{runtime.VERSION}`, or the .tgz of `npm pack`)"
        )
    model, ckpt = load_model(args)
    record = build_site(
        model,
        out,
        quantize=args.quantize,
        fp16=args.fp16,
        ort_web=ort_web,
        webgpu=not args.no_webgpu,
        opset=args.opset,
        checkpoint=ckpt,
        model_name=Path(str(ckpt)).stem,
    )
    variants = ", ".join(record["variants"])
    print(
        f"wrote the in-browser site ({variants}; onnxruntime-web {runtime.VERSION}) to {out}\n"
        f"serve it: mobilesam serve --web {out}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", cmd_export, EXAMPLES)
    add_model_args(p)
    p.add_argument(
        "--out", metavar="FOLDER", help=f"output folder (default {DEFAULT_OUT}; not with --web)"
    )
    p.set_defaults(out=None)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--quantize", choices=["int8"], help="also write int8 (dynamic) models")
    p.add_argument(
        "--quantize-parts", choices=QUANTIZE_PARTS, help="what --quantize covers (default both)"
    )
    p.add_argument("--fp16", action="store_true", help="also write a float16 encoder")
    web = p.add_argument_group("in-browser site")
    web.add_argument(
        "--web",
        metavar="DIR",
        help="write a static site that runs the model in the browser (new or empty folder)",
    )
    web.add_argument(
        "--ort-web",
        metavar="PATH",
        help="local onnxruntime-web copy: its dist/ folder or the .tgz of npm pack (default "
        "$MOBILESAM_ORT_WEB, else downloaded once into the cache)",
    )
    web.add_argument(
        "--no-webgpu", action="store_true", help="leave out the WebGPU build (WebAssembly only)"
    )
