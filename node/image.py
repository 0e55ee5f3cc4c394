"""Image files: read, write and encode frames and textures by file type, and
build a contact sheet of frames.

Pillow reads and writes the 8-bit formats (PNG, JPEG, TIFF, BMP, TGA, WebP);
OpenImageIO writes and reads OpenEXR (half float) when its Python package is
installed (PyPI ``OpenImageIO``).  Nothing here is a hand-written codec.

Pixels are ``(height, width, channels)`` uint8 arrays, channels 1 (grey), 2
(grey + alpha), 3 (RGB) or 4 (RGBA).  The same pixels always encode to the
same bytes with the same library versions (PNG: zlib level 6, no metadata).
"""

from __future__ import annotations

import importlib.util
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

Pixels = npt.NDArray[np.uint8]
MAX_PIXELS = 64 * 1024 * 1024  #: refuse images larger than this before decoding
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
#: file extension -> Pillow format name, for the formats written here through Pillow
PILLOW_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF",
                  "bmp": "BMP", "tga": "TGA", "webp": "WEBP"}
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_NO_ALPHA = {"JPEG", "BMP"}  #: formats that store no alpha channel


class ImageError(ValueError):
    """A file that is not an image this module reads, or pixels it cannot write;
    the message says why."""


def has_exr() -> bool:
    """True when OpenImageIO is installed, so OpenEXR files can be written and read."""
    return importlib.util.find_spec("OpenImageIO") is not None


def writable() -> list[str]:
    """Extensions ``encode`` writes here (exr only with OpenImageIO)."""
    return sorted(PILLOW_FORMATS) + (["exr"] if has_exr() else [])


def _check(pixels: Pixels) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _MODES:
        raise ImageError(f"expected a (h, w, 1-4) uint8 array, got {pixels.dtype} {pixels.shape}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError("an image needs at least one pixel")


#: zlib levels of a PNG: 6 for frames (what users keep); 1 for what is passed on or
#: shown for a while (tiles, partial images): 7 times faster on a 1280x720 frame
#: (0.09 s against 0.66 s) for a file a fifth larger, the same pixels
PNG_LEVEL = 6
PNG_LEVEL_FAST = 1


def encode(pixels: Pixels, ext: str = "png", *, fast: bool = False) -> bytes:
    """The bytes of an image file of type ``ext`` (png, jpg, exr...) holding
    ``pixels``; ``fast``: less compression where the format has levels."""
    _check(pixels)
    ext = ext.lower().lstrip(".")
    if ext == "exr":
        return _encode_exr(pixels)
    fmt = PILLOW_FORMATS.get(ext)
    if fmt is None:
        raise ImageError(f"cannot write .{ext} images; one of {', '.join(writable())}")
    array = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels  # Pillow takes grey as (h, w)
    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt in _NO_ALPHA and image.mode in ("LA", "RGBA"):
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    out = io.BytesIO()
    options: dict[str, object] = {}
    if fmt == "PNG":
        options = {"compress_level": PNG_LEVEL_FAST if fast else PNG_LEVEL}
    if fmt == "JPEG":
        options = {"quality": 95}
    image.save(out, fmt, **options)
    return out.getvalue()


def _encode_exr(pixels: Pixels) -> bytes:
    """OpenEXR through OpenImageIO: half-float channels in 0..1 (written to a temp
    file, since OpenImageIO writes files)."""
    import tempfile

    import OpenImageIO as oiio

    height, width, channels = pixels.shape
    fd, tmp = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        out = oiio.ImageOutput.create(tmp)
        if out is None:
            raise ImageError(f"OpenImageIO cannot write OpenEXR: {oiio.geterror()}")
        spec = oiio.ImageSpec(width, height, channels, "half")
        if not out.open(tmp, spec) or not out.write_image(pixels.astype(np.float32) / 255.0):
            raise ImageError(f"OpenImageIO could not write OpenEXR: {out.geterror()}")
        out.close()
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def decode(data: bytes) -> Pixels:
    """The pixels of an image file's bytes (8-bit formats; ImageError otherwise)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _pixels(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageError(f"not an image this can read: {exc}") from None


def _pixels(image: Image.Image) -> Pixels:
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    array: Pixels = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def read_image(path: str) -> Pixels:
    """Read an image file (OSError if it cannot be opened, ImageError if it is not an
    image this module reads); OpenEXR through OpenImageIO, as 8-bit."""
    if path.lower().endswith(".exr"):
        return _read_exr(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def _open_exr(path: str) -> Any:
    """An OpenImageIO input of the OpenEXR file at ``path`` (the caller closes it);
    FileNotFoundError, or ImageError if it cannot be opened."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if not has_exr():
        raise ImageError(f"{path}: reading OpenEXR needs OpenImageIO (pip install OpenImageIO)")
    import OpenImageIO as oiio

    source = oiio.ImageInput.open(path)
    if source is None:
        raise ImageError(f"{path}: {oiio.geterror()}")
    return source


def _read_exr(path: str) -> Pixels:
    source = _open_exr(path)
    try:
        data = source.read_image("float")
    finally:
        source.close()
    levels: Pixels = np.floor(np.clip(np.asarray(data), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return levels


@dataclass(frozen=True)
class Exact:
    """An image as its file holds it: 8-bit ``uint8`` pixels (Pillow's formats), or
    an OpenEXR file's ``float32`` pixels with its channel names and whether they
    are stored as half floats.  What tiles are read, cut and assembled as, so an
    assembled frame has the values of its tiles, not an 8-bit copy of them."""

    pixels: npt.NDArray[Any]  #: (height, width, channels)
    channels: tuple[str, ...] = ()  #: OpenEXR channel names; () for 8-bit images
    half: bool = False  #: OpenEXR: stored as half floats

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.pixels.shape[0])


def read_exact(path: str) -> Exact:
    """Read an image as ``Exact`` (OSError, ImageError); 16-bit files are refused
    rather than cut to 8 bits."""
    if not path.lower().endswith(".exr"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.mode.startswith("I;16") or image.mode in ("I", "F"):
                    raise ImageError(f"{path}: {image.mode} images (more than 8 bits a channel) "
                                     "are not assembled; write tiles as 8-bit PNG or OpenEXR")
                image.load()
                return Exact(_pixels(image))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ImageError(f"{path}: not an image this can read: {exc}") from None
    source = _open_exr(path)
    try:
        spec = source.spec()
        if spec.width * spec.height > MAX_PIXELS:
            raise ImageError(f"{path}: {spec.width}x{spec.height} is more than {MAX_PIXELS} pixels")
        floats = source.read_image("float")
    finally:
        source.close()
    if floats is None:
        raise ImageError(f"{path}: OpenImageIO could not read the pixels")
    pixels = np.asarray(floats, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)
    return Exact(pixels, tuple(spec.channelnames), str(spec.format) == "half")


def encode_exact(image: Exact, ext: str, *, fast: bool = False) -> bytes:
    """The bytes of a file of type ``ext`` holding ``image``: OpenEXR keeps the
    channel names and half or full floats; 8-bit images go through ``encode``
    (``fast`` as there)."""
    ext = ext.lower().lstrip(".")
    if ext != "exr":
        if image.pixels.dtype != np.uint8:
            raise ImageError(f"cannot write OpenEXR pixels as .{ext}")
        return encode(image.pixels, ext, fast=fast)
    if image.pixels.dtype == np.uint8:
        return _encode_exr(image.pixels)
    import tempfile

    import OpenImageIO as oiio

    height, width, count = image.pixels.shape
    fd, tmp = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        out = oiio.ImageOutput.create(tmp)
        if out is None:
            raise ImageError(f"OpenImageIO cannot write OpenEXR: {oiio.geterror()}")
        spec = oiio.ImageSpec(width, height, count, "half" if image.half else "float")
        names = image.channels if len(image.channels) == count else tuple(spec.channelnames)
        spec.channelnames = names
        if "A" in names:
            spec.alpha_channel = names.index("A")
        if not out.open(tmp, spec) or not out.write_image(np.ascontiguousarray(image.pixels)):
            raise ImageError(f"OpenImageIO could not write OpenEXR: {out.geterror()}")
        out.close()
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def write_exact(path: str, image: Exact) -> None:
    """Write ``image`` to ``path`` in the type its extension names (not atomically)."""
    data = encode_exact(image, os.path.splitext(path)[1] or "png")
    with open(path, "wb") as f:
        f.write(data)


def write_image(path: str, pixels: Pixels) -> None:
    """Write ``pixels`` to ``path`` in the type its extension names (not atomically)."""
    data = encode(pixels, os.path.splitext(path)[1] or "png")
    with open(path, "wb") as f:
        f.write(data)


def as_rgb(pixels: Pixels) -> Pixels:
    """Greyscale and alpha images as RGB (alpha composited over black)."""
    channels = pixels.shape[2]
    if channels in (2, 4):
        alpha = pixels[:, :, -1:].astype(np.uint32)
        colour = pixels[:, :, :-1].astype(np.uint32)
        pixels = ((colour * alpha + 127) // 255).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels


def resize(pixels: Pixels, width: int, height: int) -> Pixels:
    """Box-filter resize in integer steps: each output pixel is the rounded mean of
    the source pixels it covers (exact and the same everywhere, which texture
    mip-maps rely on for renders that match bit for bit)."""
    src_h, src_w, _ = pixels.shape

    def edges(src: int, dst: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        lo = np.arange(dst, dtype=np.int64) * src // dst
        hi = np.maximum((np.arange(dst, dtype=np.int64) + 1) * src // dst, lo + 1)
        return lo, hi

    x0, x1 = edges(src_w, width)
    y0, y1 = edges(src_h, height)
    total = np.zeros((src_h + 1, src_w + 1, pixels.shape[2]), dtype=np.int64)
    total[1:, 1:] = pixels.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :])[:, :, None]
    sums = (total[y1][:, x1] - total[y0][:, x1] - total[y1][:, x0] + total[y0][:, x0])
    out: Pixels = ((sums + area // 2) // area).astype(np.uint8)
    return out


def contact_sheet(paths: list[str], out_path: str, columns: int = 6, thumb_width: int = 160,
                  gap: int = 4, background: tuple[int, int, int] = (24, 24, 24)) -> tuple[int, int]:
    """Lay the frames out in a grid of thumbnails, in the order given, and write one
    image (its type from ``out_path``'s extension).

    Thumbnails are ``thumb_width`` wide with the first frame's aspect ratio;
    the sheet has ``min(columns, len(paths))`` columns and ``gap`` pixels
    around every thumbnail.  Returns the sheet's (width, height).
    """
    if not paths:
        raise ValueError("a contact sheet needs at least one frame")
    if columns < 1 or thumb_width < 1 or gap < 0:
        raise ValueError("columns and thumb_width must be positive, gap not negative")
    first = read_image(paths[0])
    thumb_height = max(1, round(first.shape[0] * thumb_width / first.shape[1]))
    cols = min(columns, len(paths))
    rows = -(-len(paths) // cols)
    width = cols * (thumb_width + gap) + gap
    height = rows * (thumb_height + gap) + gap
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:, :] = background
    for i, path in enumerate(paths):
        image = first if i == 0 else read_image(path)
        thumb = resize(as_rgb(image), thumb_width, thumb_height)
        top = gap + (i // cols) * (thumb_height + gap)
        left = gap + (i % cols) * (thumb_width + gap)
        sheet[top:top + thumb_height, left:left + thumb_width] = thumb
    tmp = f"{out_path}.tmp{os.getpid()}{os.path.splitext(out_path)[1]}"
    try:
        write_image(tmp, sheet)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return width, height
