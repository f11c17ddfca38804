"""Model zoo and checksum-verified download cache for SAM / MobileSAM checkpoints.

The zoo lists the official checkpoints (MobileSAM ``vit_t`` and SAM ``vit_b`` /
``vit_l`` / ``vit_h``) with their download URL, SHA-256 and byte size. A download streams
over :func:`urllib.request.urlopen` with its own connect/read timeout (the process-wide
socket default is never touched), with a progress bar on stderr; the file is checked in full
(size and SHA-256), and errors say where to put a copy downloaded by hand. The file is
fetched into a ``<file>.….part`` sibling in the cache directory, verified, then moved into
place by :func:`mobilesam._atomic.atomic_write`, so the final path never holds a partial or
unverified file.

The cache directory is ``$MOBILESAM_CACHE`` if set, else
``$XDG_CACHE_HOME/mobilesam``, else ``~/.cache/mobilesam``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write
from .progress import progress_bar

__all__ = [
    "MODEL_ZOO",
    "ChecksumError",
    "DownloadError",
    "ZooEntry",
    "default_cache_dir",
    "download_weights",
    "resolve_checkpoint",
    "resolve_entry",
    "sha256_file",
    "valid_names",
]

_CHUNK = 1 << 20


class _FetchError(RuntimeError):
    """A zoo checkpoint that could not be installed. ``url`` is where it comes from and
    ``dest`` where a copy fetched by hand belongs (front ends word their own hints)."""

    def __init__(self, message: str, url: str, dest: Path) -> None:
        super().__init__(message)
        self.url, self.dest = url, dest


class ChecksumError(_FetchError):
    """A downloaded checkpoint does not match its published checksum or size."""


class DownloadError(_FetchError):
    """A checkpoint could not be fetched (offline, DNS, refused, timeout, HTTP error...)."""


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable checkpoint.

    Attributes:
        name: Zoo key, e.g. ``"mobilesam"``.
        model_type: Architecture key understood by the model builders
            (``"vit_t"``, ``"vit_b"``, ``"vit_l"``, ``"vit_h"``); also accepted as an
            alias by :func:`resolve_entry`.
        url: Where the file is downloaded from.
        filename: File name inside the cache directory.
        sha256: Published lowercase hex SHA-256 of the file, or ``None`` when no
            checksum is published (then only ``size_bytes`` is checked).
        size_bytes: Published file size in bytes, or ``None`` if unknown.
        note: Human-readable provenance of the checksum / size.
    """

    name: str
    model_type: str
    url: str
    filename: str
    sha256: str | None
    size_bytes: int | None
    note: str


def _sam_entry(size: str, md5: str, sha256: str, size_bytes: int, sources: str) -> ZooEntry:
    """The official SAM ViT-``size`` checkpoint; its file name holds the start of its MD5."""
    filename = f"sam_vit_{size}_{md5[:6]}.pth"
    return ZooEntry(
        name=f"sam_vit_{size}",
        model_type=f"vit_{size}",
        url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        filename=filename,
        sha256=sha256,
        size_bytes=size_bytes,
        note=(
            f"Official SAM ViT-{size.upper()} checkpoint. The '{md5[:6]}' in the file name is "
            f"the start of the file's MD5 ({md5}), not of its SHA-256. SHA-256 and size from "
            f"third-party projects ({sources})."
        ),
    )


# Where each SHA-256 and size comes from, and how it was checked: docs/checkpoints.md.
MODEL_ZOO: dict[str, ZooEntry] = {
    "mobilesam": ZooEntry(
        name="mobilesam",
        model_type="vit_t",
        url="https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size_bytes=40_728_226,
        note=(
            "Official MobileSAM (TinyViT) weights, weights/mobile_sam.pt in the "
            "ChaoningZhang/MobileSAM repository. The repository publishes no checksum; the "
            "SHA-256 and size come from third-party projects (micro-sam, "
            "open-edge-platform/model_api, weight manifests) that agree with each other."
        ),
    ),
    "sam_vit_b": _sam_entry(
        "b",
        md5="01ec64d29a2fca3f0661936605ae66f8",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375_042_383,
        sources="micro-sam, dafne, download manifests",
    ),
    "sam_vit_l": _sam_entry(
        "l",
        md5="0b3195507c641ddb6910d2bb5adee89c",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1_249_524_607,
        sources="micro-sam, dafne, download manifests",
    ),
    "sam_vit_h": _sam_entry(
        "h",
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2_564_550_879,
        sources="micro-sam, model_api, dafne, manifests",
    ),
}


# --------------------------------------------------------------------------- lookup


def _aliases() -> dict[str, str]:
    """Map each model_type that names exactly one zoo entry to that entry's key.

    Computed from the live ``MODEL_ZOO`` on every call, so tests (or users) that add or
    patch entries get consistent aliasing.
    """
    owners: dict[str, list[str]] = {}
    for key, entry in MODEL_ZOO.items():
        owners.setdefault(entry.model_type, []).append(key)
    return {mt: keys[0] for mt, keys in owners.items() if len(keys) == 1 and mt not in MODEL_ZOO}


def valid_names() -> list[str]:
    """Return every name :func:`resolve_entry` accepts: zoo keys, then model_type aliases."""
    names = list(MODEL_ZOO)
    names.extend(alias for alias in _aliases() if alias not in names)
    return names


def resolve_entry(name: str | ZooEntry) -> ZooEntry:
    """Look up a zoo entry by key (``"mobilesam"``) or model type (``"vit_t"``).

    Args:
        name: A ``MODEL_ZOO`` key, a model_type alias, or a :class:`ZooEntry`, which is
            returned unchanged (handy for custom or test entries).

    Returns:
        The matching :class:`ZooEntry`.

    Raises:
        KeyError: ``name`` is unknown; the message lists the valid names.
    """
    if isinstance(name, ZooEntry):
        return name
    key = str(name).strip()
    if key in MODEL_ZOO:
        return MODEL_ZOO[key]
    lowered = key.lower()
    if lowered in MODEL_ZOO:
        return MODEL_ZOO[lowered]
    alias = _aliases().get(lowered)
    if alias is not None:
        return MODEL_ZOO[alias]
    raise KeyError(f"unknown model {name!r}; valid names are: {', '.join(valid_names())}")


# --------------------------------------------------------------------------- cache dir


def default_cache_dir() -> Path:
    """Return the checkpoint cache directory (environment read at call time).

    ``$MOBILESAM_CACHE`` if set and non-empty, else ``$XDG_CACHE_HOME/mobilesam`` if
    ``XDG_CACHE_HOME`` is set and non-empty, else ``~/.cache/mobilesam``. The directory
    is not created here.
    """
    explicit = os.environ.get("MOBILESAM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "mobilesam"
    return Path.home() / ".cache" / "mobilesam"


# --------------------------------------------------------------------------- verification


def sha256_file(path: str | os.PathLike[str], chunk: int = _CHUNK) -> str:
    """Return the lowercase hex SHA-256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Mismatch:
    """How a file differs from its zoo entry: ``what`` ("size" or "sha256") and both values."""

    what: str
    expected: str
    actual: str


def _mismatch(path: Path, entry: ZooEntry) -> _Mismatch | None:
    """Check a file on disk against ``entry``: its size, then its full SHA-256.

    Returns ``None`` when the file matches; a file with neither a published size nor a
    SHA-256 only has to be non-empty.
    """
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        return _Mismatch("size", f"{entry.size_bytes} bytes", f"{size} bytes")
    if entry.sha256 is not None:
        actual = sha256_file(path)
        if actual != entry.sha256.lower():
            return _Mismatch("sha256", entry.sha256.lower(), actual)
    elif entry.size_bytes is None and size == 0:
        return _Mismatch("size", "a non-empty file", "0 bytes")
    return None


# --------------------------------------------------------------------------- download

_LOCAL_COPY = "or build the model from a checkpoint file you already have: build_sam(path)"

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    TimeoutError,
    ConnectionError,
    http.client.HTTPException,
)


def _download(url: str, dest: Path, timeout: float, progress: bool, label: str) -> None:
    """Stream ``url`` into ``dest`` (created or truncated before connecting, so an unwritable
    cache fails before the network is touched). ``timeout`` bounds the connect and each read of
    this connection only: the process-wide socket default is left alone. With ``progress`` a
    byte counter labelled ``label`` is drawn on stderr."""
    request = urllib.request.Request(url, headers={"User-Agent": "mobilesam"})
    with open(dest, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        bar = progress_bar(total, label, unit="B", enabled=progress)
        try:
            while block := response.read(_CHUNK):
                out.write(block)
                bar.update(len(block))
        finally:
            bar.close()


def _describe_network_error(exc: BaseException, timeout: float) -> str:
    """Turn a urllib / socket exception into a short human-readable reason."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def _fetch(url: str, tmp: Path, entry: ZooEntry, timeout: float, progress: bool) -> None:
    """Download ``url`` to ``tmp`` and check it against ``entry``; ``tmp`` is left to the
    caller (:func:`atomic_write` moves it into place, or deletes it when this raises)."""
    dest = tmp.with_name(entry.filename)
    by_hand = f"To install it by hand, download\n    {url}\nand save it as\n    {dest}\n"
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _download(url, tmp, timeout, progress, entry.filename)
    except _NETWORK_ERRORS as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()
        raise DownloadError(
            f"Downloading the {entry.name!r} weights failed: "
            f"{_describe_network_error(exc, timeout)}.\n"
            "This machine may be offline, or the host may be unreachable.\n"
            f"{by_hand}({_LOCAL_COPY}).",
            url,
            dest,
        ) from exc
    except OSError as exc:  # the cache directory: not creatable, not writable, disk full
        raise DownloadError(
            f"Could not write the {entry.name!r} weights into {tmp.parent}: {exc}.\n"
            f"Set MOBILESAM_CACHE or pass cache_dir to use another directory.\n"
            f"{by_hand}({_LOCAL_COPY}).",
            url,
            dest,
        ) from exc
    bad = _mismatch(tmp, entry)
    if bad is not None:
        raise ChecksumError(
            f"{entry.filename} downloaded from {url} does not match its published {bad.what} "
            "(the transfer was cut short, or the file was changed):\n"
            f"    expected {bad.what} {bad.expected}\n"
            f"    actual   {bad.what} {bad.actual}\n"
            "The bad download was deleted. Retry later, or download the file yourself, "
            f"check its {bad.what}, and save it as\n    {dest}\n({_LOCAL_COPY}).",
            url,
            dest,
        )


def download_weights(
    name: str | ZooEntry,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Return the local path of a zoo checkpoint, downloading and verifying it if needed.

    If ``<cache_dir>/<entry.filename>`` already exists and verifies (size, and SHA-256
    when the entry has one), it is returned without touching the network; a cached file
    that fails is reported with a :class:`RuntimeWarning` and downloaded again. A download
    goes to ``<file>.part``, is verified, then is moved into place; the final path never
    holds a partial or unverified file, and a failed download leaves no file behind.

    Args:
        name: Zoo key, model_type alias (see :func:`resolve_entry`) or a :class:`ZooEntry`.
        cache_dir: Cache directory; defaults to :func:`default_cache_dir`.
        progress: Show what is downloaded and a progress bar on stderr (tqdm if installed).
            With ``False`` nothing is printed.
        url: Download from this URL instead of the entry's (mirrors, tests).
        timeout: Seconds allowed for connecting and for each read.

    Returns:
        Path to the verified checkpoint file.

    Raises:
        KeyError: ``name`` is not a zoo name.
        ChecksumError: the downloaded bytes do not match the expected size / SHA-256.
        DownloadError: the download failed (offline, refused, timeout, HTTP error, cache
            directory not writable).
    """
    entry = resolve_entry(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = cache.absolute() / entry.filename  # messages must name an unambiguous path
    src = url if url is not None else entry.url
    if dest.is_file():
        bad = _mismatch(dest, entry)
        if bad is None:
            return dest
        warnings.warn(
            f"cached checkpoint {dest} failed verification ({bad.what} is {bad.actual}, "
            f"expected {bad.expected}); downloading it again",
            RuntimeWarning,
            stacklevel=2,
        )
    if progress:
        print(f"Downloading {entry.name} weights from {src}\n  to {dest}", file=sys.stderr)
    atomic_write(dest, lambda tmp: _fetch(src, tmp, entry, timeout, progress))
    return dest


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Turn a user-supplied checkpoint argument into a local file path.

    An existing file path is returned as is (no verification). Otherwise the argument
    is looked up in the zoo (keys and model_type aliases) and downloaded / taken from
    the cache with :func:`download_weights`.

    Args:
        name_or_path: A checkpoint file path or a zoo name such as ``"mobilesam"``.
        cache_dir: Cache directory for zoo downloads; defaults to :func:`default_cache_dir`.
        progress: Show download progress on stderr.

    Returns:
        Path to a checkpoint file.

    Raises:
        FileNotFoundError: neither an existing file nor a zoo name; the message lists
            the valid zoo names.
        ChecksumError, DownloadError: see :func:`download_weights`.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    try:
        entry = resolve_entry(os.fspath(name_or_path))
    except KeyError:
        raise FileNotFoundError(
            f"checkpoint {os.fspath(name_or_path)!r} is neither an existing file nor a model "
            f"zoo name; valid zoo names are: {', '.join(valid_names())}"
        ) from None
    return download_weights(entry, cache_dir=cache_dir, progress=progress)
