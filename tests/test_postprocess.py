"""Blockwise postprocessing: the plain upsampling against SAM's two resizes, and the
thresholded path (masks, counts, runs, boxes, RLE, stability) against thresholding the plain
upsampling, on random and adversarial logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilesam.masks import MaskRuns, calculate_stability_score
from mobilesam.postprocess import block_grid, threshold_blocks, upscale_masks

# (input size, original size): SAM's geometry for several aspect ratios, padded and not,
# degenerate strips, and outputs smaller than the low-res grid
GEOMETRIES = [
    ((1024, 1023), (770, 769)),
    ((683, 1024), (1365, 2048)),
    ((1024, 1), (5000, 1)),
    ((1, 1024), (1, 3000)),
    ((1024, 768), (4, 3)),
    ((1024, 1024), (1024, 1024)),
]


def _sam_upsample(x: torch.Tensor, input_size, original_size) -> torch.Tensor:
    y = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)
    y = y[..., : input_size[0], : input_size[1]]
    return F.interpolate(y, original_size, mode="bilinear", align_corners=False)


def _adversarial_logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 256, 256, generator=g) * 4
    x[1] = torch.randn(256, 256, generator=g).cumsum(0).cumsum(1) / 50  # smooth boundaries
    x[2] = 0.0  # exactly at the mask threshold
    coin = torch.rand(256, 256, generator=g) < 0.5
    x[3] = torch.where(coin, 1.0, -1.0)  # exactly at the stability thresholds
    tiny = torch.nextafter(torch.zeros(256, 256), torch.ones(256, 256))
    x[4] = tiny * torch.randint(-1, 2, (256, 256), generator=g)  # within an ulp of 0
    x[5] = 3000 * torch.tanh(x[0])  # large logits, as the fixture's
    return x


@pytest.mark.parametrize(("input_size", "original_size"), GEOMETRIES)
def test_plain_upsampling_matches_sam(input_size, original_size):
    x = _adversarial_logits(0)[None]
    ours = upscale_masks(x, input_size, original_size, 1024)
    ref = _sam_upsample(x, input_size, original_size)
    assert ours.shape == ref.shape
    # the same convex combinations in another order: float32 rounding of the magnitudes
    scale = x.abs().amax()
    assert (ours - ref).abs().max() <= 2e-6 * scale


@pytest.mark.parametrize(("input_size", "original_size"), GEOMETRIES)
@pytest.mark.parametrize("shift", [0.0, 1.0, -1e-3])
def test_thresholded_blocks_equal_thresholded_upsampling(input_size, original_size, shift):
    x = _adversarial_logits(1) + shift
    grid = block_grid((256, 256), input_size, original_size, 1024, x)
    thresholds = (-1.0, 0.0, 1.0)
    blocks = threshold_blocks(x, grid, thresholds)
    logits = upscale_masks(x[:, None], input_size, original_size, 1024)[:, 0]
    for k, t in enumerate(thresholds):
        ref = logits > t
        assert torch.equal(blocks.masks(k), ref)
        assert torch.equal(blocks.counts(k), ref.flatten(1).sum(1))
        plain, ours = MaskRuns.from_masks(ref), blocks.runs(k)
        assert torch.equal(ours.boxes(), plain.boxes())
        assert torch.equal(ours.top, plain.top) and torch.equal(ours.bottom, plain.bottom)
        rle_ours, rle_plain = ours.to_rle(), plain.to_rle()
        assert [r["counts"] for r in rle_ours] == [r["counts"] for r in rle_plain]
    stability = blocks.counts(2).double() / blocks.counts(0).double()
    expected = calculate_stability_score(logits, 0.0, 1.0).double()
    torch.testing.assert_close(stability, expected, rtol=0, atol=1e-6, equal_nan=True)
    # a selection keeps each mask's blocks
    keep = torch.tensor([True, False, True, False, False, True])
    sub = blocks.select(keep)
    assert torch.equal(sub.masks(1), (logits > 0.0)[keep])


def test_threshold_path_of_upscale_masks():
    x = _adversarial_logits(2)[None]
    masks = upscale_masks(x, (1024, 1023), (770, 769), 1024, threshold=0.0)
    assert masks.dtype == torch.bool
    assert torch.equal(masks, upscale_masks(x, (1024, 1023), (770, 769), 1024) > 0.0)


def test_no_masks_at_all():
    """Zero masks (a batch, or a chunk whose every mask the generator's filters dropped) give
    empty results of the right shape, not a reshape error."""
    assert upscale_masks(torch.zeros(0, 3, 64, 64), (256, 250), (77, 76), 256, 0.0).shape == (
        0,
        3,
        77,
        76,
    )
    grid = block_grid((64, 64), (256, 250), (77, 76), 256, torch.zeros(1))
    blocks = threshold_blocks(torch.randn(3, 64, 64), grid, (0.0, 1.0))
    none = blocks.select(torch.zeros(3, dtype=torch.bool))
    assert none.masks(0).shape == (0, 77, 76) and none.counts(1).shape == (0,)
    runs = none.runs(1)
    assert runs.top.shape == runs.bottom.shape == (0, 76)
