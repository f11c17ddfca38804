"""A synthetic instance-segmentation dataset in COCO format, for fine-tuning's tests and
benchmark (``benchmarks/make_shapes.py`` is its command line).

Each image is a crop of a real photo (the reference photos, and scikit-image's sample
images when it is installed) with 3 to 6 shapes drawn over it: ellipses, polygons, stars and
rings, each filled with a texture (flat colour with noise, stripes, a checkerboard, a
gradient, or a patch of another photo). Later shapes occlude earlier ones; each instance's
mask is what stays visible. Categories: 1 ellipse, 2 polygon, 3 star, 4 ring.

Masks are exact (the image is drawn from them). An unoccluded ellipse, polygon or star is
stored as a COCO polygon (its pixels are pycocotools' rasterisation of it), an unoccluded
ring as an uncompressed RLE, anything occluded as a compressed RLE, so every COCO
segmentation form is exercised. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

REFERENCE_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "images"
CATEGORIES = [
    {"id": 1, "name": "ellipse"},
    {"id": 2, "name": "polygon"},
    {"id": 3, "name": "star"},
    {"id": 4, "name": "ring"},
]


def background_photos(limit_side: int = 640) -> list[np.ndarray]:
    """The photos backgrounds are cut from: the reference photos and, when scikit-image is
    installed, its colour sample images; each shrunk to at most ``limit_side`` pixels."""
    photos = []
    for path in sorted(REFERENCE_IMAGES.glob("*.jpg")):
        im = Image.open(path).convert("RGB")
        im.thumbnail((limit_side, limit_side))
        photos.append(np.asarray(im))
    try:
        import skimage.data as skd
    except ImportError:
        skd = None
    if skd is not None:
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "hubble_deep_field",
            "immunohistochemistry",
        ):
            try:
                im = Image.fromarray(getattr(skd, name)()).convert("RGB")
            except Exception:  # noqa: BLE001 - a sample that needs a download: go without
                continue
            im.thumbnail((limit_side, limit_side))
            photos.append(np.asarray(im))
    if not photos:  # no photos at all: smooth random colour fields
        rng = np.random.default_rng(0)
        for _ in range(4):
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            photos.append(
                np.asarray(Image.fromarray(small).resize((limit_side, limit_side), Image.BICUBIC))
            )
    return photos


def _crop(photo: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``h×w`` window of ``photo``, zoomed by 1 to 1.6 times the scale at which
    the window fits it, as float32."""
    ph, pw = photo.shape[:2]
    s = max(h / ph, w / pw) * rng.uniform(1.0, 1.6)
    size = (max(w, math.ceil(pw * s)), max(h, math.ceil(ph * s)))
    zoomed = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    y, x = int(rng.integers(0, size[1] - h + 1)), int(rng.integers(0, size[0] - w + 1))
    return zoomed[y : y + h, x : x + w].astype(np.float32)


def _texture(h: int, w: int, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """An ``h×w×3`` float texture: flat colour with noise, stripes, checkerboard, gradient or
    a photo patch."""
    kind = rng.integers(5)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        return a + rng.normal(0, 12, (h, w, 3))
    if kind == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(5, 14)
        on = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period) > 0
        return np.where(on[..., None], a, b)
    if kind == 2:
        s = rng.uniform(5, 12)
        on = ((xx // s + yy // s) % 2).astype(bool)
        return np.where(on[..., None], a, b)
    if kind == 3:
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        return a * (1 - t[..., None]) + b * t[..., None]
    patch = _crop(photos[int(rng.integers(len(photos)))], h, w, rng)
    return np.clip(patch * rng.uniform(0.6, 1.4, 3), 0, 255)


def _outline(kind: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[float]:
    """The closed outline of an ellipse (1), polygon (2) or star (3) as COCO polygon
    coordinates ``[x0, y0, x1, y1, ...]``."""
    rot = rng.uniform(0, 2 * math.pi)
    if kind == 1:
        ratio = rng.uniform(0.45, 1.0)
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x, y = r * np.cos(t), ratio * r * np.sin(t)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = r * rng.uniform(0.55, 1.0, n)
        x, y = rad * np.cos(t), rad * np.sin(t)
    else:
        n = int(rng.integers(5, 9))
        t = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        x, y = rad * np.cos(t), rad * np.sin(t)
    xr = cx + x * math.cos(rot) - y * math.sin(rot)
    yr = cy + x * math.sin(rot) + y * math.cos(rot)
    return [float(v) for pair in zip(xr, yr, strict=True) for v in pair]


def _rasterize(poly: list[float], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.frPyObjects([poly], h, w)).max(2).astype(bool)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = np.asfortranarray(mask).flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_image(
    size: int, photos: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """One ``size×size`` image and its instances: ``{"category_id", "mask", "polygon"}``
    (``polygon`` the outline when the shape is a polygon and unoccluded, else None)."""
    h = w = size
    image = _crop(photos[int(rng.integers(len(photos)))], h, w, rng)
    shapes: list[dict] = []
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.integers(1, 5))
        r = size * rng.uniform(0.12, 0.25)
        cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
        if kind == 4:
            outer = _outline(1, cx, cy, r, rng)
            inner_r = rng.uniform(0.4, 0.65)
            inner = [
                cx + (x - cx) * inner_r if i % 2 == 0 else cy + (x - cy) * inner_r
                for i, x in enumerate(outer)
            ]
            mask, polygon = _rasterize(outer, h, w) & ~_rasterize(inner, h, w), None
        else:
            polygon = _outline(kind, cx, cy, r, rng)
            mask = _rasterize(polygon, h, w)
        if not mask.any():
            continue
        image[mask] = _texture(h, w, photos, rng)[mask]
        for s in shapes:  # what the new shape covers is no longer theirs
            s["mask"] = s["mask"] & ~mask
            s["polygon"] = None if (s["mask"] != s["full"]).any() else s["polygon"]
        shapes.append({"category_id": kind, "mask": mask, "full": mask, "polygon": polygon})
    kept = [s for s in shapes if s["mask"].sum() >= 30]
    return np.clip(image, 0, 255).astype(np.uint8), kept


def make_shapes(out: str | Path, n_images: int = 16, size: int = 256, seed: int = 0) -> Path:
    """Write ``out/images/NNNN.png`` and ``out/annotations.json`` (COCO instances) for
    ``n_images`` images of ``size×size`` pixels; returns the annotations' path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = background_photos()
    images, annotations = [], []
    for i in range(n_images):
        image, shapes = make_image(size, photos, rng)
        name = f"{i:04d}.png"
        Image.fromarray(image).save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        for s in shapes:
            mask = s["mask"]
            if s["polygon"] is not None:
                seg: list | dict = [s["polygon"]]
            elif s["category_id"] == 4 and (mask == s["full"]).all():
                seg = _uncompressed_rle(mask)
            else:
                seg = _compressed_rle(mask)
            ys, xs = np.nonzero(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": s["category_id"],
                    "segmentation": seg,
                    "area": float(mask.sum()),
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "iscrowd": 0,
                }
            )
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = out / "annotations.json"
    path.write_text(json.dumps(doc))
    return path
