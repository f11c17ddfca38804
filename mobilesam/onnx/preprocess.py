"""The encoder's input made inside an ONNX graph (``preprocess.onnx``), for clients without
PIL or NumPy (the in-browser page): decoded pixels in, ``encoder.onnx``'s ``image`` out.

``SamOnnxPreprocess`` does what :func:`mobilesam.transforms.prepare_image` does, with the
same numbers: the longest side resized to ``img_size`` (SAM's size rule,
:func:`~mobilesam.transforms.resize_longest_size`), Pillow's BILINEAR resampling of the uint8
image in Pillow's own fixed-point arithmetic (:func:`resize_pil_bilinear`), then
:func:`~mobilesam.transforms.normalize_and_pad`. The Python pipeline runs Pillow itself;
``tests/test_web_export.py`` checks that this graph gives the same bytes, size after size.

Pillow's resampler (``src/libImaging/Resample.c``), which this file follows step by step:

- per output index ``i`` along an axis of ``n`` inputs resized to ``m``, in float64:
  ``scale = n / m``, ``filterscale = max(scale, 1)``, ``support = filterscale`` (the
  triangle filter's support is 1), ``center = (i + 0.5) * scale``, first input
  ``xmin = max(int(center - support + 0.5), 0)``, count ``min(int(center + support + 0.5),
  n) - xmin``, weights ``triangle((xmin + j - center + 0.5) / filterscale)``, summed in
  order and normalised by their sum;
- weights in 22-bit fixed point, ``int(0.5 + w * 2**22)``; each output byte is
  ``clip8((2**21 + sum(pixel * weight)) >> 22)``;
- two passes, each rounded to bytes: the horizontal one first, except that Pillow 13 runs
  the vertical one first when the height shrinks much more than the width
  (:func:`vertical_first`). The graph follows the Pillow it was exported with.

The loop over a pass's taps (``2·ceil(scale) + 1`` per output, 3 when enlarging) and the
choice of order are scripted, so the exported graph has an ONNX ``Loop`` and ``If``: any
photo size, and no more work than the size needs.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn

from ..transforms import PIXEL_MEAN, PIXEL_STD, normalize_and_pad, resize_longest_size

#: Pillow's fixed-point precision for 8-bit images (``32 - 8 - 2``).
PRECISION_BITS = 22


def pil_bilinear_taps(
    in_size: torch.Tensor | int, out_size: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's BILINEAR resampling coefficients along one axis, as its 8-bit path uses them.

    Args:
        in_size, out_size: input and output lengths (ints or int64 tensors of one element,
            kept dynamic in a trace).

    Returns:
        ``index`` ``(out, K)`` int64, the input indices (clamped into range where the weight
        is zero), and ``weight`` ``(out, K)`` int32, the fixed-point weights
        (:data:`PRECISION_BITS`), zero past each output's window. ``K`` is Pillow's
        ``ksize``, ``2·ceil(support) + 1``.
    """
    # shaped (1,): the exporter treats 0-d tensors as scalars and would divide in float32
    n = torch.as_tensor(in_size).to(torch.int64).reshape(1)
    m = torch.as_tensor(out_size).to(torch.int64).reshape(1)
    n_f = n.to(torch.float64)
    scale = n_f / m.to(torch.float64)
    filterscale = torch.maximum(scale, torch.ones_like(scale))
    support = filterscale  # BILINEAR's support is 1.0, times filterscale
    ss = 1.0 / filterscale
    taps = (torch.ceil(support) * 2 + 1).to(torch.int64)
    center = (torch.arange(m[0]).to(torch.float64) + 0.5) * scale  # (out,)
    # C's (int) cast truncates toward zero; on the clamped, non-negative values it floors
    xmin = torch.floor(torch.clamp(center - support + 0.5, min=0.0))
    xmax = torch.minimum(torch.floor(center + support + 0.5), n_f) - xmin  # inputs used
    j = torch.arange(taps[0]).to(torch.float64)
    pos = xmin[:, None] + j  # (out, K) input index, as float64
    dist = torch.abs((pos - center[:, None] + 0.5) * ss)
    w = torch.where(dist < 1.0, 1.0 - dist, torch.zeros_like(dist))
    w = torch.where(j < xmax[:, None], w, torch.zeros_like(w))
    total = torch.cumsum(w, dim=1)[:, -1:]  # a running sum: Pillow's order, to the last bit
    w = torch.where(total != 0.0, w / total, w)
    weight = torch.floor(w * float(1 << PRECISION_BITS) + 0.5).to(torch.int32)
    index = torch.minimum(pos, n_f - 1.0).to(torch.int64)
    return index, weight


def _resample_rows(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One of Pillow's passes along the first axis: ``x`` ``(n, m)`` int32 (0-255) →
    ``(out, m)``, ``clip8((2**21 + Σ_k x[index[:, k]] · weight[:, k]) >> 22)``. Scripted for
    export (:func:`_scripted`): the loop over the taps stays a loop in the graph, as many
    taps as the sizes need."""
    acc = torch.full([index.size(0), x.size(1)], 1 << 21, dtype=torch.int32)
    for k in range(index.size(1)):
        acc = acc + x.index_select(0, index[:, k]) * weight[:, k : k + 1]
    # clip8: <= 0 → 0, >= 256 << 22 → 255, else >> 22 (of a non-negative int: truncation)
    acc = torch.clamp(acc, 0, (256 << 22) - 1)
    return torch.div(acc, 1 << 22, rounding_mode="trunc")


def _two_passes(
    x: torch.Tensor,
    index_w: torch.Tensor,
    weight_w: torch.Tensor,
    index_h: torch.Tensor,
    weight_h: torch.Tensor,
    vertical_first: torch.Tensor,
) -> torch.Tensor:
    """``x`` ``(H, W, C)`` int32 → ``(h, w, C)``: the horizontal pass then the vertical one,
    or the other way round where ``vertical_first`` (a bool tensor) says so; each pass rounds
    to bytes, so the order shows in the result."""
    rows, cols, c = x.size(0), x.size(1), x.size(2)
    h, w = index_h.size(0), index_w.size(0)
    if bool(vertical_first):
        y = _resample_rows(x.reshape(rows, cols * c), index_h, weight_h)  # (h, W·C)
        y = y.reshape(h, cols, c).permute(1, 0, 2).reshape(cols, h * c)
        y = _resample_rows(y, index_w, weight_w)  # (w, h·C)
        return y.reshape(w, h, c).permute(1, 0, 2)
    y = x.permute(1, 0, 2).reshape(cols, rows * c)
    y = _resample_rows(y, index_w, weight_w)  # (w, H·C)
    y = y.reshape(w, rows, c).permute(1, 0, 2).reshape(rows, w * c)
    y = _resample_rows(y, index_h, weight_h)  # (h, w·C)
    return y.reshape(h, w, c)


@functools.lru_cache(maxsize=1)
def _scripted():
    """:func:`_two_passes` scripted (with :func:`_resample_rows`), for tracing: its loop and
    its branch become an ONNX ``Loop`` and ``If``. Made on first use, not at import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice (as export's)
        return torch.jit.script(_two_passes)


def vertical_first(
    in_h: torch.Tensor, in_w: torch.Tensor, out_h: torch.Tensor, out_w: torch.Tensor
) -> torch.Tensor:
    """Pillow 13's order of passes (python-pillow/Pillow#9549): the vertical pass first when
    the height shrinks by more than twice as many pixels as the width; earlier versions
    always run the horizontal pass first (``order`` of :func:`resize_pil_bilinear`). The
    rule is read off Pillow 13.0's output (no difference on ~400 random size pairs, both
    orders telling apart); ``tests/test_web_export.py`` checks a tall photo against the
    installed Pillow."""
    return (out_h < in_h) & ((in_h - out_h) > 2 * (in_w - out_w))


def resize_order(order: str = "auto") -> str:
    """``"pillow13"`` or ``"horizontal"`` (see :func:`resize_pil_bilinear`); ``"auto"`` names
    the installed Pillow's."""
    if order == "auto":
        from PIL import __version__

        return "pillow13" if int(__version__.split(".")[0]) >= 13 else "horizontal"
    if order not in ("pillow13", "horizontal"):
        raise ValueError(f"order must be 'auto', 'pillow13' or 'horizontal', got {order!r}")
    return order


def resize_pil_bilinear(
    image: torch.Tensor,
    out_h: torch.Tensor | int,
    out_w: torch.Tensor | int,
    order: str = "auto",
) -> torch.Tensor:
    """``Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR)``, byte for byte.

    Args:
        image: ``H×W×C`` uint8 (or int32 holding 0-255).
        out_h, out_w: the output size (ints or int64 tensors of one element).
        order: the order of the two passes: ``"pillow13"`` (vertical first where
            :func:`vertical_first` says so), ``"horizontal"`` (Pillow up to 12), or
            ``"auto"``, the installed Pillow's.

    Returns:
        ``out_h×out_w×C`` int32 holding 0-255.
    """
    order = resize_order(order)
    x = image.to(torch.int32)
    shape = torch._shape_as_tensor(x)
    h = torch.as_tensor(out_h).to(torch.int64).reshape(1)
    w = torch.as_tensor(out_w).to(torch.int64).reshape(1)
    index_w, weight_w = pil_bilinear_taps(shape[1:2], w)
    index_h, weight_h = pil_bilinear_taps(shape[0:1], h)
    first = vertical_first(shape[0:1], shape[1:2], h, w)
    if order == "horizontal":
        first = first & torch.zeros_like(first)
    passes = _scripted() if torch.jit.is_tracing() else _two_passes
    return passes(x, index_w, weight_w, index_h, weight_h, first[0])


class SamOnnxPreprocess(nn.Module):
    """``pixels`` ``(H, W, C)`` uint8, RGB or RGBA (alpha dropped) as a canvas decodes them
    → ``image`` ``(1, 3, S, S)`` float32 (``encoder.onnx``'s input: resized, normalised,
    zero-padded at the bottom and right) and ``input_size`` ``(2,)`` int64, ``(h, w)`` of the
    resized photo before padding (the input frame).

    ``order``: the Pillow whose order of passes to follow (:func:`resize_pil_bilinear`);
    ``"auto"`` resolves to the installed one when the module is made."""

    def __init__(
        self,
        img_size: int = 1024,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
        order: str = "auto",
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.order = resize_order(order)
        self.register_buffer("mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = pixels[:, :, :3]
        size = resize_longest_size(torch._shape_as_tensor(rgb)[:2], self.img_size)
        resized = resize_pil_bilinear(rgb, size[0:1], size[1:2], self.order)
        x = resized.to(torch.uint8).permute(2, 0, 1)[None]
        return normalize_and_pad(x, self.mean, self.std, self.img_size), size


def export_preprocess(path: Path, opset: int, img_size: int = 1024, order: str = "auto") -> str:
    """Write ``preprocess.onnx`` (:class:`SamOnnxPreprocess`) to ``path``; returns the order of
    passes it follows (``"pillow13"`` or ``"horizontal"``)."""
    from .export import _export

    module = SamOnnxPreprocess(img_size, order=order).eval()
    # an odd RGBA photo: nothing sized from the dummy can pass the parity tests
    dummy = torch.randint(0, 256, (333, 517, 4), dtype=torch.uint8)
    with torch.no_grad():
        _export(
            module,
            (dummy,),
            path,
            opset,
            input_names=["pixels"],
            output_names=["image", "input_size"],
            dynamic_axes={"pixels": {0: "height", 1: "width", 2: "channels"}},
        )
    return module.order
