"""What one server app holds: its settings, the model and its predictor, the model gate, the
upload budget, and the two caches (image embeddings, low-res mask logits). One
:class:`ServerState` per app, built by :func:`~mobilesam.serve.app.create_app`; the endpoints
reach it through the request (:func:`~mobilesam.serve.routes.server_state`). Nothing here
imports FastAPI."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .._heap import HeapTrimmer
from ..image_io import DEFAULT_MAX_PIXELS
from ..modeling.sam import Sam
from ..predictor import SamPredictor
from .gate import ModelGate, UploadBudget

#: Host names a local server answers to (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

#: Bytes per decoded pixel that one upload may hold while it is decoded and resized: Pillow's
#: 4-byte-per-pixel image, a rotated or converted copy of it and the 3-byte RGB array, the
#: resize's smaller buffers, and slack for what the allocator keeps per thread.
DECODE_BYTES_PER_PIXEL = 20

#: The memory that concurrent decodes may use by default (1.5 GiB): five 16-MP photos.
DECODE_MEMORY_BYTES = 1536 * 2**20

#: Where ``/docs`` loads Swagger UI from when it is turned on (FastAPI's default).
DOCS_ASSETS_URL = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"


@dataclass(frozen=True)
class ServerSettings:
    """Limits and access rules of :func:`~mobilesam.serve.app.create_app`.

    ``allowed_hosts``: the host names (without port) a request's ``Host`` header may name;
    ``("*",)`` accepts any (for a deliberate LAN set-up: ``mobilesam serve --allow-host``).
    ``max_upload_bytes``: the largest upload (bytes); ``max_pixels``: the largest decoded
    image (width × height). ``cache_images`` / ``cache_bytes``: embeddings kept (entries,
    bytes); ``cache_masks``: low-res mask logits kept for ``mask_input``.
    ``max_points_per_side``: the largest segment-everything grid; ``max_points``: prompt
    points per segment request. ``precision``: the image encoder's, ``"fp32"``, ``"bf16"``
    or ``"auto"``.

    Uploads: ``max_concurrent_decodes`` photos are decoded and resized at once (``None``:
    :attr:`decode_slots`, as many as ``decode_memory_bytes`` holds at the pixel cap); at most
    ``max_queued_uploads`` more wait (to decode, or for the model); beyond that an upload gets
    503 with ``Retry-After: retry_after_s``.

    ``docs``: serve interactive API docs at ``/docs``. The page loads Swagger UI's script and
    stylesheet from ``docs_assets_url`` (a CDN by default, or a copy of ``swagger-ui-dist``
    the user hosts), so it is off unless asked for; ``/openapi.json`` is always served."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_images: int = 16
    cache_bytes: int = 256 * 2**20  # embeddings kept (4 MiB each for MobileSAM)
    cache_masks: int = 256
    max_points_per_side: int = 64
    max_points: int = 64
    precision: str = "fp32"
    decode_memory_bytes: int = DECODE_MEMORY_BYTES
    max_concurrent_decodes: int | None = None
    max_queued_uploads: int = 16
    retry_after_s: int = 2
    docs: bool = False
    docs_assets_url: str = DOCS_ASSETS_URL

    def __post_init__(self) -> None:
        for name, minimum in (
            ("decode_memory_bytes", 1),
            ("max_concurrent_decodes", 1),
            ("max_queued_uploads", 0),
            ("retry_after_s", 1),
            ("max_pixels", 1),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise ValueError(f"ServerSettings.{name} must be a whole number >= {minimum}")

    @property
    def decode_slots(self) -> int:
        """Uploads decoded and resized at once: ``max_concurrent_decodes``, or as many
        photos at the pixel cap as ``decode_memory_bytes`` holds at
        :data:`DECODE_BYTES_PER_PIXEL` (at least one)."""
        if self.max_concurrent_decodes is not None:
            return self.max_concurrent_decodes
        if self.max_pixels is None:  # Pillow's own cap: one photo may take the whole budget
            return 1
        per_decode = self.max_pixels * DECODE_BYTES_PER_PIXEL
        return max(1, self.decode_memory_bytes // per_decode)


class LRU:
    """A small thread-safe LRU map, bounded in entries and, optionally, in bytes (the most
    recent entry is always kept, even when it alone is over ``max_bytes``)."""

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


@dataclass(frozen=True)
class CachedImage:
    """An uploaded image as later calls need it: the embedding ``(1, 256, 64, 64)`` and the
    original ``(height, width)`` in pixels (the pixels themselves are not kept)."""

    features: torch.Tensor
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


@dataclass(frozen=True)
class ServerState:
    """Everything the endpoints of one app share. ``images`` maps an upload's id to its
    :class:`CachedImage`; ``low_res`` maps a ``low_res_handle`` to the ``(1, 256, 256)``
    logits of a returned mask. Model calls go through ``gate`` (the model and the predictor
    are not thread-safe); uploads are admitted and decoded through ``uploads``."""

    model: Sam
    settings: ServerSettings
    predictor: SamPredictor
    gate: ModelGate
    uploads: UploadBudget
    images: LRU
    low_res: LRU
    heap: HeapTrimmer

    @classmethod
    def create(cls, model: Sam, settings: ServerSettings) -> ServerState:
        return cls(
            model=model,
            settings=settings,
            predictor=SamPredictor(model, precision=settings.precision),
            gate=ModelGate(),  # interactive requests first; everything yields between batches
            uploads=UploadBudget(
                settings.decode_slots, settings.max_queued_uploads, settings.retry_after_s
            ),
            images=LRU(settings.cache_images, settings.cache_bytes),
            low_res=LRU(settings.cache_masks),
            heap=HeapTrimmer(),
        )
