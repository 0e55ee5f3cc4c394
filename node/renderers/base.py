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

    def frame_path(self, frame: int) -> str:
        """Where frame ``frame`` must be written."""
        return os.path.join(self.workdir, f"frame_{frame:06d}.{self.extension}")


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
    """Frames of ``task`` whose output file is absent or empty."""
    out = []
    for frame in task.frames:
        path = task.frame_path(frame)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
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
