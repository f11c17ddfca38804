"""Deployment: ONNX export of the encoder and decoder, and an ONNX Runtime predictor.

``export_onnx`` needs only torch; ``OnnxPredictor`` and int8 quantization need the optional
extra: ``pip install "mobilesam[onnx]"`` (onnx, onnxruntime). The in-browser site
(:mod:`mobilesam.web`) adds two graphs: :class:`SamOnnxPreprocess` (Pillow's resize,
normalisation and padding) and :class:`SamOnnxWebDecoder` (prompts in the photo's pixels, the
thresholded mask at its size).
"""

from .export import ExportIntegrityError, export_onnx, verify_export
from .predictor import OnnxPredictor
from .preprocess import SamOnnxPreprocess
from .wrapper import SamOnnxDecoder, SamOnnxWebDecoder

__all__ = [
    "ExportIntegrityError",
    "OnnxPredictor",
    "SamOnnxDecoder",
    "SamOnnxPreprocess",
    "SamOnnxWebDecoder",
    "export_onnx",
    "verify_export",
]
