"""The photo reader under hostile input: mutated EXIF and arbitrary bytes give an array or one
``ValueError``, never another exception (issue 24, row 1). Seeded, a few seconds."""

from __future__ import annotations

import io
import random
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mobilesam.image_io import ImageWarning, read_rgb


def _tagged_jpeg() -> bytes:
    """A 24×16 JPEG whose EXIF holds Orientation 6 beside tags of every common type
    (RATIONAL, ASCII, SHORT, LONG) and an Exif sub-IFD."""
    im = Image.fromarray(
        np.tile(np.arange(24, dtype=np.uint8) * 10, (16, 1))[..., None].repeat(3, 2)
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    exif[0x011A] = 72.0  # XResolution, RATIONAL
    exif[0x011B] = 72.0  # YResolution, RATIONAL
    exif[0x0128] = 2  # ResolutionUnit, SHORT
    exif[0x010F] = "maker"  # Make, ASCII
    exif[0x0131] = "software"  # Software, ASCII
    exif.get_ifd(0x8769)[0x9003] = "2026:01:01 00:00:00"  # DateTimeOriginal in the Exif IFD
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def _read(data: bytes):
    """``read_rgb(data)``, or the ValueError it raised; anything else propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_rgb(data)
        except ValueError as exc:
            return exc


def test_a_rational_tag_turned_into_image_description_still_reads():
    """The reported photo: a RATIONAL tag's id flipped to ImageDescription (ASCII), with
    Orientation 6. Pillow's ``exif_transpose`` raised AttributeError rewriting such EXIF; the
    reader only reads the orientation, so the photo is shown rotated, as viewers show it."""
    data = bytearray(_tagged_jpeg())
    at = data.find(b"\x01\x1a\x00\x05")  # XResolution, type RATIONAL (big-endian TIFF)
    assert at > 0
    data[at : at + 2] = b"\x01\x0e"  # ImageDescription
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        out = read_rgb(bytes(data))
    assert out.shape == (24, 16, 3) and out.dtype == np.uint8  # 24×16 stored, turned 90°


def test_unreadable_exif_keeps_the_pixels_unrotated(monkeypatch, tmp_path):
    """EXIF that cannot be parsed at all: the pixels as stored, and one warning naming the
    file."""
    path = tmp_path / "2.jpg"
    path.write_bytes(_tagged_jpeg())

    def broken(self):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    with pytest.warns(ImageWarning, match=r"2\.jpg: EXIF metadata is damaged .*unrotated"):
        out = read_rgb(path)
    assert out.shape == (16, 24, 3)


def test_mutated_exif_never_escapes():
    """Hundreds of seeded mutants of the EXIF block (bytes changed, cut, repeated): each gives
    an ``H×W×3`` uint8 array or a ``ValueError``."""
    data = _tagged_jpeg()
    start = data.find(b"Exif\x00\x00")
    end = start + int.from_bytes(data[start - 2 : start], "big") - 2
    rng = random.Random(24)
    arrays = errors = 0
    for _ in range(600):
        mutant = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            at = rng.randrange(start + 6, end)
            mutant[at] = rng.choice(
                (rng.randrange(256), mutant[at] ^ 1 << rng.randrange(8), 0, 255)
            )
        out = _read(bytes(mutant))
        if isinstance(out, ValueError):
            errors += 1
        else:
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
            arrays += 1
    assert arrays > 300  # most mutants still decode: their pixels are used


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=2048))
def test_any_bytes_give_an_array_or_a_value_error(data):
    out = _read(data)
    assert isinstance(out, ValueError) or (out.ndim == 3 and out.dtype == np.uint8)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 4096),
)
def test_mutated_photos_give_an_array_or_a_value_error(fmt, edits, cut):
    """Real encodings with bytes changed and the tail cut: decoders' own failures
    (``struct.error``, ``IndexError``, ``EOFError``, ...) become one ``ValueError``."""
    buf = io.BytesIO()
    Image.new("RGB", (33, 17), (10, 200, 30)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    for at, value in edits:
        data[at % len(data)] = value
    out = _read(bytes(data[: max(1, len(data) - cut)]))
    assert isinstance(out, ValueError) or (out.ndim == 3 and out.dtype == np.uint8)
