"""The teacher-embedding cache: the teacher encoder runs once per image (and per augmented
view), and its ``(C, h, w)`` embeddings (``256×64×64`` for SAM) are stored in checksummed
shards.

Layout of ``CACHE/``: ``shard_00000.pt`` (``{"embeddings": (N, C, h, w)}`` in the cache
dtype) with a sidecar ``shard_00000.json`` (its sha256, entries with their keys and views,
and the fingerprint of the settings that made it), and ``manifest.json`` once every shard
exists. Every file is written atomically, so a crash never leaves half of one. A rerun
verifies finished shards by checksum and fingerprint and skips them; a corrupt or truncated
shard is recomputed. Under ``torchrun`` each rank takes the shards ``i % world == rank``.
Older shards, which also hold ``keys`` and ``views``, read the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write
from ..engine.encoder import encode_fast
from ..hub import sha256_file
from ..modeling.sam import Sam
from ..progress import progress_bar
from ..transforms import PIXEL_MEAN, PIXEL_STD, prepare_image
from .data import ImageReader, ImageRef, View, augment_views

log = logging.getLogger("mobilesam.training")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CacheConfig:
    """How the cache is made. ``views``: augmented views per image besides the original."""

    shard_size: int = 64
    dtype: str = "float16"
    views: int = 0
    seed: int = 0


class SourceStamps:
    """What the cache records of each image's source: the file's absolute path, size and
    modification time (ns), and the sha256 of the image's own bytes: the file's, or for a
    tar member the member's (never the whole tar, which may hold thousands of other images).
    Tar members are read through ``reader`` (the build's own, so each tar is opened once).
    A changed image changes its stamp, so its entries are recomputed; a missing one stamps as
    ``None``."""

    def __init__(self, reader: ImageReader | None = None) -> None:
        self._stamps: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._own_reader = reader is None
        self._reader = ImageReader() if reader is None else reader

    def __call__(self, path: str | Path, member: str | None = None) -> dict[str, Any]:
        key = (str(path), member)
        if key not in self._stamps:
            self._stamps[key] = self._stamp(Path(path).resolve(), member)
        return self._stamps[key]

    def _stamp(self, path: Path, member: str | None) -> dict[str, Any]:
        try:
            st = path.stat()
            if member is None:
                digest = sha256_file(path)
            else:
                digest = hashlib.sha256(self._reader.member_bytes(str(path), member)).hexdigest()
        except (OSError, KeyError, tarfile.TarError):
            return {"path": str(path), "size": None, "mtime_ns": None, "sha256": None}
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}

    def close(self) -> None:
        """Close the tar files, unless the reader was given (its owner closes it)."""
        if self._own_reader:
            self._reader.close()


def _relative_to(source: str, cache_dir: Path) -> str:
    """``source`` relative to the cache folder (so a cache moved with its data, or read from
    another working directory, still finds it); absolute where no relative path exists."""
    try:
        return os.path.relpath(source, cache_dir.resolve())
    except ValueError:  # another drive
        return source


def _fingerprint(teacher_sha: str | None, cfg: CacheConfig, keys: list[str]) -> str:
    blob = json.dumps([teacher_sha, asdict(cfg), keys])
    return hashlib.sha256(blob.encode()).hexdigest()


def _shard_ok(shard: Path, fingerprint: str) -> bool:
    side = shard.with_suffix(".json")
    if not (shard.is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(meta, dict) and _sidecar_complete(meta)):
        return False  # damaged: recomputed, so write_manifest can rely on it
    if meta.get("fingerprint") != fingerprint:
        return False
    if sha256_file(shard) != meta.get("sha256"):
        log.warning("%s is corrupt or truncated (checksum mismatch): recomputing", shard.name)
        return False
    return True


def _sidecar_complete(meta: dict[str, Any]) -> bool:
    """Whether a parsed shard sidecar has what :func:`write_manifest` copies: a sha256, valid
    entries (:func:`_entry_problem`) and the list of unreadable keys."""
    entries, unreadable = meta.get("entries"), meta.get("unreadable")
    return (
        isinstance(meta.get("sha256"), str)
        and isinstance(entries, list)
        and all(_entry_problem(e) is None for e in entries)
        and isinstance(unreadable, list)
        and all(isinstance(k, str) for k in unreadable)
    )


def build_cache(
    teacher: Sam,
    refs: list[ImageRef],
    out: str | Path,
    cfg: CacheConfig = CacheConfig(),
    *,
    teacher_name: str = "teacher",
    teacher_sha256: str | None = None,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Compute this rank's missing shards of the cache of ``refs`` (each image plus
    ``cfg.views`` augmented views) in ``out``: shard ``i`` belongs to rank ``i % world``; a
    finished shard whose checksum and fingerprint (teacher, ``cfg``, keys, sources' content)
    match is skipped. Rank 0 then writes ``manifest.json`` if every shard exists and returns
    the manifest; other ranks, or an incomplete cache, return None."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {cfg.dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_image = 1 + cfg.views
    entries = [(ref, v) for ref in refs for v in range(per_image)]
    shards = [entries[i : i + cfg.shard_size] for i in range(0, len(entries), cfg.shard_size)]
    mine = [i for i in range(len(shards)) if i % world == rank]
    reader = ImageReader()
    teacher.eval()
    bar = progress_bar(len(mine), f"cache (rank {rank})", unit="shard", enabled=progress)
    done = skipped = 0
    stamps = SourceStamps(reader)  # each image hashed once per build
    for i in mine:
        shard_path = out / f"shard_{i:05d}.pt"
        # the sources' content is part of the key: an edited photo invalidates its shard
        keys = [f"{ref.key}#{v}#{stamps(ref.path, ref.member)['sha256']}" for ref, v in shards[i]]
        fp = _fingerprint(teacher_sha256, cfg, keys)
        if _shard_ok(shard_path, fp):
            skipped += 1
        else:
            _compute_shard(teacher, shards[i], shard_path, fp, cfg, reader, stamps)
            done += 1
        bar.update(1)
    bar.close()
    reader.close()
    stamps.close()
    log.info("rank %d: %d shards computed, %d verified and skipped", rank, done, skipped)
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return None
    return write_manifest(out, len(shards), teacher, cfg, teacher_name, teacher_sha256)


@torch.no_grad()
def _compute_shard(
    teacher: Sam,
    entries: list[tuple[ImageRef, int]],
    path: Path,
    fingerprint: str,
    cfg: CacheConfig,
    reader: ImageReader,
    stamps: SourceStamps,
) -> None:
    embs, views, records, unreadable = [], [], [], []
    image, image_key = None, None
    for ref, v in entries:
        if ref.key != image_key:
            image, image_key = reader.try_read(ref), ref.key
        if image is None:
            unreadable.append(ref.key)
            continue
        view = augment_views(ref, image.shape[:2], cfg.views, cfg.seed)[v]
        x = prepare_image(view.apply(image), teacher.img_size)[0][0].to(teacher.device)
        emb = encode_fast(teacher.image_encoder, x[None])[0].to(DTYPES[cfg.dtype]).cpu()
        if not torch.isfinite(emb).all():  # a NaN target would only surface as a NaN loss
            raise ValueError(
                f"the teacher's embedding of {ref.key} (view {v}) holds NaN or infinite values "
                f"in {cfg.dtype}: check the teacher checkpoint, or cache in float32"
            )
        embs.append(emb)
        views.append(view.to_json())
        stamp = dict(stamps(ref.path, ref.member))
        where = _relative_to(stamp.pop("path"), path.parent)  # relative to the cache folder
        records.append(
            {"key": ref.key, "path": where, "member": ref.member, "view": v} | {"source": stamp}
        )
    # keys and views live in the sidecar (and the manifest) only
    data = {"embeddings": torch.stack(embs) if embs else torch.zeros(0)}
    atomic_write(path, lambda tmp: torch.save(data, tmp))
    side = {
        "sha256": sha256_file(path),
        "fingerprint": fingerprint,
        "entries": [dict(r, view_params=vp) for r, vp in zip(records, views, strict=True)],
        "unreadable": sorted(set(unreadable)),
    }
    atomic_write(
        path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(side, allow_nan=False))
    )


def write_manifest(
    out: Path,
    n_shards: int,
    teacher: Sam,
    cfg: CacheConfig,
    teacher_name: str,
    teacher_sha256: str | None,
) -> dict[str, Any] | None:
    """``manifest.json`` from the shard sidecars, if all ``n_shards`` exist."""
    from .. import __version__

    shards = []
    for i in range(n_shards):
        side = out / f"shard_{i:05d}.json"
        if not side.is_file():
            log.info("cache incomplete: %s missing (another rank still running?)", side.name)
            return None
        try:
            meta = json.loads(side.read_text())
        except (ValueError, RecursionError):
            meta = None
        if not (isinstance(meta, dict) and _sidecar_complete(meta)):  # another rank's, damaged
            raise CacheDamaged(out, f"{side.name} is not a complete shard sidecar")
        shards.append(
            {
                "file": f"shard_{i:05d}.pt",
                "sha256": meta["sha256"],
                "entries": meta["entries"],
                "unreadable": meta["unreadable"],
            }
        )
    manifest = {
        "teacher": teacher_name,
        "teacher_checkpoint_sha256": teacher_sha256,
        "preprocessing": {
            "img_size": teacher.img_size,
            "pixel_mean": list(PIXEL_MEAN),
            "pixel_std": list(PIXEL_STD),
            "resize": "longest side, PIL bilinear; pad bottom-right",
        },
        "embedding_shape": [
            teacher.prompt_encoder.embed_dim,
            *teacher.prompt_encoder.image_embedding_size,
        ],
        "config": asdict(cfg),
        "mobilesam_version": __version__,
        "shards": shards,
        "n_entries": sum(len(s["entries"]) for s in shards),
    }
    text = json.dumps(manifest, indent=1, allow_nan=False)
    atomic_write(out / "manifest.json", lambda tmp: tmp.write_text(text))
    return manifest


class CacheDamaged(ValueError):
    """A cache's manifest or shard is not what :func:`build_cache` writes; the one-line
    message names the cache, the file and the first bad record."""

    def __init__(self, root: Path, what: str) -> None:
        super().__init__(
            f"the cache at {root} is damaged ({what}): rebuild it with `mobilesam distill cache`"
        )


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _view_problem(view: Any) -> str | None:
    """What is wrong with a recorded :class:`~.data.View` (``view_params``), or None."""
    if not isinstance(view, dict):
        return "is not an object"
    if not isinstance(view.get("flip", False), bool):
        return "has a flip that is not true or false"
    crop = view.get("crop")
    if crop is None:
        return None
    if not (isinstance(crop, list) and len(crop) == 4 and all(_is_int(c) for c in crop)):
        return "has a crop that is not 4 whole numbers [x0, y0, x1, y1]"
    if not (crop[0] < crop[2] and crop[1] < crop[3]):
        return "has an empty crop"
    return None


def _entry_problem(rec: Any) -> str | None:
    """What is wrong with one manifest entry, or None."""
    if not isinstance(rec, dict):
        return "is not an object"
    for key in ("key", "path", "member", "view_params"):
        if key not in rec:
            return f'has no "{key}"'
    if not (isinstance(rec["key"], str) and isinstance(rec["path"], str) and rec["path"]):
        return "has a key or path that is not text"
    if not (rec["member"] is None or isinstance(rec["member"], str)):
        return "has a member that is neither text nor null"
    problem = _view_problem(rec["view_params"])
    if problem is not None:
        return f"view_params {problem}"
    source = rec.get("source")
    if source is None:
        return None
    if not isinstance(source, dict) or not {"size", "mtime_ns", "sha256"} <= source.keys():
        return "has a source that is not {size, mtime_ns, sha256}"
    sizes_ok = all(source[k] is None or _is_int(source[k]) for k in ("size", "mtime_ns"))
    if not (sizes_ok and (source["sha256"] is None or isinstance(source["sha256"], str))):
        return "has a source of the wrong types"
    return None


def manifest_problem(manifest: Any) -> str | None:
    """The first thing in a parsed ``manifest.json`` that :class:`CacheReader` could not use
    (``"shards[0].entries[3] has no "view_params""``), or None. Checked: the embedding shape
    (three positive whole numbers), each shard's file (a plain name in the cache folder) and
    sha256, and each entry's key, path, member, view and source."""
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    shape = manifest.get("embedding_shape")
    if shape is None:
        return 'has no "embedding_shape"'
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1) for d in shape)):
        return f"embedding_shape is {str(shape)[:40]}, not three positive whole numbers"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return 'has no "shards" list'
    for i, shard in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(shard, dict):
            return f"{where} is not an object"
        file = shard.get("file")
        if not (isinstance(file, str) and file == Path(file).name and file not in ("", ".", "..")):
            return f"{where} has no file name in the cache folder (file: {str(file)[:40]})"
        if not isinstance(shard.get("sha256"), str):
            return f"{where} has no sha256"
        entries = shard.get("entries")
        if not isinstance(entries, list):
            return f'{where} has no "entries" list'
        for j, rec in enumerate(entries):
            problem = _entry_problem(rec)
            if problem is not None:
                return f"{where}.entries[{j}] {problem}"
    return None


def read_manifest(root: Path) -> dict[str, Any]:
    """The checked ``manifest.json`` of the cache folder ``root``.

    Raises:
        FileNotFoundError: no manifest (the cache was never finished).
        CacheDamaged: it is not UTF-8 JSON, or :func:`manifest_problem` finds a problem.
    """
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the cache is unfinished or not a cache; build it with "
            "`mobilesam distill cache`"
        )
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CacheDamaged(
            root, f"manifest.json is not UTF-8: byte at offset {exc.start}"
        ) from None
    except ValueError as exc:
        what = "is empty" if not raw.strip() else f"is not JSON: {exc}"
        raise CacheDamaged(root, f"manifest.json {what}") from None
    except RecursionError:
        raise CacheDamaged(root, "manifest.json nests too deeply") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise CacheDamaged(root, f"manifest.json {problem}")
    return manifest


class CacheReader:
    """Entries of a finished cache: ``(ImageRef, View, teacher embedding)``. Each shard's
    checksum and content are verified once per reader (a copy in a forked or spawned
    DataLoader worker keeps what was verified before); shards are memory-mapped and kept in
    a small LRU.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``cache_dir``.
        CacheDamaged: a damaged manifest (:func:`read_manifest`), or later a shard whose
            content does not fit it.
    """

    def __init__(self, cache_dir: str | Path, keep: int = 2) -> None:
        self.root = Path(cache_dir)
        self.manifest = read_manifest(self.root)
        self.index: list[tuple[int, int]] = [
            (s, j)
            for s, shard in enumerate(self.manifest["shards"])
            for j in range(len(shard["entries"]))
        ]
        self.keep = keep
        self._loaded: dict[int, dict[str, Any]] = {}
        self._verified: set[tuple[str, int, int]] = set()  # (file, size, mtime_ns)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # loaded shards stay behind when pickled
        return {**self.__dict__, "_loaded": {}}

    def shard_of(self, i: int) -> int:
        """The shard index of entry ``i``."""
        return self.index[i][0]

    def verify(self, s: int | None = None) -> None:
        """Check shard ``s`` (default: every shard) against the manifest's sha256, and its
        content (:meth:`_load`), unless this reader already has. Raises :class:`OSError` for
        a missing shard or a checksum mismatch, :class:`CacheDamaged` for content that does
        not fit the manifest."""
        for k in range(len(self.manifest["shards"])) if s is None else [s]:
            meta = self.manifest["shards"][k]
            path = self.root / meta["file"]
            try:
                st = path.stat()
            except FileNotFoundError:
                raise OSError(str(CacheDamaged(self.root, f"{meta['file']} is missing"))) from None
            stamp = (meta["file"], st.st_size, st.st_mtime_ns)
            if stamp in self._verified:
                continue
            if sha256_file(path) != meta["sha256"]:
                what = f"{meta['file']} fails its checksum"
                raise OSError(str(CacheDamaged(self.root, what)))
            self._load(k)  # checked as it is loaded
            self._verified.add(stamp)

    def _load(self, s: int) -> dict[str, Any]:
        """Shard ``s``, memory-mapped: ``{"embeddings": (N, C, h, w)}`` with N its entries
        and ``(C, h, w)`` the manifest's embedding shape, else :class:`CacheDamaged`."""
        meta = self.manifest["shards"][s]
        try:
            data = torch.load(
                self.root / meta["file"], map_location="cpu", weights_only=True, mmap=True
            )
        except Exception as exc:  # noqa: BLE001 - unpickling refusals come in many types
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            what = f"{meta['file']} is not a shard: {reason or type(exc).__name__}"
            raise CacheDamaged(self.root, what) from None
        emb = data.get("embeddings") if isinstance(data, dict) else None
        expected = (len(meta["entries"]), *self.manifest["embedding_shape"])
        if not isinstance(emb, torch.Tensor):
            raise CacheDamaged(self.root, f"{meta['file']} holds no embeddings tensor")
        if expected[0] == 0 and emb.numel() == 0:  # every image of the shard was unreadable
            return data
        if not emb.is_floating_point() or tuple(emb.shape) != expected:
            got = f"{tuple(emb.shape)} {str(emb.dtype).removeprefix('torch.')}"
            what = f"{meta['file']} holds embeddings of {got}; the manifest says {expected}"
            raise CacheDamaged(self.root, what)
        return data

    def _shard(self, s: int) -> dict[str, Any]:
        if s not in self._loaded:
            self.verify(s)
            if len(self._loaded) >= self.keep:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[s] = self._load(s)
        return self._loaded[s]

    def stale_sources(self, limit: int = 5) -> list[str]:
        """Source files holding an image whose size, modification time and content no longer
        match what the cache recorded (up to ``limit``; the image's sha256, a tar member's
        own, is computed only when the file's size or time differ)."""
        stale: list[str] = []
        stamps = SourceStamps()
        try:
            for rec in (r for shard in self.manifest["shards"] for r in shard["entries"]):
                src, path = rec.get("source"), str(self.source_path(rec["path"]))
                if src is None or path in stale:
                    continue
                try:
                    st = Path(path).stat()
                    same = (st.st_size, st.st_mtime_ns) == (src["size"], src["mtime_ns"])
                except OSError:
                    same = False
                if not same:  # moved or copied files keep their content: compare that
                    same = stamps(path, rec.get("member"))["sha256"] == src["sha256"]
                if not same:
                    stale.append(path)
                    if len(stale) >= limit:
                        break
        finally:
            stamps.close()
        return stale

    def source_path(self, recorded: str) -> Path:
        """A recorded source path: relative ones are relative to the cache folder."""
        path = Path(recorded)
        return path if path.is_absolute() else (self.root / path).resolve()

    def entry(self, i: int) -> tuple[ImageRef, View, torch.Tensor]:
        """Entry ``i``: its image, its view, and the teacher embedding ``(C, h, w)`` in the
        cache dtype (memory-mapped; its shard checksummed on first use)."""
        s, j = self.index[i]
        rec = self.manifest["shards"][s]["entries"][j]
        ref = ImageRef(rec["key"], str(self.source_path(rec["path"])), rec["member"])
        return ref, View.from_json(rec["view_params"]), self._shard(s)["embeddings"][j]
