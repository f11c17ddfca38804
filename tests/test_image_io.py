"""Photo decoding shared by the CLI and the HTTP API: EXIF orientation, pixel limit, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mobilesam.image_io import read_rgb


def _png(array: np.ndarray, orientation: int | None = None) -> bytes:
    im = Image.fromarray(array)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # stored landscape, tagged "rotate 90° CW"
    stored[:, :5] = 255  # a white stripe at the stored left edge
    data = _png(stored, orientation=6)
    shown = read_rgb(data)
    assert shown.shape == (40, 20, 3) and shown.dtype == np.uint8
    assert shown[:5].min() == 255 and shown[5:].max() == 0  # the stripe is now at the top
    path = tmp_path / "rotated.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_rgb(path), shown)
    np.testing.assert_array_equal(read_rgb(io.BytesIO(data)), shown)
    np.testing.assert_array_equal(read_rgb(_png(stored)), stored)  # no tag: unchanged


def test_grey_and_alpha_become_rgb():
    buf = io.BytesIO()
    Image.new("LA", (7, 5), (100, 30)).save(buf, format="PNG")
    out = read_rgb(buf.getvalue())
    assert out.shape == (5, 7, 3) and (out == 100).all()


def test_limits_and_errors():
    data = _png(np.zeros((30, 30, 3), np.uint8))
    assert read_rgb(data, max_pixels=900).shape == (30, 30, 3)
    with pytest.raises(ValueError, match="30×30 pixels; the limit is 899"):
        read_rgb(data, max_pixels=899)
    with pytest.raises(ValueError, match="cannot decode"):
        read_rgb(b"definitely not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        read_rgb(data[:40])
