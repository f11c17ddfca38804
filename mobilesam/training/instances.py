"""Instance-segmentation data for fine-tuning: images and their ground-truth masks, from COCO
annotations or from a folder of image and mask pairs.

Layouts (see ``docs/finetune.md``):

- **COCO**: an instances JSON (polygons or RLE, compressed or not) and the folder its
  ``file_name`` s are relative to. ``iscrowd`` annotations are skipped (counted).
- **Folder**: ``DATA/images/<name>.<ext>`` (any depth) and, for each image, either
  ``DATA/masks/<name>/`` holding one PNG per instance (non-zero pixels are inside), or
  ``DATA/masks/<name>.png``, one label image (0 is background, every other value one
  instance: 8- or 16-bit grey, palette indices, or RGB colours).

Every image has a stable key (``images/<name>.<ext>``; for COCO the images folder's name and
the ``file_name``), which the train/val split hashes (:func:`~.data.select`). A broken image
or annotation (a missing or undecodable file, a size other than its image's, a malformed or
empty mask, an unlisted image or category) is skipped with one warning line naming the file
and the record, and counted in :attr:`InstanceData.skipped`; a file that is not a COCO
instances file at all is one :class:`~mobilesam.evaluation.coco.CocoFileError`. Masks are
decoded when an image is used (:meth:`InstanceImage.decode`), except the folder's PNGs, which
are read once up front to find their instances and check them.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.coco import CocoFileError, _segmentation_problem, read_json
from ..image_io import IMAGE_SUFFIXES
from .data import ImageRef, collect_image_refs

log = logging.getLogger("mobilesam.training")

#: EXIF orientations that swap width and height.
_SWAPPING = (5, 6, 7, 8)


@dataclass(frozen=True)
class MaskSource:
    """Where one instance's mask comes from. ``kind``: ``"coco"`` (``data`` is the COCO
    segmentation: polygons or an RLE), ``"png"`` (``data`` is the file; non-zero pixels
    are inside) or ``"label"`` (``data`` is ``(file, value)``: the pixels of that value)."""

    kind: str
    data: Any
    category: int = 1


@dataclass(frozen=True)
class InstanceImage:
    """One image and its instances: ``size`` is ``(H, W)`` in display orientation."""

    ref: ImageRef
    size: tuple[int, int]
    instances: tuple[MaskSource, ...]

    def decode(self, which: Sequence[int] | None = None) -> np.ndarray:
        """The masks of the instances ``which`` (default all, in :attr:`instances`' order),
        ``(K, H, W)`` bool; each label image is read once."""
        h, w = self.size
        chosen = range(len(self.instances)) if which is None else which
        out = np.zeros((len(chosen), h, w), dtype=bool)
        labels: dict[str, np.ndarray] = {}
        for k, i in enumerate(chosen):
            src = self.instances[i]
            if src.kind == "coco":
                out[k] = _decode_coco(src.data, h, w)
            elif src.kind == "png":
                out[k] = _read_mask_png(Path(src.data)) != 0
            else:
                path, value = src.data
                if path not in labels:
                    labels[path] = _read_mask_png(Path(path))
                out[k] = labels[path] == value
        return out

    @property
    def categories(self) -> list[int]:
        return [src.category for src in self.instances]


@dataclass
class InstanceData:
    """The usable images (each with at least one instance), and what was skipped:
    ``skipped`` counts broken images and annotations by reason (each also logged once),
    ``crowd`` the ``iscrowd`` annotations left out."""

    images: list[InstanceImage]
    skipped: Counter = field(default_factory=Counter)
    crowd: int = 0

    @property
    def n_instances(self) -> int:
        return sum(len(im.instances) for im in self.images)

    def describe(self) -> str:
        """One line: images, instances, and what was skipped."""
        line = f"{len(self.images)} images with {self.n_instances} instances"
        if self.crowd:
            line += f"; {self.crowd} crowd annotations left out"
        if self.skipped:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            line += f"; skipped: {parts}"
        return line


class _Skips:
    """Counts skips by reason, logging one warning line for each (when ``warn``)."""

    def __init__(self, warn: bool) -> None:
        self.counts: Counter = Counter()
        self.warn = warn

    def __call__(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if self.warn:
            log.warning("skipping %s", detail)


def display_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the image at ``path`` as :func:`~mobilesam.image_io.read_rgb` returns
    it (EXIF orientation applied), from its header; ``OSError`` or ``ValueError`` if it is
    not an image."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                orientation = im.getexif().get(0x0112)
        except Exception:  # noqa: BLE001 - damaged EXIF: read_rgb keeps the pixels unrotated
            orientation = None
    return (w, h) if orientation in _SWAPPING else (h, w)


def _read_mask_png(path: Path) -> np.ndarray:
    """A mask image as an ``(H, W)`` integer array: grey values, palette indices, or RGB
    colours packed as ``r·65536 + g·256 + b`` (alpha dropped)."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
            return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        if im.mode in ("LA", "PA"):
            im = im.getchannel(0)
        return np.asarray(im).astype(np.int64)


def _decode_coco(seg: Any, h: int, w: int) -> np.ndarray:
    """A checked COCO segmentation (polygons or RLE) as an ``(h, w)`` bool mask."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def _coco_area(seg: Any, h: int, w: int) -> int:
    """The pixel area of a checked COCO segmentation, without decoding it."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        return int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))))
    if isinstance(seg["counts"], list):
        return int(sum(seg["counts"][1::2]))
    return int(mask_utils.area(seg))


def _is_int(value: Any, minimum: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def read_coco(annotations: str | Path, images: str | Path, warn: bool = True) -> InstanceData:
    """The instances of a COCO file whose ``file_name`` s are relative to ``images``.

    Skipped, each with one warning line (``warn``) naming the file and the record, and
    counted: an image record without a whole-number id, a ``file_name`` inside the folder or
    a positive size; an image file that is missing, undecodable or of another size than its
    record; an annotation whose image is not listed (or was skipped), whose category is not
    listed, or whose segmentation is malformed (a polygon of fewer than 3 points, an RLE that
    does not cover its image) or empty. ``iscrowd`` annotations are counted apart.

    Raises:
        OSError: the annotation file cannot be read.
        CocoFileError: it is not UTF-8 JSON, or not an object with ``images``,
            ``annotations`` and ``categories`` lists (one line naming it).
    """
    path, root = Path(annotations), Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"the COCO images folder {root} does not exist")
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise CocoFileError(
            f"{path}: not a COCO instances file (an object with images, annotations and "
            "categories lists)"
        )
    skip = _Skips(warn)
    categories = {
        c["id"] for c in doc["categories"] if isinstance(c, dict) and _is_int(c.get("id"))
    }
    records, skipped_ids = _coco_images(doc["images"], path, root, skip)
    per_image: dict[int, list[MaskSource]] = {}
    crowd = 0
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path} annotations[{i}]"
        if not isinstance(ann, dict):
            skip("malformed annotations", f"{where}: not an object")
            continue
        if ann.get("id") is not None:
            where += f" (id {ann['id']})"
        image_id = ann.get("image_id")
        if _is_int(image_id) and image_id in skipped_ids:
            skip.counts["annotations of skipped images"] += 1  # its image's line said why
            continue
        if not (_is_int(image_id) and image_id in records):
            skip(
                "annotations of unlisted images",
                f"{where}: image_id {image_id!r} is not in images",
            )
            continue
        if ann.get("iscrowd", 0) == 1:
            crowd += 1
            continue
        category = ann.get("category_id")
        if not (_is_int(category) and category in categories):
            skip(
                "annotations of unlisted categories",
                f"{where}: category_id {category!r} is not in categories",
            )
            continue
        ref, (h, w) = records[image_id]
        seg = ann.get("segmentation")
        problem = _segmentation_problem(seg, h, w)
        if problem is None and _coco_area(seg, h, w) == 0:
            problem = "has an empty mask"
        if problem is not None:
            skip("malformed or empty masks", f"{where} {problem}")
            continue
        per_image.setdefault(image_id, []).append(MaskSource("coco", seg, category))
    out = []
    for image_id, (ref, size) in sorted(records.items(), key=lambda kv: kv[1][0].key):
        if per_image.get(image_id):
            out.append(InstanceImage(ref, size, tuple(per_image[image_id])))
    return InstanceData(out, skip.counts, crowd)


def _coco_images(
    records: list, path: Path, root: Path, skip: _Skips
) -> tuple[dict[int, tuple[ImageRef, tuple[int, int]]], set[int]]:
    """``{image id: (ImageRef, (H, W))}`` of the usable image records, and the ids of those
    skipped (so their annotations are not blamed again)."""
    out: dict[int, tuple[ImageRef, tuple[int, int]]] = {}
    skipped: set[int] = set()
    for i, im in enumerate(records):
        where = f"{path} images[{i}]"
        if not (isinstance(im, dict) and _is_int(im.get("id"))):
            skip("malformed image records", f"{where}: no whole-number id")
            continue
        where += f" (id {im['id']})"
        name = im.get("file_name")
        bad = None
        if im["id"] in out or im["id"] in skipped:
            bad = "the id appears twice"
        elif not (isinstance(name, str) and name.strip()):
            bad = 'no "file_name"'
        elif PurePath(name).is_absolute() or ".." in PurePath(name).parts:
            bad = f"file_name {name!r} leaves the images folder"
        elif not (_is_int(im.get("height"), 1) and _is_int(im.get("width"), 1)):
            bad = "no positive whole-number height and width"
        if bad is not None:
            skip("malformed image records", f"{where}: {bad}")
            skipped.add(im["id"])
            continue
        file = root / name
        size = (im["height"], im["width"])
        try:
            actual = display_size(file)
        except FileNotFoundError:
            bad, reason = f"{file} (image id {im['id']}): the file is missing", "missing images"
        except (OSError, ValueError) as exc:
            bad, reason = f"{file} (image id {im['id']}): not an image ({exc})", "unreadable images"
        else:
            if actual != size:
                bad = (
                    f"{file} (image id {im['id']}): it is {actual[1]}×{actual[0]} pixels, its "
                    f"record says {size[1]}×{size[0]}"
                )
                reason = "images of another size than their record"
        if bad is not None:
            skip(reason, bad)
            skipped.add(im["id"])
            continue
        out[im["id"]] = (ImageRef(f"{root.name}/{PurePath(name).as_posix()}", str(file)), size)
    return out, skipped


def read_mask_folder(root: str | Path, warn: bool = True) -> InstanceData:
    """The instances of a folder ``root`` holding ``images/`` and ``masks/`` (module
    docstring). Every mask PNG is read here, to find its instances and check it.

    Skipped, each with one warning line (``warn``) naming the file, and counted: an image
    without masks, or with both a mask folder and a label image; an unreadable image or
    mask; a mask of another size than its image; an empty instance mask or a label image
    without instances.

    Raises:
        FileNotFoundError: ``root/images`` or ``root/masks`` is not a folder.
    """
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a folder: a mask folder holds images/ and masks/ (see "
                "docs/finetune.md)"
            )
    skip = _Skips(warn)
    out = []
    for ref in collect_image_refs([str(images_dir)]):
        if ref.member is not None:  # an image inside a .tar: not this layout
            continue
        stem = Path(ref.path).relative_to(images_dir).with_suffix("")
        instance_dir, label_file = masks_dir / stem, masks_dir / f"{stem}.png"
        if instance_dir.is_dir() and label_file.is_file():
            skip(
                "images with ambiguous masks",
                f"{ref.path}: both {instance_dir}/ and {label_file} exist",
            )
            continue
        if not (instance_dir.is_dir() or label_file.is_file()):
            skip("images without masks", f"{ref.path}: neither {instance_dir}/ nor {label_file}")
            continue
        try:
            size = display_size(Path(ref.path))
        except (OSError, ValueError) as exc:
            skip("unreadable images", f"{ref.path}: not an image ({exc})")
            continue
        if instance_dir.is_dir():
            instances = _instance_pngs(instance_dir, size, skip)
        else:
            instances = _label_instances(label_file, size, skip)
        if instances:
            out.append(InstanceImage(ref, size, tuple(instances)))
    return InstanceData(out, skip.counts)


def _checked_mask(path: Path, size: tuple[int, int], skip: _Skips) -> np.ndarray | None:
    """The mask image at ``path``, or None (skipped: unreadable, or not ``size``)."""
    try:
        mask = _read_mask_png(path)
    except (OSError, ValueError) as exc:
        skip("unreadable masks", f"{path}: not an image ({exc})")
        return None
    if mask.shape != size:
        skip(
            "masks of another size than their image",
            f"{path}: {mask.shape[1]}×{mask.shape[0]} pixels, its image is {size[1]}×{size[0]}",
        )
        return None
    return mask


def _instance_pngs(folder: Path, size: tuple[int, int], skip: _Skips) -> list[MaskSource]:
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = _checked_mask(path, size, skip)
        if mask is None:
            continue
        if not mask.any():
            skip("empty masks", f"{path}: the mask is empty")
            continue
        out.append(MaskSource("png", str(path)))
    if not out:
        skip("images without masks", f"{folder}/: no usable instance mask")
    return out


def _label_instances(path: Path, size: tuple[int, int], skip: _Skips) -> list[MaskSource]:
    labels = _checked_mask(path, size, skip)
    if labels is None:
        return []
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        skip("empty masks", f"{path}: the label image has no instance (every pixel is 0)")
    return [MaskSource("label", (str(path), v)) for v in values]
