"""Frame previews (node/render/preview.py): read with Pillow or OpenImageIO,
tone mapped when scene-linear, at most 320 px wide, JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.render.preview import MAX_WIDTH, PreviewError, browser_image, make_preview, srgb


def _jpeg(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return im.convert("RGB")


def test_a_wide_png_becomes_a_jpeg_at_most_320_wide_keeping_its_aspect(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    Image.new("RGB", (1280, 720), (200, 40, 10)).save(path)
    im = _jpeg(make_preview(str(path)))
    assert im.size == (MAX_WIDTH, 180)
    r, g, b = im.getpixel((160, 90))
    assert abs(r - 200) < 6 and abs(g - 40) < 6 and abs(b - 10) < 6


def test_a_small_16_bit_grey_png_keeps_its_size_and_scale(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(path)
    im = _jpeg(make_preview(str(path)))
    assert im.size == (30, 20) and abs(im.getpixel((5, 5))[0] - 128) < 4


def test_an_exr_is_read_with_openimageio_and_tone_mapped_to_srgb(tmp_path: Path) -> None:
    oiio = pytest.importorskip("OpenImageIO")
    path = tmp_path / "frame.exr"
    pixels = np.zeros((40, 640, 4), np.float32)
    pixels[:, :320, :3] = 0.18  # middle grey
    pixels[:, 320:, :3] = 8.0  # far over white: clipped
    pixels[:, :, 3] = 1.0
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), oiio.ImageSpec(640, 40, 4, "half"))
    out.write_image(pixels)
    out.close()
    im = _jpeg(make_preview(str(path)))
    assert im.size == (320, 20)
    grey = im.getpixel((40, 10))[0]
    assert abs(grey - 118) < 5  # sRGB of 0.18 linear
    assert im.getpixel((300, 10))[0] > 250
    assert srgb(np.array([0.0, 1.0, 0.18]), exposure=1.0).tolist() == [0, 255, 162]
    data, media = browser_image(str(path))
    assert media == "image/png" and Image.open(io.BytesIO(data)).size == (640, 40)


def test_a_file_that_is_no_image_is_a_preview_error(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(PreviewError):
        make_preview(str(path))
    with pytest.raises(PreviewError):
        make_preview(str(tmp_path / "missing.exr"))
