"""The ``command`` backend: a command template run per frame (or once per task).

The job's rdata holds ``command``, e.g. ``"convert {scene} -frame {frame} {output}"``.
Placeholders: {scene} {frame} {start} {end} {output}.  A template naming
{frame} or {output} runs once per frame; otherwise once per task.  A template
without {output} leaves no file: its frames are done when the command exits 0.

When the template runs once for the whole task (a single frame, or no
per-frame placeholder) and names a program found on PATH (or by absolute
path), the worker runs that command line directly.  Otherwise it runs
``python -m node.renderers.command SPEC_JSON``, a runner that expands the
template per frame and prints ``PROGRESS f`` lines (and turns a program that
cannot start into a failed run, as it does for every template it cannot run).
Starting a Python runner costs tens of milliseconds per task: more than the
whole render of a short frame.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from typing import Any

from protocol.enums import RenderResult

from .base import Outcome, TaskSpec, missing_frames

PLACEHOLDERS = ("scene", "frame", "start", "end", "output")


def check_template(template: str) -> None:
    """ValueError if the template is empty or names an unknown placeholder."""
    if not template.strip():
        raise ValueError("the command template is empty")
    try:
        template.format(**{k: "x" for k in PLACEHOLDERS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad command template {template!r}: {exc}; "
                         f"placeholders are {{{'} {'.join(PLACEHOLDERS)}}}") from None


def makes_files(template: str) -> bool:
    """True if the template writes frame files ({output})."""
    return "{output}" in template


def reads_assets(rdata: dict[str, Any]) -> bool:
    """True if the job's command reads its assets: the template names {scene} or
    rdata lists ``assets``.  Otherwise the scene is only a name, and a worker need
    not fetch it (nor depend on the submitter being alive to send it)."""
    return "{scene}" in str(rdata.get("command", "")) or bool(rdata.get("assets"))


def per_frame(template: str) -> bool:
    """True if the template runs once per frame ({frame} or {output})."""
    return "{frame}" in template or "{output}" in template


def expand(template: str, scene: str, group: list[int], output: str) -> list[str]:
    """The argv of one run of the template over the frames of ``group``."""
    values = {"scene": scene, "frame": group[0], "start": group[0], "end": group[-1], "output": output}
    return shlex.split(template.format(**{k: shlex.quote(str(v)) for k, v in values.items()}))


def direct_argv(template: str, task: TaskSpec) -> list[str] | None:
    """The one command line of ``task`` if it can run without the runner, else None."""
    frames = task.frames
    if not frames or (len(frames) > 1 and per_frame(template)):
        return None
    try:
        argv = expand(template, task.scene, frames, task.frame_path(frames[0]))
    except (KeyError, IndexError, ValueError):
        return None  # the runner reports it
    if not argv or ("/" in argv[0] and not argv[0].startswith("/")) or shutil.which(argv[0]) is None:
        return None
    return argv


class CommandRenderer:
    """Runs a command template."""

    name = "command"

    def detect(self) -> str | None:
        """Always available: it runs whatever the job names."""
        return "1"

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """The template's command line itself if it runs once, else the runner."""
        template = str(task.rdata.get("command", ""))
        argv = direct_argv(template, task)
        if argv is not None:
            return argv, task.workdir
        spec = {"template": template, "scene": task.scene, "frames": task.frames,
                "outputs": {str(f): task.frame_path(f) for f in task.frames}}
        return [sys.executable, "-m", "node.renderers.command", json.dumps(spec)], task.workdir

    def progress(self, line: str, task: TaskSpec) -> float | None:
        """``PROGRESS 0.5`` lines."""
        if line.startswith("PROGRESS "):
            try:
                return max(0.0, min(1.0, float(line.split()[1])))
            except (IndexError, ValueError):
                return None
        return None

    def outcome(self, returncode: int, log_tail: list[str], task: TaskSpec) -> Outcome:
        """Exit 0 and every expected file present -> OK."""
        template = str(task.rdata.get("command", ""))
        last = log_tail[-1] if log_tail else ""
        if returncode != 0:
            return Outcome(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                           f"command exited with status {returncode}: {last}")
        if makes_files(template) and missing_frames(task):
            return Outcome(RenderResult.RENDERRESULT_SAVINGFAILED,
                           f"command wrote no file for frames {missing_frames(task)}")
        return Outcome(RenderResult.RENDERRESULT_OK)


def main() -> int:
    """Run the template for each frame; print progress."""
    spec = json.loads(sys.argv[1])
    template: str = spec["template"]
    frames: list[int] = spec["frames"]
    runs = [[f] for f in frames] if per_frame(template) else [frames]
    for i, group in enumerate(runs):
        argv = expand(template, spec["scene"], group, spec["outputs"][str(group[0])])
        if not argv:
            print("ERROR empty command", flush=True)
            return 2
        try:
            code = subprocess.call(argv)
        except OSError as exc:
            print(f"ERROR cannot run {argv[0]}: {exc}", flush=True)
            return 127
        if code != 0:
            print(f"ERROR {argv[0]} exited with status {code}", flush=True)
            return code
        print(f"PROGRESS {(i + 1) / len(runs):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
