"""``mobilesam export``: ONNX encoder and decoder (SAM's public interface) plus model.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..onnx.export import QUANTIZE_PARTS
from .common import CliError, add_command, add_out_arg, require_extra
from .models import add_model_args, load_model

EXAMPLES = """
mobilesam export --checkpoint mobile_sam.pt --out onnx/
mobilesam export --model mobilesam --out onnx/ --quantize int8 --fp16
mobilesam export --checkpoint mobile_sam.pt --out onnx/ --quantize int8 --quantize-parts encoder
"""


def cmd_export(args: argparse.Namespace) -> int:
    """Export the model to ONNX: the image encoder and the prompt decoder.

    The decoder has SAM's public ONNX interface (point coordinates and labels, a low-res
    mask input, the original image size); it comes as decoder.onnx (one mask) and
    decoder_multimask.onnx (three). model.json records the files, the checkpoint's sha256,
    the decoder's inputs and outputs and how to preprocess a photo. --quantize int8 also
    writes dynamic int8 models, --fp16 a float16 encoder. Needs the onnx extra (pip install
    "mobilesam[onnx]").
    """
    require_extra("onnx", "onnx", "onnxruntime")
    from ..onnx.export import export_onnx

    if args.quantize_parts is not None and args.quantize is None:
        raise CliError("--quantize-parts needs --quantize int8")
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", cmd_export, EXAMPLES)
    add_model_args(p)
    add_out_arg(p, "mobilesam_onnx", "output folder")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--quantize", choices=["int8"], help="also write int8 (dynamic) models")
    p.add_argument(
        "--quantize-parts", choices=QUANTIZE_PARTS, help="what --quantize covers (default both)"
    )
    p.add_argument("--fp16", action="store_true", help="also write a float16 encoder")
