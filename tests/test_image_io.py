"""Photo decoding shared by the CLI and the HTTP API: EXIF orientation, pixel limit, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mobilesam.image_io import read_rgb
from mobilesam.training.data import ImageReader, ImageRef


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


def _encoded(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_sixteen_bit_and_float_images_are_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64)
    as_png = _encoded(Image.fromarray(ramp))  # 16-bit grayscale PNG
    as_tiff = _encoded(Image.fromarray(ramp.astype(np.int32), mode="I"), "TIFF")  # 32-bit
    for data in (as_png, as_tiff):
        out = read_rgb(data)
        expected = np.round(ramp * (255.0 / 65535.0)).astype(np.uint8)
        assert out.shape == (16, 64, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[..., 0], expected)  # 0..255, not 2 levels
    # a dark 16-bit image (all values under 256) keeps the 16-bit scale: nearly black
    dark = _encoded(Image.fromarray(np.full((4, 4), 200, np.int32), mode="I"), "TIFF")
    assert read_rgb(dark).max() == 1
    floats = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    out = read_rgb(_encoded(floats, "TIFF"))
    assert out.min() == 0 and out.max() == 255
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_rgb(_encoded(Image.fromarray(np.full((4, 4), 7.5, np.float32), mode="F"), "TIFF"))


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "L", "RGBA", "1"])
def test_other_modes_become_rgb(mode):
    im = Image.new("RGB", (9, 6), (200, 120, 40)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = read_rgb(_encoded(im, fmt))
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8


def test_any_image_of_at_least_one_pixel_is_segmentable(fixture_model):
    """A 1×5000 strip (SAM's resize would make a side of 0) and a 1×1 image."""
    from mobilesam import SamPredictor

    pred = SamPredictor(fixture_model)
    for shape in ((1, 5000, 3), (5000, 1, 3), (1, 1, 3)):
        pred.set_image(np.full(shape, 90, np.uint8))
        masks, scores, _ = pred.predict(np.array([[0, 0]]), np.array([1]))
        assert masks.shape[1:] == shape[:2] and np.isfinite(scores).all()


def test_error_texts_name_no_object_reprs(tmp_path):
    """Messages say what is wrong in the user's terms: no ``<_io.BytesIO object at 0x…>``."""
    for data in (b"definitely not an image", io.BytesIO(b"GIF89a garbage")):
        with pytest.raises(ValueError) as info:
            read_rgb(data)
        assert "object at 0x" not in str(info.value) and "cannot decode" in str(info.value)


def test_image_reader_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated by 90°
    Image.new("RGB", (40, 20)).save(tmp_path / "side.jpg", exif=exif)
    image = ImageReader().read(ImageRef("side.jpg", str(tmp_path / "side.jpg")))
    assert image.shape == (40, 20, 3)


def test_path_errors_name_the_path(tmp_path):
    """A path is checked before decoding: missing and folder are the OS's error types with
    ``filename`` set; an undecodable file is a ValueError whose message names it."""
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError) as info:
        read_rgb(missing)
    assert info.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as info:
        read_rgb(str(tmp_path))
    assert info.value.filename == str(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: cannot decode the image"):
        read_rgb(broken)
    big = tmp_path / "big.png"
    big.write_bytes(_png(np.zeros((30, 30, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"big\.png: image has 30×30 pixels"):
        read_rgb(big, max_pixels=100)
