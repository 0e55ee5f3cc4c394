"""The interface every renderer backend implements.

A worker turns a task into a ``TaskSpec``, asks the backend for a command
line, runs it as a subprocess (the built-in renderer too), feeds every output
line (split on ``\\n`` and ``\\r``) to ``progress``, and when it exits asks
``outcome`` for the RENDERRESULT_* and ``outputs`` for the frame files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol.enums import RenderResult

Region = tuple[int, int, int, int]  #: x0, y0, x1, y1 in pixels from the top left (x1, y1 excluded)


@dataclass(frozen=True)
class Tile:
    """One tile of a frame a task renders."""

    index: int
    region: Region  #: the tile's pixels
    drawn: Region  #: what the renderer draws: the region grown by the job's overscan

    @property
    def width(self) -> int:
        """The tile's width in pixels."""
        return self.region[2] - self.region[0]

    @property
    def height(self) -> int:
        """The tile's height in pixels."""
        return self.region[3] - self.region[1]


@dataclass(frozen=True)
class TaskSpec:
    """One task as a backend sees it."""

    job: str
    task: int
    frames: list[int]
    scene: str  #: absolute path of the scene file on this machine
    workdir: str  #: empty scratch folder the frames must be written into
    rdata: dict[str, Any] = field(default_factory=dict)  #: renderer settings from the job
    extension: str = "png"  #: file type of the frames
    tiles: tuple[Tile, ...] = ()  #: a tiled job's task: the tiles of each frame it renders
    size: tuple[int, int] = (0, 0)  #: a tiled job's frame size (width, height)

    def frame_path(self, frame: int) -> str:
        """Where frame ``frame`` must be written."""
        return os.path.join(self.workdir, f"frame_{frame:06d}.{self.extension}")

    def tile_path(self, frame: int, tile: int) -> str:
        """Where tile ``tile`` of frame ``frame`` must be written: the tile's pixels
        (or the drawn region's, which the worker cuts the tile out of)."""
        return os.path.join(self.workdir, f"frame_{frame:06d}_tile_{tile:04d}.{self.extension}")

    def outputs(self) -> list[tuple[int, int, str]]:
        """(frame, tile, path) of every file the task must leave (tile -1: a whole frame)."""
        if not self.tiles:
            return [(f, -1, self.frame_path(f)) for f in self.frames]
        return [(f, t.index, self.tile_path(f, t.index)) for f in self.frames for t in self.tiles]


@dataclass(frozen=True)
class Outcome:
    """How a finished subprocess went."""

    result: RenderResult
    message: str = ""
    warnings: tuple[str, ...] = ()


class Renderer(Protocol):
    """A renderer backend."""

    name: str

    def detect(self) -> str | None:
        """The renderer's version if it can run on this machine, else None."""

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """(argv, cwd) that renders every frame of ``task`` into ``task.frame_path``."""

    def progress(self, line: str, task: TaskSpec) -> float | None:
        """Fraction (0..1) of the task done, if ``line`` tells it."""

    def outcome(self, returncode: int, log_tail: list[str], task: TaskSpec) -> Outcome:
        """Map an exit status and the last lines of output to a RENDERRESULT_*."""


def missing_frames(task: TaskSpec) -> list[int]:
    """Frames of ``task`` with an output file (the frame's, or one of its tiles')
    absent or empty."""
    out: list[int] = []
    for frame, _, path in task.outputs():
        if (not os.path.exists(path) or os.path.getsize(path) == 0) and frame not in out:
            out.append(frame)
    return out


def progress_line(line: str) -> float | None:
    """The fraction (clamped to 0..1) a ``PROGRESS 0.25`` line reports, else None:
    the line our runner subprocesses print."""
    if not line.startswith("PROGRESS "):
        return None
    try:
        return max(0.0, min(1.0, float(line.split()[1])))
    except (IndexError, ValueError):
        return None
