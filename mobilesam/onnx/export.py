"""``export_onnx``: write ``encoder.onnx``, ``decoder.onnx`` (SAM's public interface, best
mask), ``decoder_multimask.onnx`` (all mask tokens at low resolution, for
:class:`OnnxPredictor`) and
``model.json``; optionally int8 (ONNX Runtime dynamic quantization) and fp16 encoder variants.
Last, ``manifest.json`` records every file's sha256 (:func:`verify_export` checks them).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write
from ..modeling.sam import Sam
from ..transforms import PIXEL_MEAN, PIXEL_STD
from .wrapper import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    TOKEN_OUTPUT_NAMES,
    SamOnnxDecoder,
    SamOnnxEncoder,
    SamOnnxTokenDecoder,
)

QUANTIZE_PARTS = ("encoder", "decoder", "both")

#: Beside the exported files: ``{"sha256": {file name: hex digest}}`` of each of them and of
#: ``model.json``; written last, so its presence marks a complete export.
MANIFEST = "manifest.json"


class ExportIntegrityError(ValueError):
    """An export directory's file does not match the sha256 its ``manifest.json`` records
    (changed or damaged after export), or the manifest is missing or unreadable."""


def _export(module: torch.nn.Module, args: tuple, path: Path, opset: int, **kw: Any) -> None:
    with warnings.catch_warnings():
        # The TorchScript-based exporter (deprecated upstream, still supported) handles the
        # data-dependent sizes SAM's interface needs (orig_im_size) without extra packages.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            **kw,
        )


def export_encoder(model: Sam, path: Path, opset: int, dtype: torch.dtype = torch.float32) -> None:
    s = model.img_size
    enc = SamOnnxEncoder(model, dtype).eval()
    if dtype != torch.float32:
        enc = copy.deepcopy(enc).to(dtype)  # the caller's model stays as it is
    with torch.no_grad():
        _export(
            enc,
            (torch.zeros(1, 3, s, s),),
            path,
            opset,
            input_names=["image"],
            output_names=["image_embeddings"],
        )


def export_decoder(
    model: Sam, path: Path, opset: int, return_single_mask: bool = True, tokens: bool = False
) -> None:
    """SAM's ONNX decoder (:class:`SamOnnxDecoder`), or with ``tokens`` the low-res
    all-token graph (:class:`SamOnnxTokenDecoder`) that :class:`OnnxPredictor` runs."""
    c, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    mh, mw = model.prompt_encoder.mask_input_size
    # Dummy sizes deliberately unusual, so nothing sized from them can pass the tests.
    args: tuple[torch.Tensor, ...] = (
        torch.randn(1, c, h, w),
        torch.randint(0, model.img_size, (1, 3, 2)).float(),
        torch.tensor([[1.0, 0.0, -1.0]]),
        torch.randn(1, 1, mh, mw),
        torch.tensor([1.0]),
        torch.tensor([577.0, 931.0]),
    )
    points = {1: "num_points"}
    if tokens:
        dec: torch.nn.Module = SamOnnxTokenDecoder(model)
        args, outputs, dynamic = args[:5], TOKEN_OUTPUT_NAMES, {}
    else:
        dec = SamOnnxDecoder(model, return_single_mask)
        outputs, dynamic = OUTPUT_NAMES, {"masks": {2: "height", 3: "width"}}
    with torch.no_grad():
        _export(
            dec.eval(),
            args,
            path,
            opset,
            input_names=list(INPUT_NAMES[: len(args)]),
            output_names=list(outputs),
            dynamic_axes={"point_coords": points, "point_labels": points, **dynamic},
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantization of the MatMul/Gemm weights to int8."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ImportError(
            'int8 quantization needs onnxruntime: pip install "mobilesam[onnx]"'
        ) from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quiet its "consider pre-processing" advice
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        root.setLevel(level)


def export_onnx(
    model: Sam,
    out_dir: str | Path,
    *,
    opset: int = 17,
    quantize: str | None = None,
    quantize_parts: str = "both",
    fp16: bool = False,
    checkpoint: str | Path | None = None,
    model_name: str = "mobilesam",
) -> dict[str, Any]:
    """Export ``model`` to ``out_dir``; returns the ``model.json`` record.

    Args:
        quantize: ``"int8"`` adds ``*.int8.onnx`` files for ``quantize_parts``
            (``"encoder"``, ``"decoder"`` or ``"both"``).
        fp16: adds ``encoder.fp16.onnx``: the encoder in float16 behind the float32 interface
            (for GPU execution providers; ONNX Runtime's CPU provider lacks fp16 kernels for
            most of it).
        checkpoint: the weights file, for its sha256 in ``model.json``.

    Last, :data:`MANIFEST` records the sha256 of every file written (``model.json``
    included), which :class:`~mobilesam.onnx.OnnxPredictor` verifies at load.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize_parts not in QUANTIZE_PARTS:
        raise ValueError(f"quantize_parts must be one of {QUANTIZE_PARTS}, got {quantize_parts!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.training or model.pixel_mean.dtype != torch.float32:
        model = copy.deepcopy(model).float().eval()  # export fp32; the caller's model is kept
    files = _export_files(model, out, opset, quantize, quantize_parts, fp16)
    record = _model_record(model, files, opset, checkpoint, model_name)
    atomic_write(out / "model.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    write_manifest(out, [*files.values(), "model.json"])
    return record


def write_manifest(out: Path, names: Iterable[str]) -> dict[str, Any]:
    """Write :data:`MANIFEST` in ``out`` (atomically) with the sha256 of each of ``names``
    (files in ``out``); returns its record."""
    from ..hub import sha256_file

    record = {"sha256": {name: sha256_file(out / name) for name in sorted(set(names))}}
    text = json.dumps(record, indent=2)
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(text))
    return record


def verify_export(root: Path, names: Iterable[str]) -> None:
    """Check files ``names`` of the export directory ``root`` against the sha256 that its
    :data:`MANIFEST` records.

    Raises:
        ExportIntegrityError: no or an unreadable manifest, a file it does not list, or a
            file whose sha256 differs (one line naming the file).
        FileNotFoundError: a listed file is missing.
    """
    from ..hub import sha256_file

    path = root / MANIFEST
    skip = "export again (`mobilesam export`), or pass verify=False to load it unchecked"
    if not path.is_file():
        raise ExportIntegrityError(
            f"{path} not found: the files in {root} cannot be verified (an export by an older "
            f"mobilesam, or an incomplete one); {skip}"
        )
    try:
        hashes = json.loads(path.read_text())["sha256"]
        if not isinstance(hashes, dict):
            raise TypeError(f"'sha256' is a {type(hashes).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportIntegrityError(f"{path} is damaged ({reason}); {skip}") from None
    for name in names:
        file = root / name
        expected = hashes.get(name)
        if not isinstance(expected, str):
            raise ExportIntegrityError(f"{path} records no sha256 for {name}; {skip}")
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: export again with `mobilesam export`")
        actual = sha256_file(file)
        if actual != expected.lower():
            raise ExportIntegrityError(
                f"{file}: its sha256 {actual[:16]}… differs from the {expected[:16]}… that "
                f"{MANIFEST} records: the file changed or was damaged after export; {skip}"
            )


def _export_files(
    model: Sam, out: Path, opset: int, quantize: str | None, quantize_parts: str, fp16: bool
) -> dict[str, str]:
    """Write the ONNX files into ``out``; returns ``{part: file name}`` for ``model.json``."""
    files = {
        "encoder": "encoder.onnx",
        "decoder": "decoder.onnx",
        "decoder_multimask": "decoder_multimask.onnx",
    }
    export_encoder(model, out / files["encoder"], opset)
    export_decoder(model, out / files["decoder"], opset, return_single_mask=True)
    export_decoder(model, out / files["decoder_multimask"], opset, tokens=True)
    if quantize == "int8":
        parts = {
            "encoder": ["encoder"],
            "decoder": ["decoder", "decoder_multimask"],
            "both": ["encoder", "decoder", "decoder_multimask"],
        }[quantize_parts]
        for part in parts:
            name = files[part].replace(".onnx", ".int8.onnx")
            quantize_int8(out / files[part], out / name)
            files[f"{part}_int8"] = name
    if fp16:
        export_encoder(model, out / "encoder.fp16.onnx", opset, torch.float16)
        files["encoder_fp16"] = "encoder.fp16.onnx"
    return files


def _model_record(
    model: Sam,
    files: dict[str, str],
    opset: int,
    checkpoint: str | Path | None,
    model_name: str,
) -> dict[str, Any]:
    """The ``model.json`` record: files, provenance, and the preprocessing contract."""
    from .. import __version__
    from ..hub import sha256_file

    return {
        "model": model_name,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "mobilesam_version": __version__,
        "opset": opset,
        "files": files,
        "preprocessing": {
            "img_size": model.img_size,
            "resize": "longest side to img_size, PIL bilinear on uint8 RGB, half-up rounding",
            "pixel_mean": list(PIXEL_MEAN),
            "pixel_std": list(PIXEL_STD),
            "pad": "zeros at the bottom and right after normalisation, to img_size²",
            "mask_threshold": model.mask_threshold,
        },
        "decoder_inputs": list(INPUT_NAMES),
        "decoder_outputs": list(OUTPUT_NAMES),
        "decoder_multimask_outputs": list(TOKEN_OUTPUT_NAMES),
    }


def export_web_decoder(model: Sam, path: Path, opset: int) -> None:
    """Write the in-browser page's decoder (:class:`SamOnnxWebDecoder`: prompts in the
    photo's pixels, the thresholded mask at its size) to ``path``."""
    from .wrapper import WEB_INPUT_NAMES, WEB_OUTPUT_NAMES, SamOnnxWebDecoder

    c, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    # dummy sizes deliberately unusual, so nothing sized from them can pass the tests
    args = (
        torch.randn(1, c, h, w),
        torch.tensor([[[120.0, 95.0], [10.0, 20.0], [300.0, 211.0]]]),
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.tensor([577.0, 931.0]),
        torch.tensor([1.0]),
    )
    with torch.no_grad():
        _export(
            SamOnnxWebDecoder(model).eval(),
            args,
            path,
            opset,
            input_names=list(WEB_INPUT_NAMES),
            output_names=list(WEB_OUTPUT_NAMES),
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
                "mask": {0: "height", 1: "width"},
            },
        )
