"""The API's request and response bodies (pydantic), and how invalid requests are answered.

Requests are strict: unknown fields, NaN and infinities are refused (``extra="forbid"``,
``allow_inf_nan=False``), labels are 0 or 1. Every validation failure is a 422 whose
``detail`` lists ``{"loc", "msg", "type"}`` per error, ``loc`` being the JSON field's path
(``["body", "points"]``). The limits that depend on the app's
:class:`~mobilesam.serve.state.ServerSettings` (prompt points, grid size) are checked by
:func:`check_limits` with the same 422 shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .state import ServerSettings

STRICT = ConfigDict(allow_inf_nan=False, extra="forbid")


class SegmentRequest(BaseModel):
    model_config = STRICT
    points: list[tuple[float, float]] | None = Field(
        None,
        description="(x, y) pixels in the original image, within 10× its size; at most "
        "ServerSettings.max_points (64 by default)",
    )
    labels: list[Literal[0, 1]] | None = Field(
        None, description="1 foreground, 0 background; one per point"
    )
    box: tuple[float, float, float, float] | None = Field(None, description="XYXY pixels")
    mask_input: str | None = Field(None, description="low_res_handle of a previous call")
    multimask: StrictBool = True
    format: Literal["png", "rle"] = "png"


class EverythingRequest(BaseModel):
    model_config = STRICT
    points_per_side: int = Field(
        32,
        ge=1,
        description="prompt points along each side of the grid; at most "
        "ServerSettings.max_points_per_side (64 by default)",
    )
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


def check_limits(req: SegmentRequest | EverythingRequest, settings: ServerSettings) -> None:
    """Raise :class:`RequestValidationError` (a 422 like any other validation error) when
    ``req`` goes past the app's limits: more than ``settings.max_points`` points or labels,
    or a grid of more than ``settings.max_points_per_side``."""
    errors = []
    if isinstance(req, SegmentRequest):
        limit = settings.max_points
        for name, values in (("points", req.points), ("labels", req.labels)):
            if values is not None and len(values) > limit:
                msg = f"List should have at most {limit} items after validation, not {len(values)}"
                errors.append({"loc": ("body", name), "msg": msg, "type": "too_long"})
    elif req.points_per_side > settings.max_points_per_side:
        msg = f"Input should be less than or equal to {settings.max_points_per_side}"
        errors.append({"loc": ("body", "points_per_side"), "msg": msg, "type": "less_than_equal"})
    if errors:
        raise RequestValidationError(errors)


def openapi_with_limits(app: FastAPI, settings: ServerSettings) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that also states ``settings``' limits in the request schemas
    (``maxItems`` of ``points``/``labels``, ``maximum`` of ``points_per_side``): the models are
    shared by every app, the limits are each app's."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            models = plain()["components"]["schemas"]
            segment = models["SegmentRequest"]["properties"]
            for name in ("points", "labels"):
                for option in segment[name].get("anyOf", [segment[name]]):
                    if option.get("type") == "array":
                        option["maxItems"] = settings.max_points
            grid = models["EverythingRequest"]["properties"]["points_per_side"]
            grid["maximum"] = settings.max_points_per_side
        return app.openapi_schema

    return openapi


async def validation_error_response(request: Request, exc: Exception) -> JSONResponse:
    """The 422 for a :class:`RequestValidationError`: pydantic's errors with JSON-safe fields
    only. FastAPI's default handler echoes each rejected input, which fails to render when
    it is NaN, and may be huge."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)
