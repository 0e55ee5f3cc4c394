"""Tiles: a frame cut into a grid of regions, each rendered as (part of) a task.

A tiling of ``cols`` x ``rows`` over a frame of ``width`` x ``height`` pixels
cuts it with integer math only: column ``c`` spans ``c * width // cols`` to
``(c + 1) * width // cols``, and rows alike, so the tiles neither overlap nor
leave gaps and every machine computes the same regions.  Tile ``i`` is
column ``i % cols`` of row ``i // cols``, rows counted from the top.  A
region is ``(x0, y0, x1, y1)``: top-left pixel included, bottom-right
excluded.  ``overscan`` grows the region a renderer draws by that many
pixels on each side (clamped to the frame); the tile is cut out of it.

A tiled job's tasks are its frames times its tile groups: a task holds one
frame and ``chunk`` consecutive tiles of it, which one renderer process
draws with the scene loaded once (by default a frame's tiles split evenly
over the machines that can render it: ``tiles_per_task``).  Task ``t`` of a job with ``g`` groups per frame renders
frame number ``t // g`` of the job's frames.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from protocol.frames import chunk_frames

Region = tuple[int, int, int, int]  #: x0, y0, x1, y1 (pixels; x1, y1 excluded)
MIN_TILE = 64  #: ``auto`` never makes a tile narrower or lower than this (unless the frame is)
AUTO_PER_MACHINE = 2  #: tiles per able machine ``auto`` aims at
MAX_TILES = 10_000  #: tiles of one frame
_GRID = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Tiling:
    """How each frame of a job is cut (see the module docstring)."""

    cols: int
    rows: int
    width: int
    height: int
    overscan: int = 0

    @property
    def count(self) -> int:
        """Tiles per frame."""
        return self.cols * self.rows

    def region(self, tile: int) -> Region:
        """The pixels tile ``tile`` covers."""
        c, r = tile % self.cols, tile // self.cols
        return (c * self.width // self.cols, r * self.height // self.rows,
                (c + 1) * self.width // self.cols, (r + 1) * self.height // self.rows)

    def drawn(self, tile: int) -> Region:
        """The region a renderer draws for ``tile``: grown by the overscan, within the frame."""
        x0, y0, x1, y1 = self.region(tile)
        o = self.overscan
        return (max(0, x0 - o), max(0, y0 - o), min(self.width, x1 + o), min(self.height, y1 + o))

    def groups(self, chunk: int) -> int:
        """Tasks per frame when a task holds ``chunk`` tiles."""
        return -(-self.count // max(1, chunk))

    def tiles_of(self, task: int, chunk: int) -> list[int]:
        """The tiles task ``task`` renders (of its frame) when a task holds ``chunk`` tiles."""
        first = (task % self.groups(chunk)) * max(1, chunk)
        return list(range(first, min(first + max(1, chunk), self.count)))

    def to_field(self) -> dict[str, int]:
        """The job field that records the tiling."""
        return {"cols": self.cols, "rows": self.rows, "width": self.width, "height": self.height,
                "overscan": self.overscan}

    @classmethod
    def from_field(cls, value: Any) -> Tiling | None:
        """The tiling a job field records; None for an untiled job (or a malformed field)."""
        if not isinstance(value, dict):
            return None
        try:
            cols, rows, width, height = (int(value[k]) for k in ("cols", "rows", "width", "height"))
            tiling = cls(cols, rows, width, height, int(value.get("overscan", 0)))
        except (KeyError, TypeError, ValueError):
            return None
        return tiling if not problem(tiling.cols, tiling.rows, tiling.width, tiling.height) else None


def parse_grid(text: str) -> tuple[int, int]:
    """``"4x3"`` as (4, 3); ValueError for anything else (``auto`` is the caller's)."""
    found = _GRID.match(text)
    if found is None:
        raise ValueError(f"tiles must be COLSxROWS (e.g. 4x4) or auto, not {text!r}")
    return int(found.group(1)), int(found.group(2))


def problem(cols: int, rows: int, width: int, height: int) -> str:
    """Why ``cols`` x ``rows`` tiles cannot cut a ``width`` x ``height`` frame, or ""."""
    if cols < 1 or rows < 1:
        return f"tiles must be at least 1x1, not {cols}x{rows}"
    if cols * rows > MAX_TILES:
        return f"{cols}x{rows} is {cols * rows} tiles a frame; at most {MAX_TILES}"
    if cols > width or rows > height:
        return (f"{cols}x{rows} tiles are more than the {width}x{height} pixels of the frame "
                f"(at most {width} columns and {height} rows)")
    return ""


def auto_grid(width: int, height: int, machines: int, min_tile: int = MIN_TILE) -> tuple[int, int]:
    """About ``AUTO_PER_MACHINE`` tiles per machine, as square as the frame allows,
    none smaller than ``min_tile`` on a side (1x1 for a frame that small)."""
    want = max(1, AUTO_PER_MACHINE * machines)
    most_cols = max(1, width // min_tile)
    most_rows = max(1, height // min_tile)
    side = math.sqrt(width * height / want)
    cols = min(most_cols, max(1, round(width / side)))
    rows = min(most_rows, max(1, math.ceil(want / cols)))
    if cols * rows < want:
        cols = min(most_cols, max(cols, math.ceil(want / rows)))
    return cols, rows


def tiles_per_task(count: int, machines: int) -> int:
    """A tiled job's tiles a task when the submit names none: a frame's ``count``
    tiles split evenly over the ``machines`` that can render it, one task each
    (a task per tile with no machine able now).  A renderer process starts once
    per task, and its start (loading the scene, Blender's BVH) is most of what a
    tile costs beyond its pixels; a lost task re-renders one machine's share."""
    return max(1, -(-count // machines)) if machines > 0 else 1


@dataclass(frozen=True)
class TaskShape:
    """What one task of a job renders: frames, and tiles of them (none: whole frames)."""

    frames: list[int]
    tiles: list[int]


def layout(frames: list[int], chunk: int, tiling: Tiling | None) -> list[TaskShape]:
    """Every task of a job, by task id.  Untiled: ``chunk`` frames a task (as
    ``chunk_frames`` cuts them); tiled: one frame and ``chunk`` tiles a task."""
    if tiling is None:
        return [TaskShape(list(group), []) for group in chunk_frames(frames, chunk)]
    groups = [tiling.tiles_of(g, chunk) for g in range(tiling.groups(chunk))]
    return [TaskShape([frame], tiles) for frame in frames for tiles in groups]
