"""mobilesam: a fast, faithful MobileSAM and drop-in replacement for ``segment_anything``."""

from .automatic_mask_generator import SamAutomaticMaskGenerator
from .build import (
    MODEL_CONFIGS,
    SamConfig,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
)
from .checkpoint import CheckpointError
from .device import DeviceUnavailable, available_devices, resolve_device
from .modeling import Sam
from .predictor import (
    DegenerateEmbeddingError,
    ImageNotSetError,
    NonFiniteOutputError,
    SamPredictor,
)
from .transforms import ResizeLongestSide

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS",
    "CheckpointError",
    "DegenerateEmbeddingError",
    "DeviceUnavailable",
    "ImageNotSetError",
    "NonFiniteOutputError",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "__version__",
    "available_devices",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "resolve_device",
    "sam_model_registry",
]
