"""Model zoo and checksum-verified download cache for SAM / MobileSAM checkpoints.

The zoo lists the official checkpoints (MobileSAM ``vit_t`` and SAM ``vit_b`` /
``vit_l`` / ``vit_h``) with their download URL, SHA-256 and byte size. Downloads use
only the standard library (``urllib``), stream into ``<file>.part`` inside the cache
directory, are verified, and are then moved into place with :func:`os.replace`, so
the final path never holds a partial or unverified file.

The cache directory is ``$MOBILESAM_CACHE`` if set, else
``$XDG_CACHE_HOME/mobilesam``, else ``~/.cache/mobilesam``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

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
_USER_AGENT = "mobilesam-hub/0.1 (+python urllib)"


class ChecksumError(RuntimeError):
    """A downloaded (or cached) checkpoint does not match its published checksum or size."""


class DownloadError(RuntimeError):
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


# Checksums and sizes below were gathered from public third-party sources; neither the
# MobileSAM nor the segment-anything repository publishes a SHA-256 itself. Each value
# was cross-checked against at least two independent projects.
MODEL_ZOO: dict[str, ZooEntry] = {
    # sha256: micro-sam (micro_sam/util.py, pooch registry key "vit_t") and the
    # open-edge-platform/model_api MobileSAM model list (issue "Enable MOBILE_SAM model"),
    # plus several independent weight manifests pinning MobileSAM commit f706ad9c.
    # size: 40728226 bytes, from two independent third-party weight manifests (an
    # "openscaner" MobileSAM artifact manifest and a "WeightSpec" weights registry).
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
    # sha256: micro-sam (micro_sam/util.py, registry key "vit_b") and independent download
    # scripts/manifests (a model-download manager listing url+size+sha256, several setup
    # scripts running `sha256sum -c`). size: dafne-imaging/dafne
    # (src/dafne/utils/sam_mask_refine.py) and Fooocus-derived model size lists.
    # md5 01ec64d29a2fca3f0661936605ae66f8: IOPaint (iopaint/plugins/interactive_seg.py).
    "sam_vit_b": ZooEntry(
        name="sam_vit_b",
        model_type="vit_b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375_042_383,
        note=(
            "Official SAM ViT-B checkpoint. The '01ec64' in the file name is the start of "
            "the file's MD5 (01ec64d29a2fca3f0661936605ae66f8), not of its SHA-256. SHA-256 "
            "and size from third-party projects (micro-sam, dafne, download manifests)."
        ),
    ),
    # sha256: micro-sam (micro_sam/util.py, registry key "vit_l") and independent
    # manifests (a model-download manager listing url+size+sha256, a PowerShell
    # installer with Size+Sha256). size: dafne-imaging/dafne
    # (src/dafne/utils/sam_mask_refine.py), the same model-download manager, and
    # Fooocus-derived model size lists.
    # md5 0b3195507c641ddb6910d2bb5adee89c: IOPaint (iopaint/plugins/interactive_seg.py).
    "sam_vit_l": ZooEntry(
        name="sam_vit_l",
        model_type="vit_l",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1_249_524_607,
        note=(
            "Official SAM ViT-L checkpoint. The '0b3195' in the file name is the start of "
            "the file's MD5 (0b3195507c641ddb6910d2bb5adee89c), not of its SHA-256. SHA-256 "
            "and size from third-party projects (micro-sam, dafne, download manifests)."
        ),
    ),
    # sha256: micro-sam (micro_sam/util.py, registry key "vit_h"), the
    # open-edge-platform/model_api SAM model list (issue "SAM Model enablement"), and
    # several Dockerfiles/setup scripts running `sha256sum -c`. size: dafne-imaging/dafne
    # (src/dafne/utils/sam_mask_refine.py) and a model-download manager (url+size+sha256).
    # md5 4b8939a88964f0f4ff5f5b2642c598a6: IOPaint (iopaint/plugins/interactive_seg.py).
    "sam_vit_h": ZooEntry(
        name="sam_vit_h",
        model_type="vit_h",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2_564_550_879,
        note=(
            "Official SAM ViT-H checkpoint. The '4b8939' in the file name is the start of "
            "the file's MD5 (4b8939a88964f0f4ff5f5b2642c598a6), not of its SHA-256. SHA-256 "
            "and size from third-party projects (micro-sam, model_api, dafne, manifests)."
        ),
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


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str], chunk: int = _CHUNK) -> str:
    """Return the lowercase hex SHA-256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _verify_file(path: Path, entry: ZooEntry) -> str | None:
    """Check a file on disk against ``entry``; return ``None`` if OK, else a reason."""
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        return f"size is {size} bytes, expected {entry.size_bytes}"
    if entry.sha256 is not None:
        actual = sha256_file(path)
        if actual != entry.sha256.lower():
            return f"sha256 is {actual}, expected {entry.sha256.lower()}"
    elif entry.size_bytes is None and size == 0:
        return "file is empty"
    return None


# --------------------------------------------------------------------------- download


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"To install it by hand, download\n    {url}\n"
        f"and save it as\n    {dest}\n"
        "(or build the model from a checkpoint file you already have: build_sam(path))."
    )


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


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    TimeoutError,
    ConnectionError,
    http.client.HTTPException,
)


def download_weights(
    name: str | ZooEntry,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Return the local path of a zoo checkpoint, downloading and verifying it if needed.

    If ``<cache_dir>/<entry.filename>`` already exists and verifies (SHA-256 when the
    entry has one, otherwise its size), it is returned without touching the network.
    Otherwise the file is streamed into ``<file>.part`` in the cache directory, verified,
    and atomically moved into place with :func:`os.replace`; the final path never holds
    a partial or unverified file.

    Args:
        name: Zoo key, model_type alias (see :func:`resolve_entry`) or a :class:`ZooEntry`.
        cache_dir: Cache directory; defaults to :func:`default_cache_dir`.
        progress: Show a progress bar on stderr (tqdm if installed, else a text bar).
            With ``False`` nothing is printed.
        url: Download from this URL instead of the entry's (mirrors, tests).
        timeout: Socket timeout in seconds for connecting and for each read.

    Returns:
        Path to the verified checkpoint file.

    Raises:
        KeyError: ``name`` is not a zoo name.
        ChecksumError: the downloaded bytes do not match the expected SHA-256 / size.
        DownloadError: the download failed (offline, refused, timeout, HTTP error...).
    """
    entry = resolve_entry(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = cache.absolute()  # error messages must name an unambiguous destination
    dest = cache / entry.filename
    src = url if url is not None else entry.url

    if dest.is_file():
        problem = _verify_file(dest, entry)
        if problem is None:
            return dest
        warnings.warn(
            f"cached checkpoint {dest} failed verification ({problem}); downloading it again",
            RuntimeWarning,
            stacklevel=2,
        )

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Could not create the cache directory {cache}: {exc}.\n" + _manual_hint(src, dest)
        ) from exc

    part = dest.with_name(dest.name + ".part")
    if progress:
        print(f"Downloading {entry.name} weights from {src}\n  to {dest}", file=sys.stderr)

    digest = hashlib.sha256()
    received = 0
    total: int | None = None
    finished = False
    try:
        request = urllib.request.Request(src, headers={"User-Agent": _USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = progress_bar(
                    total or entry.size_bytes, entry.filename, unit="B", enabled=progress
                )
                try:
                    with open(part, "wb") as fh:
                        while True:
                            block = response.read(_CHUNK)
                            if not block:
                                break
                            fh.write(block)
                            digest.update(block)
                            received += len(block)
                            bar.update(len(block))
                finally:
                    bar.close()
        except _NETWORK_ERRORS as exc:
            why = _describe_network_error(exc, timeout)
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            raise DownloadError(
                f"Downloading the {entry.name!r} weights failed: {why}.\n"
                "This machine may be offline, or the host may be unreachable.\n"
                + _manual_hint(src, dest)
            ) from exc

        if total is not None and received != total:
            raise DownloadError(
                f"Downloading the {entry.name!r} weights failed: the connection closed after "
                f"{received} of {total} bytes.\n"
                "This machine may be offline, or the connection is unreliable.\n"
                + _manual_hint(src, dest)
            )

        actual_sha = digest.hexdigest()
        if entry.sha256 is not None and actual_sha != entry.sha256.lower():
            raise ChecksumError(
                f"Checksum mismatch for {entry.filename} downloaded from {src}:\n"
                f"    expected sha256 {entry.sha256.lower()}\n"
                f"    actual   sha256 {actual_sha}\n"
                "The corrupt download was deleted. Retry later, or fetch the file yourself, "
                "check its sha256, and place it at\n"
                f"    {dest}\n"
                "(or build the model from a checkpoint file you already have: build_sam(path))."
            )
        if entry.size_bytes is not None and received != entry.size_bytes:
            raise ChecksumError(
                f"Size mismatch for {entry.filename} downloaded from {src}:\n"
                f"    expected {entry.size_bytes} bytes\n"
                f"    actual   {received} bytes (sha256 {actual_sha})\n"
                "No sha256 is published for this file, so its size is checked instead. "
                "The bad download was deleted. Retry later, or fetch the file yourself and "
                "place it at\n"
                f"    {dest}\n"
                "(or build the model from a checkpoint file you already have: build_sam(path))."
            )
        if entry.sha256 is None and entry.size_bytes is None and received == 0:
            raise ChecksumError(
                f"Download of {entry.filename} from {src} is empty (expected a checkpoint; "
                f"actual sha256 {actual_sha}). Place a good copy at\n    {dest}\n"
                "(or build the model from a checkpoint file: build_sam(path))."
            )

        os.replace(part, dest)
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
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
