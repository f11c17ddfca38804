"""Image sources for distillation: folders (recursive), single files and SA-1B ``sa_*.tar``
shards read in place (no unpacking), with a deterministic subset/split and recorded
augmentation views.

Every image has a stable ``key`` (``folder/relative/path`` for a file found in a source
folder, the file's name for an image given alone, ``tarname/member`` for a tar member), so
selection and ordering do not depend on the file system's listing order.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..image_io import IMAGE_SUFFIXES, find_images, read_rgb

log = logging.getLogger("mobilesam.training")


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: the file ``path``, or the member ``member`` of the tar file
    ``path``; ``key`` names it stably (see the module's docstring)."""

    key: str
    path: str
    member: str | None = None


@dataclass(frozen=True)
class View:
    """An augmented view: optional horizontal flip, then an optional crop ``(x0, y0, x1, y1)``
    in pixels of the (flipped) image. The identity view is ``View()``."""

    flip: bool = False
    crop: tuple[int, int, int, int] | None = None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The view of an ``H×W×C`` image, as a contiguous array (a copy where it differs)."""
        out = image[:, ::-1] if self.flip else image
        if self.crop is not None:
            x0, y0, x1, y1 = self.crop
            out = out[y0:y1, x0:x1]
        return np.ascontiguousarray(out)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> View:
        crop = d.get("crop")
        return View(bool(d.get("flip", False)), tuple(crop) if crop else None)  # type: ignore[arg-type]


def collect_image_refs(sources: list[str]) -> list[ImageRef]:
    """References to the images of ``sources`` (folders, searched recursively for images and
    ``.tar`` files; image files; ``.tar`` files), sorted by key. Nothing is decoded; tar files
    are listed, not unpacked.

    Raises:
        FileNotFoundError: a source is none of those.
        ValueError: two images share a key (two source folders with the same name).
    """
    refs: list[ImageRef] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            for f in find_images(path):
                refs.append(ImageRef(f"{path.name}/{f.relative_to(path).as_posix()}", str(f)))
            for f in sorted(path.rglob("*.tar")):
                if f.is_file():
                    refs += _tar_members(f)
        elif path.is_file() and path.suffix == ".tar":
            refs += _tar_members(path)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            refs.append(ImageRef(path.name, str(path)))
        else:
            raise FileNotFoundError(f"no images at {src} (a folder, an image or a .tar shard)")
    refs.sort(key=lambda r: r.key)
    keys = [r.key for r in refs]
    if len(set(keys)) != len(keys):
        raise ValueError("two images share a key; give each source folder a distinct name")
    return refs


def _tar_members(path: Path) -> list[ImageRef]:
    """The images of one tar (SA-1B shards hold ``.jpg`` + ``.json``; the JSON is skipped).
    Only the headers are read."""
    with tarfile.open(path, "r:") as tar:
        return [
            ImageRef(f"{path.name}/{m.name}", str(path), m.name)
            for m in tar.getmembers()
            if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES
        ]


class ImageReader:
    """Reads :class:`ImageRef` s as ``H×W×3`` uint8 RGB in display (EXIF) orientation, like
    every other front door (:func:`mobilesam.image_io.read_rgb`), keeping tar files open."""

    def __init__(self) -> None:
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def read(self, ref: ImageRef) -> np.ndarray:
        """The image as ``H×W×3`` uint8 RGB; raises ``OSError``, ``ValueError`` or
        ``tarfile.TarError`` if it cannot be read or decoded."""
        if ref.member is None:
            return read_rgb(ref.path)
        return read_rgb(self.member_bytes(ref.path, ref.member))

    def member_bytes(self, path: str, member: str) -> bytes:
        """The bytes of tar member ``member`` of ``path`` (the tar stays open); raises
        ``KeyError`` for a missing member, ``OSError`` or ``tarfile.TarError``."""
        if path not in self._tars:
            tar = tarfile.open(path, "r:")  # noqa: SIM115 (kept open; see close)
            # a name table: TarFile.getmember searches its member list linearly
            self._tars[path] = (tar, {m.name: m for m in tar.getmembers()})
        tar, members = self._tars[path]
        f = tar.extractfile(members[member])
        if f is None:
            raise OSError(f"{member} is not a file in {path}")
        return f.read()

    def try_read(self, ref: ImageRef) -> np.ndarray | None:
        """The image, or ``None`` (logged) if it cannot be read."""
        try:
            return self.read(ref)
        except (OSError, ValueError, tarfile.TarError) as exc:
            log.warning("skipping unreadable image %s: %s", ref.key, exc)
            return None

    def close(self) -> None:
        for tar, _ in self._tars.values():
            tar.close()
        self._tars.clear()


def unit_hash(key: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def select(
    refs: list[ImageRef],
    fraction: float = 1.0,
    split: str = "train",
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[ImageRef]:
    """A deterministic subset (``fraction`` of all images, e.g. 0.01 for the paper's 1%) and
    split (``"train"``, ``"val"`` or ``"all"``), decided per key by hashing: the same image
    always lands in the same place, whatever else is added."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be train, val or all, got {split!r}")
    out = []
    for r in refs:
        if unit_hash(r.key, f"subset{seed}") >= fraction:
            continue
        is_val = unit_hash(r.key, f"split{seed}") < val_fraction
        if split == "all" or (split == "val") == is_val:
            out.append(r)
    return out


def augment_views(ref: ImageRef, size: tuple[int, int], n: int, seed: int) -> list[View]:
    """The identity view plus ``n`` random views of an image of ``size`` (h, w) pixels: a flip
    (probability 0.5) and a crop covering 50–100% of each side, not resized (the model's
    preprocessing resizes every view alike). Drawn from a generator seeded by ``ref.key`` and
    ``seed``, so they are reproducible."""
    h, w = size
    rng = np.random.default_rng(int(unit_hash(ref.key, f"aug{seed}") * 2**32))
    views = [View()]
    for _ in range(n):
        sw, sh = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
        views.append(View(bool(rng.random() < 0.5), (x0, y0, x0 + sw, y0 + sh)))
    return views
