"""The endpoints, on one :data:`router` that every app includes. Each reads its app's
:class:`~mobilesam.serve.state.ServerState` through the :data:`State` dependency.

Model calls hold the app's gate: uploads and clicks as interactive requests, segment-everything
as a background job that yields between batches of points. Uploads are decoded and resized
within the app's upload budget before they wait for the model. Codes: 404 for unknown ids and
handles, 422 for invalid prompts (naming the field), 400 for images that fail to decode or
orient, 413 for uploads over the limit, 503 with ``Retry-After`` when too many uploads are in
progress.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from importlib import resources
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, File, HTTPException, Request, Response, UploadFile
from PIL import Image

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..image_io import read_rgb
from ..masks import coco_encode_rle, mask_to_rle
from ..prompts import check_prompt_reach
from ..transforms import resize_to_input
from .gate import UploadsBusy
from .schemas import (
    Everything,
    EverythingRequest,
    Health,
    Segmented,
    SegmentRequest,
    Uploaded,
    check_limits,
)
from .state import CachedImage, ServerState

router = APIRouter()


async def server_state(request: Request) -> ServerState:
    """The app's state (async: reading an attribute needs no worker thread)."""
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]

# The page's files, served from the package; clients name them, never a path.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page runs its own script and stylesheet only: no inline code, nothing from elsewhere;
# masks arrive as data: URLs and downloads are blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> bytes:
    """The bytes of one of :data:`STATIC_FILES`."""
    return (resources.files(__package__) / "static" / name).read_bytes()


@router.get("/", include_in_schema=False)
def page() -> Response:
    return Response(
        static_file("index.html"), media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS
    )


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC_FILES or name == "index.html":
        raise HTTPException(404, f"no static file {name!r}")
    return Response(static_file(name), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)


@router.get("/healthz")
async def healthz(state: State) -> Health:
    # async: answered on the event loop even when every worker thread is busy
    return Health(status="ok", cached_images=len(state.images))


@router.post("/v1/images")
def upload(file: Annotated[UploadFile, File()], state: State) -> Uploaded:
    """Decode (size- and pixel-limited, within the upload budget), embed once and cache the
    embedding."""
    try:
        with state.uploads.admit():
            with state.uploads.decoding_slot():
                image, size = model_input(file, state)
            # what waits for the model is the resized input; the decoded pixels are gone
            with state.gate.interactive():
                start = time.perf_counter()
                state.predictor.set_torch_image(image, size)
                # the embedding and the size are all later calls need
                cached = CachedImage(state.predictor.get_image_embedding(), size)
                encode_ms = 1000 * (time.perf_counter() - start)
    except UploadsBusy as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        raise HTTPException(503, str(exc), headers=headers) from None
    image_id = uuid.uuid4().hex
    state.images.put(image_id, cached, cached.nbytes)
    state.heap.trim_if_grown()  # give evicted embeddings and decode buffers back to the OS
    h, w = cached.size
    return Uploaded(id=image_id, width=w, height=h, encode_ms=round(encode_ms, 1))


@router.post("/v1/images/{image_id}/segment")
def segment(image_id: str, req: SegmentRequest, state: State) -> Segmented:
    """Masks for points (with labels) and/or a box, optionally refining a previous mask."""
    check_limits(req, state.settings)
    cached = cached_image(state, image_id)
    mask_input = None
    if req.mask_input is not None:
        mask_input = state.low_res.get(req.mask_input)
        if mask_input is None:
            raise HTTPException(404, f"unknown mask_input handle {req.mask_input!r}")
    check_prompts(req, cached.size)
    try:
        with state.gate.interactive():
            state.predictor.set_embedding(cached.features, cached.size)
            masks, scores, logits = state.predictor.predict(
                point_coords=None if req.points is None else np.array(req.points),
                point_labels=None if req.labels is None else np.array(req.labels),
                box=None if req.box is None else np.array(req.box),
                mask_input=mask_input,
                multimask_output=req.multimask,
            )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    best = int(np.argmax(scores))
    handle = uuid.uuid4().hex
    state.low_res.put(handle, logits[best][None])
    return Segmented(
        masks=encode_masks(masks, req.format),
        format=req.format,
        scores=[float(s) for s in scores],
        best=best,
        low_res_handle=handle,
    )


@router.post("/v1/images/{image_id}/everything")
def everything(image_id: str, state: State, req: EverythingRequest | None = None) -> Everything:
    """Segment everything: COCO-RLE annotations for a grid of prompt points."""
    req = req or EverythingRequest()
    check_limits(req, state.settings)
    cached = cached_image(state, image_id)
    gen = SamAutomaticMaskGenerator(
        state.model,
        points_per_side=req.points_per_side,
        pred_iou_thresh=req.pred_iou_thresh,
        stability_score_thresh=req.stability_score_thresh,
        output_mode="coco_rle",
        points_per_batch=16,  # a yield point every ~16 prompts; the masks are the same
        precision=state.predictor.dtype,  # the server's (bf16: the decoder tail's too)
    )
    start = time.perf_counter()
    with state.gate.background() as yield_point:
        anns = gen.generate(
            image_embedding=cached.features,
            original_size=cached.size,
            progress=lambda done, total: yield_point(),
        )
    return Everything(
        annotations=[{"id": i + 1, **a} for i, a in enumerate(anns)],
        seconds=round(time.perf_counter() - start, 3),
    )


def model_input(file: UploadFile, state: ServerState) -> tuple[torch.Tensor, tuple[int, int]]:
    """The upload as the image encoder takes it, as ``SamPredictor.set_image`` makes it: the
    ``(1, 3, h, w)`` uint8 input (long side ``img_size``) and the photo's ``(H, W)`` in
    display orientation. 413 over the upload limit; 400 with the reader's one line when the
    photo fails to decode or orient, or has more pixels than the cap."""
    limit = state.settings.max_upload_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload over the {limit}-byte limit")
    try:
        rgb = read_rgb(data, state.settings.max_pixels)
    except ValueError as exc:  # every decode failure, by the reader's contract
        raise HTTPException(400, str(exc)) from None
    del data
    if state.model.image_format == "BGR":
        rgb = rgb[..., ::-1]
    return resize_to_input(rgb, state.model.img_size), (int(rgb.shape[0]), int(rgb.shape[1]))


def cached_image(state: ServerState, image_id: str) -> CachedImage:
    """The upload ``image_id``; 404 when it was never uploaded or has left the cache."""
    found = state.images.get(image_id)
    if found is None:
        raise HTTPException(404, f"unknown image id {image_id!r} (expired or never uploaded)")
    return found


def check_prompts(req: SegmentRequest, hw: tuple[int, int]) -> None:
    """422 unless ``req`` has points with one label each and/or a box, all within reach of
    an image of ``hw`` = (height, width) pixels (the library's rule,
    :func:`~mobilesam.prompts.check_prompt_reach`; the message names the JSON field)."""
    if req.points is None and req.box is None:
        raise HTTPException(422, "give points (with labels) and/or a box")
    if (req.points is None) != (req.labels is None) or (
        req.points is not None and req.labels is not None and len(req.points) != len(req.labels)
    ):
        raise HTTPException(422, "points and labels: give one label (1 or 0) per point")
    for name, values in (("points", req.points or []), ("box", req.box or [])):
        try:
            check_prompt_reach(name, values, hw)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None


def encode_masks(masks: np.ndarray, fmt: str) -> list:
    """``(N, H, W)`` bool masks as base64 PNGs (0/255) or COCO RLE dicts (``fmt`` "png" or
    "rle")."""
    if fmt == "rle":
        return [coco_encode_rle(r) for r in mask_to_rle(torch.from_numpy(masks))]
    return [mask_png_base64(m) for m in masks]


def mask_png_base64(mask: np.ndarray) -> str:
    """An ``(H, W)`` bool mask as a base64 PNG, 0 or 255 per pixel."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
