"""``BatchFilter``: the hot path of segment-everything. One batch of prompt points of one crop
goes in; the masks that pass SAM's filters come out as :class:`Candidates`, with RLE.

In SAM's order, with SAM's rules:

1. decode the points (three masks each) and keep masks whose predicted IoU passes
   ``pred_iou_thresh``: the IoU token comes before any upscaling, so a point none of whose
   masks passes is never upscaled;
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
from ..modeling.common import Workspace
from ..modeling.decoder_cache import decode_tokens
from ..postprocess import block_grid, threshold_blocks
from ..predictor import SamPredictor, check_outputs
from .candidates import Candidates
from .settings import AmgSettings

#: ``with stage("decoder"): ...`` adds the block's seconds to that stage's time.
Stage = Callable[[str], AbstractContextManager[None]]


#: Prompts per decoder call on CPU. With the native kernels (whose tasks are sized for the
#: cache whatever the batch), larger batches amortise the per-call work: measured on a 2-core
#: Xeon (AMX), picture1 at 32×32 in float32, 8: 13.0 s, 32: 12.3 s, 48: 11.8 s, 64: 11.2-11.4 s;
#: in bf16 with the reused workspace, 32: 7.0 s, 48: 7.0 s (633-645 MiB peak RSS), 64:
#: 6.7-6.8 s (698-705 MiB, close to the 0.75 GiB goal: the factored image tokens take ~2 MB
#: per prompt).
CPU_DECODER_BATCH = 48

#: Names the generator in errors.
WHERE = "SamAutomaticMaskGenerator"


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
        #: the decoder's image tokens and the batch's logits, reused batch after batch
        self.workspace = Workspace()

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
        pts = torch.as_tensor(points)[index.cpu()]

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
        whose predicted IoU passes ``pred_iou_thresh``.

        Returns:
            low-res logits ``(k, 256, 256)`` (in :attr:`workspace`: valid until the next
            call), IoUs ``(k,)`` and the index of each mask's point ``(k,)``, point-major
            (point 0's surviving masks first).
        """
        p, thresh, ws = self.predictor, self.settings.pred_iou_thresh, self.workspace
        device, decoder, cache = p.device, p.model.mask_decoder, p.decoder_cache()
        coords = p.transform.apply_coords(points, p.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[:, None, :]
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=device)
        # bounded groups on CPU: the factored image tokens take ~2 MB per prompt
        step = self.settings.decoder_batch_size or (
            len(points) if device.type != "cpu" else CPU_DECODER_BATCH
        )
        size = p.model.prompt_encoder.mask_input_size
        per_point = decoder.num_multimask_outputs
        # every surviving mask's logits go straight into one buffer, reused batch after batch
        low = ws.get("low_res", (per_point * len(points), *size), coords_t)
        count, iou, index = 0, [], []
        for i in range(0, len(points), step):
            sparse, _ = p.encode_prompts(coords_t[i : i + step], labels_t[i : i + step])
            decoded = decode_tokens(decoder, cache, sparse, multimask_output=True, workspace=ws)
            # NaN scores would fail every threshold and vanish silently: refuse them
            check_outputs(None, decoded.iou, WHERE, p.model)
            passed = decoded.iou > thresh
            if thresh <= 0.0:  # SAM's rule: a threshold of 0 turns the filter off
                passed.fill_(True)
            rows = passed.any(1).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            # (the kept prompts' factored image tokens move to the front of the workspace)
            kept = decoded if len(rows) == len(passed) else decoded.compact(rows)
            keep = passed[rows]
            n_masks = int(keep.sum())
            dst = low[count : count + n_masks]
            if n_masks == keep.numel():  # (r, 3, 256, 256), written in place
                decoder.masks_from_decoded(cache, kept, kept.hyper, dst.view(*keep.shape, *size))
            else:
                masks = ws.get("masks", (*keep.shape, *size), coords_t)
                decoder.masks_from_decoded(cache, kept, kept.hyper, masks)
                torch.index_select(masks.flatten(0, 1), 0, keep.flatten().nonzero()[:, 0], out=dst)
            check_outputs(dst, None, WHERE, p.model)  # (one pass over the survivors' logits)
            count += n_masks
            iou.append(kept.iou[keep])
            index.append((i + rows)[:, None].expand(keep.shape)[keep])
        if not iou:
            empty = coords_t.new_zeros(0)
            return empty.reshape(0, *size), empty, empty.long()
        return low[:count], torch.cat(iou), torch.cat(index)

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
            crop_boxes=torch.zeros(len(rles), 4, dtype=torch.long),
        )
