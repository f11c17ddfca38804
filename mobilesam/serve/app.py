"""The HTTP API: upload a photo once, then segment it from prompts or everything.

- ``POST /v1/images`` (multipart ``file``): decode (size- and pixel-limited), embed once,
  keep the embedding in an LRU cache; returns ``id``, ``width``, ``height``, ``encode_ms``.
- ``POST /v1/images/{id}/segment`` (JSON): points with labels and/or a box, optionally the
  handle of a previous low-res mask; returns masks (PNG base64 or COCO RLE), scores and the
  handle of the new low-res logits.
- ``POST /v1/images/{id}/everything``: COCO-RLE annotations.
- ``GET /healthz``.
- ``GET /``: the click-to-segment page (``static/``: plain HTML, CSS and JS, no build step).
- ``GET /openapi.json``; ``GET /docs`` (Swagger UI) only when ``ServerSettings.docs`` asks:
  its script comes from another origin (:mod:`~mobilesam.serve.docs`).

Safe by default: bind to 127.0.0.1 (see the CLI) and answer only requests addressed to a
loopback name (``Host``), so a web page cannot reach the server through DNS rebinding; refuse
cross-origin state-changing requests (``Sec-Fetch-Site``, ``Origin``), so a page the user
visits cannot drive it; upload and pixel limits, no filesystem paths from clients, 404 for
unknown ids, 422 with the reason for malformed prompts, 400 for undecodable images, decoding
within a memory budget (503 with ``Retry-After`` past its queue), a strict
Content-Security-Policy on every response and no third-party script by default. Model
calls are serialised (the model and predictors are not thread-safe) by a gate that serves
interactive requests first: segment-everything gives way between batches of points
(:mod:`~mobilesam.serve.gate`); everything else runs concurrently.

Where things are: the bodies in :mod:`~mobilesam.serve.schemas`, the endpoints in
:mod:`~mobilesam.serve.routes`, the access and size rules and the response headers in
:mod:`~mobilesam.serve.middleware`, the per-app settings, caches and gates in
:mod:`~mobilesam.serve.state` and :mod:`~mobilesam.serve.gate`, and the connection limits
(uvicorn, as ``mobilesam serve`` runs it) in :mod:`~mobilesam.serve.server`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ..modeling.sam import Sam
from .docs import docs_router
from .middleware import AccessRules, BodyLimit, SecurityHeaders
from .routes import router
from .schemas import openapi_with_limits, validation_error_response
from .state import ServerSettings, ServerState

__all__ = ["ServerSettings", "create_app"]


def create_app(
    model: Sam,
    settings: ServerSettings = ServerSettings(),  # noqa: B008 (frozen, shared safely)
) -> FastAPI:
    """The FastAPI application serving ``model`` under ``settings``."""
    app = FastAPI(
        title="mobilesam",
        version="1",
        description="Promptable segmentation with MobileSAM. The page is at `/`.",
        docs_url=None,  # FastAPI's pages load scripts from a CDN: only on request, below
        redoc_url=None,
    )
    app.state.server = ServerState.create(model, settings)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.middleware("http")(AccessRules(settings.allowed_hosts))
    # before the app: an oversized body is refused before any of it is parsed or spooled
    app.add_middleware(BodyLimit, upload_limit=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: refusals carry the headers too
    app.include_router(router)
    if settings.docs:
        app.include_router(docs_router(settings.docs_assets_url, app.openapi_url or ""))
    app.openapi = openapi_with_limits(app, settings)  # type: ignore[method-assign]
    return app
