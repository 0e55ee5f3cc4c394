"""Regenerate the example textures: ``python examples/make_textures.py``.

planet.png (128x64 RGB) wraps around a sphere; tiles.png (32x32 RGBA) tiles
a plane, its transparent grout showing the material colour beneath.
"""

from __future__ import annotations

import os

import numpy as np

from node.image import write_image

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "textures")


def planet() -> np.ndarray:
    """Oceans, continents and ice caps from a few sine waves."""
    v, u = np.mgrid[0:64, 0:128] / np.array([64.0, 128.0])[:, None, None]
    lon, lat = u * 2 * np.pi, (v - 0.5) * np.pi
    land = np.sin(3 * lon) * np.cos(2 * lat) + 0.6 * np.sin(5 * lon + 2 * lat) + 0.4 * np.cos(7 * lat)
    out = np.empty((64, 128, 3))
    out[:] = (0.08, 0.25, 0.6)
    out[land > 0.35] = (0.2, 0.55, 0.2)
    out[land > 1.0] = (0.55, 0.45, 0.25)
    out[np.abs(lat) > 1.25] = (0.95, 0.95, 0.97)
    return np.round(out * 255).astype(np.uint8)


def tiles() -> np.ndarray:
    """One terracotta tile with a see-through grout line on two sides."""
    y, x = np.mgrid[0:32, 0:32]
    shade = 0.85 + 0.15 * np.cos((x + y) / 32 * np.pi)
    out = np.zeros((32, 32, 4))
    out[..., 0], out[..., 1], out[..., 2] = 0.78 * shade, 0.42 * shade, 0.26 * shade
    out[..., 3] = 1.0
    out[(x < 2) | (y < 2), 3] = 0.0
    return np.round(out * 255).astype(np.uint8)


if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    write_image(os.path.join(HERE, "planet.png"), planet())
    write_image(os.path.join(HERE, "tiles.png"), tiles())
