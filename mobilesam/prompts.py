"""Prompts: checking what users pass, and SAM's layout of points and boxes.

Shared by :class:`~mobilesam.SamPredictor`, the ONNX Runtime predictor, the HTTP API and the
CLI, so every front door accepts and rejects the same prompts. Coordinates are (x, y) pixels;
boxes are XYXY. Labels: 1 foreground, 0 background, -1 padding (not a point), 2 and 3 a box's
top-left and bottom-right corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .transforms import ResizeLongestSide

VALID_LABELS = (-1, 0, 1, 2, 3)

#: How far outside the image a prompt may lie, in image sizes. SAM accepts any coordinate,
#: but far beyond the image the positional encoding's sin/cos lose all precision and the
#: scores become NaN.
PROMPT_REACH = 10

#: Largest magnitude of a ``mask_input`` logit. Real low-res logits stay within a few
#: thousand (the fixture's steep ones; trained weights give tens); far beyond, the mask
#: encoder's LayerNorm squares overflow float32 and every score becomes NaN.
MASK_INPUT_LIMIT = 1e6


def _real_array(value: object, name: str) -> np.ndarray:
    """``value`` as a float64 array, or one ValueError naming ``name`` when it is not real
    numbers (strings, complex numbers, dates, ragged lists, Python ints beyond float64)."""
    try:
        a = np.asarray(value)
        if a.dtype.kind == "O":  # Python objects: numbers convert, anything else fails
            a = a.astype(np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ValueError(
            f"{name} must be an array of numbers ({type(exc).__name__}: {reason})"
        ) from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got an array of dtype {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: inf, refused below
        return a.astype(np.float64, copy=False)


def _some_values(values: np.ndarray, limit: int = 5) -> str:
    shown = np.unique(values)[:limit].tolist()
    return f"{shown}{' …' if np.unique(values).size > limit else ''}"


def check_points(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` float64 (x, y) and ``(N,)`` int64 labels, or ValueError saying what is wrong
    (only one of the two given, shapes, NaN/inf, labels outside :data:`VALID_LABELS`)."""
    if point_coords is None or point_labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    coords = _real_array(point_coords, "point_coords")
    labels = _real_array(point_labels, "point_labels")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must have shape (N, 2) with N >= 1, got {coords.shape}")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_labels must have shape (N,) matching point_coords' N={coords.shape[0]}, "
            f"got {labels.shape}"
        )
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contains NaN or inf")
    if not np.isin(labels, VALID_LABELS).all():
        raise ValueError(
            "point_labels must be 1 (foreground), 0 (background), -1 (padding) or 2/3 (box "
            f"corners); got {_some_values(labels)}"
        )
    return coords, labels.astype(np.int64)


def check_box(box: np.ndarray) -> np.ndarray:
    """``(4,)`` or ``(1, 4)`` XYXY → ``(1, 4)`` float64, or ValueError (shape, NaN/inf,
    corners out of order)."""
    b = _real_array(box, "box")
    if b.shape not in ((4,), (1, 4)):
        raise ValueError(f"box must have shape (4,) or (1, 4) as XYXY, got {b.shape}")
    b = b.reshape(1, 4)
    if not np.isfinite(b).all():
        raise ValueError("box contains NaN or inf")
    if b[0, 2] < b[0, 0] or b[0, 3] < b[0, 1]:
        raise ValueError(f"box must be XYXY with x1 >= x0 and y1 >= y0, got {b[0].tolist()}")
    return b


def check_mask_input(mask_input: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """``mask_input`` as float32 of shape ``expected`` (``(1, 256, 256)``), or ValueError
    (shape, NaN/inf, a magnitude beyond :data:`MASK_INPUT_LIMIT`)."""
    m = _real_array(mask_input, "mask_input")
    if m.shape != expected:
        raise ValueError(
            f"mask_input must have shape {expected} (the low-res logits of one mask from a "
            f"previous predict call, e.g. low_res[best][None]); got {m.shape}"
        )
    if not np.isfinite(m).all():
        raise ValueError("mask_input contains NaN or inf")
    peak = float(np.abs(m).max(initial=0.0))
    if peak > MASK_INPUT_LIMIT:
        raise ValueError(
            f"mask_input must be low-res logits within ±{MASK_INPUT_LIMIT:g} (beyond, the "
            f"decoder overflows), got {peak:.3g}"
        )
    return m.astype(np.float32)


def check_prompt_reach(name: str, coords: object, original_size: tuple[int, int]) -> None:
    """ValueError naming ``name`` (the caller's term for the prompt) when a coordinate lies
    more than :data:`PROMPT_REACH` image sizes from the image (``original_size`` ``(H, W)``).
    Front ends call it with their own field or flag names."""
    values = np.abs(_real_array(coords, name))
    reach = PROMPT_REACH * max(original_size)
    if values.max(initial=0.0) > reach:
        raise ValueError(
            f"{name} must lie within ±{reach} pixels of the image ({PROMPT_REACH}× its size), "
            f"got {values.max():.3g}"
        )


def check_prompt_tensors(
    point_coords: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    reach: float,
) -> None:
    """ValueError naming the argument when ``SamPredictor.predict_torch``'s prompts (in the
    input frame) hold NaN/inf, when a coordinate lies beyond ``reach`` pixels (see
    :data:`PROMPT_REACH`), or when ``mask_input`` exceeds :data:`MASK_INPUT_LIMIT`. One pass
    over each tensor, without a copy of it."""
    for name, t, limit, what in (
        ("point_coords", point_coords, reach, "pixels of the input frame"),
        ("boxes", boxes, reach, "pixels of the input frame"),
        ("mask_input", mask_input, MASK_INPUT_LIMIT, "(low-res logits)"),
    ):
        if t is None or t.numel() == 0:
            continue
        t = t.detach()
        lo, hi = torch.aminmax(t if t.is_floating_point() else t.double())
        peak = max(-float(lo), float(hi))  # NaN propagates to lo and hi
        if not np.isfinite(peak):
            raise ValueError(f"{name} contains NaN or inf")
        if peak > limit:
            raise ValueError(f"{name} must lie within ±{limit:g} {what}, got {peak:.3g}")


@dataclass(frozen=True)
class Prompts:
    """One image's checked prompts, in the input frame (the resized image), as the
    predictors pass them on. Absent prompts are None."""

    coords: np.ndarray | None  # (N, 2) float64 (x, y) pixels
    labels: np.ndarray | None  # (N,) int64
    box: np.ndarray | None  # (1, 4) float64 XYXY pixels
    mask: np.ndarray | None  # (1, 4h, 4w) float32 low-res logits

    def tensors(
        self, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The batch of one that ``SamPredictor.predict_torch`` takes, on ``device``:
        coordinates ``(1, N, 2)`` float32, labels ``(1, N)`` int64, box ``(1, 4)`` float32 and
        mask ``(1, 1, 4h, 4w)`` float32, each None where absent."""

        def batch_of_one(a: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)[None]

        box = batch_of_one(self.box, torch.float32)
        return (
            batch_of_one(self.coords, torch.float32),
            batch_of_one(self.labels, torch.int64),
            None if box is None else box[0],
            batch_of_one(self.mask, torch.float32),
        )


def prepare_prompts(
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    transform: ResizeLongestSide,
    original_size: tuple[int, int],
    mask_size: tuple[int, int],
) -> Prompts:
    """Check ``SamPredictor.predict``'s prompts (points and box in the original image frame,
    ``(H, W)`` ``original_size``) and map them to the input frame with ``transform``;
    ``mask_input`` must be ``(1, *mask_size)``. ValueError names the argument at fault."""
    coords = labels = boxes = mask = None
    if point_coords is not None or point_labels is not None:
        coords, labels = check_points(point_coords, point_labels)
        check_prompt_reach("point_coords", coords, original_size)
        coords = transform.apply_coords(coords, original_size)
    if box is not None:
        boxes = check_box(box)
        check_prompt_reach("box", boxes, original_size)
        boxes = transform.apply_boxes(boxes, original_size)
    if mask_input is not None:
        mask = check_mask_input(mask_input, (1, *mask_size))
    return Prompts(coords, labels, boxes, mask)


def point_sequence(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's sparse prompt layout: the points, then each box as two corner points labelled 2
    and 3; points without a box get one padding point ``(0, 0)`` labelled -1.

    Args:
        points: ``(coords (B, N, 2) float, labels (B, N) int)`` or None.
        boxes: ``(B, 4)`` XYXY or None.
        batch: ``B``, used when both are None.

    Returns:
        ``(B, M, 2)`` float coordinates and ``(B, M)`` labels (``M`` may be 0), in the frame
        of the inputs. This is the ``point_coords``/``point_labels`` pair of SAM's ONNX decoder.
    """
    if points is None and boxes is None:
        return torch.zeros(batch, 0, 2), torch.zeros(batch, 0, dtype=torch.int64)
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if points is not None:
        coords.append(points[0])
        labels.append(points[1])
    if boxes is not None:
        corners = boxes.reshape(-1, 2, 2)
        coords.append(corners.to(coords[0].dtype) if coords else corners)
        corner_labels = torch.tensor([2, 3], device=boxes.device).expand(corners.shape[0], 2)
        labels.append(corner_labels.to(labels[0].dtype) if labels else corner_labels)
    else:
        pad = coords[0].new_zeros((coords[0].shape[0], 1, 2))
        coords.append(pad)
        labels.append(-labels[0].new_ones((labels[0].shape[0], 1)))
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)
