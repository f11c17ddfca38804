"""Mask postprocessing: low-res decoder logits → logits at the original image size.

SAM upsamples the ``256×256`` logits to the padded ``S×S`` encoder frame (``S = 1024``), crops
the padding away, then resizes to the original ``(H, W)``, each time with bilinear
interpolation (``align_corners=False``). Along each axis that is one banded matrix, so here
the output is computed in square blocks, each from the small patch of low-res logits it
depends on, without the ``S×S`` intermediate. Thresholded masks need only the blocks near the
threshold (:func:`threshold_blocks`). The predictor, the everything-mode generator and the
ONNX Runtime predictor call :func:`upscale_masks`; the exported ONNX graph calls
:func:`upscale_masks_graph` (gathers and weighted sums, whose sizes may be 0-d int64 tensors so
that the export keeps the original size dynamic). Each caller names the one it wants.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .engine.tuning import BLOCK, MARGIN_EPS
from .masks import MaskRuns

SizeLike = int | torch.Tensor


def upscale_masks(
    low_res_masks: torch.Tensor,
    input_size: tuple[SizeLike, SizeLike],
    original_size: tuple[SizeLike, SizeLike],
    padded_size: int,
    threshold: float | None = None,
) -> torch.Tensor:
    """SAM's ``postprocess_masks``, block by block (eager inference; the ONNX graph uses
    :func:`upscale_masks_graph`).

    Args:
        low_res_masks: ``(B, C, h, w)`` logits from the decoder (``256×256``).
        input_size: ``(h_in, w_in)`` of the resized image before padding.
        original_size: ``(H, W)`` of the original image.
        padded_size: side of the padded encoder input (1024).
        threshold: return the binary masks ``logits > threshold`` instead; only the blocks
            near the threshold are upsampled (see :func:`threshold_blocks`), with the same
            per-pixel arithmetic, so the masks are those of the thresholded logits.

    Returns:
        ``(B, C, H, W)`` logits, same dtype as the input (bool with ``threshold``).
    """
    *lead, h, w = low_res_masks.shape
    grid = block_grid(
        (h, w),
        (int(input_size[0]), int(input_size[1])),
        (int(original_size[0]), int(original_size[1])),
        padded_size,
        low_res_masks,
    )
    x = low_res_masks.reshape(-1, h, w)
    if threshold is None:
        out = grid.assemble(
            grid.values(x, grid.all_blocks(x.shape[0])).view(*grid.shape(x), BLOCK, BLOCK)
        )
    else:
        out = threshold_blocks(x, grid, (threshold,)).masks(0)
    return out.reshape(*lead, *out.shape[-2:])


def upscale_masks_graph(
    low_res_masks: torch.Tensor,
    input_size: tuple[SizeLike, SizeLike],
    original_size: tuple[SizeLike, SizeLike],
    padded_size: int,
) -> torch.Tensor:
    """SAM's ``postprocess_masks`` as one traceable graph for the ONNX export: the two
    bilinear resizes as :func:`bilinear_graph`, sizes Python ints or 0-d int64 tensors (kept
    dynamic in the trace). ``(B, C, h, w)`` logits → ``(B, C, H, W)`` logits; the same values
    as :func:`upscale_masks` to float32 rounding."""
    x = bilinear_graph(low_res_masks, padded_size, padded_size)
    x = x[..., : input_size[0], : input_size[1]]
    return bilinear_graph(x, original_size[0], original_size[1])


class AxisBlocks(NamedTuple):
    """SAM's composite resize along one axis, cut into blocks of :data:`BLOCK` outputs.

    Block ``k`` produces outputs ``k·BLOCK …`` from the low-res samples ``index[k]``
    (``(nb, W)``: its band, padded to a common width ``W`` by repeating the last sample)
    with weights ``weight[k]`` (``(nb, BLOCK, W)``; zero for padding and for outputs past
    ``size``)."""

    index: torch.Tensor
    weight: torch.Tensor
    size: int


@functools.lru_cache(maxsize=64)
def _axis_blocks(
    low: int, padded: int, valid: int, out: int, dtype: torch.dtype, device: torch.device
) -> AxisBlocks:
    m = composite_resize_matrix(low, padded, valid, out)
    nb = -(-out // BLOCK)
    m = torch.cat([m, m.new_zeros(nb * BLOCK - out, low)]).view(nb, BLOCK, low)
    nonzero = m.ne(0).any(1)  # (nb, low)
    first = nonzero.to(torch.int8).argmax(1)
    last = low - 1 - nonzero.flip(1).to(torch.int8).argmax(1)
    width = int((last - first).max()) + 1
    offsets = torch.arange(width, device=m.device)
    index = torch.minimum(first[:, None] + offsets, last[:, None])
    weight = torch.gather(m, 2, index[:, None, :].expand(nb, BLOCK, width))
    # a repeated (padding) index must not count twice
    weight = weight * (first[:, None] + offsets <= last[:, None])[:, None, :]
    return AxisBlocks(index.to(device), weight.to(device, dtype), out)


class BlockGrid(NamedTuple):
    """Both axes of SAM's postprocessing for one geometry (see :func:`block_grid`)."""

    rows: AxisBlocks
    cols: AxisBlocks

    def shape(self, x: torch.Tensor) -> tuple[int, int, int]:
        """``(n, nbr, nbc)`` blocks of ``x`` ``(n, h, w)``."""
        return x.shape[0], self.rows.index.shape[0], self.cols.index.shape[0]

    def all_blocks(self, n: int) -> torch.Tensor:
        """``(n·nbr·nbc, 3)`` (mask, block row, block column) of every block, row-major, on
        the grid's device."""
        nbr, nbc = self.rows.index.shape[0], self.cols.index.shape[0]
        dev = self.rows.index.device
        return torch.cartesian_prod(
            torch.arange(n, device=dev),
            torch.arange(nbr, device=dev),
            torch.arange(nbc, device=dev),
        )

    def values(self, x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits of the ``blocks`` ``(K, 3)`` of ``x`` ``(n, h, w)``:
        ``(K, BLOCK, BLOCK)``. Every block is two small matrix products of fixed shapes,
        ``row weights @ (patch @ column weightsᵀ)``, so a pixel's value does not depend on
        which other blocks are computed with it."""
        m, i, j = blocks.to(x.device).unbind(1)
        ri, ci = self.rows.index.to(x.device)[i], self.cols.index.to(x.device)[j]
        patch = x[m[:, None, None], ri[:, :, None], ci[:, None, :]]  # (K, Wr, Wc)
        cw = self.cols.weight.to(x.device)[j]  # (K, BLOCK, Wc)
        rw = self.rows.weight.to(x.device)[i]  # (K, BLOCK, Wr)
        return torch.bmm(rw, torch.bmm(patch, cw.transpose(1, 2)))

    def support_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest and largest low-res value in each block's support: ``(n, nbr, nbc)``."""
        ri, ci = self.rows.index.to(x.device), self.cols.index.to(x.device)
        rows = x[:, ri]  # (n, nbr, Wr, w)
        return rows.amin(2)[..., ci].amin(-1), rows.amax(2)[..., ci].amax(-1)

    def assemble(self, blocks: torch.Tensor) -> torch.Tensor:
        """``(n, nbr, nbc, BLOCK, BLOCK)`` → ``(n, H, W)`` (row-major blocks, cropped)."""
        n, nbr, nbc, b, _ = blocks.shape
        full = blocks.permute(0, 1, 3, 2, 4).reshape(n, nbr * b, nbc * b)
        return full[:, : self.rows.size, : self.cols.size].contiguous()


def block_grid(
    low_hw: tuple[int, int],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    padded_size: int,
    like: torch.Tensor,
) -> BlockGrid:
    """The :class:`BlockGrid` that takes ``low_hw`` logits to ``original_size``, in the dtype
    and on the device of ``like`` (memoised per geometry, dtype and device; treat as
    read-only)."""
    dt, dev = like.dtype, like.device
    rows = _axis_blocks(low_hw[0], padded_size, input_size[0], original_size[0], dt, dev)
    cols = _axis_blocks(low_hw[1], padded_size, input_size[1], original_size[1], dt, dev)
    return BlockGrid(rows, cols)


class ThresholdedBlocks(NamedTuple):
    """Full-resolution comparisons ``logits > t`` for several thresholds ``t``, computed
    only where needed (:func:`threshold_blocks`).

    ``decided[k]`` ``(n, nbr, nbc)`` is True where every pixel of a block lies on the same
    side of threshold ``k``, and then ``above[k]`` says which; ``mixed`` ``(K, 3)`` lists
    the blocks undecided for any threshold, whose logits ``values`` ``(K, BLOCK, BLOCK)`` were
    computed."""

    grid: BlockGrid
    thresholds: tuple[float, ...]
    above: list[torch.Tensor]
    decided: list[torch.Tensor]
    mixed: torch.Tensor
    values: torch.Tensor

    def masks(self, k: int) -> torch.Tensor:
        """``(n, H, W)`` bool: ``logits > thresholds[k]``."""
        above = self.above[k]
        n, nbr, nbc = above.shape
        full = above.new_empty(n, nbr * BLOCK, nbc * BLOCK)
        # each block row's first pixel row, then that row repeated (long contiguous copies)
        first_row = above[..., None].expand(n, nbr, nbc, BLOCK).reshape(n, nbr, 1, nbc * BLOCK)
        full.view(n, nbr, BLOCK, nbc * BLOCK).copy_(first_row.expand(-1, -1, BLOCK, -1))
        blocks = full.view(n, nbr, BLOCK, nbc, BLOCK)
        (m, i, j), inside = self._computed(k)
        if len(m):
            blocks[m, i, :, j, :] = inside
        h, w = self.grid.rows.size, self.grid.cols.size
        return full if full.shape[1:] == (h, w) else full[:, :h, :w].contiguous()

    def counts(self, k: int) -> torch.Tensor:
        """``(n,)`` int64: pixels with ``logits > thresholds[k]`` in each mask."""
        decided = self.decided[k] & self.above[k]
        total = (decided.long() * self._valid_pixels()).flatten(1).sum(1)
        (m, i, j), inside = self._computed(k)
        if len(m):  # padding pixels hold -inf (see threshold_blocks), so they never count
            hits = inside.flatten(1).sum(1, dtype=torch.int32)
            hits.mul_(~self.decided[k][m, i, j])  # those are counted above
            total.index_add_(0, m, hits.long())
        return total

    def select(self, keep: torch.Tensor) -> ThresholdedBlocks:
        """The masks where the ``(n,)`` bool ``keep`` is true, in order."""
        new_index = torch.cumsum(keep, 0) - 1
        rows = keep[self.mixed[:, 0]]
        mixed = self.mixed[rows]
        mixed[:, 0] = new_index[mixed[:, 0]]
        return self._replace(
            above=[a[keep] for a in self.above],
            decided=[d[keep] for d in self.decided],
            mixed=mixed,
            values=self.values[rows],
        )

    def _computed(self, k: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The computed blocks as ``(mask, block row, block column)`` index tensors, and their
        comparisons with threshold ``k``, ``(K, BLOCK, BLOCK)`` bool. (The blocks undecided
        for one threshold are nearly always those of the others: a mask boundary is steep.)"""
        m, i, j = self.mixed.unbind(1)
        return (m, i, j), self.values > self.thresholds[k]

    def runs(self, k: int) -> MaskRuns:
        """The masks ``logits > thresholds[k]`` as :class:`~mobilesam.masks.MaskRuns`, read
        off the blocks: a decided block has no changes inside it, so value changes down a
        column happen only inside computed blocks or between two block rows. No
        full-resolution mask is formed."""
        above = self.above[k]
        n, nbr, nbc = above.shape
        h, w, b = self.grid.rows.size, self.grid.cols.size, BLOCK
        (m, i, j), inside = self._computed(k)  # (K, B, B); other blocks are uniform
        # where each block's first and last pixel rows are computed: slot = 1 + row in inside
        slot = torch.zeros_like(above, dtype=torch.long)
        slot[m, i, j] = torch.arange(1, len(m) + 1, device=slot.device)
        parts = []
        kk, r, c = (inside[:, 1:] != inside[:, :-1]).nonzero(as_tuple=True)
        parts.append((m[kk], i[kk] * b + r + 1, j[kk] * b + c, inside[kk, r + 1, c]))
        # between block rows: whole decided pairs by block, pairs with a computed block by
        # pixel column
        upper, lower = slot[:, :-1], slot[:, 1:]
        plain = (upper == 0) & (lower == 0) & (above[:, :-1] != above[:, 1:])
        pm, pi, pj = plain.nonzero(as_tuple=True)
        cols = torch.arange(b, device=slot.device)
        rise = above[pm, pi + 1, pj]
        parts.append(
            (
                pm.repeat_interleave(b),
                ((pi + 1) * b).repeat_interleave(b),
                (pj[:, None] * b + cols).flatten(),
                rise.repeat_interleave(b),
            )
        )
        em, ei, ej = ((upper > 0) | (lower > 0)).nonzero(as_tuple=True)
        if len(em):
            last = _block_rows(above[em, ei, ej], upper[em, ei, ej], inside, -1)
            first = _block_rows(above[em, ei + 1, ej], lower[em, ei, ej], inside, 0)
            q, c = (last != first).nonzero(as_tuple=True)
            parts.append((em[q], (ei[q] + 1) * b, ej[q] * b + c, first[q, c]))
        index, row, col, rising = (torch.cat(t) for t in zip(*parts, strict=True))
        valid = (row < h) & (col < w)
        top = _block_rows(above[:, 0], slot[:, 0], inside, 0)  # (n, nbc, B)
        bottom_block, bottom_row = divmod(h - 1, b)
        bottom = _block_rows(above[:, bottom_block], slot[:, bottom_block], inside, bottom_row)
        return MaskRuns(
            h,
            w,
            top.reshape(n, nbc * b)[:, :w].contiguous(),  # sizes given: n may be 0
            bottom.reshape(n, nbc * b)[:, :w].contiguous(),
            index[valid],
            row[valid],
            col[valid],
            rising[valid],
        )

    def _valid_pixels(self) -> torch.Tensor:
        rows, cols = self.grid.rows, self.grid.cols
        dev = self.mixed.device
        r = (rows.size - BLOCK * torch.arange(rows.index.shape[0], device=dev)).clamp(max=BLOCK)
        c = (cols.size - BLOCK * torch.arange(cols.index.shape[0], device=dev)).clamp(max=BLOCK)
        return r[:, None] * c[None, :]


def _block_rows(
    above: torch.Tensor, slot: torch.Tensor, inside: torch.Tensor, row: int
) -> torch.Tensor:
    """Pixel row ``row`` of blocks: ``(..., BLOCK)`` bool, ``above`` repeated where ``slot`` is
    0 (a decided block), else row ``row`` of ``inside[slot - 1]`` (a computed one)."""
    out = above[..., None].expand(*above.shape, BLOCK).clone()
    sel = slot > 0
    if bool(sel.any()):
        out[sel] = inside[slot[sel] - 1, row]
    return out


def threshold_blocks(
    x: torch.Tensor, grid: BlockGrid, thresholds: tuple[float, ...]
) -> ThresholdedBlocks:
    """Compare the full-resolution logits of ``x`` ``(n, h, w)`` with each threshold,
    upsampling only the blocks whose low-res support straddles one of them.

    A block whose low-res support lies entirely above ``t + δ`` (or below ``t - δ``), with
    ``δ`` = :data:`~mobilesam.engine.tuning.MARGIN_EPS` × epsilon × the support's largest
    magnitude, is decided: every pixel is a convex combination of at most 4×4 values of that
    support, whose rounding error is below ~32 half-epsilons of that magnitude, so no rounding
    can carry it across ``t`` (1024 leaves a 64× safety factor; float32: δ ≈ 1.2e-4 × the
    magnitude).
    The other blocks are computed with :meth:`BlockGrid.values`, the same arithmetic as the
    plain upsampling, so every comparison equals that of the upsampled logits.
    """
    lo, hi = grid.support_range(x)
    scale, info = torch.maximum(lo.abs(), hi.abs()), torch.finfo(x.dtype)
    above, decided, undecided = [], [], None
    for t in thresholds:
        margin = torch.clamp(scale, min=abs(t)) * (MARGIN_EPS * info.eps) + info.tiny
        up, down = lo > t + margin, hi < t - margin
        above.append(up)
        decided.append(up | down)
        undecided = ~decided[-1] if undecided is None else undecided | ~decided[-1]
    mixed = undecided.nonzero()
    values = grid.values(x, mixed) if mixed.shape[0] else x.new_zeros(0, BLOCK, BLOCK)
    # pixels past the image's bottom and right edges never compare true
    nbr, nbc = lo.shape[1:]
    pad_rows, pad_cols = nbr * BLOCK - grid.rows.size, nbc * BLOCK - grid.cols.size
    # (integer indices touch only the edge blocks; a boolean mask would sweep all of them)
    if pad_rows:
        values[(mixed[:, 1] == nbr - 1).nonzero()[:, 0], BLOCK - pad_rows :] = -torch.inf
    if pad_cols:
        values[(mixed[:, 2] == nbc - 1).nonzero()[:, 0], :, BLOCK - pad_cols :] = -torch.inf
    return ThresholdedBlocks(grid, tuple(thresholds), above, decided, mixed, values)


@functools.lru_cache(maxsize=64)
def composite_resize_matrix(low: int, padded: int, valid: int, out: int) -> torch.Tensor:
    """SAM's three steps along one axis as one banded ``(out, low)`` float64 matrix: bilinear
    resize ``low → padded``, keep the first ``valid`` samples, bilinear resize ``valid →
    out``, with PyTorch's float32 weights. Each output sample is a convex combination of at
    most four adjacent low-res samples, on the CPU (a table that callers move to their device
    once). Memoised; treat as read-only."""
    cpu = torch.device("cpu")
    i0, i1, w0, w1 = _source_index(padded, low, cpu)
    j0, j1, v0, v1 = _source_index(out, valid, cpu)
    m = torch.zeros(out, low, dtype=torch.float64, device=cpu)
    rows = torch.arange(out, device=cpu)
    for j, v in ((j0, v0), (j1, v1)):
        for i, wt in ((i0, w0), (i1, w1)):
            m.index_put_((rows, i[j]), v.double() * wt[j].double(), accumulate=True)
    return m


def _source_index(
    out_size: SizeLike, in_size: SizeLike, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's half-pixel rule as its CPU kernel evaluates it: ``scale = in / out`` in
    float32, then ``src = scale * (dst + 0.5) - 0.5`` fused (one float32 rounding, emulated
    exactly in float64), clamped at 0. Returns the two source indices and their float32
    weights per output index."""
    out_i = torch.as_tensor(out_size, device=device).to(torch.int64)
    in_i = torch.as_tensor(in_size, device=device).to(torch.int64)
    scale = (in_i.to(torch.float32) / out_i.to(torch.float32)).to(torch.float64)
    dst = torch.arange(out_i, device=device).to(torch.float64)
    src = ((dst + 0.5) * scale - 0.5).to(torch.float32).clamp(min=0)
    i0 = src.to(torch.int64)
    i1 = torch.minimum(i0 + 1, in_i - 1)
    w1 = src - i0.to(torch.float32)
    return i0, i1, 1 - w1, w1


def bilinear_graph(x: torch.Tensor, out_h: SizeLike, out_w: SizeLike) -> torch.Tensor:
    """``F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)`` written as
    gathers and weighted sums, with PyTorch's float32 coordinate arithmetic and order of
    operations (columns, then rows).

    Used in the ONNX graph (:func:`upscale_masks_graph`): ONNX Runtime's ``Resize`` computes
    source coordinates with a different rounding, which at ~1000-pixel coordinates moves
    steep logits by up to 1e-2; this graph agrees with PyTorch to float32 rounding instead.
    """
    h_in, w_in = x.shape[-2], x.shape[-1]
    c0, c1, cw0, cw1 = _source_index(out_w, w_in, x.device)
    t = x.index_select(-1, c0) * cw0 + x.index_select(-1, c1) * cw1
    r0, r1, rw0, rw1 = _source_index(out_h, h_in, x.device)
    return t.index_select(-2, r0) * rw0[:, None] + t.index_select(-2, r1) * rw1[:, None]
