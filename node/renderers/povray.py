"""The ``povray`` backend: POV-Ray 3.7 through a small runner.

POV-Ray names animation frames by the final frame number's width
(``frame_07.png`` when the last frame is 12, ``frame_.png`` for a lone frame)
and renders one arithmetic run of frames per invocation.  So the worker runs
``python -m node.renderers.povray SPEC_JSON``, which for each run of the task's
frames calls::

    povray +I"SCENE" +L"SCENE_DIR" +O"WORKDIR/.povray-N/frame_" +FN -D +KFI.. +KFF.. +KI.. +KF..
           +SF.. +EF.. [+STP..] [+W.. +H.. +A.. +Q.. +WT..]

in the scene's folder, moves each image to ``task.frame_path(frame)``, turns
POV-Ray's ``\\r`` pixel counts into ``PROGRESS f`` lines and passes every other
line through, so that ``outcome`` reads POV-Ray's own errors.

The clock: ``+KFI/+KFF`` default to the task's first and last frames, which is
POV-Ray's own behaviour for a job rendered as one task.  A job split into
several tasks sets rdata initial_frame/final_frame (and initial_clock/
final_clock, default 0 and 1) to the whole animation so that a frame's clock
does not depend on which task renders it; ``frame_number`` is always right.  A
scene given as an .ini file keeps its own animation settings.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from protocol.enums import RenderResult

from .base import Outcome, TaskSpec, missing_frames, progress_line

DETECT_TIMEOUT = 30.0  #: seconds ``povray --version`` may take
MAX_WARNINGS = 8  #: warnings the runner repeats at its end
#: TaskSpec.extension -> POV-Ray's output type option
FORMATS = {"png": "+FN", "tga": "+FT", "ppm": "+FP", "jpg": "+FJ", "exr": "+FE", "hdr": "+FH"}
INT_KEYS = {"resolution_x": (1, 65536), "resolution_y": (1, 65536), "initial_frame": (0, 10**7),
            "final_frame": (0, 10**7), "quality": (0, 11), "threads": (1, 1024),
            "antialias_method": (1, 3), "antialias_depth": (1, 9)}
FLOAT_KEYS = ("initial_clock", "final_clock", "antialias", "jitter")
BLOCK = 32  #: POV-Ray's render block size (its default), which a tile's region is grown to
_CONF_NOISE = re.compile(r"^povray: cannot open the (?:user|system) configuration file")
_PIXELS = re.compile(r"Rendered (\d+) of (\d+) pixels")
_FRAME = re.compile(r"^Rendering frame (\d+) of (\d+)")
_WARNING = re.compile(r"\bWarning\b(?! Stream)")
_WRAPPED = re.compile(r"^ \S")  # POV-Ray wraps messages at 80 columns onto lines like this
_IMAGE = re.compile(r"^frame_(\d*)\.\w+$")

#: (result, pattern) checked in order over the log tail; the first match decides
_ERRORS: list[tuple[RenderResult, re.Pattern[str]]] = [
    (RenderResult.RENDERRESULT_PROJECTNOTFOUND,
     re.compile(r"Cannot open input file|^ERROR scene not found")),
    (RenderResult.RENDERRESULT_OUTOFMEMORY, re.compile(r"[Oo]ut of memory|bad_alloc")),
    (RenderResult.RENDERRESULT_ASSETMISSING,
     re.compile(r"Cannot open include file|Cannot find image file|Cannot open file"
                r"|Cannot find file|Cannot open (?:image|font|height field)")),
    (RenderResult.RENDERRESULT_SAVINGFAILED,
     re.compile(r"^ERROR (?:cannot (?:save|create|move)|frames of type)|Cannot create|"
                r"output file|Cannot write|[Pp]ermission denied|No space left")),
    (RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
     re.compile(r"Parse Error|Fatal error|Failed to parse|Problem with option|Render failed"
                r"|^ERROR ")),
]


class PovrayError(Exception):
    """The runner could not render a run of frames; the message says why."""


@functools.cache
def povray_version(executable: str) -> str | None:
    """``povray --version`` (printed on stderr) as "3.7.0.10", None if absent."""
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=DETECT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^POV-Ray (\d+(?:\.\d+)+)", done.stderr + done.stdout, re.MULTILINE)
    return found.group(1) if found else None


def frame_runs(frames: list[int]) -> list[tuple[int, int, int]]:
    """(first, last, step) runs that together render exactly ``frames``."""
    frames = sorted(set(frames))
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(frames):
        if i + 1 == len(frames):
            runs.append((frames[i], frames[i], 1))
            break
        step = frames[i + 1] - frames[i]
        j = i + 1
        while j + 1 < len(frames) and frames[j + 1] - frames[j] == step:
            j += 1
        runs.append((frames[i], frames[j], step))
        i = j + 1
    return runs


def option_args(task: TaskSpec) -> tuple[list[str], list[str]]:
    """POV-Ray options from the task's rdata, and what was wrong with the rest."""
    rdata = task.rdata
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, (lo, hi) in INT_KEYS.items():
        value = rdata.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            values[key] = value
        else:
            errors.append(f"rdata {key} must be a whole number from {lo} to {hi}, not {value!r}")
    for key in FLOAT_KEYS:
        value = rdata.get(key)
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)
        else:
            errors.append(f"rdata {key} must be a number, not {value!r}")
    args = [FORMATS.get(task.extension.lower(), "+FN"), "-D"]
    if task.extension.lower() not in FORMATS:
        errors.append(f"frames of type {task.extension!r} are not supported; "
                      f"one of {', '.join(FORMATS)}")
    animated = not task.scene.lower().endswith(".ini")
    if animated or "initial_frame" in values or "final_frame" in values:
        args += [f"+KFI{values.get('initial_frame', min(task.frames))}",
                 f"+KFF{values.get('final_frame', max(task.frames))}"]
    if animated or "initial_clock" in values or "final_clock" in values:
        args += [f"+KI{values.get('initial_clock', 0.0)}", f"+KF{values.get('final_clock', 1.0)}"]
    for key, flag in (("resolution_x", "+W"), ("resolution_y", "+H"), ("antialias", "+A"),
                      ("antialias_method", "+AM"), ("antialias_depth", "+R"),
                      ("quality", "+Q"), ("threads", "+WT")):
        if key in values:
            args.append(f"{flag}{values[key]}")
    if "jitter" in values:
        args.append(f"+J{values['jitter']}" if values["jitter"] > 0 else "-J")
    if task.tiles:
        args.append(f"+BS{BLOCK}")
    return args, errors


def block_region(region: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``region`` grown to whole render blocks of ``BLOCK`` pixels (within the frame).

    POV-Ray renders in blocks from the image's corner (or the partial render's
    start), and anti-aliasing method 1 compares a pixel with its neighbours
    within its block: a region that starts and ends on the whole frame's block
    edges renders the very pixels of the whole frame (measured: seams of up to
    34 levels at tile edges otherwise, none with block-aligned regions)."""
    x0, y0, x1, y1 = region
    width, height = size
    return (x0 // BLOCK * BLOCK, y0 // BLOCK * BLOCK,
            min(width, -(-x1 // BLOCK) * BLOCK), min(height, -(-y1 // BLOCK) * BLOCK))


def region_args(block: tuple[int, int, int, int]) -> list[str]:
    """The partial-render options for ``block`` (POV-Ray counts pixels from 1, ends included)."""
    x0, y0, x1, y1 = block
    return [f"+SC{x0 + 1}", f"+EC{x1}", f"+SR{y0 + 1}", f"+ER{y1}"]


def quoted(path: str) -> str:
    """A path as a POV-Ray option value: in double quotes, so spaces survive."""
    return f'"{path}"'


def run_args(first: int, last: int, step: int) -> list[str]:
    """The subset options that render ``first..last`` every ``step`` frames."""
    return [f"+SF{first}", f"+EF{last}"] + ([f"+STP{step}"] if step > 1 else [])


class PovrayRenderer:
    """Renders .pov (or .ini) scenes with POV-Ray."""

    name = "povray"

    def __init__(self, executable: str = "povray") -> None:
        self.executable = executable

    def detect(self) -> str | None:
        """POV-Ray's version, e.g. "3.7.0.10" (asked once per executable), or None."""
        return povray_version(self.executable)

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """The runner subprocess, in the scene's folder."""
        options, errors = option_args(task)
        bad = [path for path in (task.scene, task.workdir) if '"' in path]
        if bad:
            errors.append(f"POV-Ray cannot take a path with a double quote in it: {bad[0]}")
        is_ini = task.scene.lower().endswith(".ini")
        scene_arg = quoted(task.scene) if is_ini else f"+I{quoted(task.scene)}"
        spec = {"povray": shutil.which(self.executable) or self.executable, "scene": task.scene,
                "argv": [scene_arg, f"+L{quoted(os.path.dirname(task.scene))}", *options],
                "runs": frame_runs(task.frames), "workdir": task.workdir, "errors": errors,
                "outputs": {str(f): task.frame_path(f) for f in task.frames},
                "tiles": [{"region": list(t.region), "options": region_args(block_region(t.drawn, task.size)),
                           "outputs": {str(f): task.tile_path(f, t.index) for f in task.frames}}
                          for t in task.tiles]}
        cwd = os.path.dirname(task.scene)
        return ([sys.executable, "-m", "node.renderers.povray", json.dumps(spec)],
                cwd if os.path.isdir(cwd) else task.workdir)

    def progress(self, line: str, task: TaskSpec) -> float | None:
        """The runner's ``PROGRESS 0.5`` lines."""
        return progress_line(line)

    def outcome(self, returncode: int, log_tail: list[str], task: TaskSpec) -> Outcome:
        """Map the runner's exit status and POV-Ray's messages to a RENDERRESULT_*."""
        lines = [ln for ln in log_tail if not _CONF_NOISE.match(ln)]
        warnings = tuple(dict.fromkeys(ln.removeprefix("WARNING ") for ln in lines
                                       if _WARNING.search(ln) or ln.startswith("WARNING ")))
        if not os.path.isfile(task.scene):
            return Outcome(RenderResult.RENDERRESULT_PROJECTNOTFOUND,
                           f"the scene {task.scene} does not exist", warnings)
        if returncode != 0:
            for result, pattern in _ERRORS:
                hits = [i for i, ln in enumerate(lines) if pattern.search(ln)]
                if hits:
                    return Outcome(result, lines[hits[0]], warnings)
            last = lines[-1] if lines else ""
            return Outcome(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                           f"povray exited with status {returncode}: {last}", warnings)
        missing = missing_frames(task)
        if missing:
            return Outcome(RenderResult.RENDERRESULT_SAVINGFAILED,
                           f"povray wrote no image for frames {missing}", warnings)
        return Outcome(RenderResult.RENDERRESULT_OK, "", warnings)


def _collect(folder: str, first: int, last: int, outputs: dict[str, str]) -> None:
    """Move POV-Ray's images in ``folder`` to their frame paths."""
    for name in os.listdir(folder):
        named = _IMAGE.match(name)
        if named is None:
            continue
        frame = int(named.group(1)) if named.group(1) else first if first == last else None
        if frame is None or str(frame) not in outputs:
            continue
        try:
            os.replace(os.path.join(folder, name), outputs[str(frame)])
        except OSError as exc:
            raise PovrayError(f"cannot move {name} to {outputs[str(frame)]}: {exc}") from None


def _render_run(povray: str, argv: list[str], done: int, total: int, warnings: list[str]) -> int:
    """One POV-Ray invocation: messages pass through (wrapped ones joined) and
    warnings are kept, pixel counts become PROGRESS lines."""
    proc = subprocess.Popen([povray, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen: set[int] = set()
    pending = b""
    held: str | None = None
    shown = -1.0

    def emit(line: str | None) -> None:
        nonlocal held
        if held is not None and line is not None and _WRAPPED.match(line):
            held += line
            return
        if held is not None and not _CONF_NOISE.match(held):
            print(held, flush=True)
            if _WARNING.search(held):
                warnings.append(held)
        held = line

    while chunk := os.read(proc.stdout.fileno(), 65536):
        parts = re.split(rb"[\r\n]", pending + chunk)
        pending = parts.pop()
        for raw in parts:
            line = raw.decode("utf-8", "replace").rstrip()
            frame, pixels = _FRAME.match(line), _PIXELS.search(line)
            if frame:
                seen.add(int(frame.group(1)))
            if pixels and int(pixels.group(2)) > 0:
                within = int(pixels.group(1)) / int(pixels.group(2))
                fraction = min(1.0, (done + max(0, len(seen) - 1) + within) / total)
                if fraction - shown >= 0.005:
                    print(f"PROGRESS {fraction:.4f}", flush=True)
                    shown = fraction
            elif line:
                emit(line)
    if pending.strip():
        emit(pending.decode("utf-8", "replace").rstrip())
    emit(None)
    proc.stdout.close()
    return proc.wait()


def main() -> int:
    """Render each run of frames, move the images into place, print progress; repeat
    POV-Ray's warnings at the end, where the worker's log tail keeps them."""
    warnings: list[str] = []
    try:
        return _render_all(json.loads(sys.argv[1]), warnings)
    finally:
        for warning in list(dict.fromkeys(warnings))[:MAX_WARNINGS]:
            print(f"WARNING {warning}", flush=True)


def _render_all(spec: dict[str, Any], warnings: list[str]) -> int:
    for problem in spec["errors"]:
        print(f"ERROR {problem}", flush=True)
    if spec["errors"]:
        return 2
    if not os.path.isfile(spec["scene"]):
        print(f"ERROR scene not found: {spec['scene']}", flush=True)
        return 2
    runs: list[list[int]] = spec["runs"]
    tiles: list[dict[str, Any]] = spec.get("tiles") or [{}]  # {}: whole frames
    total = sum((last - first) // step + 1 for first, last, step in runs) * len(tiles)
    done = 0
    for n, (first, last, step) in enumerate(runs):
        for k, tile in enumerate(tiles):
            folder = os.path.join(spec["workdir"], f".povray-{n}-{k}")
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                print(f"ERROR cannot create the output folder {folder}: {exc}", flush=True)
                return 3
            argv = [*spec["argv"], f"+O{quoted(os.path.join(folder, 'frame_'))}",
                    *run_args(first, last, step), *tile.get("options", [])]
            wholes = {f: os.path.join(folder, f"whole_{f}{os.path.splitext(p)[1]}")
                      for f, p in spec["outputs"].items()}
            try:
                code = _render_run(spec["povray"], argv, done, total, warnings)
                _collect(folder, first, last, wholes if tile else spec["outputs"])
                if tile and code == 0:
                    _cut(wholes, tile)
            except OSError as exc:
                print(f"ERROR cannot run {spec['povray']}: {exc}", flush=True)
                return 127
            except PovrayError as exc:
                print(f"ERROR {exc}", flush=True)
                return 3
            shutil.rmtree(folder, ignore_errors=True)
            if code != 0:
                print(f"ERROR povray exited with status {code}", flush=True)
                return code
            done += (last - first) // step + 1
            print(f"PROGRESS {done / total:.4f}", flush=True)
    return 0


def _cut(wholes: dict[str, str], tile: dict[str, Any]) -> None:
    """Cut the tile out of each full-size image POV-Ray wrote (empty outside the
    rendered block) into the tile's file."""
    from node.image import Exact, ImageError, encode_exact, read_exact

    x0, y0, x1, y1 = tile["region"]
    for frame, target in tile["outputs"].items():
        source = wholes.get(frame)
        if source is None or not os.path.exists(source):
            continue
        try:
            image = read_exact(source)
            cut = Exact(image.pixels[y0:y1, x0:x1].copy(), image.channels, image.half)
            data = encode_exact(cut, os.path.splitext(target)[1])
            with open(target, "wb") as f:
                f.write(data)
        except (OSError, ImageError) as exc:
            raise PovrayError(f"cannot cut the tile out of {source}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
