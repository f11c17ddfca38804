"""The HTTP API: upload a photo once, then segment it from prompts or everything.

- ``POST /v1/images`` (multipart ``file``): decode (size- and pixel-limited), embed once,
  keep the embedding in an LRU cache; returns ``id``, ``width``, ``height``, ``encode_ms``.
- ``POST /v1/images/{id}/segment`` (JSON): points with labels and/or a box, optionally the
  handle of a previous low-res mask; returns masks (PNG base64 or COCO RLE), scores and the
  handle of the new low-res logits.
- ``POST /v1/images/{id}/everything``: COCO-RLE annotations.
- ``GET /healthz``.
- ``GET /``: the click-to-segment page (``static/``: plain HTML, CSS and JS, no build step).

Safe by default: bind to 127.0.0.1 (see the CLI) and answer only requests addressed to a
loopback name (``Host``), so a web page cannot reach the server through DNS rebinding; refuse
cross-origin state-changing requests (``Sec-Fetch-Site``, ``Origin``), so a page the user
visits cannot drive it; upload and pixel limits, no filesystem paths from clients, 404 for
unknown ids, 422 with the reason for malformed prompts, 400 for undecodable images. Model
calls are serialised (the model and predictors are not thread-safe) by a gate that serves
interactive requests first: segment-everything gives way between batches of points
(:mod:`~mobilesam.serve.gate`); everything else runs concurrently.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at
runtime, and the request models are local to :func:`create_app`.)
"""

import base64
import io
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
from PIL import Image

from .._heap import HeapTrimmer
from ..image_io import read_rgb
from ..modeling.sam import Sam
from ..predictor import SamPredictor
from ..prompts import check_prompt_reach
from .gate import ModelGate

#: Host names a local server answers to (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerSettings:
    """Limits and access rules of :func:`create_app`.

    ``allowed_hosts``: the host names (without port) a request's ``Host`` header may name;
    ``("*",)`` accepts any (for a deliberate LAN set-up: ``mobilesam serve --allow-host``)."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000
    cache_images: int = 16
    cache_bytes: int = 256 * 2**20  # embeddings kept (4 MiB each for MobileSAM)
    cache_masks: int = 256
    max_points_per_side: int = 64
    max_points: int = 64  # prompt points per segment request
    precision: str = "fp32"  # the image encoder's: "fp32", "bf16" or "auto"


class LRU:
    """A small thread-safe LRU map, bounded in entries and, optionally, in bytes."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self.size, self.max_bytes = size, max_bytes
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any, nbytes: int = 0) -> None:
        with self._lock:
            self._data[key] = value
            self._bytes[key] = nbytes
            self._data.move_to_end(key)
            while len(self._data) > self.size or (
                self.max_bytes is not None
                and len(self._data) > 1
                and sum(self._bytes.values()) > self.max_bytes
            ):
                old, _ = self._data.popitem(last=False)
                del self._bytes[old]

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def __len__(self) -> int:
        return len(self._data)


# The page's files, served from the package; clients name them, never a path.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> bytes:
    """The bytes of one of :data:`STATIC_FILES`."""
    return (resources.files(__package__) / "static" / name).read_bytes()


def mask_png_base64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def host_name(host_header: str) -> str:
    """The host name of a ``Host`` header (or an ``Origin``'s netloc), without port or
    brackets, lower case: ``"[::1]:8000"`` → ``"::1"``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _validation_errors(errors: list[dict]) -> list[dict]:
    """Pydantic's errors with JSON-safe fields only: ``loc`` (the JSON field path), ``msg``
    and ``type`` (the rejected input is left out: it may be NaN or huge)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


def _check_in_reach(
    points: list[tuple[float, float]] | None,
    box: tuple[float, float, float, float] | None,
    hw: tuple[int, int],
) -> None:
    """422 naming the JSON field when a prompt lies too far from the image (the library's
    rule, :func:`~mobilesam.prompts.check_prompt_reach`)."""
    from fastapi import HTTPException

    for name, values in (("points", points or []), ("box", box or [])):
        try:
            check_prompt_reach(name, values, hw)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None


#: Methods that change state (a cross-origin page must not send them).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _access_rules(allowed_hosts: tuple[str, ...]) -> Any:
    """An HTTP middleware enforcing ``allowed_hosts`` and same-origin state changes: 403 with
    the reason otherwise. Clients without browser headers (curl, scripts) pass the second
    rule; browsers always send ``Sec-Fetch-Site`` or ``Origin`` on cross-origin requests."""
    from urllib.parse import urlsplit

    from fastapi.responses import JSONResponse

    any_host = "*" in allowed_hosts

    async def check(request: Any, call_next: Any) -> Any:
        host_header = request.headers.get("host", "")
        host = host_name(host_header)
        if not any_host and host not in allowed_hosts:
            return JSONResponse(
                {
                    "detail": f"this server does not answer to host {host!r} (allowed: "
                    f"{', '.join(allowed_hosts)}; see ServerSettings.allowed_hosts or "
                    "`mobilesam serve --allow-host`)"
                },
                status_code=403,
            )
        if request.method in UNSAFE_METHODS:
            site = request.headers.get("sec-fetch-site")
            origin = request.headers.get("origin")
            if site in ("cross-site", "same-site"):
                reason = f"Sec-Fetch-Site: {site}"
            elif origin is not None and (
                origin == "null" or urlsplit(origin).netloc.lower() != host_header.lower()
            ):
                reason = f"Origin {origin!r} is not this server ({host_header!r})"
            else:
                return await call_next(request)
            return JSONResponse(
                {"detail": f"cross-origin {request.method} refused ({reason})"}, status_code=403
            )
        return await call_next(request)

    return check


#: Bytes a multipart request may carry beyond its file: boundaries, part headers, file name.
MULTIPART_SLACK = 64 * 2**10


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413. A ``Content-Length``
    over the limit is refused before reading; a body without one (chunked) is counted as it
    arrives and cut off at the limit, so nothing larger is ever buffered or spooled."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    @property
    def detail(self) -> str:
        return f"request body over the {self.limit - MULTIPART_SLACK}-byte upload limit"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen, over, refused = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True  # the app fails to read the body; its reply becomes a 413
                    raise _TooLarge
            return message

        async def reply(message: dict) -> None:
            nonlocal refused
            if not over:
                return await send(message)
            if message["type"] == "http.response.start" and not refused:
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, counted, reply)
        except _TooLarge:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """A request body passed :class:`BodyLimit`'s limit while streaming."""


def create_app(model: Sam, settings: ServerSettings = ServerSettings()) -> Any:
    """The FastAPI application for ``model``."""
    import torch
    from fastapi import FastAPI, File, HTTPException, Response, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool

    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..masks import coco_encode_rle, mask_to_rle

    class SegmentRequest(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
        points: list[tuple[float, float]] | None = Field(
            None,
            max_length=settings.max_points,
            description="(x, y) pixels in the original image, within 10× its size",
        )
        labels: list[Literal[0, 1]] | None = Field(
            None, max_length=settings.max_points, description="1 foreground, 0 background"
        )
        box: tuple[float, float, float, float] | None = Field(None, description="XYXY pixels")
        mask_input: str | None = Field(None, description="low_res_handle of a previous call")
        multimask: StrictBool = True
        format: Literal["png", "rle"] = "png"

    class EverythingRequest(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
        points_per_side: int = Field(32, ge=1, le=settings.max_points_per_side)
        pred_iou_thresh: float = Field(0.88, ge=0, le=1)
        stability_score_thresh: float = Field(0.95, ge=0, le=1)

    class Health(BaseModel):
        status: str
        cached_images: int

    class Uploaded(BaseModel):
        id: str = Field(description="handle for the segment and everything calls")
        width: int = Field(description="pixels, after EXIF orientation")
        height: int
        encode_ms: float = Field(description="time spent in the image encoder")

    class Segmented(BaseModel):
        masks: list[Any] = Field(
            description="base64 PNG (0/255, image size) or COCO RLE dicts, per `format`"
        )
        format: Literal["png", "rle"]
        scores: list[float] = Field(description="predicted IoU of each mask")
        best: int = Field(description="index of the highest-scoring mask")
        low_res_handle: str = Field(description="the best mask's logits, for `mask_input`")

    class Everything(BaseModel):
        annotations: list[dict[str, Any]] = Field(
            description="COCO-style: id, segmentation (RLE), area, bbox (XYWH), "
            "predicted_iou, point_coords, stability_score, crop_box"
        )
        seconds: float

    app = FastAPI(
        title="mobilesam",
        version="1",
        description="Promptable segmentation with MobileSAM. The page is at `/`.",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        # the default handler echoes each bad input, which fails to render when it is NaN
        return JSONResponse({"detail": _validation_errors(exc.errors())}, status_code=422)

    app.middleware("http")(_access_rules(settings.allowed_hosts))
    # outermost: an oversized body is refused before any of it is parsed or spooled to disk
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + MULTIPART_SLACK)
    predictor = SamPredictor(model, precision=settings.precision)
    gate = ModelGate()  # interactive requests first; everything yields between batches
    images = LRU(settings.cache_images, settings.cache_bytes)
    heap = HeapTrimmer()
    low_res = LRU(settings.cache_masks)

    def entry(image_id: str) -> dict[str, Any]:
        found = images.get(image_id)
        if found is None:
            raise HTTPException(404, f"unknown image id {image_id!r} (expired or never uploaded)")
        return found

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(
            static_file("index.html"), media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS
        )

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise HTTPException(404, f"no static file {name!r}")
        return Response(static_file(name), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok", cached_images=len(images))

    @app.post("/v1/images")
    def upload(file: UploadFile = File(...)) -> Uploaded:  # noqa: B008
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload over the {settings.max_upload_bytes}-byte limit")
        try:
            image = read_rgb(data, settings.max_pixels)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        with gate.interactive():
            start = time.perf_counter()
            predictor.set_image(image)
            features = predictor.get_image_embedding()
            # the embedding and the size are all later calls need: the pixels are not kept
            record = {"features": features, "size": image.shape[:2]}
            encode_ms = 1000 * (time.perf_counter() - start)
        image_id = uuid.uuid4().hex
        images.put(image_id, record, features.numel() * features.element_size())
        heap.trim_if_grown()  # give evicted embeddings and decode buffers back to the OS
        h, w = record["size"]
        return Uploaded(id=image_id, width=w, height=h, encode_ms=round(encode_ms, 1))

    @app.post("/v1/images/{image_id}/segment")
    def segment(image_id: str, req: SegmentRequest) -> Segmented:
        rec = entry(image_id)
        mask_input = None
        if req.mask_input is not None:
            mask_input = low_res.get(req.mask_input)
            if mask_input is None:
                raise HTTPException(404, f"unknown mask_input handle {req.mask_input!r}")
        if req.points is None and req.box is None:
            raise HTTPException(422, "give points (with labels) and/or a box")
        if (req.points is None) != (req.labels is None) or (
            req.points is not None and len(req.points) != len(req.labels)
        ):
            raise HTTPException(422, "points and labels: give one label (1 or 0) per point")
        _check_in_reach(req.points, req.box, rec["size"])
        try:
            with gate.interactive():
                predictor.set_embedding(rec["features"], rec["size"])
                masks, scores, logits = predictor.predict(
                    point_coords=np.array(req.points) if req.points is not None else None,
                    point_labels=np.array(req.labels) if req.labels is not None else None,
                    box=np.array(req.box) if req.box is not None else None,
                    mask_input=mask_input,
                    multimask_output=req.multimask,
                )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        best = int(np.argmax(scores))
        handle = uuid.uuid4().hex
        low_res.put(handle, logits[best][None])
        if req.format == "png":
            out = [mask_png_base64(m) for m in masks]
        else:
            out = [coco_encode_rle(r) for r in mask_to_rle(torch.from_numpy(masks))]
        return Segmented(
            masks=out,
            format=req.format,
            scores=[float(s) for s in scores],
            best=best,
            low_res_handle=handle,
        )

    @app.post("/v1/images/{image_id}/everything")
    def everything(image_id: str, req: EverythingRequest | None = None) -> Everything:
        rec = entry(image_id)
        req = req or EverythingRequest()
        gen = SamAutomaticMaskGenerator(
            model,
            points_per_side=req.points_per_side,
            pred_iou_thresh=req.pred_iou_thresh,
            stability_score_thresh=req.stability_score_thresh,
            output_mode="coco_rle",
            points_per_batch=16,  # a yield point every ~16 prompts; the masks are the same
        )
        start = time.perf_counter()
        with gate.background() as yield_point:
            anns = gen.generate(
                # with the embedding given, the generator reads only the image's size: zeros
                # that are never touched cost no memory
                np.zeros((*rec["size"], 3), np.uint8),
                image_embedding=rec["features"],
                progress=lambda done, total: yield_point(),
            )
        return Everything(
            annotations=[{"id": i + 1, **a} for i, a in enumerate(anns)],
            seconds=round(time.perf_counter() - start, 3),
        )

    return app
