"""Input transforms: image conversion, longest-side resize, and prompt coordinate scaling.

Coordinates are (x, y) in pixels; boxes are XYXY. "Original frame" is the user's image,
"input frame" is the image resized so that its longest side is ``target_length`` (1024).
The resize matches ``segment_anything.utils.transforms.ResizeLongestSide`` bit for bit: PIL
bilinear on the uint8 image, output size rounded half-up.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate a user image and convert it to ``H×W×3`` uint8 RGB.

    Accepted:
        - ``H×W×3`` RGB or BGR (``image_format``), ``H×W×4`` RGBA/BGRA (alpha is dropped),
          ``H×W`` or ``H×W×1`` grayscale (replicated to 3 channels);
        - uint8 (0-255), uint16 (0-65535, scaled by 255/65535 and rounded), bool, other
          integer types with values in 0-255, float with values in [0, 1] (scaled by 255).

    Raises:
        ValueError: anything else, with a message saying what was expected.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H×W×3 uint8), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(
            f"image must be H×W×3 (or H×W grayscale, H×W×4 RGBA); got shape {image.shape}"
        )
    h, w, c = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if c not in (1, 3, 4):
        raise ValueError(f"image must have 1, 3 or 4 channels in the last axis, got {c}")
    image = _to_uint8(image)
    if c == 1:
        image = np.repeat(image, 3, axis=2)
    elif c == 4:
        image = image[:, :, :3]
    if image_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    dt = image.dtype
    if dt == np.uint8:
        return image
    if dt == np.uint16:
        return np.round(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if dt == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(dt, np.integer):
        if image.min() < 0 or image.max() > 255:
            raise ValueError(
                f"integer image of dtype {dt} must hold values in 0..255 "
                f"(got {image.min()}..{image.max()}); convert it to uint8 first"
            )
        return image.astype(np.uint8)
    if np.issubdtype(dt, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or inf")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image must hold values in [0, 1] (got {lo:.4g}..{hi:.4g}); "
                "pass uint8 for 0-255 data"
            )
        return np.round(image * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {dt}; expected uint8")


def resize_longest_size(size: torch.Tensor, long_side_length: int) -> torch.Tensor:
    """Traceable :meth:`ResizeLongestSide.get_preprocess_shape`: ``(2,)`` ``(H, W)`` (any
    numeric dtype) → int64 ``(h, w)`` after the resize, rounded half-up in float64 exactly as
    the Python version, so exported graphs and the predictor agree for every size."""
    size = size.to(torch.float64)
    scale = long_side_length / size.max()
    return torch.floor(size * scale + 0.5).to(torch.int64)


class ResizeLongestSide:
    """Resize images so the longest side is ``target_length``, and scale prompts to match."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """``(h, w)`` after the resize, each rounded half-up and at least 1 (SAM's rule gives
        0 for a side under half a pixel, e.g. a 1×5000 strip)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``H×W×3`` uint8 → ``h×w×3`` uint8 with PIL bilinear (antialiased) resampling."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(..., 2)`` (x, y) in the original frame → float64 in the input frame."""
        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(B, 4)`` XYXY boxes in the original frame → input frame."""
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float → resized with antialiased bilinear interpolation."""
        h, w = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_coords`; returns float32."""
        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
