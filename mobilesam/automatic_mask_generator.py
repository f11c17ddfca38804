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

Pipeline per crop (:meth:`AmgSettings.crops <mobilesam.amg.settings.AmgSettings.crops>`):
``SamPredictor.set_image`` → per batch of points (:class:`~mobilesam.amg.batch.BatchFilter`):
decoder → IoU filter → blockwise thresholds → stability filter → boxes → crop-edge filter →
RLE; then box NMS. Then NMS across crops, optional small-region cleanup and the output
encoding (:func:`~mobilesam.amg.output.to_annotations`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ._heap import HeapTrimmer
from .amg.batch import BatchFilter
from .amg.candidates import Candidates, without_small_regions
from .amg.output import to_annotations
from .amg.settings import OUTPUT_MODES, AmgSettings, Crop
from .engine import Engine
from .masks import box_area
from .modeling.sam import Sam
from .precision import PrecisionLike
from .predictor import SamPredictor
from .transforms import to_rgb_uint8

__all__ = ["OUTPUT_MODES", "STAGES", "SamAutomaticMaskGenerator"]

STAGES = ("encoder", "decoder", "upsample", "filter", "rle", "nms", "postprocess")


class _Setting:
    """A generator attribute (``segment_anything``'s name) that reads ``self.settings``.
    Assigning it replaces the settings with a checked copy (grids rebuilt), so a bad value
    raises at once instead of deep inside :meth:`SamAutomaticMaskGenerator.generate`."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.field = name, self.field or name

    def __get__(self, obj: SamAutomaticMaskGenerator | None, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.settings, self.field)

    def __set__(self, obj: SamAutomaticMaskGenerator, value: object) -> None:
        changes: dict[str, object] = {self.name: value}
        if self.name in ("points_per_side", "point_grids"):  # exactly one of the two
            other = "point_grids" if self.name == "points_per_side" else "points_per_side"
            changes[other] = None
        obj.settings = dataclasses.replace(obj.settings, **changes)


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
        decoder_batch_size: points per decoder call; default: the engine's (the CPU engine:
            :data:`mobilesam.engine.tuning.CPU_DECODER_BATCH`, bounded memory, ~2 MB per
            prompt; the plain engine: all ``points_per_batch``). Does not change the result.
        max_upsample_bytes: bound on the full-resolution float logits held at once.
        precision: the image encoder's precision, ``"fp32"``, ``"bf16"`` or ``"auto"`` (see
            :mod:`mobilesam.precision`), as for :class:`SamPredictor`: ``model`` is never
            changed; another dtype than its encoder's runs a cast copy of the encoder that
            the generator's predictor owns. ``None`` (default): the encoder's dtype as it is.
            bf16 also runs the products of the decoder's upscaling tail in bf16; the rest
            runs in float32.
        engine: the predictor's inference engine, ``"cpu"``, ``"plain"`` or ``None``/``"auto"``
            (see :class:`SamPredictor` and :mod:`mobilesam.engine`).

    Attributes:
        settings: the checked arguments (:class:`~mobilesam.amg.settings.AmgSettings`); each
            one also reads as an attribute of the same name (``point_grids``: the grid of
            every crop layer, as in ``segment_anything``). Assigning one checks it and rebuilds
            the settings.
        predictor: the :class:`SamPredictor` that encodes the image and each crop.
        stage_times: seconds spent per stage (:data:`STAGES`) by the last :meth:`generate`.
    """

    points_per_side = _Setting()
    points_per_batch = _Setting()
    pred_iou_thresh = _Setting()
    stability_score_thresh = _Setting()
    stability_score_offset = _Setting()
    box_nms_thresh = _Setting()
    crop_n_layers = _Setting()
    crop_nms_thresh = _Setting()
    crop_overlap_ratio = _Setting()
    crop_n_points_downscale_factor = _Setting()
    point_grids = _Setting("layer_grids")
    min_mask_region_area = _Setting()
    output_mode = _Setting()
    decoder_batch_size = _Setting()
    max_upsample_bytes = _Setting()

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
        engine: str | Engine | None = None,
    ) -> None:
        self.settings = AmgSettings(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
            decoder_batch_size=decoder_batch_size,
            max_upsample_bytes=max_upsample_bytes,
        )
        self.predictor = SamPredictor(model, precision=precision, engine=engine)
        self.stage_times: dict[str, float] = {}
        self._heap = HeapTrimmer()

    @torch.inference_mode()  # returns only numpy and Python values: no tensor escapes
    def generate(
        self,
        image: np.ndarray | None = None,
        image_embedding: torch.Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        original_size: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Masks for the whole image.

        Args:
            image: ``H×W×3`` uint8 RGB (the conversions of ``SamPredictor.set_image`` apply).
                May be None with ``image_embedding`` and ``original_size`` when there are no
                crop layers: no pixels are needed then.
            image_embedding: optional ``(1, 256, 64, 64)`` embedding of the image
                (``SamPredictor.get_image_embedding()`` after ``set_image(image)``); the
                whole-image crop then skips the encoder. Crops of later layers are encoded
                from ``image`` as usual. It is checked as the encoder's embeddings are
                (:class:`~mobilesam.predictor.DegenerateEmbeddingError`).
            progress: called as ``progress(points_done, points_total)`` after each batch of
                ``points_per_batch`` prompt points, over all crops.
            original_size: ``(H, W)`` of the image the embedding was computed for; required
                without ``image``, and must match ``image`` when both are given.

        Returns:
            One dict per mask: ``segmentation`` (per ``output_mode``), ``area`` (pixels),
            ``bbox`` (XYWH, pixels), ``predicted_iou``, ``point_coords`` (``[[x, y]]`` pixels
            of the prompt), ``stability_score`` and ``crop_box`` (XYWH).

        Raises:
            ValueError: a wrong-shaped ``image_embedding`` (or image); no ``image`` without
                both ``image_embedding`` and ``original_size``, or with crop layers;
                an ``original_size`` that is not the image's.
            DegenerateEmbeddingError: a NaN/inf, overflowed or collapsed embedding, given or
                encoded.
            NonFiniteOutputError: the decoder returned NaN/inf scores or logits (they are
                neither filtered out silently nor returned).
        """
        self.stage_times = dict.fromkeys(STAGES, 0.0)
        if image is not None:
            image = to_rgb_uint8(image, "RGB")
        size = self._original_size(image, image_embedding, original_size)
        if image_embedding is not None:  # the guard of every embedding that enters
            where = "SamAutomaticMaskGenerator.generate(image_embedding=...)"
            self.predictor.check_features(image_embedding, where)
        data = self._generate_masks(image, size, image_embedding, progress)
        s = self.settings
        if s.min_mask_region_area > 0:
            with self._stage("postprocess"):
                nms_thresh = max(s.box_nms_thresh, s.crop_nms_thresh)
                data = without_small_regions(data, s.min_mask_region_area, nms_thresh)
        with self._stage("postprocess"):
            return to_annotations(data, s.output_mode)

    def _original_size(
        self,
        image: np.ndarray | None,
        image_embedding: torch.Tensor | None,
        original_size: tuple[int, int] | None,
    ) -> tuple[int, int]:
        """``(H, W)`` of the image to segment, from ``image`` or ``original_size`` (checked:
        see :meth:`generate`)."""
        given = None
        if original_size is not None:
            if len(original_size) != 2 or min(int(v) for v in original_size) < 1:
                raise ValueError(
                    f"original_size must be (height, width) of at least 1 pixel, got "
                    f"{original_size}"
                )
            given = (int(original_size[0]), int(original_size[1]))
        if image is not None:
            size = (int(image.shape[0]), int(image.shape[1]))
            if given is not None and given != size:
                raise ValueError(f"original_size {given} is not the image's size {size}")
            return size
        if image_embedding is None or given is None:
            raise ValueError(
                "generate needs an image, or an image_embedding with its original_size (H, W)"
            )
        if self.settings.crop_n_layers > 0:
            raise ValueError(
                f"crop_n_layers={self.settings.crop_n_layers} encodes crops of the image: "
                "pass the image, not only its embedding"
            )
        return given

    def _generate_masks(
        self,
        image: np.ndarray | None,
        orig_size: tuple[int, int],
        image_embedding: torch.Tensor | None,
        progress: Callable[[int, int], None] | None,
    ) -> Candidates:
        """Every crop's candidates, then NMS across crops preferring smaller crops."""
        crops = self.settings.crops(orig_size)
        total = sum(len(crop.points) for crop in crops)
        done = 0

        def tick(points: int) -> None:
            nonlocal done
            done += points
            if progress is not None:
                progress(done, total)

        batches = BatchFilter(self.predictor, self.settings, self._stage, self._heap)
        data = Candidates.cat(
            [
                self._process_crop(image, crop, orig_size, batches, tick, image_embedding)
                for crop in crops
            ]
        )
        if len(crops) > 1 and len(data):
            with self._stage("nms"):
                # Prefer masks from smaller crops (higher resolution).
                scores = 1 / box_area(data.crop_boxes).double()
                data = data.nms(scores, self.settings.crop_nms_thresh)
        return data

    def _process_crop(
        self,
        image: np.ndarray | None,
        crop: Crop,
        orig_size: tuple[int, int],
        batches: BatchFilter,
        tick: Callable[[int], None],
        image_embedding: torch.Tensor | None,
    ) -> Candidates:
        """Candidates of one crop, in image coordinates; ``tick(n)`` after each batch of ``n``
        points."""
        x0, y0, x1, y1 = crop.box
        with self._stage("encoder"):
            if crop.layer == 0 and image_embedding is not None:
                # Layer 0 is the whole image: reuse the caller's embedding.
                self.predictor.set_embedding(image_embedding, orig_size)
            elif image is None:  # (generate refuses this case up front)
                raise ValueError(f"crop {crop.box} needs the image's pixels")
            else:
                self.predictor.set_image(image[y0:y1, x0:x1])
        step = self.settings.points_per_batch
        parts = []
        for i in range(0, len(crop.points), step):
            batch = crop.points[i : i + step]
            parts.append(batches(batch, crop.box, orig_size))
            tick(len(batch))
        self.predictor.reset_image()
        data = Candidates.cat(parts)
        with self._stage("nms"):
            data = data.nms(data.iou_preds, self.settings.box_nms_thresh)
        return data.uncrop(crop.box)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_times[name] = self.stage_times.get(name, 0.0) + (time.perf_counter() - start)
