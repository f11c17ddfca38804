"""Batches of images for :class:`~mobilesam.SamPredictor`: ``set_image_batch`` and
``predict_batch``, with the names, arguments and return layout of sam2's
``SAM2ImagePredictor`` (lists with one entry per image).

Images of any sizes are resized and padded to the encoder's square input exactly as
``set_image`` does, so they stack; the encoder runs them together, a bounded number per call
(:func:`max_encoder_batch`). Each image is then segmented from its own prompts by a one-image
predictor that shares the model and the engine and is given that image's embedding, so every
image gets the very arithmetic of ``set_image`` + ``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .modeling.image_encoder import ViTConfig
from .transforms import resize_to_input, to_rgb_uint8

if TYPE_CHECKING:
    from torch import nn

    from .predictor import SamPredictor

#: Peak activation memory of the MobileSAM encoder (TinyViT) per 1024×1024 image in float32,
#: in bytes. Measured as the growth of peak resident memory over one encoder call on the
#: CPU, fixture weights: SAM's order (``encoder(x)``, which every device but the CPU runs)
#: 275 MB at batch 1 and 459 MB at batch 2 (~185 MB more per image); the CPU engine's banded
#: encoder 90 and 183 MB. Activations in bf16 or fp16 take about half.
TINY_VIT_BYTES_PER_IMAGE = 256 * 2**20

#: The bound on one encoder call's activations in :meth:`SamPredictor.set_image_batch
#: <mobilesam.SamPredictor.set_image_batch>` (bytes): 16 MobileSAM images in float32, 32 in
#: bf16/fp16.
ENCODER_BATCH_BYTES = 4 * 2**30


def encoder_bytes_per_image(encoder: nn.Module, dtype: torch.dtype) -> int:
    """Estimated peak activation bytes of ``encoder`` for one image in ``dtype``: measured for
    TinyViT (:data:`TINY_VIT_BYTES_PER_IMAGE`); for SAM's ViT encoders, twice the attention
    matrix of one global block (``heads × tokens²``: ~2 GiB for ViT-H in float32), which
    dominates them."""
    scale = torch.finfo(dtype).bits / 32
    cfg = getattr(encoder, "cfg", None)
    if isinstance(cfg, ViTConfig):
        tokens = (cfg.img_size // cfg.patch_size) ** 2
        return int(2 * cfg.num_heads * tokens**2 * 4 * scale)
    return int(TINY_VIT_BYTES_PER_IMAGE * scale)


def max_encoder_batch(encoder: nn.Module, dtype: torch.dtype) -> int:
    """Images per encoder call within :data:`ENCODER_BATCH_BYTES` (at least 1): 16 for
    MobileSAM in float32, 32 in bf16/fp16, 2 for ViT-B/L/H in float32."""
    return max(1, ENCODER_BATCH_BYTES // encoder_bytes_per_image(encoder, dtype))


@dataclass
class ImageBatch:
    """The images of one ``set_image_batch`` call: ``features`` ``(B, C, h, w)`` float32 on
    the model's device, and per image its ``(H, W)`` before and ``(h, w)`` after the resize."""

    features: torch.Tensor
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.original_sizes)


def encode_batch(
    predictor: SamPredictor,
    image_list: Sequence[np.ndarray],
    image_format: str = "RGB",
    max_batch: int | None = None,
) -> ImageBatch:
    """Embed ``image_list`` (see :meth:`BatchPrediction.set_image_batch`): every image is
    converted and resized first (uint8, on the CPU), then each chunk of ``max_batch`` is
    normalised and padded on the model's device and encoded in one call.

    Raises:
        ValueError: not a non-empty list of images, a bad ``max_batch``, or an image that
            ``set_image`` refuses (the message names its index).
        DegenerateEmbeddingError: an image's embedding is NaN/inf, overflowed or collapsed.
    """
    from .precision import precision_name
    from .predictor import check_embedding, encoder_cause

    if isinstance(image_list, np.ndarray) or not isinstance(image_list, Sequence):
        shape = f" of shape {image_list.shape}" if isinstance(image_list, np.ndarray) else ""
        raise ValueError(
            f"set_image_batch expects a list of H×W×3 images, got {type(image_list).__name__}"
            f"{shape} (for one image use set_image; for a stacked array, list(array))"
        )
    if len(image_list) == 0:
        raise ValueError("set_image_batch needs at least one image, got an empty list")
    if max_batch is not None and (
        not isinstance(max_batch, (int, np.integer)) or isinstance(max_batch, bool) or max_batch < 1
    ):
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    model = predictor.model
    inputs, original_sizes = [], []
    for i, image in enumerate(image_list):
        try:
            rgb = to_rgb_uint8(image, image_format)
        except ValueError as exc:
            raise ValueError(f"set_image_batch: image {i}: {exc}") from None
        if model.image_format == "BGR":
            rgb = rgb[..., ::-1]
        original_sizes.append((int(rgb.shape[0]), int(rgb.shape[1])))
        inputs.append(resize_to_input(rgb, model.img_size))
    input_sizes = [(int(x.shape[2]), int(x.shape[3])) for x in inputs]
    step = max_batch or max_encoder_batch(model.image_encoder, predictor.dtype)
    where = f"SamPredictor.set_image_batch ({precision_name(predictor.dtype)} encoder)"
    parts = []
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        x = torch.cat([model.preprocess(t.to(predictor.device, torch.float32)) for t in chunk])
        features = predictor.embed_torch(x)
        del x
        for j in range(len(chunk)):
            check_embedding(
                features[j : j + 1],
                f"{where}, image {start + j}",
                lambda: encoder_cause(predictor.image_encoder, predictor.dtype),
            )
        parts.append(features)
    features = parts[0] if len(parts) == 1 else torch.cat(parts)
    return ImageBatch(features, original_sizes, input_sizes)


def _per_image(values: Sequence[object] | None, name: str, n: int) -> list[object]:
    """``values`` as one entry per image (all None when ``values`` is None); ValueError when it
    is not a sequence of ``n`` entries."""
    if values is None:
        return [None] * n
    try:
        count = len(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"{name} must be a list with one entry per image (or None), got {type(values).__name__}"
        ) from None
    if count != n:
        raise ValueError(f"{name} has {count} entries for {n} images: give one per image")
    return [values[i] for i in range(n)]


def predict_batch(
    predictor: SamPredictor,
    batch: ImageBatch,
    point_coords_batch: Sequence[np.ndarray | None] | None,
    point_labels_batch: Sequence[np.ndarray | None] | None,
    box_batch: Sequence[np.ndarray | None] | None,
    mask_input_batch: Sequence[np.ndarray | None] | None,
    multimask_output: bool,
    return_logits: bool,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Each image of ``batch`` segmented from its own prompts (see
    :meth:`BatchPrediction.predict_batch`)."""
    from .predictor import SamPredictor

    n = len(batch)
    prompts = [
        _per_image(point_coords_batch, "point_coords_batch", n),
        _per_image(point_labels_batch, "point_labels_batch", n),
        _per_image(box_batch, "box_batch", n),
        _per_image(mask_input_batch, "mask_input_batch", n),
    ]
    # one predictor for the images in turn: its per-image state (the CPU engine's decoder
    # products, ~55 MiB) is held for one image at a time
    single = SamPredictor(predictor.model, predictor.dtype, engine=predictor.engine)
    masks, scores, low_res = [], [], []
    try:
        for i in range(n):
            single.set_embedding(
                batch.features[i : i + 1], batch.original_sizes[i], batch.input_sizes[i]
            )
            coords, labels, box, mask_input = (p[i] for p in prompts)
            try:
                m, s, low = single.predict(
                    coords, labels, box, mask_input, multimask_output, return_logits
                )
            except ValueError as exc:
                raise ValueError(f"predict_batch: image {i}: {exc}") from None
            masks.append(m)
            scores.append(s)
            low_res.append(low)
    finally:
        single.reset_image()
    return masks, scores, low_res


class BatchPrediction:
    """:class:`~mobilesam.SamPredictor`'s batch methods (sam2's ``set_image_batch`` and
    ``predict_batch``), kept apart from the one-image code."""

    _batch: ImageBatch | None

    def set_image_batch(
        self: SamPredictor,
        image_list: Sequence[np.ndarray],
        image_format: str = "RGB",
        *,
        max_batch: int | None = None,
    ) -> None:
        """Embed several images for :meth:`predict_batch` (sam2's ``set_image_batch``).

        The images may have different sizes: each is resized and padded as ``set_image``
        does, and the encoder runs them together, at most ``max_batch`` per call (default
        :func:`max_encoder_batch`: :data:`ENCODER_BATCH_BYTES` (4 GiB) of activations, 16
        MobileSAM images in float32, 32 in bf16/fp16). The embeddings, ``(B, 256, 64, 64)``
        float32 (4 MiB per image), stay on the model's device; every one is checked
        (:class:`~mobilesam.DegenerateEmbeddingError` names the image).

        Afterwards ``is_image_set`` and :attr:`is_batch` are True, :meth:`predict_batch`
        segments the images and ``get_image_embedding()`` returns every embedding,
        ``(B, 256, 64, 64)``; ``predict``, ``predict_torch`` and ``decode_points`` raise
        :class:`~mobilesam.ImageNotSetError` (they take one image: ``set_image``).
        ``set_image``, ``set_embedding`` and ``reset_image`` forget the batch.

        Args:
            image_list: a list of ``H×W×3`` images, each as ``set_image`` takes it.
            image_format: ``"RGB"`` or ``"BGR"``, for every image.
            max_batch: images per encoder call; changes nothing but float rounding.

        Raises:
            ValueError: not a non-empty list, or an image ``set_image`` refuses (named by its
                index). On any error no image is left set.
        """
        self.reset_image()
        batch = encode_batch(self, image_list, image_format, max_batch)
        self._batch = batch
        self.is_image_set = True

    def predict_batch(
        self: SamPredictor,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Segment each image of :meth:`set_image_batch` from its own prompts (sam2's
        ``predict_batch``): image ``i`` gets ``point_coords_batch[i]``,
        ``point_labels_batch[i]``, ``box_batch[i]`` and ``mask_input_batch[i]``, each as
        ``predict`` takes it, in image ``i``'s own pixel frame. A whole list may be None (no
        such prompt for any image), and so may any entry (none for that image); a list has
        one entry per image.

        With the CPU engine each image's decoder products are prepared again on every call
        (~70 ms per image on a 2-core CPU); to refine one image click after click,
        ``set_image`` and ``predict`` keep them.

        Returns:
            masks, scores and low-res logits: three lists with one entry per image, each
            exactly what ``predict`` returns for that image: ``(C, H_i, W_i)`` bool (float32
            logits with ``return_logits``), ``(C,)`` float32 and ``(C, 256, 256)`` float32.
            They equal ``set_image(image_i)`` then ``predict`` up to float rounding (batched
            encoder products may round differently from single ones).

        Raises:
            ImageNotSetError: no :meth:`set_image_batch` before.
            ValueError: a list with another number of entries than images, or prompts that
                ``predict`` refuses (the message names the image).
        """
        from .predictor import ImageNotSetError

        if self._batch is None:
            held = " (it holds one image from set_image: use predict)" if self.is_image_set else ""
            raise ImageNotSetError(
                f"predict_batch needs images set with .set_image_batch(...) first{held}"
            )
        return predict_batch(
            self,
            self._batch,
            point_coords_batch,
            point_labels_batch,
            box_batch,
            mask_input_batch,
            multimask_output,
            return_logits,
        )

    @property
    def is_batch(self) -> bool:
        """Whether the predictor holds a batch of images (:meth:`set_image_batch`)."""
        return self._batch is not None
