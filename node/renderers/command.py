"""The ``command`` backend: a command template run per frame (or once per task).

The job's rdata holds ``command``, e.g. ``"convert {scene} -frame {frame} {output}"``.
Placeholders: {scene} {frame} {start} {end} {output}.  A template naming
{frame} or {output} runs once per frame; otherwise once per task.  A template
without {output} leaves no file: its frames are done when the command exits 0.

The worker runs ``python -m node.renderers.command SPEC_JSON`` so that every
backend is one subprocess that prints ``PROGRESS f`` lines.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

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


class CommandRenderer:
    """Runs a command template."""

    name = "command"

    def detect(self) -> str | None:
        """Always available: it runs whatever the job names."""
        return "1"

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """A runner subprocess that expands the template per frame."""
        template = str(task.rdata.get("command", ""))
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
    per_frame = "{frame}" in template or "{output}" in template
    runs = [[f] for f in frames] if per_frame else [frames]
    for i, group in enumerate(runs):
        values = {"scene": spec["scene"], "frame": group[0], "start": group[0], "end": group[-1],
                  "output": spec["outputs"][str(group[0])]}
        argv = shlex.split(template.format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
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
