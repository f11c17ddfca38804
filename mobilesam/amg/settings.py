"""``AmgSettings``: the arguments of ``SamAutomaticMaskGenerator``, checked once, and the plan
they make for an image: the point grid of each crop layer and the crops.

Every check raises a ``ValueError`` (an ``ImportError`` for a missing optional package) that
names the argument, in ``segment_anything``'s terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..masks import build_all_layer_point_grids, generate_crop_boxes

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class Crop(NamedTuple):
    """One crop of the image and the prompt points decoded in it.

    Attributes:
        box: XYXY pixels of the crop in the image, ``[x0, y0, x1, y1]``.
        layer: crop layer (0: the whole image).
        points: ``(N, 2)`` float64 prompt points (x, y), in the crop's pixel frame.
    """

    box: list[int]
    layer: int
    points: np.ndarray


@dataclass(frozen=True, eq=False)
class AmgSettings:
    """The generator's settings, as ``SamAutomaticMaskGenerator`` documents them.

    Exactly one of ``points_per_side`` and ``point_grids`` is given; ``layer_grids`` is what
    either makes: one ``(N, 2)`` float64 grid of (x, y) in ``[0, 1]`` per crop layer.
    """

    points_per_side: int | None
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    crop_n_layers: int
    crop_nms_thresh: float
    crop_overlap_ratio: float
    crop_n_points_downscale_factor: int
    point_grids: Sequence[np.ndarray] | None
    min_mask_region_area: int
    output_mode: str
    decoder_batch_size: int | None
    max_upsample_bytes: int
    layer_grids: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        self._check_counts()
        self._check_thresholds()
        object.__setattr__(self, "layer_grids", self._build_grids())
        if self.output_mode == "coco_rle":
            _require("pycocotools", "output_mode='coco_rle'")
        if self.min_mask_region_area > 0:
            _require("scipy", "min_mask_region_area > 0")

    def _check_counts(self) -> None:
        _check_positive_int("points_per_batch", self.points_per_batch)
        _check_positive_int("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor)
        _check_int("crop_n_layers", self.crop_n_layers, 0)
        if self.decoder_batch_size is not None:
            _check_positive_int("decoder_batch_size", self.decoder_batch_size)
        _check_positive_int("max_upsample_bytes", self.max_upsample_bytes)

    def _check_thresholds(self) -> None:
        for name, hi in (
            ("pred_iou_thresh", 1.0),
            ("stability_score_thresh", 1.0),
            ("box_nms_thresh", 1.0),
            ("crop_nms_thresh", 1.0),
            ("crop_overlap_ratio", 1.0),
            ("stability_score_offset", float("inf")),
            ("min_mask_region_area", float("inf")),
        ):
            _check_number(name, getattr(self, name), 0.0, hi)

    def _build_grids(self) -> list[np.ndarray]:
        if self.points_per_side is not None:
            _check_positive_int("points_per_side", self.points_per_side)
            return build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        grids = [_check_grid(g, i) for i, g in enumerate(self.point_grids or [])]
        if len(grids) != self.crop_n_layers + 1:
            raise ValueError(
                f"point_grids needs one grid per layer: crop_n_layers + 1 = "
                f"{self.crop_n_layers + 1}, got {len(grids)}"
            )
        return grids

    def crops(self, image_size: tuple[int, int]) -> list[Crop]:
        """SAM's crops of an ``(H, W)`` image, the whole image first, each with its layer's
        grid scaled to the crop's pixels."""
        boxes, layers = generate_crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = []
        for box, layer in zip(boxes, layers, strict=True):
            x0, y0, x1, y1 = box
            crop_size = np.array([[x1 - x0, y1 - y0]])  # (w, h) pixels
            crops.append(Crop(box, layer, self.layer_grids[layer] * crop_size))
        return crops


def _check_number(name: str, value: object, lo: float, hi: float) -> None:
    """``value`` a finite real number in ``[lo, hi]``, else a ValueError naming the
    argument."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )
    if not (number and np.isfinite(float(value)) and lo <= float(value) <= hi):
        bound = f"in [{lo:g}, {hi:g}]" if np.isfinite(hi) else f">= {lo:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_positive_int(name: str, value: object) -> None:
    _check_int(name, value, 1)


def _check_int(name: str, value: object, lo: int) -> None:
    """An int (Python or NumPy, not bool) of at least ``lo``, or ValueError naming ``name``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def _check_grid(grid: np.ndarray, layer: int) -> np.ndarray:
    """The grid as a read-only float64 copy (a caller's later edit cannot bypass the check)."""
    g = np.array(grid, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
        raise ValueError(f"point_grids[{layer}] must have shape (N, 2), got {g.shape}")
    if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
        raise ValueError(f"point_grids[{layer}] must hold (x, y) in [0, 1]")
    g.flags.writeable = False
    return g


def _require(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"{why} needs the '{module}' package: pip install {module}") from None
