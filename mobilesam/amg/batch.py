"""``BatchFilter``: the hot path of segment-everything. One batch of prompt points of one crop
goes in; the masks that pass SAM's filters come out as :class:`Candidates`, with RLE.

In SAM's order, with SAM's rules:

1. decode the points (three masks each) and keep masks whose predicted IoU passes
   ``pred_iou_thresh``, with the predictor's public batch step
   (:meth:`~mobilesam.predictor.SamPredictor.decode_points`): the IoU token comes before any
   upscaling, so a point none of whose masks passes is never upscaled;
2. a bounded chunk of survivors at a time (``max_upsample_bytes``), compute full-resolution
   values only in the blocks near the three thresholds (``threshold_blocks``);
3. stability filter, boxes, crop-edge filter, RLE, all read off those blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from .._heap import HeapTrimmer
from ..masks import is_box_near_crop_edge
from ..postprocess import block_grid, threshold_blocks
from ..predictor import SamPredictor
from .candidates import Candidates
from .settings import AmgSettings

#: ``with stage("decoder"): ...`` adds the block's seconds to that stage's time.
Stage = Callable[[str], AbstractContextManager[None]]


class BatchFilter:
    """Decodes and filters batches of prompt points on the image (or crop) that ``predictor``
    holds.

    Args:
        predictor: a predictor with the crop's image or embedding set.
        settings: the generator's settings (thresholds, batch sizes).
        stage: times the stages ``decoder``, ``upsample``, ``filter`` and ``rle``.
        heap: trimmed after each chunk, so freed full-resolution buffers go back to the OS.
    """

    def __init__(
        self, predictor: SamPredictor, settings: AmgSettings, stage: Stage, heap: HeapTrimmer
    ) -> None:
        self.predictor = predictor
        self.settings = settings
        self.stage = stage
        self.heap = heap

    def __call__(
        self, points: np.ndarray, crop_box: list[int], orig_size: tuple[int, int]
    ) -> Candidates:
        """The masks of ``(n, 2)`` points (x, y) in the crop's pixel frame that pass every
        filter; boxes and points stay in the crop's frame, RLE is of the whole
        ``orig_size = (H, W)`` image."""
        p = self.predictor
        # 1. Predicted IoU: a per-mask scalar, so the decoder filters before any upscaling.
        with self.stage("decoder"):
            low_res, iou, index = self.decode(points)
        pts = torch.from_numpy(np.asarray(points))[index.cpu()]  # on the CPU, as Candidates

        # 2. The rest is at full resolution: a bounded chunk of masks at a time.
        orig_h, orig_w = orig_size
        h, w = p.original_size
        bytes_per_mask = 4 * h * w  # when every block of a mask needs its values
        chunk = max(1, self.settings.max_upsample_bytes // bytes_per_mask)
        parts = []
        for i in range(0, low_res.shape[0], chunk):
            parts.append(
                self._filter_chunk(
                    low_res[i : i + chunk],
                    iou[i : i + chunk],
                    pts[i : i + chunk],
                    crop_box,
                    orig_h,
                    orig_w,
                )
            )
        return Candidates.cat(parts)

    def decode(self, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode ``n`` points in the crop's pixel frame (three masks each) and keep the masks
        whose predicted IoU passes ``pred_iou_thresh``
        (:meth:`SamPredictor.decode_points <mobilesam.predictor.SamPredictor.decode_points>`).

        Returns:
            low-res logits ``(k, 256, 256)`` (in the predictor's buffer: valid until the next
            call), IoUs ``(k,)`` and the index of each mask's point ``(k,)``, point-major
            (point 0's surviving masks first).
        """
        s = self.settings
        return self.predictor.decode_points(
            points, s.pred_iou_thresh, batch_size=s.decoder_batch_size
        )

    def _filter_chunk(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        pts: torch.Tensor,
        crop_box: list[int],
        orig_h: int,
        orig_w: int,
    ) -> Candidates:
        """Stability and crop-edge filters and RLE of ``(k, 256, 256)`` low-res logits."""
        p, s = self.predictor, self.settings
        t, off = p.model.mask_threshold, s.stability_score_offset
        with self.stage("upsample"):
            # full-resolution values only in the blocks near one of the three thresholds
            grid = block_grid(
                tuple(low_res.shape[-2:]), p.input_size, p.original_size, p.model.img_size, low_res
            )
            blocks = threshold_blocks(low_res, grid, (t - off, t, t + off))
        with self.stage("filter"):
            # the official order: stability, then the crop-edge test on what is left
            stability = blocks.counts(2).float() / blocks.counts(0).float()
            if s.stability_score_thresh > 0.0:
                keep = stability >= s.stability_score_thresh
                if not bool(keep.all()):
                    blocks, iou, stability = blocks.select(keep), iou[keep], stability[keep]
                    pts = pts[keep.cpu()]
            runs = blocks.runs(1)
            del blocks
            boxes = runs.boxes()
            keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            if not bool(keep.all()):
                runs, boxes, iou, stability = (
                    runs.select(keep),
                    boxes[keep],
                    iou[keep],
                    stability[keep],
                )
                pts = pts[keep.cpu()]
        with self.stage("rle"):
            rles = runs.uncrop(crop_box, orig_h, orig_w).to_rle(as_list=False)
        self.heap.trim_if_grown()
        return Candidates(
            rles=rles,
            boxes=boxes.cpu(),
            iou_preds=iou.float().cpu(),
            stability=stability.cpu(),
            points=pts,
            crop_boxes=torch.zeros(len(rles), 4, dtype=torch.long, device=pts.device),
        )
