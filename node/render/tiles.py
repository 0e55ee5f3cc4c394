"""Tiles into frames.

The worker makes each tile file hold exactly the tile's pixels (``fit_tile``):
a renderer that drew the region grown by the job's overscan left a larger
image, from which the tile is cut; any other size is an error (the task
fails, and renders again elsewhere).  The submitting node assembles a frame
(``assemble``): each tile is checked against its region's size and pasted at
its position; a partial frame has an alpha channel, zero where no tile is yet.
Pixels keep their values: 8-bit tiles make an 8-bit frame, OpenEXR tiles a
frame of the same channels and float type (``node.image.Exact``).

Blocking (file and pixel work): call these in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from node.image import Exact, ImageError, encode_exact, read_exact
from node.renderers.base import Region, Tile


class TileError(ValueError):
    """A tile that does not fit its region; the message says how."""


def _size(region: Region) -> tuple[int, int]:
    return region[2] - region[0], region[3] - region[1]


def fit_tile(path: str, tile: Tile) -> None:
    """Leave in ``path`` exactly ``tile``'s pixels (TileError if the file holds
    neither the tile nor the drawn region around it; OSError, ImageError)."""
    image = read_exact(path)
    got = (image.width, image.height)
    want = _size(tile.region)
    if got == want:
        return
    if got != _size(tile.drawn):
        raise TileError(f"tile {tile.index} is {got[0]}x{got[1]} pixels; its region "
                        f"{list(tile.region)} is {want[0]}x{want[1]}")
    x = tile.region[0] - tile.drawn[0]
    y = tile.region[1] - tile.drawn[1]
    cut = Exact(np.ascontiguousarray(image.pixels[y:y + want[1], x:x + want[0]]), image.channels, image.half)
    tmp = f"{path}.cut{os.getpid()}{os.path.splitext(path)[1]}"
    with open(tmp, "wb") as f:
        f.write(encode_exact(cut, os.path.splitext(path)[1]))
    os.replace(tmp, path)


def assemble(width: int, height: int, tiles: Sequence[tuple[int, Region, str]], complete: bool) -> Exact:
    """The frame of ``width`` x ``height`` from ``tiles`` (index, region, file);
    ``complete`` False: a partial frame, transparent where no tile is.
    TileError when a tile's size is not its region's, it lies outside the frame,
    or its pixels are of another kind than the others'."""
    if not tiles:
        raise TileError("no tile to assemble")
    canvas: np.ndarray | None = None
    first: Exact | None = None
    alpha = -1
    for index, region, path in tiles:
        x0, y0, x1, y1 = region
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise TileError(f"tile {index}'s region {list(region)} is not within the {width}x{height} frame")
        try:
            image = read_exact(path)
        except (OSError, ImageError) as exc:
            raise TileError(f"cannot read tile {index}: {exc}") from None
        if (image.width, image.height) != (x1 - x0, y1 - y0):
            raise TileError(f"tile {index} is {image.width}x{image.height} pixels; its region "
                            f"{list(region)} is {x1 - x0}x{y1 - y0}")
        if first is None:
            first = image
            channels = image.pixels.shape[2]
            names = image.channels
            if not complete:
                alpha = (names.index("A") if "A" in names else channels) if names else (
                    channels - 1 if channels in (2, 4) else channels)
                channels = max(channels, alpha + 1)
            canvas = np.zeros((height, width, channels), dtype=image.pixels.dtype)
        elif (image.pixels.dtype, image.pixels.shape[2], image.channels) != (
                first.pixels.dtype, first.pixels.shape[2], first.channels):
            raise TileError(f"tile {index} has other channels than tile {tiles[0][0]} "
                            f"({image.pixels.shape[2]} {image.pixels.dtype} against "
                            f"{first.pixels.shape[2]} {first.pixels.dtype})")
        assert canvas is not None
        own = image.pixels.shape[2]
        canvas[y0:y1, x0:x1, :own] = image.pixels
        if not complete and alpha >= own:  # tiles without alpha: opaque where they are
            canvas[y0:y1, x0:x1, alpha] = 255 if canvas.dtype == np.uint8 else 1.0
    assert canvas is not None and first is not None
    names = first.channels
    if names and canvas.shape[2] > len(names):
        names = (*names, "A")
    return Exact(canvas, names, first.half)
