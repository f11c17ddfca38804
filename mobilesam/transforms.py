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


#: SAM's per-channel normalisation of 0-255 RGB (ImageNet statistics).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_and_pad(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int
) -> torch.Tensor:
    """``(B, 3, h, w)`` 0-255 RGB → ``(B, 3, size, size)``: ``(x - mean) / std`` per channel
    (``mean``/``std`` shaped ``(3, 1, 1)``), then zeros at the bottom and right."""
    x = (x - mean) / std
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


def resize_to_input(rgb: np.ndarray, img_size: int) -> torch.Tensor:
    """``H×W×3`` uint8 RGB → ``(1, 3, h, w)`` uint8, resized so that ``max(h, w) ==
    img_size`` (:meth:`ResizeLongestSide.apply_image`): what ``set_torch_image`` takes. It
    stays uint8 (a quarter of float32's bytes) until the device converts it."""
    resized = ResizeLongestSide(img_size).apply_image(rgb)
    return torch.from_numpy(resized).permute(2, 0, 1)[None]


def prepare_image(
    rgb: np.ndarray,
    img_size: int,
    pixel_mean: tuple[float, ...] = PIXEL_MEAN,
    pixel_std: tuple[float, ...] = PIXEL_STD,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The encoder's input for a photo, exactly as ``SamPredictor.set_image`` makes it.

    Args:
        rgb: ``H×W×3`` uint8 RGB.
        img_size: side of the square encoder input in pixels (1024).
        pixel_mean, pixel_std: per-channel normalisation of 0-255 values.

    Returns:
        ``(1, 3, img_size, img_size)`` float32 (resized, normalised, zero-padded at the
        bottom and right), and the resized ``(h, w)`` before padding (the input frame).
    """
    x = resize_to_input(rgb, img_size)
    mean = torch.tensor(pixel_mean).view(-1, 1, 1)
    std = torch.tensor(pixel_std).view(-1, 1, 1)
    return normalize_and_pad(x, mean, std, img_size), (int(x.shape[2]), int(x.shape[3]))


def resize_longest_size(size: torch.Tensor, long_side_length: int) -> torch.Tensor:
    """Traceable :meth:`ResizeLongestSide.get_preprocess_shape`: ``(2,)`` ``(H, W)`` (any
    numeric dtype) → int64 ``(h, w)`` after the resize, rounded half-up in float64 exactly as
    the Python version, so exported graphs and the predictor agree for every size."""
    size = size.to(torch.float64)
    # a (1,) tensor, not a 0-d one: the exporter would treat a 0-d scale as a float32 scalar
    scale = long_side_length / size.amax(0, keepdim=True)
    return torch.clamp(torch.floor(size * scale + 0.5), min=1).to(torch.int64)


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
