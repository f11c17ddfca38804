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
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fingerprint:
        return False
    if sha256_file(shard) != meta.get("sha256"):
        log.warning("%s is corrupt or truncated (checksum mismatch): recomputing", shard.name)
        return False
    return True


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
        embs.append(teacher.image_encoder(x[None])[0].to(DTYPES[cfg.dtype]).cpu())
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
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(side)))


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
        meta = json.loads(side.read_text())
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
    text = json.dumps(manifest, indent=1)
    atomic_write(out / "manifest.json", lambda tmp: tmp.write_text(text))
    return manifest


class CacheReader:
    """Entries of a finished cache: ``(ImageRef, View, teacher embedding)``. Each shard's
    checksum is verified once per reader (a copy in a forked or spawned DataLoader worker
    keeps what was verified before); shards are memory-mapped and kept in a small LRU."""

    def __init__(self, cache_dir: str | Path, keep: int = 2) -> None:
        self.root = Path(cache_dir)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the cache first (build_cache)")
        try:
            self.manifest = json.loads(path.read_text())
            shards = self.manifest["shards"]
            _ = [len(shard["entries"]) for shard in shards]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a readable cache manifest ({type(exc).__name__}: {exc}); "
                "rebuild the cache (build_cache)"
            ) from None
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
        """Check shard ``s`` (default: every shard) against the manifest's sha256, unless this
        reader already has; raises :class:`OSError` on a mismatch."""
        for k in range(len(self.manifest["shards"])) if s is None else [s]:
            meta = self.manifest["shards"][k]
            path = self.root / meta["file"]
            st = path.stat()
            stamp = (meta["file"], st.st_size, st.st_mtime_ns)
            if stamp in self._verified:
                continue
            if sha256_file(path) != meta["sha256"]:
                raise OSError(f"{path} fails its checksum: rebuild the cache (build_cache)")
            self._verified.add(stamp)

    def _shard(self, s: int) -> dict[str, Any]:
        if s not in self._loaded:
            self.verify(s)
            if len(self._loaded) >= self.keep:
                self._loaded.pop(next(iter(self._loaded)))
            path = self.root / self.manifest["shards"][s]["file"]
            self._loaded[s] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
