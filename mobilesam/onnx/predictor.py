"""``OnnxPredictor``: :class:`~mobilesam.SamPredictor`'s API on an export directory, run by
ONNX Runtime on the CPU.

It shares the torch predictor's input checks, ``ResizeLongestSide`` transforms, normalisation,
prompt padding, output selection and mask upsampling, so everything in front of and behind the
model runs the same way; only the encoder and the decoder (``decoder_multimask.onnx``: all
mask tokens at low resolution) are ONNX graphs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.mask_decoder import select_outputs
from ..postprocess import upscale_masks
from ..predictor import check_embedding, check_outputs, require_image
from ..prompts import point_sequence, prepare_prompts
from ..transforms import ResizeLongestSide, prepare_image, to_rgb_uint8
from .export import verify_export

VARIANTS = ("fp32", "int8", "fp16")


def _session(path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            'OnnxPredictor needs onnxruntime: pip install "mobilesam[onnx]"'
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: export with `mobilesam export` first")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """Promptable segmentation with ONNX Runtime.

    Args:
        export_dir: a directory written by :func:`~mobilesam.onnx.export_onnx`.
        encoder: ``"fp32"``, ``"int8"`` or ``"fp16"`` encoder file; decoder: ``"fp32"`` or
            ``"int8"``.
        threads: ONNX Runtime intra-op threads (default: its own choice).
        verify: check ``model.json`` and the two files loaded against the sha256 that
            ``manifest.json`` records (:func:`~mobilesam.onnx.export.verify_export`); a
            changed or damaged file raises :class:`~mobilesam.onnx.ExportIntegrityError`
            naming it. ``False`` loads them unchecked.

    Embeddings are checked (:class:`~mobilesam.predictor.DegenerateEmbeddingError`), and
    NaN/inf scores or logits are never returned (:class:`~mobilesam.predictor.
    NonFiniteOutputError`).
    """

    def __init__(
        self,
        export_dir: str | Path,
        encoder: str = "fp32",
        decoder: str = "fp32",
        threads: int | None = None,
        *,
        verify: bool = True,
    ) -> None:
        root = Path(export_dir)
        meta_path = root / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a mobilesam export directory")
        if verify:
            verify_export(root, ["model.json"])
        try:
            self.meta = json.loads(meta_path.read_text())
            files = self.meta["files"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{meta_path} is not a mobilesam model record ({type(exc).__name__}: {exc}); "
                "export again with `mobilesam export`"
            ) from None
        if encoder not in VARIANTS or decoder not in VARIANTS[:2]:
            raise ValueError(f"encoder must be one of {VARIANTS}, decoder 'fp32' or 'int8'")
        enc_key = "encoder" if encoder == "fp32" else f"encoder_{encoder}"
        dec_key = "decoder_multimask" + ("" if decoder == "fp32" else "_int8")
        options = {"int8": "quantize='int8'", "fp16": "fp16=True", "fp32": ""}
        for key, what in ((enc_key, encoder), (dec_key, decoder)):
            if key not in files:
                part = key.split("_")[0]
                raise FileNotFoundError(
                    f"no {what} {part} in {root}: export it with "
                    f"mobilesam.onnx.export_onnx(model, out_dir{', ' if options[what] else ''}"
                    f"{options[what]})"
                )
        self.encoder_variant, self.decoder_variant = encoder, decoder
        if verify:
            verify_export(root, [files[enc_key], files[dec_key]])
        self._encoder = _session(root / files[enc_key], threads)
        self._decoder = _session(root / files[dec_key], threads)
        outputs = [o.name for o in self._decoder.get_outputs()]
        if outputs != ["iou_predictions", "low_res_masks"]:
            raise ValueError(
                f"{root / files[dec_key]} has outputs {outputs}: it was written by an older "
                "mobilesam; export again with mobilesam.onnx.export_onnx"
            )
        pre = self.meta["preprocessing"]
        self.img_size = int(pre["img_size"])
        #: ``(h, w)`` of ``mask_input`` and the low-res logits: 4× the embedding grid, whose
        #: cell is 16 input pixels
        self.mask_size = (self.img_size // 4, self.img_size // 4)
        self.mask_threshold = float(pre["mask_threshold"])
        self._mean = tuple(float(v) for v in pre["pixel_mean"])
        self._std = tuple(float(v) for v in pre["pixel_std"])
        self.transform = ResizeLongestSide(self.img_size)
        self.reset_image()

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image (same inputs and conversions as ``SamPredictor.set_image``)."""
        rgb = to_rgb_uint8(image, image_format)
        x, input_size = prepare_image(rgb, self.img_size, self._mean, self._std)
        (features,) = self._encoder.run(None, {"image": x.numpy()})
        check_embedding(
            features,
            f"OnnxPredictor ({self.encoder_variant} encoder)",
            "the float16 encoder overflowed: use the fp32 encoder"
            if self.encoder_variant == "fp16"
            else "the exported encoder returned them: was it exported from a damaged model?",
        )
        self.reset_image()
        self.features = features
        self.original_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        self.input_size = input_size
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        self._require_image()
        assert self.features is not None
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same arguments and outputs as ``SamPredictor.predict``."""
        self._require_image()
        assert self.original_size is not None and self.input_size is not None
        p = prepare_prompts(
            point_coords,
            point_labels,
            box,
            mask_input,
            self.transform,
            self.original_size,
            self.mask_size,
        )
        coords, labels, boxes, mask = p.tensors()
        points = None if coords is None else (coords, labels)
        coords, labels = point_sequence(points, boxes, batch=1)
        if mask is None:
            mask = torch.zeros(1, 1, *self.mask_size)
        has_mask = np.array([0.0 if p.mask is None else 1.0], np.float32)
        iou, low_res = self._decoder.run(
            None,
            {
                "image_embeddings": self.features,
                "point_coords": coords.numpy().astype(np.float32),
                "point_labels": labels.numpy().astype(np.float32),
                "mask_input": mask.numpy(),
                "has_mask_input": has_mask,
            },
        )
        check_outputs(
            torch.from_numpy(low_res),
            torch.from_numpy(iou),
            f"OnnxPredictor ({self.decoder_variant} decoder)",
        )
        low, scores = select_outputs(
            torch.from_numpy(low_res), torch.from_numpy(iou), multimask_output
        )
        masks = upscale_masks(low, self.input_size, self.original_size, self.img_size)
        out = masks[0] if return_logits else masks[0] > self.mask_threshold
        return out.numpy(), scores[0].numpy(), low[0].numpy()

    def _require_image(self) -> None:
        require_image(self.is_image_set)
