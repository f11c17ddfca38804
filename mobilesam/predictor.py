"""``SamPredictor``: embed an image once, then segment it from any number of prompts.

Same names, signatures, shapes, dtypes and coordinate conventions as
``segment_anything.SamPredictor``; stricter input checking (``ValueError`` with a message that
says what was expected, where the official code asserts or fails deep inside torch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .batch_predictor import BatchPrediction, ImageBatch
from .checkpoint import all_finite, first_few, non_finite_keys
from .engine import Engine, ImageState, Workspace, engine_for
from .modeling.sam import Sam
from .postprocess import upscale_masks
from .precision import (
    PrecisionLike,
    autocast,
    autocast_dtype,
    cast_copy,
    precision_name,
    resolve_precision,
)
from .prompts import PROMPT_REACH, check_prompt_tensors, prepare_prompts
from .transforms import ResizeLongestSide, resize_to_input, to_rgb_uint8

#: A real image embedding varies over the image: the median over channels of its spatial
#: standard deviation, relative to its RMS, was 0.37-0.74 on 19 inputs (the reference photos,
#: 8 scikit-image photos, uniform black/grey/white, noise, a 4×4 image; the fixture weights).
#: Below this it has collapsed (every mask would be empty or identical).
MIN_SPATIAL_VARIATION = 0.05

#: Largest magnitude a real embedding reaches: the encoders end in a LayerNorm, and the
#: measured maximum was 4.7 on the same inputs. Beyond this the encoder overflowed.
MAX_EMBEDDING_MAGNITUDE = 1e3


#: Why an embedding handed in (``set_embedding``, ``generate(image_embedding=...)``) is refused.
GIVEN_EMBEDDING = (
    "an embedding handed in must be an encoder's output for a real image, as "
    "get_image_embedding() returns it"
)


class DegenerateEmbeddingError(RuntimeError):
    """An image embedding is NaN/inf, overflowed or spatially collapsed, whether the encoder
    returned it or it was handed in. Masks decoded from it would be empty or meaningless, so
    prediction stops instead."""


class NonFiniteOutputError(RuntimeError):
    """The mask decoder returned NaN/inf scores or logits. They are never returned: the masks
    thresholded from them would be meaningless."""


def non_finite_tensors(module: nn.Module, prefix: str = "") -> list[str]:
    """Names (with ``prefix``) of ``module``'s parameters and buffers holding NaN/inf."""
    root = prefix.rstrip(".")
    return non_finite_keys(
        {**dict(module.named_parameters(root)), **dict(module.named_buffers(root))}
    )


def _cause(cause: str | Callable[[], str] | None) -> str:
    text = cause() if callable(cause) else cause
    return f"; {text}" if text else ""


def check_embedding(
    embedding: torch.Tensor | np.ndarray,
    where: str,
    cause: str | Callable[[], str] | None = None,
) -> None:
    """Raise :class:`DegenerateEmbeddingError` unless ``embedding`` ``(1, C, h, w)`` looks like
    an encoder's output for a real image: finite, no magnitude above
    :data:`MAX_EMBEDDING_MAGNITUDE`, and a spatial variation (median over channels of the
    spatial standard deviation, relative to the RMS) of at least
    :data:`MIN_SPATIAL_VARIATION`. These are what an overflowed or collapsed
    reduced-precision encoder, damaged weights or a damaged handed-in embedding fail.

    Args:
        where: names the path in the one-line message (e.g. ``"SamPredictor.set_embedding"``).
        cause: the likely cause of NaN/inf or overflowed values, appended to the message; a
            callable is called only when the check fails (e.g. to scan the weights).
    """
    # a tensor stays on its device; an array is read on the CPU
    if not isinstance(embedding, torch.Tensor):
        embedding = torch.from_numpy(np.asarray(embedding))
    e = embedding.detach().float()
    if not all_finite(e):
        bad = int((~torch.isfinite(e)).sum())
        raise DegenerateEmbeddingError(
            f"{where}: the image embedding has {bad} NaN/inf values out of {e.numel()}"
            + _cause(cause)
        )
    peak = float(e.abs().max()) if e.numel() else 0.0
    if peak > MAX_EMBEDDING_MAGNITUDE:
        raise DegenerateEmbeddingError(
            f"{where}: the image embedding reaches {peak:.3g}, beyond any real encoder "
            f"output (<= {MAX_EMBEDDING_MAGNITUDE:g}): it overflowed" + _cause(cause)
        )
    flat = e.reshape(e.shape[0], e.shape[1], -1) if e.dim() >= 3 else e.reshape(1, 1, -1)
    rms = float(flat.pow(2).mean().sqrt())
    variation = float(flat.std(dim=-1).median()) / rms if rms > 0 else 0.0
    if variation < MIN_SPATIAL_VARIATION:
        raise DegenerateEmbeddingError(
            f"{where}: the image embedding has collapsed: its spatial variation is "
            f"{variation:.3g} of its magnitude (real images give >= 0.37, the guard fires "
            f"below {MIN_SPATIAL_VARIATION}), so every mask would be empty or identical"
        )


def encoder_cause(encoder: nn.Module | None, dtype: torch.dtype) -> str:
    """The likely cause of a NaN/inf or overflowed embedding from ``encoder`` run in
    ``dtype``: its own NaN/inf weights where it has any (named), else reduced-precision
    overflow, else the input."""
    bad = non_finite_tensors(encoder, "image_encoder.") if encoder is not None else []
    if bad:
        return (
            f"the encoder's weights hold NaN/inf ({len(bad)} tensors: {first_few(bad, 5)}): "
            "the model was damaged after loading; load its checkpoint again"
        )
    if dtype == torch.float16:
        return "the float16 encoder overflowed: use float32, or bfloat16 instead of float16"
    if dtype == torch.bfloat16:
        return "the bfloat16 encoder overflowed: use float32"
    return "the float32 encoder has finite weights: was the input image NaN/inf or extreme?"


def check_outputs(
    low_res: torch.Tensor | None,
    scores: torch.Tensor | None,
    where: str,
    model: nn.Module | None = None,
) -> None:
    """Raise :class:`NonFiniteOutputError` when the decoder's ``scores`` or low-res logits
    (either may be None) hold NaN/inf; ``where`` names the path, and ``model`` (a ``Sam``),
    when given, is searched for NaN/inf weights to name as the cause."""
    for what, t in (("score", scores), ("logit", low_res)):
        if t is None or all_finite(t):
            continue
        bad = int((~torch.isfinite(t)).sum())
        cause = "the prompts or the embedding drove the decoder out of float range"
        if model is not None:
            names = non_finite_tensors(model)
            if names:
                shown = first_few(names, 5)
                cause = f"the model's weights hold NaN/inf ({len(names)} tensors: {shown})"
        raise NonFiniteOutputError(
            f"{where}: the mask decoder returned NaN/inf {what}s ({bad} of {t.numel()} "
            f"values), so no masks are returned; {cause}"
        )


class ImageNotSetError(RuntimeError, ValueError):
    """``predict`` was called before ``set_image`` (a RuntimeError, as in SAM, and a
    ValueError)."""


class SamPredictor(BatchPrediction):
    """Promptable segmentation of one image at a time, or of a batch of images
    (:meth:`set_image_batch`, :meth:`predict_batch`).

    Args:
        sam_model: a :class:`~mobilesam.modeling.sam.Sam` (e.g. from ``sam_model_registry``).
        dtype: the image encoder's dtype, ``torch.float32``, ``torch.bfloat16`` or
            ``torch.float16``. Without ``dtype`` or ``precision``, the dtype the model's
            encoder has now (float32 as loaded).
        precision: the same as a name: ``"fp32"``, ``"bf16"``, ``"fp16"`` (meant for CUDA)
            or ``"auto"`` (see :mod:`mobilesam.precision`). On a CPU, with bf16 the products
            of the decoder's upscaling tail (its product-heavy part) take bf16 inputs too; the
            prompt encoder, the decoder's transformer, the IoU scores and the mask
            postprocessing always run in float32. Inputs, embeddings and outputs are float32,
            and every embedding is checked (:class:`DegenerateEmbeddingError`).
        engine: the inference engine (:mod:`mobilesam.engine`): ``"cpu"`` (the factored
            decoder and native kernels), ``"plain"`` (SAM's order, the modules' ``forward``),
            an :class:`~mobilesam.engine.Engine`, or ``None``/``"auto"``: ``"cpu"`` on a CPU
            device, ``"plain"`` on any other, decided again whenever the model moves to
            another kind of device. Both give the same masks to float rounding.

    The predictor runs on the model's device (that of its parameters and buffers: move the
    model with ``sam.to(device)`` or build it with ``build_sam(..., device=...)``) and
    follows it when the model moves. On a CUDA device, bf16 and fp16 run the encoder and the
    mask decoder under ``torch.autocast`` with the model's own float32 weights (see
    :mod:`mobilesam.precision`); scores and logits are returned in float32.

    The predictor never changes ``sam_model``: where the model's encoder has another dtype,
    :attr:`image_encoder` is the predictor's own cast copy (so predictors of several
    precisions can share one model). Scores and logits are never NaN/inf
    (:class:`NonFiniteOutputError`).
    """

    def __init__(
        self,
        sam_model: Sam,
        dtype: torch.dtype | None = None,
        *,
        precision: PrecisionLike = None,
        engine: str | Engine | None = None,
    ) -> None:
        if dtype is not None and precision is not None:
            raise ValueError("give either dtype or precision, not both")
        if dtype is None and precision is None:  # the encoder's dtype as it is
            chosen = _dtype_of(sam_model.image_encoder)
        else:
            device = sam_model.pixel_mean.device  # "auto" decides for the model's device
            chosen = resolve_precision(dtype if precision is None else precision, device)
        self.model = sam_model
        # the engine asked for, and the one in use with the device type it was chosen for
        # (an unknown name fails here, not at first use)
        self._engine_request = engine
        self._engine = (sam_model.device.type, engine_for(engine, sam_model.device))
        #: The image encoder's dtype (and, for bf16, that of the decoder's upscaling tail's
        #: products).
        self.dtype = chosen
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        # (fingerprint of the model's encoder it was cast from, the cast copy)
        self._cast_encoder: tuple[tuple, nn.Module] | None = None
        # scratch buffers of decode_points, reused call after call
        self._workspace = Workspace()
        self.reset_image()

    @property
    def engine(self) -> Engine:
        """The inference engine this predictor runs (see :mod:`mobilesam.engine`): the one
        asked for, or with ``None``/``"auto"`` the default for the model's device now."""
        kind = self.device.type
        if self._engine_request in (None, "auto") and self._engine[0] != kind:
            self._engine = (kind, engine_for(self._engine_request, self.device))
        return self._engine[1]

    @property
    def image_encoder(self) -> nn.Module:
        """The encoder :meth:`set_image` runs: the model's own where its parameters have
        :attr:`dtype` or where autocast runs it (bf16/fp16 on CUDA), else this predictor's
        copy of it cast to :attr:`dtype`. The copy is made at first use and made again
        whenever the model's encoder changes (a parameter or buffer replaced or modified in
        place, its dtype, device or train/eval mode), so it never runs stale weights; the
        model itself is never changed."""
        source = self.model.image_encoder
        if _dtype_of(source) == self.dtype or autocast_dtype(self.device, self.dtype):
            self._cast_encoder = None
            return source
        key = (weights_key(source), source.training)
        if self._cast_encoder is None or self._cast_encoder[0] != key:
            self._cast_encoder = None  # free a stale copy before making the new one
            self._cast_encoder = (key, cast_copy(source, self.dtype))
        return self._cast_encoder[1]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        # the engine's per-image state, and the fingerprint of what it derives from
        self._state: ImageState | None = None
        self._state_key: tuple | None = None
        self._checked: tuple[int, int] | None = None  # _tensor_key of the checked features
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._batch: ImageBatch | None = None  # set_image_batch's images

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image.

        Args:
            image: ``H×W×3`` uint8 in ``image_format`` channel order. Grayscale, RGBA, uint16,
                bool and [0, 1] float images are converted (see :func:`to_rgb_uint8`).
            image_format: ``"RGB"`` or ``"BGR"``.
        """
        rgb = to_rgb_uint8(image, image_format)
        if self.model.image_format == "BGR":
            rgb = rgb[..., ::-1]
        self.set_torch_image(resize_to_input(rgb, self.model.img_size), rgb.shape[:2])

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Embed an image already resized by ``self.transform``.

        Args:
            transformed_image: ``(1, 3, h, w)`` with ``max(h, w) == img_size``, 0-255 values.
            original_image_size: ``(H, W)`` of the image before the resize.
        """
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != self.model.img_size:
            raise ValueError(
                f"set_torch_image expects (1, 3, h, w) with max(h, w) == "
                f"{self.model.img_size}, got {shape}; resize with predictor.transform first"
            )
        self.reset_image()
        self._set_sizes(original_image_size, (shape[2], shape[3]))
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        features = self.embed_torch(x)
        check_embedding(
            features,
            f"SamPredictor ({precision_name(self.dtype)} encoder)",
            lambda: encoder_cause(self.image_encoder, self.dtype),
        )
        self.features = features
        self._checked = _tensor_key(self.features)
        self.is_image_set = True
        self.image_state()

    @torch.no_grad()
    def embed_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The image encoder at this predictor's precision, as :meth:`set_image` runs it, on
        preprocessed input: ``x`` ``(B, 3, S, S)`` float32 on the model's device (normalised
        and padded, :meth:`Sam.preprocess <mobilesam.modeling.sam.Sam.preprocess>`) →
        embeddings ``(B, 256, 64, 64)`` float32. Unchecked (see :func:`check_embedding`);
        sets no image."""
        encoder = self.image_encoder
        with autocast(self.device, self.dtype):
            features = self.engine.encode(encoder, x.to(_dtype_of(encoder)))
        return features.float()

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment the current image from prompts in the original image frame.

        Args:
            point_coords: ``(N, 2)`` (x, y) pixels.
            point_labels: ``(N,)``: 1 foreground, 0 background.
            box: ``(4,)`` or ``(1, 4)`` XYXY pixels.
            mask_input: ``(1, 256, 256)`` low-res logits from a previous call.
            multimask_output: return 3 candidate masks instead of 1.
            return_logits: return logits instead of thresholded masks.

        Returns:
            masks ``(C, H, W)`` bool (float32 logits with ``return_logits``), scores ``(C,)``
            float32, low-res logits ``(C, 256, 256)`` float32; ``C`` is 3 or 1.
        """
        self._require_image()
        p = prepare_prompts(
            point_coords,
            point_labels,
            box,
            mask_input,
            self.transform,
            self.original_size,
            self.model.prompt_encoder.mask_input_size,
        )
        # inference mode skips autograd's bookkeeping on the decoder's few hundred small
        # operations (3-7% of a call); only numpy arrays leave it
        with torch.inference_mode():
            masks, iou, low_res = self.predict_torch(
                *p.tensors(self.device), multimask_output, return_logits=return_logits
            )
            return (
                (masks[0].float() if return_logits else masks[0]).cpu().numpy(),
                iou[0].float().cpu().numpy(),
                low_res[0].float().cpu().numpy(),
            )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the input frame (see ``self.transform``).

        Args:
            point_coords: ``(B, N, 2)`` float; point_labels: ``(B, N)`` int.
            boxes: ``(B, 4)`` XYXY. mask_input: ``(B, 1, 256, 256)`` logits.

        Returns:
            masks ``(B, C, H, W)`` (bool, or float logits), scores ``(B, C)``, low-res logits
            ``(B, C, 256, 256)``.

        Raises:
            ValueError: NaN/inf or far-away prompts, or a ``mask_input`` beyond
                :data:`~mobilesam.prompts.MASK_INPUT_LIMIT`.
            NonFiniteOutputError: the decoder returned NaN/inf scores or logits.
        """
        low_res, iou = self.predict_low_res_torch(
            point_coords, point_labels, boxes, mask_input, multimask_output
        )
        threshold = None if return_logits else self.model.mask_threshold
        masks = upscale_masks(
            low_res, self.input_size, self.original_size, self.model.img_size, threshold
        )
        return masks, iou, low_res

    @torch.no_grad()
    def predict_low_res_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool | None = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder half of :meth:`predict_torch`: same inputs, without the upsampling.

        The engine decodes against the image's state (:meth:`image_state`); a
        ``mask_input`` (a dense prompt per call) runs SAM's plain order in every engine.
        ``multimask_output=None`` returns all tokens (token 0 the single-mask answer).

        Returns:
            low-res logits ``(B, C, 256, 256)`` and scores ``(B, C)``. To filter masks by
            score before any upscaling, see :meth:`decode_points`.
        """
        sparse, dense = self.encode_prompts(point_coords, point_labels, boxes, mask_input)
        tokens = "all" if multimask_output is None else ("multi" if multimask_output else "single")
        state = self.image_state()
        with autocast(self.device, self.dtype):
            masks, iou = self.engine.decode(
                state, sparse, None if mask_input is None else dense, tokens
            )
        check_outputs(masks, iou, "SamPredictor", self.model)
        return masks.float(), iou.float()

    @torch.no_grad()
    def decode_points(
        self, points_xy: np.ndarray, iou_thresh: float, *, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode single foreground points (three masks each) and keep the masks whose
        predicted IoU is above ``iou_thresh``, upscaling only those: segment everything's
        batch step.

        Args:
            points_xy: ``(n, 2)`` (x, y) pixels in the original image frame.
            iou_thresh: keep masks with a predicted IoU ``> iou_thresh``; 0 or less keeps
                all (SAM's rule).
            batch_size: points per decoder pass (default: the engine's
                :attr:`~mobilesam.engine.Engine.decode_batch`, else all at once). Does not
                change the result.

        Returns:
            low-res logits ``(k, 256, 256)`` float32, IoUs ``(k,)`` and the index of each
            mask's point ``(k,)`` int64, point-major (point 0's surviving masks first). The
            logits live in a buffer this predictor reuses: valid until its next call.

        Raises:
            NonFiniteOutputError: NaN/inf scores or logits (never filtered out silently).
        """
        self._require_image()
        where = "SamPredictor.decode_points"
        points = np.asarray(points_xy, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"decode_points expects (n, 2) points (x, y), got {points.shape}")
        coords = self.transform.apply_coords(points, self.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[:, None, :]
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=self.device)
        n = len(points)
        step = max(1, batch_size or self.engine.decode_batch or n)
        state, ws = self.image_state(), self._workspace
        size = self.model.prompt_encoder.mask_input_size
        per_point = self.model.mask_decoder.num_multimask_outputs
        # every surviving mask's logits go straight into one buffer, reused call after call
        low = ws.get("low_res", (per_point * n, *size), coords_t)
        count, iou, index = 0, [], []
        for i in range(0, n, step):
            sparse, _ = self.encode_prompts(coords_t[i : i + step], labels_t[i : i + step])
            with autocast(self.device, self.dtype):
                logits, scores, prompt = self.engine.decode_filtered(
                    state, sparse, iou_thresh, ws, out=low[count:]
                )
            check_outputs(logits, scores, where, self.model)
            count += len(scores)
            iou.append(scores.float())
            index.append(prompt + i)
        if not iou:
            return (
                low[:0],
                coords_t.new_zeros(0),
                torch.zeros(0, dtype=torch.long, device=self.device),
            )
        return low[:count], torch.cat(iou), torch.cat(index)

    def encode_prompts(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt encoder on prompts in the input frame: sparse ``(B, N, C)`` and dense
        ``(B, C, h, w)`` embeddings in the model's dtype (see :meth:`predict_torch`; the
        prompts are checked by :func:`~mobilesam.prompts.check_prompt_tensors`)."""
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        check_prompt_tensors(point_coords, boxes, mask_input, PROMPT_REACH * self.model.img_size)
        dt = self.model.prompt_encoder.no_mask_embed.weight.dtype
        points = None
        if point_coords is not None and point_labels is not None:
            points = (point_coords.to(dt), point_labels)
        boxes = boxes.to(dt) if boxes is not None else None
        mask_input = mask_input.to(dt) if mask_input is not None else None
        return self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

    def image_state(self) -> ImageState:
        """The engine's per-image state for the current image (what
        :meth:`Engine.prepare <mobilesam.engine.Engine.prepare>` returned: for the CPU
        engine, every prompt-independent product of the decoder), prepared again whenever
        the embedding (in place) or the prompt encoder's or decoder's weights, dtype or
        device changed since."""
        self._require_image()
        pe, decoder = self.model.prompt_encoder, self.model.mask_decoder
        assert self.features is not None
        # the state derives from the embedding too: an in-place change of it invalidates
        # (inference tensors, made under torch.inference_mode, keep no version counter)
        key = (weights_key(pe, decoder), *_tensor_key(self.features))
        if self._state is None or self._state_key != key:
            self._state = None  # free the stale state first
            self._state = self.engine.prepare(
                self.model,
                self.features.to(pe.no_mask_embed.weight),
                # bf16 where the encoder runs bf16: the upscaling tail is the decoder's one
                # product-heavy part (fp16 stays float32: it is slow on CPUs)
                torch.bfloat16 if self.dtype == torch.bfloat16 else None,
            )
            self._state_key = key
        return self._state

    def set_embedding(
        self,
        features: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """Restore a cached image: ``features`` from :meth:`get_image_embedding`, with the
        ``original_size`` ``(H, W)`` it was computed for. ``input_size`` ``(h, w)``, the size
        after the resize, defaults to what :meth:`set_image` gives for ``original_size``.

        The embedding is checked as the encoder's are (:func:`check_embedding`), except the
        one already held when it has not changed since it was checked (a server's next
        click). On any error no image is left set.

        Raises:
            ValueError: a wrong shape or size.
            DegenerateEmbeddingError: NaN/inf, overflowed or collapsed ``features``.
        """
        self._check_shape(features)
        for name, size in (("original_size", original_size), ("input_size", input_size)):
            if size is not None and (len(size) != 2 or min(int(v) for v in size) < 1):
                raise ValueError(f"{name} must be (height, width) of at least 1 pixel, got {size}")
        if input_size is None:
            t = self.transform
            input_size = t.get_preprocess_shape(original_size[0], original_size[1], t.target_length)
        features = features.to(self.device, torch.float32)
        # restoring the embedding already held (a server's click after click) keeps its
        # engine state; image_state() still checks it against the weights and embedding
        held = features is self.features
        kept = (self._state, self._state_key) if held else (None, None)
        unchanged = held and self._checked == _tensor_key(features)
        self.reset_image()
        if not unchanged:
            check_embedding(features, "SamPredictor.set_embedding", GIVEN_EMBEDDING)
        self.features = features
        self._state, self._state_key = kept
        self._checked = _tensor_key(features)
        self._set_sizes(original_size, input_size)
        self.is_image_set = True
        self.image_state()

    def check_features(
        self, features: torch.Tensor, where: str = "SamPredictor.set_embedding"
    ) -> None:
        """The checks :meth:`set_embedding` makes of ``features``: ValueError unless its
        shape is this model's ``(1, C, h, w)``, then :func:`check_embedding` (``where`` names
        the caller in the message)."""
        self._check_shape(features)
        check_embedding(features, where, GIVEN_EMBEDDING)

    def _check_shape(self, features: torch.Tensor) -> None:
        pe = self.model.prompt_encoder
        expected = (1, pe.embed_dim, *pe.image_embedding_size)
        if tuple(features.shape) != expected:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")

    def _set_sizes(self, original_size: tuple[int, ...], input_size: tuple[int, ...]) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, ``(1, 256, 64, 64)``; after
        :meth:`set_image_batch`, every image's, ``(B, 256, 64, 64)`` (as in sam2)."""
        if self._batch is not None:
            return self._batch.features
        self._require_image()
        assert self.features is not None
        return self.features

    def _require_image(self) -> None:
        if self._batch is not None:
            raise ImageNotSetError(
                f"the predictor holds a batch of {len(self._batch)} images from "
                ".set_image_batch(...): use predict_batch, or set one image with "
                ".set_image(...) first"
            )
        require_image(self.is_image_set)


def weights_key(*modules: nn.Module) -> tuple:
    """A fingerprint that changes whenever any parameter or buffer of ``modules`` is replaced
    (``.to(dtype/device)``, new ``Parameter``) or modified in place (``load_state_dict``,
    optimiser steps bump the tensor version counter)."""
    # a plain walk of the module dicts: about half the cost of ``modules()`` and
    # ``parameters()``, whose generators de-duplicate (this runs on every ``predict``)
    tensors: list[torch.Tensor | None] = []
    stack = list(modules)
    while stack:
        sub = stack.pop()
        if sub is None:  # a registered empty submodule slot
            continue
        tensors += sub._parameters.values()
        tensors += sub._buffers.values()
        stack += sub._modules.values()
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors if t is not None)


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first parameter (float32 for a module without any)."""
    return next((p.dtype for p in module.parameters()), torch.float32)


def _tensor_key(t: torch.Tensor) -> tuple[int, int]:
    """Changes when ``t`` is modified in place (inference tensors, made under
    ``torch.inference_mode``, keep no version counter)."""
    return t.data_ptr(), 0 if t.is_inference() else t._version


def require_image(is_image_set: bool) -> None:
    """Raise :class:`ImageNotSetError` unless an image has been set."""
    if not is_image_set:
        raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")
