"""PNG files without Pillow: write 8-bit RGB/RGBA, read what this module (and
most simple tools) write, and build a contact sheet of frames.

The writer uses the Sub filter on every row and zlib level 6, so the same
pixels always give the same bytes with the same zlib.  The reader handles
8-bit, non-interlaced greyscale, grey+alpha, RGB and RGBA images with any of
the five row filters; palettes, 16-bit samples and Adam7 are refused.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 64 * 1024 * 1024  #: refuse images larger than this before decompressing
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


class PngError(ValueError):
    """A PNG file this module cannot read; the message says why."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: Pixels) -> bytes:
    """PNG bytes of an ``(height, width, 3 or 4)`` uint8 array (RGB or RGBA)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected a (h, w, 1-4) uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    if height == 0 or width == 0:
        raise ValueError("an image needs at least one pixel")
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = rows.copy()
    filtered[:, channels:] = rows[:, channels:] - rows[:, :-channels]  # Sub, wraps mod 256
    raw = np.empty((height, width * channels + 1), dtype=np.uint8)
    raw[:, 0] = 1
    raw[:, 1:] = filtered
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join((SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)), _chunk(b"IEND", b"")))


def write_png(path: str, pixels: Pixels) -> None:
    """Write ``pixels`` to ``path`` as a PNG (not atomically; see the CLI for that)."""
    with open(path, "wb") as f:
        f.write(encode_png(pixels))


def _unfilter(data: bytes, height: int, stride: int, bpp: int) -> Pixels:
    if len(data) != height * (stride + 1):
        raise PngError(f"image data is {len(data)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind = int(rows[y, 0])
        line = rows[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:  # Up
            cur = (line + prev) & 0xFF
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = line.copy()
            for x in range(stride):
                a = int(cur[x - bpp]) if x >= bpp else 0
                b = int(prev[x])
                c = int(prev[x - bpp]) if x >= bpp else 0
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[x] = (int(cur[x]) + pred) & 0xFF
        else:
            raise PngError(f"row {y} has unknown filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def decode_png(data: bytes) -> Pixels:
    """An ``(height, width, channels)`` uint8 array from PNG bytes; PngError if unsupported."""
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file (bad signature)")
    pos = len(SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PngError(f"chunk {kind!r} is truncated")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise PngError(f"chunk {kind!r} has a bad CRC")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise PngError("IHDR chunk has the wrong size")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError("no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS:
        raise PngError(f"only 8-bit grey/RGB/RGBA PNGs are supported (depth {depth}, colour type {colour})")
    if interlace:
        raise PngError("interlaced PNGs are not supported")
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise PngError(f"image size {width}x{height} is out of range")
    channels = _CHANNELS[colour]
    expected = height * (width * channels + 1)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(idat), expected)
    except zlib.error as exc:
        raise PngError(f"image data is corrupt: {exc}") from None
    return _unfilter(raw, height, width * channels, channels).reshape(height, width, channels)


def read_png(path: str) -> Pixels:
    """Read a PNG file (OSError if it cannot be opened, PngError if it is not a supported PNG)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_png(data)
    except PngError as exc:
        raise PngError(f"{path}: {exc}") from None


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
    """Box-filter resize: each output pixel is the mean of the source pixels it covers."""
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
    """Lay the frames out in a grid of thumbnails, in the order given, and write one PNG.

    Thumbnails are ``thumb_width`` wide with the first frame's aspect ratio;
    the sheet has ``min(columns, len(paths))`` columns and ``gap`` pixels
    around every thumbnail.  Returns the sheet's (width, height).
    """
    if not paths:
        raise ValueError("a contact sheet needs at least one frame")
    if columns < 1 or thumb_width < 1 or gap < 0:
        raise ValueError("columns and thumb_width must be positive, gap not negative")
    first = read_png(paths[0])
    thumb_height = max(1, round(first.shape[0] * thumb_width / first.shape[1]))
    cols = min(columns, len(paths))
    rows = -(-len(paths) // cols)
    width = cols * (thumb_width + gap) + gap
    height = rows * (thumb_height + gap) + gap
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:, :] = background
    for i, path in enumerate(paths):
        image = first if i == 0 else read_png(path)
        thumb = resize(as_rgb(image), thumb_width, thumb_height)
        top = gap + (i // cols) * (thumb_height + gap)
        left = gap + (i % cols) * (thumb_width + gap)
        sheet[top:top + thumb_height, left:left + thumb_width] = thumb
    tmp = f"{out_path}.tmp{os.getpid()}"
    try:
        write_png(tmp, sheet)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return width, height
