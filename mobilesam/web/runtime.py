"""ONNX Runtime Web's runtime files for the exported site: one pinned version, every file
checked against its sha256, and no npm or Node needed.

Where they come from, in this order:

1. ``ort_web``, a local copy the caller names (``mobilesam export --web DIR --ort-web PATH``,
   or ``$MOBILESAM_ORT_WEB``): the ``dist`` folder of ``npm install onnxruntime-web@VERSION``,
   the package folder above it, or the ``.tgz`` that ``npm pack onnxruntime-web@VERSION``
   writes;
2. else the package's tarball in the download cache that the weights use
   (:func:`mobilesam.hub.default_cache_dir`), downloaded once from the npm registry
   (:data:`TARBALL_URL`) and verified (size and sha256) like a checkpoint.

Offline with neither, :class:`RuntimeNotFound` says in one line what to download and where
to put it. A file that differs from its pin (another version, a damaged copy) raises
:class:`RuntimeMismatch` naming it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .._atomic import atomic_write

#: The one onnxruntime-web version the page is written and tested against.
VERSION = "1.31.1"
TARBALL = f"onnxruntime-web-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/onnxruntime-web/-/{TARBALL}"
TARBALL_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
TARBALL_SIZE = 34_586_352
#: The environment variable naming a local copy (what ``--ort-web`` defaults to).
ENV = "MOBILESAM_ORT_WEB"


@dataclass(frozen=True)
class RuntimeFile:
    """One file of ``dist/``: its name, sha256, size in bytes, and the back end that loads
    it (``"wasm"``: WebAssembly with SIMD, threads where the page is cross-origin isolated,
    one thread otherwise; ``"webgpu"``: WebGPU, with WebAssembly for what it lacks)."""

    name: str
    sha256: str
    size: int
    backend: str


#: The files the page loads, from ``onnxruntime-web@VERSION``'s ``dist/``. Each build's
#: entry module finds its ``.mjs``/``.wasm`` pair beside it.
FILES: tuple[RuntimeFile, ...] = (
    RuntimeFile(
        "ort.wasm.min.mjs",
        "c21d9c326d453a4a61398270c804d5979e118540597cb0c07f7b3d64e6098234",
        53_725,
        "wasm",
    ),
    RuntimeFile(
        "ort-wasm-simd-threaded.mjs",
        "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
        24_738,
        "wasm",
    ),
    RuntimeFile(
        "ort-wasm-simd-threaded.wasm",
        "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
        14_848_852,
        "wasm",
    ),
    RuntimeFile(
        "ort.webgpu.min.mjs",
        "329cd956772397a1aedd668e911195d39afefb182f6fc14aafa4f08ac8d8f379",
        70_742,
        "webgpu",
    ),
    RuntimeFile(
        "ort-wasm-simd-threaded.asyncify.mjs",
        "59cf781530e1a16df2a291d78798e3ec1152467edaec402d6f9599d85047c302",
        53_457,
        "webgpu",
    ),
    RuntimeFile(
        "ort-wasm-simd-threaded.asyncify.wasm",
        "ca319e9539cd0f1e291cf56074760121eaf39650f5dbf84b6e52c07f4b2944ec",
        28_747_738,
        "webgpu",
    ),
)

#: The entry module of each back end.
ENTRY = {"wasm": "ort.wasm.min.mjs", "webgpu": "ort.webgpu.min.mjs"}

_INSTALL = f"npm install onnxruntime-web@{VERSION}"


class RuntimeNotFound(FileNotFoundError):
    """No copy of ONNX Runtime Web: none given, none cached, and the download failed."""


class RuntimeMismatch(ValueError):
    """A runtime file differs from its pin (another version, or a damaged copy)."""


def files_for(backends: tuple[str, ...]) -> list[RuntimeFile]:
    """The pinned files of ``backends`` (``"wasm"``, ``"webgpu"``)."""
    unknown = set(backends) - set(ENTRY)
    if unknown or "wasm" not in backends:
        raise ValueError(
            f"backends must include 'wasm' and be among {sorted(ENTRY)}, got {backends}"
        )
    return [f for f in FILES if f.backend in backends]


def _check(data_or_path: bytes | Path, pin: RuntimeFile, where: str) -> None:
    if isinstance(data_or_path, Path):
        from ..hub import sha256_file

        size, digest = data_or_path.stat().st_size, sha256_file(data_or_path)
    else:
        size, digest = len(data_or_path), hashlib.sha256(data_or_path).hexdigest()
    if size != pin.size or digest != pin.sha256:
        raise RuntimeMismatch(
            f"{where} is not onnxruntime-web {VERSION}'s {pin.name} (sha256 {digest[:16]}…, "
            f"{size} bytes; expected {pin.sha256[:16]}…, {pin.size} bytes): use a copy of "
            f"that version ({_INSTALL})"
        )


def copy_runtime(
    dest: Path,
    ort_web: str | os.PathLike[str] | None,
    backends: tuple[str, ...],
    *,
    progress: bool = True,
) -> dict[str, str]:
    """Write the pinned files of ``backends`` into ``dest``, each verified; returns
    ``{name: sha256}``.

    Args:
        dest: the site's runtime folder (created).
        ort_web: a local copy (``dist/`` folder, package folder or ``npm pack`` tarball), or
            None for ``$MOBILESAM_ORT_WEB``, then the download cache (downloading once).
        backends: ``("wasm",)`` or ``("wasm", "webgpu")``.
        progress: show a download's progress on stderr.

    Raises:
        RuntimeNotFound: no copy given, none cached, and it could not be downloaded.
        RuntimeMismatch: a file is not the pinned version's.
        FileNotFoundError: ``ort_web`` does not exist or lacks a file.
    """
    wanted = files_for(backends)
    dest.mkdir(parents=True, exist_ok=True)
    found = _read_source(ort_web, {pin.name for pin in wanted}, progress)
    for pin in wanted:
        data, where = found[pin.name]
        _check(data, pin, where)
        atomic_write(dest / pin.name, lambda tmp, d=data: tmp.write_bytes(d))
    return {pin.name: pin.sha256 for pin in wanted}


def _read_source(
    ort_web: str | os.PathLike[str] | None, names: set[str], progress: bool
) -> dict[str, tuple[bytes, str]]:
    """``{name: (bytes, where they came from)}`` for ``names`` of ``dist/`` in the chosen
    copy (a folder, or a tarball read once from start to end)."""
    if ort_web is None and os.environ.get(ENV):
        ort_web = os.environ[ENV]
    if ort_web is None:
        path = cached_tarball(progress=progress)
    else:
        path = Path(ort_web).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"--ort-web {path}: no such file or folder (give the dist/ folder of "
                f"`{_INSTALL}`, or the .tgz of `npm pack onnxruntime-web@{VERSION}`)"
            )
    if path.is_dir():
        dist = path / "dist" if (path / "dist").is_dir() else path
        found = {}
        for name in sorted(names):
            file = dist / name
            if not file.is_file():
                raise FileNotFoundError(
                    f"{file} not found: {dist} is not onnxruntime-web's dist/ folder ({_INSTALL})"
                )
            found[name] = (file.read_bytes(), str(file))
        return found
    found = {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:  # a stream: one pass of decompression
            for member in tar:
                name = member.name.removeprefix("package/dist/")
                extracted = tar.extractfile(member) if name in names else None
                if extracted is not None:  # (None for anything but a regular file)
                    found[name] = (extracted.read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RuntimeMismatch(f"{path} is not an npm package tarball ({exc})") from None
    missing = sorted(names - found.keys())
    if missing:
        raise FileNotFoundError(
            f"{path} has no package/dist/{missing[0]}: not onnxruntime-web {VERSION}'s "
            f"tarball (npm pack onnxruntime-web@{VERSION})"
        )
    return found


def cached_tarball(
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    download: bool = True,
    timeout: float = 30.0,
) -> Path:
    """The verified onnxruntime-web tarball in the download cache, fetched from the npm
    registry once when ``download`` allows.

    Raises:
        RuntimeNotFound: not cached and not downloadable (one line naming the URL and the
            path to save it as, and ``--ort-web``).
    """
    from ..hub import (
        ChecksumError,
        DownloadError,
        ZooEntry,
        default_cache_dir,
        download_weights,
    )

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = ZooEntry(
        name=f"onnxruntime-web {VERSION}",
        model_type="",
        url=TARBALL_URL,
        filename=TARBALL,
        sha256=TARBALL_SHA256,
        size_bytes=TARBALL_SIZE,
        note="npm registry tarball of onnxruntime-web (MIT), for the in-browser page",
    )
    dest = cache.absolute() / TARBALL
    hint = (
        f"download {TARBALL_URL} and save it as {dest} (or `npm pack onnxruntime-web@{VERSION}`"
        f" there), or pass --ort-web with a local copy ({_INSTALL}; its node_modules/"
        "onnxruntime-web/dist)"
    )
    if not download and not dest.is_file():
        raise RuntimeNotFound(f"onnxruntime-web {VERSION} is not in the cache: {hint}")
    if progress and not dest.is_file():
        print(
            f"Downloading onnxruntime-web {VERSION} from {TARBALL_URL}\n  to {dest}",
            file=sys.stderr,
        )
    try:
        # (hub's own progress line speaks of weights: this one says what comes)
        return download_weights(entry, cache_dir=cache, progress=False, timeout=timeout)
    except DownloadError as exc:
        cause = exc.__cause__
        reason = str(cause).splitlines()[0] if cause is not None else "download failed"
        raise RuntimeNotFound(
            f"onnxruntime-web {VERSION} is not in the cache and could not be downloaded "
            f"({reason}): {hint}"
        ) from None
    except ChecksumError:
        raise RuntimeMismatch(
            f"the onnxruntime-web {VERSION} tarball downloaded from {TARBALL_URL} does not "
            f"match its pinned sha256 (deleted; retry later): {hint}"
        ) from None
