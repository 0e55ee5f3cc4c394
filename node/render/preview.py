"""Frame previews: a small JPEG of a rendered frame, for the dashboard.

Images are read with maintained libraries, never a hand-written decoder:
Pillow for the 8- and 16-bit formats (PNG, JPEG, TIFF, BMP, TGA), OpenImageIO
(its PyPI wheel) for scene-linear floating point ones (OpenEXR, Radiance HDR)
and for whatever Pillow cannot identify.  Floating point pixels are tone
mapped the simple way a compositor's viewer does: times 2**exposure, clipped
to 0..1, then the sRGB transfer curve.

Everything here blocks: call it through ``trio.to_thread.run_sync``.  Meant
to be folded into one image module on Pillow with the builtin renderer's and
the contact sheet's code.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_WIDTH = 320  #: a preview is at most this wide...
MAX_HEIGHT = 640  #: ...and this high
QUALITY = 80  #: JPEG quality of previews
FULL_MAX = 4096  #: the dashboard's full-size view is scaled down past this width
LINEAR = (".exr", ".hdr")  #: scene-linear files: read with OpenImageIO, tone mapped
MAX_PIXELS = 100_000_000  #: a larger image is refused rather than decoded


class PreviewError(Exception):
    """The file is not an image this module can read."""


def srgb(linear: np.ndarray[Any, Any], exposure: float = 0.0) -> np.ndarray[Any, Any]:
    """Scene-linear floats -> 8-bit sRGB: exposure, clip, the sRGB curve."""
    x = np.clip(np.nan_to_num(linear.astype(np.float32) * np.float32(2.0 ** exposure)), 0.0, 1.0)
    out = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.asarray(np.round(out * 255.0), dtype=np.uint8)


def _read_linear(path: str, exposure: float) -> Image.Image:
    import OpenImageIO as oiio  # the wheel is large: loaded on the first EXR only

    inp = oiio.ImageInput.open(path)
    if inp is None:
        raise PreviewError(f"cannot read {os.path.basename(path)}: {oiio.geterror()}")
    try:
        spec = inp.spec()
        if spec.width * spec.height > MAX_PIXELS:
            raise PreviewError(f"{os.path.basename(path)} is too large for a preview")
        channels = min(spec.nchannels, 3)
        pixels = inp.read_image(0, 0, 0, channels, "float")
    finally:
        inp.close()
    if pixels is None:
        raise PreviewError(f"cannot read the pixels of {os.path.basename(path)}: {oiio.geterror()}")
    arr = np.asarray(pixels, dtype=np.float32).reshape(spec.height, spec.width, channels)
    if channels < 3:  # grey (or grey + alpha read as two): the first channel for all three
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return Image.fromarray(srgb(arr, exposure), "RGB")


def load_rgb(path: str, exposure: float = 0.0) -> Image.Image:
    """The image at ``path`` as 8-bit sRGB; PreviewError if it cannot be read."""
    if os.path.splitext(path)[1].lower() in LINEAR:
        return _read_linear(path, exposure)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise PreviewError(f"{os.path.basename(path)} is too large for a preview")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                return Image.fromarray(np.asarray(arr * 255.0 + 0.5, np.uint8), "L").convert("RGB")
            if im.mode == "F":
                return Image.fromarray(srgb(np.asarray(im)[:, :, None].repeat(3, axis=2), exposure))
            return im.convert("RGB")
    except UnidentifiedImageError:
        return _read_linear(path, exposure)  # OpenImageIO reads many formats Pillow does not
    except (OSError, ValueError) as exc:
        raise PreviewError(f"cannot read {os.path.basename(path)}: {exc}") from None


def _fit(im: Image.Image, width: int, height: int) -> Image.Image:
    if im.width <= width and im.height <= height:
        return im
    scale = min(width / im.width, height / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def make_preview(path: str, exposure: float = 0.0) -> bytes:
    """A JPEG of the frame at ``path``, at most ``MAX_WIDTH`` wide."""
    im = _fit(load_rgb(path, exposure), MAX_WIDTH, MAX_HEIGHT)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def browser_image(path: str, exposure: float = 0.0) -> tuple[bytes, str]:
    """(bytes, media type) of the frame for a browser: PNG and JPEG files as they are,
    anything else (EXR, TIFF, ...) converted to PNG, scaled down past ``FULL_MAX``."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".png", ".jpg", ".jpeg"):
        with open(path, "rb") as f:
            return f.read(), "image/png" if ext == ".png" else "image/jpeg"
    im = _fit(load_rgb(path, exposure), FULL_MAX, FULL_MAX)
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue(), "image/png"
