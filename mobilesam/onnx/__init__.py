"""Deployment: ONNX export of the encoder and decoder, and an ONNX Runtime predictor.

``export_onnx`` needs only torch; ``OnnxPredictor`` and int8 quantization need the optional
extra: ``pip install "mobilesam[onnx]"`` (onnx, onnxruntime).
"""

from .export import ExportIntegrityError, export_onnx, verify_export
from .predictor import OnnxPredictor
from .wrapper import SamOnnxDecoder

__all__ = [
    "ExportIntegrityError",
    "OnnxPredictor",
    "SamOnnxDecoder",
    "export_onnx",
    "verify_export",
]
