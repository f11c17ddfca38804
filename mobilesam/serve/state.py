"""What one server app holds: its settings, the model and its predictor, the model gate, and
the two caches (image embeddings, low-res mask logits). One :class:`ServerState` per app,
built by :func:`~mobilesam.serve.app.create_app`; the endpoints reach it through the request
(:func:`~mobilesam.serve.routes.server_state`). Nothing here imports FastAPI."""

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
from .gate import ModelGate

#: Host names a local server answers to (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


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
    or ``"auto"``."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_images: int = 16
    cache_bytes: int = 256 * 2**20  # embeddings kept (4 MiB each for MobileSAM)
    cache_masks: int = 256
    max_points_per_side: int = 64
    max_points: int = 64
    precision: str = "fp32"


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
    are not thread-safe)."""

    model: Sam
    settings: ServerSettings
    predictor: SamPredictor
    gate: ModelGate
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
            images=LRU(settings.cache_images, settings.cache_bytes),
            low_res=LRU(settings.cache_masks),
            heap=HeapTrimmer(),
        )
