"""The CLI over unlucky photos (issue 24, rows 1 and 3): damaged EXIF, undecodable files and
photos over the pixel cap are one line each; the folder goes on with the other photos."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mobilesam.cli import main
from mobilesam.image_io import DEFAULT_MAX_PIXELS

from .helpers import FIXTURE_CKPT
from .test_image_fuzz import _tagged_jpeg


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _bad_exif_jpeg() -> bytes:
    """The reported photo: Orientation 6, and a RATIONAL tag turned into ImageDescription."""
    data = bytearray(_tagged_jpeg())
    at = data.find(b"\x01\x1a\x00\x05")
    data[at : at + 2] = b"\x01\x0e"
    return bytes(data)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says ``width×height`` (its data is that of a 1×1 image): what a
    160 KB file of 15000×11000 looks like before its pixels are decoded."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_everything_skips_what_it_cannot_read_and_goes_on(capsys, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    good.save(photos / "1.jpg")
    (photos / "2.jpg").write_bytes(_bad_exif_jpeg())
    good.save(photos / "3.jpg")
    (photos / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "5.png").write_bytes(_png_header_claiming(15000, 11000))
    out = tmp_path / "out"
    argv = ("everything", photos, "--checkpoint", FIXTURE_CKPT, "--out", out, "--quiet")
    code, stdout, err = run(capsys, *argv, "--points-per-side", "2")
    assert code == 1, err
    assert "Traceback" not in err
    for stem in ("1", "2", "3"):
        assert (out / f"{stem}.json").is_file(), err
    record = json.loads((out / "2.json").read_text())
    assert (record["image"]["height"], record["image"]["width"]) == (24, 16)  # EXIF applied
    skipped = [line for line in err.splitlines() if "skipping" in line]
    assert len(skipped) == 2, err
    assert "4.jpg" in skipped[0] and "cannot decode" in skipped[0]
    assert "5.png" in skipped[1] and "15000×11000" in skipped[1]
    assert f"the limit is {DEFAULT_MAX_PIXELS}" in skipped[1] and "--max-pixels" in skipped[1]
    assert "3 image(s)" in stdout and "2 unreadable image(s) skipped" in stdout


def test_max_pixels_is_an_option_with_a_clear_error(capsys, tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (90, 90, 90)).save(photo)
    argv = ("segment", photo, "--checkpoint", FIXTURE_CKPT, "--out", tmp_path / "o")
    code, _, err = run(capsys, *argv, "--max-pixels", "1199")
    assert code == 1
    assert err.strip() == (
        f"mobilesam: error: {photo}: image has 40×30 pixels; the limit is 1199 "
        "(raise it with --max-pixels)"
    )
    code, _, err = run(capsys, *argv, "--max-pixels", "1200")
    assert code == 0, err
    code, _, err = run(capsys, *argv, "--max-pixels", "0")
    assert code == 2 and "--max-pixels" in err


@pytest.mark.parametrize("command", ["segment"])
def test_damaged_exif_is_a_warning_line_not_a_failure(capsys, monkeypatch, tmp_path, command):
    photo = tmp_path / "2.jpg"
    photo.write_bytes(_tagged_jpeg())

    def broken(self):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    extra = ("--out", tmp_path / "o") if command == "segment" else ("--repeats", "1")
    code, _, err = run(capsys, command, photo, "--checkpoint", FIXTURE_CKPT, *extra)
    assert code == 0, err
    assert err.strip() == (
        f"mobilesam: warning: {photo}: EXIF metadata is damaged (error: unpack requires a "
        "buffer of 12 bytes); using the pixels unrotated"
    )
