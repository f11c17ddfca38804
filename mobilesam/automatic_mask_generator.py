"""``SamAutomaticMaskGenerator``: segment everything in an image from a grid of point prompts.

Same constructor, defaults and output dictionaries as ``segment_anything`` 1.0, and the same
masks: every filter runs in the official order with the official rule. What changes is the
cost:

- the decoder returns low-res logits only, and masks are filtered by predicted IoU *before*
  any upsampling (the official code upsamples all ``3 × points_per_batch`` candidates first);
- full-resolution values are computed only in the blocks of pixels near the mask threshold or
  the stability thresholds (:func:`~mobilesam.postprocess.threshold_blocks`); every other
  block is decided from the low-res logits it depends on, with the same result. Stability
  scores, boxes and RLE are read off the blocks, without full-resolution masks;
- survivors go through a few at a time, so the full-resolution values held at once stay
  under ``max_upsample_bytes`` whatever the image size;
- on CPU the decoder runs in small cache-sized groups (``decoder_batch_size``), which is
  faster than one large batch there; on GPU it takes the whole ``points_per_batch``.

Pipeline per crop: ``SamPredictor.set_image`` → point grid → ``predict_low_res_torch`` →
IoU filter → blockwise thresholds (``threshold_blocks``) → stability filter → boxes →
crop-edge filter → RLE → box NMS. Then NMS across crops, optional small-region cleanup and
the output encoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ._heap import HeapTrimmer
from .masks import (
    area_from_rle,
    batched_mask_to_box,
    batched_nms,
    box_area,
    build_all_layer_point_grids,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from .modeling.decoder_cache import decode_tokens
from .modeling.sam import Sam
from .postprocess import block_grid, threshold_blocks
from .precision import PrecisionLike
from .predictor import SamPredictor
from .transforms import to_rgb_uint8

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
STAGES = ("encoder", "decoder", "upsample", "filter", "rle", "nms", "postprocess")


@dataclass
class _Candidates:
    """Masks that survived the filters so far, as parallel arrays (one row per mask)."""

    rles: list[dict] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    iou_preds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: torch.Tensor) -> _Candidates:
        """Rows ``keep`` (int indices, in that order)."""
        keep = keep.cpu()
        return _Candidates(
            rles=[self.rles[i] for i in keep.tolist()],
            boxes=self.boxes[keep],
            iou_preds=self.iou_preds[keep],
            stability=self.stability[keep],
            points=self.points[keep],
            crop_boxes=self.crop_boxes[keep],
        )

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        if not parts:
            return _Candidates()
        return _Candidates(
            rles=[r for p in parts for r in p.rles],
            boxes=torch.cat([p.boxes for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            stability=torch.cat([p.stability for p in parts]),
            points=torch.cat([p.points for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
        )


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image (SAM's "everything" mode).

    Args:
        model: the :class:`Sam` model.
        points_per_side: points along one side of the prompt grid (``n²`` points in all);
            ``None`` when ``point_grids`` is given.
        points_per_batch: points decoded together before their masks are filtered.
        pred_iou_thresh: keep masks whose predicted IoU is ``> pred_iou_thresh`` (in [0, 1]).
        stability_score_thresh: keep masks whose stability score is ``>=`` this (in [0, 1]).
        stability_score_offset: logit offset for the stability score.
        box_nms_thresh: box-IoU threshold of the NMS within each crop.
        crop_n_layers: extra crop layers; layer ``i`` has ``(2^i)²`` crops.
        crop_nms_thresh: box-IoU threshold of the NMS across crops.
        crop_overlap_ratio: crop overlap as a fraction of the image's shorter side (layer 1).
        crop_n_points_downscale_factor: points per side shrink by this factor per layer.
        point_grids: explicit grids, one ``(N, 2)`` array of (x, y) in [0, 1] per layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
            pixels (needs SciPy), then re-run NMS as SAM does.
        output_mode: ``"binary_mask"`` (``H×W`` bool arrays), ``"uncompressed_rle"`` or
            ``"coco_rle"`` (needs pycocotools).
        decoder_batch_size: points per decoder call; default: ``points_per_batch`` on GPU,
            4 on CPU, where small batches stay in cache and run faster. Does not change the
            result.
        max_upsample_bytes: bound on the full-resolution float logits held at once.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the image encoder
            (see :mod:`mobilesam.precision`); everything after it runs in float32.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        decoder_batch_size: int | None = None,
        max_upsample_bytes: int = 64 * 2**20,
        precision: PrecisionLike = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        _check_positive_int("points_per_batch", points_per_batch)
        _check_positive_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor)
        if not (isinstance(crop_n_layers, int) and crop_n_layers >= 0):
            raise ValueError(f"crop_n_layers must be an int >= 0, got {crop_n_layers!r}")
        if decoder_batch_size is not None:
            _check_positive_int("decoder_batch_size", decoder_batch_size)
        for name, value, lo, hi in (
            ("pred_iou_thresh", pred_iou_thresh, 0.0, 1.0),
            ("stability_score_thresh", stability_score_thresh, 0.0, 1.0),
            ("box_nms_thresh", box_nms_thresh, 0.0, 1.0),
            ("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0),
            ("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0),
            ("stability_score_offset", stability_score_offset, 0.0, float("inf")),
            ("min_mask_region_area", min_mask_region_area, 0.0, float("inf")),
        ):
            _check_number(name, value, lo, hi)
        if points_per_side is not None:
            _check_positive_int("points_per_side", points_per_side)
            grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            grids = [_check_grid(g, i) for i, g in enumerate(point_grids or [])]
            if len(grids) != crop_n_layers + 1:
                raise ValueError(
                    f"point_grids needs one grid per layer: crop_n_layers + 1 = "
                    f"{crop_n_layers + 1}, got {len(grids)}"
                )
        if output_mode == "coco_rle":
            _require("pycocotools", "output_mode='coco_rle'")
        if min_mask_region_area > 0:
            _require("scipy", "min_mask_region_area > 0")

        self.predictor = SamPredictor(model, precision=precision)
        self.point_grids = grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.decoder_batch_size = decoder_batch_size
        self.max_upsample_bytes = max_upsample_bytes
        #: Seconds spent per stage by the last :meth:`generate` call.
        self.stage_times: dict[str, float] = {}
        self._heap = HeapTrimmer()

    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        image_embedding: torch.Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Masks for the whole image.

        Args:
            image: ``H×W×3`` uint8 RGB (the conversions of ``SamPredictor.set_image`` apply).
            image_embedding: optional ``(1, 256, 64, 64)`` embedding of this same ``image``
                (``SamPredictor.get_image_embedding()`` after ``set_image(image)``); the
                whole-image crop then skips the encoder. Crops of later layers are encoded
                as usual.
            progress: called as ``progress(points_done, points_total)`` after each batch of
                ``points_per_batch`` prompt points, over all crops.

        Returns:
            One dict per mask: ``segmentation`` (per ``output_mode``), ``area`` (pixels),
            ``bbox`` (XYWH, pixels), ``predicted_iou``, ``point_coords`` (``[[x, y]]`` pixels
            of the prompt), ``stability_score`` and ``crop_box`` (XYWH).
        """
        self.stage_times = dict.fromkeys(STAGES, 0.0)
        image = to_rgb_uint8(image, "RGB")
        data = self._generate_masks(image, image_embedding, progress)
        if self.min_mask_region_area > 0:
            with self._stage("postprocess"):
                data = self._postprocess_small_regions(
                    data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
                )
        with self._stage("postprocess"):
            return self._annotations(data)

    def _annotations(self, data: _Candidates) -> list[dict[str, Any]]:
        data.rles = [{"size": r["size"], "counts": _as_list(r["counts"])} for r in data.rles]
        if self.output_mode == "coco_rle":
            segmentations: list[Any] = [coco_encode_rle(r) for r in data.rles]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(r) for r in data.rles]
        else:
            segmentations = data.rles
        boxes = _xyxy_to_xywh(data.boxes).tolist()
        crops = _xyxy_to_xywh(data.crop_boxes).tolist()
        ious = data.iou_preds.tolist()
        stab = data.stability.tolist()
        points = data.points.tolist()
        return [
            {
                "segmentation": segmentations[i],
                "area": area_from_rle(data.rles[i]),
                "bbox": boxes[i],
                "predicted_iou": ious[i],
                "point_coords": [points[i]],
                "stability_score": stab[i],
                "crop_box": crops[i],
            }
            for i in range(len(data))
        ]

    def _generate_masks(
        self,
        image: np.ndarray,
        image_embedding: torch.Tensor | None,
        progress: Callable[[int, int], None] | None,
    ) -> _Candidates:
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        total = sum(len(self.point_grids[layer]) for layer in layer_idxs)
        done = 0

        def tick(points: int) -> None:
            nonlocal done
            done += points
            if progress is not None:
                progress(done, total)

        data = _Candidates.cat(
            [
                self._process_crop(image, box, layer, orig_size, tick, image_embedding)
                for box, layer in zip(crop_boxes, layer_idxs, strict=True)
            ]
        )
        if len(crop_boxes) > 1 and len(data):
            with self._stage("nms"):
                # Prefer masks from smaller crops (higher resolution).
                scores = 1 / box_area(data.crop_boxes).double()
                keep = batched_nms(
                    data.boxes.float(),
                    scores,
                    torch.zeros(len(data), dtype=torch.long),
                    self.crop_nms_thresh,
                )
                data = data.select(keep)
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
        tick: Callable[[int], None],
        image_embedding: torch.Tensor | None = None,
    ) -> _Candidates:
        """Candidates of one crop; ``tick(n)`` after each batch of ``n`` points."""
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1]
        with self._stage("encoder"):
            if layer == 0 and image_embedding is not None:
                # Layer 0 is the whole image: reuse the caller's embedding.
                self.predictor.set_embedding(image_embedding, orig_size)
            else:
                self.predictor.set_image(cropped)
        crop_h, crop_w = cropped.shape[:2]
        points = self.point_grids[layer] * np.array([[crop_w, crop_h]])
        parts = []
        for i in range(0, len(points), self.points_per_batch):
            batch = points[i : i + self.points_per_batch]
            parts.append(self._process_batch(batch, crop_box, orig_size))
            tick(len(batch))
        self.predictor.reset_image()
        data = _Candidates.cat(parts)
        with self._stage("nms"):
            keep = batched_nms(
                data.boxes.float(),
                data.iou_preds,
                torch.zeros(len(data), dtype=torch.long),
                self.box_nms_thresh,
            )
            data = data.select(keep)
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        data.crop_boxes = torch.tensor([crop_box], dtype=torch.long).expand(len(data), 4)
        return data

    def _decode(self, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode ``n`` points in the crop's pixel frame (three masks each) and keep the masks
        whose predicted IoU passes ``pred_iou_thresh``. The IoUs come from the IoU token,
        before any upscaling, so a point none of whose masks passes is never upscaled.

        Returns:
            low-res logits ``(k, 256, 256)``, IoUs ``(k,)`` and the index of each mask's point
            ``(k,)``, point-major (point 0's surviving masks first).
        """
        p = self.predictor
        device, decoder, cache = p.device, p.model.mask_decoder, p.decoder_cache()
        coords = p.transform.apply_coords(points, p.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[:, None, :]
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=device)
        step = self.decoder_batch_size or (len(points) if device.type != "cpu" else 4)
        low, iou, index = [], [], []
        for i in range(0, len(points), step):
            sparse, _ = p.encode_prompts(coords_t[i : i + step], labels_t[i : i + step])
            decoded = decode_tokens(decoder, cache, sparse, multimask_output=True)
            passed = decoded.iou > self.pred_iou_thresh
            if self.pred_iou_thresh <= 0.0:  # SAM's rule: a threshold of 0 turns the filter off
                passed.fill_(True)
            rows = passed.any(1).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            kept = decoded.select(rows)
            masks = decoder.masks_from_decoded(cache, kept, kept.hyper)  # (r, 3, 256, 256)
            keep = passed[rows]
            low.append(masks[keep])
            iou.append(kept.iou[keep])
            index.append((i + rows)[:, None].expand(keep.shape)[keep])
        if not low:
            empty = coords_t.new_zeros(0)
            size = p.model.prompt_encoder.mask_input_size
            return empty.reshape(0, *size), empty, empty.long()
        return torch.cat(low), torch.cat(iou), torch.cat(index)

    def _process_batch(
        self, points: np.ndarray, crop_box: list[int], orig_size: tuple[int, int]
    ) -> _Candidates:
        p = self.predictor
        # 1. Predicted IoU: a per-mask scalar, so the decoder filters before any upscaling.
        with self._stage("decoder"):
            low_res, iou, index = self._decode(points)
        pts = torch.as_tensor(points)[index.cpu()]

        # 2. The rest is at full resolution: a bounded chunk of masks at a time.
        orig_h, orig_w = orig_size
        h, w = p.original_size
        bytes_per_mask = 4 * h * w  # when every block of a mask needs its values
        chunk = max(1, self.max_upsample_bytes // bytes_per_mask)
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
        return _Candidates.cat(parts)

    def _filter_chunk(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        pts: torch.Tensor,
        crop_box: list[int],
        orig_h: int,
        orig_w: int,
    ) -> _Candidates:
        p = self.predictor
        t, off = p.model.mask_threshold, self.stability_score_offset
        with self._stage("upsample"):
            # full-resolution values only in the blocks near one of the three thresholds
            grid = block_grid(
                tuple(low_res.shape[-2:]), p.input_size, p.original_size, p.model.img_size, low_res
            )
            blocks = threshold_blocks(low_res, grid, (t - off, t, t + off))
        with self._stage("filter"):
            # the official order: stability, then the crop-edge test on what is left
            stability = blocks.counts(2).float() / blocks.counts(0).float()
            if self.stability_score_thresh > 0.0:
                keep = stability >= self.stability_score_thresh
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
        with self._stage("rle"):
            rles = runs.uncrop(crop_box, orig_h, orig_w).to_rle(as_list=False)
        self._heap.trim_if_grown()
        return _Candidates(
            rles=rles,
            boxes=boxes.cpu(),
            iou_preds=iou.float().cpu(),
            stability=stability.cpu(),
            points=pts,
            crop_boxes=torch.zeros(len(rles), 4, dtype=torch.long),
        )

    @staticmethod
    def _postprocess_small_regions(
        data: _Candidates, min_area: int, nms_thresh: float
    ) -> _Candidates:
        """SAM's cleanup: fill small holes, drop small islands, then NMS preferring masks the
        cleanup left unchanged; changed masks that survive get their new RLE and box."""
        if len(data) == 0:
            return data
        rles, boxes, unchanged = list(data.rles), data.boxes.clone(), []
        for i, rle in enumerate(data.rles):
            mask, changed_holes = remove_small_regions(rle_to_mask(rle), min_area, "holes")
            mask, changed_islands = remove_small_regions(mask, min_area, "islands")
            unchanged.append(not (changed_holes or changed_islands))
            if not unchanged[-1]:  # an unchanged mask keeps its RLE and box
                m = torch.from_numpy(mask)[None]
                rles[i], boxes[i] = mask_to_rle(m)[0], batched_mask_to_box(m)[0]
        scores = torch.tensor(unchanged, dtype=torch.float)
        keep = batched_nms(
            boxes.float(), scores, torch.zeros(len(data), dtype=torch.long), nms_thresh
        )
        return replace(data, rles=rles, boxes=boxes).select(keep)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_times[name] = self.stage_times.get(name, 0.0) + (time.perf_counter() - start)


def _as_list(counts: Any) -> list[int]:
    return counts.tolist() if isinstance(counts, np.ndarray) else list(counts)


def _xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


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
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_grid(grid: np.ndarray, layer: int) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
        raise ValueError(f"point_grids[{layer}] must have shape (N, 2), got {g.shape}")
    if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
        raise ValueError(f"point_grids[{layer}] must hold (x, y) in [0, 1]")
    return g


def _require(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"{why} needs the '{module}' package: pip install {module}") from None
