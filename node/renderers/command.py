"""The ``command`` backend: a command template run per frame (or once per task).

The job's rdata holds ``command``, e.g. ``"convert {scene} -frame {frame} {output}"``.
Placeholders: {scene} {frame} {start} {end} {output}, and {width} {height}
(the frame's size: rdata width and height) with, for a tiled job, {tile} and
the region to draw, {x0} {y0} {x1} {y1} (pixels from the top left, x1 and y1
excluded; the tile grown by the job's overscan): the command writes that
region's pixels, and only those, to {output}.  For a whole frame {tile} is 0
and the region the whole frame.  A template naming {frame}, {output} or a
tile's placeholder runs once per frame (per tile of it); otherwise once per
task.  A template without {output} leaves no file: its frames are done when
the command exits 0.

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

PLACEHOLDERS = ("scene", "frame", "start", "end", "output", "tile", "x0", "y0", "x1", "y1", "width", "height")
REGION = ("x0", "y0", "x1", "y1")  #: a template that names these can render a tile


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


def draws_regions(template: str) -> bool:
    """True if the template names the region it is to draw, so it can render tiles."""
    return all("{" + k + "}" in template for k in REGION) and makes_files(template)


def per_frame(template: str) -> bool:
    """True if the template runs once per frame ({frame}, {output} or a tile's placeholder)."""
    return any("{" + k + "}" in template for k in ("frame", "output", "tile", *REGION))


def runs(task: TaskSpec) -> list[dict[str, Any]]:
    """The placeholder values of each run of ``task``'s template: one per frame (per
    tile of it, for a tiled job), or one for the whole task."""
    width = task.size[0] or task.rdata.get("width", "")
    height = task.size[1] or task.rdata.get("height", "")
    whole = [0, 0, width, height]
    if not task.tiles:
        return [{"frame": f, "output": task.frame_path(f), "tile": 0, "region": whole} for f in task.frames]
    return [{"frame": f, "output": task.tile_path(f, t.index), "tile": t.index, "region": list(t.drawn)}
            for f in task.frames for t in task.tiles]


def expand(template: str, scene: str, group: list[int], output: str,
           run: dict[str, Any] | None = None, size: tuple[Any, Any] = ("", "")) -> list[str]:
    """The argv of one run of the template over the frames of ``group``."""
    region = (run or {}).get("region") or [0, 0, size[0], size[1]]
    values = {"scene": scene, "frame": group[0], "start": group[0], "end": group[-1], "output": output,
              "tile": (run or {}).get("tile", 0), **dict(zip(REGION, region, strict=True)),
              "width": size[0], "height": size[1]}
    return shlex.split(template.format(**{k: shlex.quote(str(v)) for k, v in values.items()}))


def _size(task: TaskSpec) -> tuple[Any, Any]:
    return (task.size[0] or task.rdata.get("width", ""), task.size[1] or task.rdata.get("height", ""))


def direct_argv(template: str, task: TaskSpec) -> list[str] | None:
    """The one command line of ``task`` if it can run without the runner, else None."""
    frames = task.frames
    every = runs(task)
    if not frames or (len(every) > 1 and per_frame(template)):
        return None
    try:
        argv = expand(template, task.scene, frames, every[0]["output"], every[0], _size(task))
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
                "runs": runs(task), "size": list(_size(task))}
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
    each: list[dict[str, Any]] = spec["runs"]
    if not per_frame(template):
        each = [{**each[0], "frames": frames}]
    size = (spec["size"][0], spec["size"][1])
    for i, run in enumerate(each):
        group = run.get("frames") or [run["frame"]]
        argv = expand(template, spec["scene"], group, run["output"], run, size)
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
        print(f"PROGRESS {(i + 1) / len(each):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
