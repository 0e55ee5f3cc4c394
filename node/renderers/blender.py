"""The ``blender`` backend: Blender in background mode.

One Blender process renders every frame of a task::

    blender -noaudio -b SCENE --python-exit-code 1 --python-expr SETUP_SCRIPT
            -o WORKDIR/frame_###### -F PNG -x 1 (-s A -e B -j 1 -a | -f 1,4,6..9)

The setup script (``SETUP_TEMPLATE``, given on the command line: the work
folder belongs to the render user, not to the daemon) applies the
job's rdata, puts Cycles on the CPU unless the job asks for the GPU, turns
denoising off everywhere (Debian's Blender has no OpenImageDenoise, and a render
that asks for it fails), points the output at ``frame_######`` so that frames
land at ``task.frame_path`` (one file per frame: no placeholders, no stereo
views), and lists missing images and libraries as warnings.
It records what it did in ``rendernode_setup.json``, which is how ``outcome``
tells a scene that did not load from a render that failed.

rdata keys: engine, device (CPU or GPU), compute_device_type (CUDA, OPTIX, HIP,
ONEAPI, METAL), samples, resolution_x, resolution_y, resolution_percentage,
threads.

A tiled job's task renders its tiles from the setup script itself (no ``-f``):
for each frame, each tile is a border render cropped to the border
(``use_border``, ``use_crop_to_border``) written to ``task.tile_path``, one
``bpy.ops.render.render`` after another in the one Blender process, with
``use_persistent_data`` so the scene is synced and its BVH built once for all
the tiles of a frame.  Blender turns a border into pixels by truncating
``border * size``; each border edge is put half a pixel inside its pixel
(``border_fraction``), so the crop is exactly the tile's region whatever the
float rounding.  Dither is off (its noise depends on the image buffer it is
added to), and PNG tiles are 8-bit: tiles assemble to the whole frame
exactly, with denoising off as always.
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import re
import shutil
import subprocess
from typing import Any

from protocol.enums import RenderResult
from protocol.frames import frame_runs

from .base import Outcome, TaskSpec, missing_frames

DETECT_TIMEOUT = 60.0  #: seconds ``blender --version`` may take on a busy machine
STATUS_NAME = "rendernode_setup.json"
#: TaskSpec.extension -> Blender's file format; Blender writes exactly these extensions
FORMATS = {"png": "PNG", "jpg": "JPEG", "exr": "OPEN_EXR", "tif": "TIFF", "bmp": "BMP",
           "tga": "TARGA"}
INT_KEYS = {"samples": (1, 1 << 24), "resolution_x": (1, 65536), "resolution_y": (1, 65536),
            "resolution_percentage": (1, 32767), "threads": (1, 1024)}
STR_KEYS = ("engine", "device", "compute_device_type")

SETUP_TEMPLATE = '''\
"""Written by rendernode: prepares the loaded scene for a farm render."""
import json
import os
import sys

import bpy

SETTINGS = json.loads(%(settings)s)
warnings = []


def fail(text):
    print("Error: rendernode: " + text, flush=True)
    sys.exit(1)


def warn(text):
    warnings.append(text)
    print("Warning: rendernode: " + text, flush=True)


def choose(obj, prop, value, what):
    try:
        setattr(obj, prop, value)
    except TypeError as exc:
        fail("cannot set %%s to %%r: %%s" %% (what, value, exc))


def use_gpu(scene):
    prefs = bpy.context.preferences.addons["cycles"].preferences
    kinds = [SETTINGS["compute_device_type"]] if SETTINGS.get("compute_device_type") else [
        "OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"]
    for kind in kinds:
        try:
            prefs.compute_device_type = kind
        except TypeError:
            continue
        getattr(prefs, "refresh_devices", prefs.get_devices)()
        devices = [d for d in prefs.devices if d.type == kind]
        if devices:
            for d in devices:
                d.use = True
            scene.cycles.device = "GPU"
            return
    fail("no GPU device for Cycles here (tried %%s)" %% ", ".join(kinds))


for problem in SETTINGS["errors"]:
    fail(problem)
scene = bpy.context.scene
render = scene.render
if SETTINGS.get("engine"):
    choose(render, "engine", SETTINGS["engine"], "the render engine")
for key in ("resolution_x", "resolution_y", "resolution_percentage"):
    if key in SETTINGS:
        setattr(render, key, SETTINGS[key])
if "threads" in SETTINGS:
    render.threads_mode = "FIXED"
    render.threads = SETTINGS["threads"]
for other in bpy.data.scenes:
    if not hasattr(other, "cycles"):
        continue
    other.cycles.use_denoising = False
    other.cycles.use_preview_denoising = False
    for layer in other.view_layers:
        if hasattr(layer, "cycles"):
            layer.cycles.use_denoising = False
    if SETTINGS.get("device", "CPU").upper() == "GPU":
        use_gpu(other)
    else:
        other.cycles.device = "CPU"
if "samples" in SETTINGS and hasattr(scene, "cycles"):
    scene.cycles.samples = SETTINGS["samples"]
if "samples" in SETTINGS and hasattr(scene, "eevee"):
    scene.eevee.taa_render_samples = SETTINGS["samples"]
render.filepath = SETTINGS["output"]
render.use_file_extension = True
render.use_overwrite = True
render.use_placeholder = False
render.use_multiview = False
choose(render.image_settings, "file_format", SETTINGS["file_format"], "the file format")

for lib in bpy.data.libraries:
    path = bpy.path.abspath(lib.filepath)
    if not os.path.exists(path):
        warn("linked library %%r not found: %%s" %% (lib.name, path))
for img in bpy.data.images:
    if img.packed_file or img.users == 0 or img.source not in ("FILE", "SEQUENCE", "TILED", "MOVIE"):
        continue
    path = bpy.path.abspath(img.filepath, library=img.library)
    paths = [path]
    if img.source == "TILED":
        paths = [path.replace("<UDIM>", str(t.number)) for t in img.tiles]
    for p in paths:
        if not os.path.exists(p):
            warn("image %%r not found: %%s" %% (img.name, p))
with open(%(status)s, "w") as out:
    json.dump({"warnings": warnings, "engine": render.engine}, out)
print("rendernode: setup done, engine " + render.engine, flush=True)

TILES = SETTINGS.get("tiles") or []
if TILES:
    render.dither_intensity = 0.0
    if SETTINGS["file_format"] == "PNG":
        render.image_settings.color_depth = "8"
    render.use_persistent_data = len(TILES) > 1
    render.use_border = True
    render.use_crop_to_border = True
    current = None
    for n, (frame, index, x0, x1, y0, y1, path) in enumerate(TILES):
        if frame != current:
            scene.frame_set(frame)
            current = frame
        render.border_min_x, render.border_max_x = x0, x1
        render.border_min_y, render.border_max_y = y0, y1
        render.filepath = path
        bpy.ops.render.render(write_still=True)
        print("RENDERNODE-TILE %%d %%d frame %%d tile %%d" %% (n + 1, len(TILES), frame, index), flush=True)
'''

_FRA = re.compile(r"^Fra:(\d+)\b")
_SAMPLE = re.compile(r"\b(?:Sample|Rendering)\s+(\d+)\s*/\s*(\d+)")
_TILE = re.compile(r"\bTile (\d+)/(\d+)")
_RENDERED = re.compile(r"\bRendered (\d+)/(\d+) Tiles")
_SAVED = re.compile(r"^Saved: '(.*)'")
_TILES_DONE = re.compile(r"^RENDERNODE-TILE (\d+) (\d+)")
_FRAME_FILE = re.compile(r"frame_(\d+)\.\w+$")
_WARNING = re.compile(r"^Warning: |Unable to load image|Cannot find lib|missing from '|not found"
                      r"|\bMissing\b")
_NOISE = re.compile(r"Not freed memory blocks|total unfreed memory")
_ERROR_WORD = re.compile(r"\b(?:Error|ERROR|error)\b")

#: (result, patterns) checked in order over the log tail; the first match decides
_ERRORS: list[tuple[RenderResult, re.Pattern[str]]] = [
    (RenderResult.RENDERRESULT_OUTOFMEMORY,
     re.compile(r"[Oo]ut of (?:GPU )?memory|MemoryError|Unable to allocate|Cannot allocate memory")),
    (RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
     re.compile(r"File format is not supported|Failed to read blend file|not a blend file"
                r"|Cannot read file|Unable to open .*\.blend|script failed|^Error: rendernode: "
                r"|Traceback|Cannot render, no camera")),
    (RenderResult.RENDERRESULT_SAVINGFAILED,
     re.compile(r"cannot save|Cannot open file for writing|Cannot write|[Pp]ermission denied"
                r"|No space left|Read-only file system|Unable to open")),
]


@functools.cache
def blender_version(executable: str) -> str | None:
    """``executable --version`` as "3.4.1", None if it is absent or does not answer."""
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=DETECT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^Blender (\d+\.\d+(?:\.\d+)?)", done.stdout, re.MULTILINE)
    return found.group(1) if found else None


def frame_args(frames: list[int]) -> list[str]:
    """Blender's frame options: ``-s A -e B -j 1 -a`` for one run, else ``-f 1,3..5``."""
    frames = sorted(set(frames))
    if frames and frames[-1] - frames[0] == len(frames) - 1 and len(frames) > 1:
        return ["-s", str(frames[0]), "-e", str(frames[-1]), "-j", "1", "-a"]
    return ["-f", ",".join(str(a) if a == b else f"{a}..{b}" for a, b in frame_runs(frames))]


def border_fraction(pixel: int, size: int) -> float:
    """A border edge at ``pixel`` as the fraction of ``size`` Blender truncates back
    to exactly ``pixel``: the edges are exact, the rest half a pixel in."""
    if pixel <= 0:
        return 0.0
    if pixel >= size:
        return 1.0
    return (pixel + 0.5) / size


def tile_borders(task: TaskSpec) -> list[list[Any]]:
    """[frame, tile, min_x, max_x, min_y, max_y, path] of each tile the task renders:
    the drawn region as Blender's borders (y counted from the bottom)."""
    width, height = task.size
    out: list[list[Any]] = []
    for frame in sorted(task.frames):
        for tile in task.tiles:
            x0, y0, x1, y1 = tile.drawn
            out.append([frame, tile.index, border_fraction(x0, width), border_fraction(x1, width),
                        border_fraction(height - y1, height), border_fraction(height - y0, height),
                        task.tile_path(frame, tile.index)])
    return out


def setup_settings(task: TaskSpec) -> dict[str, Any]:
    """The setup script's settings: valid rdata values, and what was wrong with the rest."""
    rdata = task.rdata
    errors: list[str] = []
    out: dict[str, Any] = {"output": os.path.join(task.workdir, "frame_######"),
                           "file_format": FORMATS.get(task.extension.lower(), "PNG")}
    if task.extension.lower() not in FORMATS:
        errors.append(f"frames of type {task.extension!r} are not supported; "
                      f"one of {', '.join(FORMATS)}")
    for key, (lo, hi) in INT_KEYS.items():
        value = rdata.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            out[key] = value
        else:
            errors.append(f"rdata {key} must be a whole number from {lo} to {hi}, not {value!r}")
    for key in STR_KEYS:
        value = rdata.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            out[key] = value.upper()
        else:
            errors.append(f"rdata {key} must be a string, not {value!r}")
    if out.get("device", "CPU") not in ("CPU", "GPU"):
        errors.append(f"rdata device must be CPU or GPU, not {rdata.get('device')!r}")
    if task.tiles:
        out["tiles"] = tile_borders(task)
    out["errors"] = errors
    return out


def setup_script(task: TaskSpec) -> str:
    """The text of the setup script for ``task``."""
    return SETUP_TEMPLATE % {"settings": repr(json.dumps(setup_settings(task))),
                             "status": repr(os.path.join(task.workdir, STATUS_NAME))}


def _frame_fraction(line: str) -> float | None:
    """How far the current frame is, from a status line (never 1: only Saved finishes it)."""
    sample = _SAMPLE.search(line)
    rendered = _RENDERED.search(line)
    tile = _TILE.search(line)
    done: float | None = None
    if rendered and int(rendered.group(2)) > 0:
        done = int(rendered.group(1)) / int(rendered.group(2))
    elif sample and int(sample.group(2)) > 0:
        done = int(sample.group(1)) / int(sample.group(2))
        if tile and int(tile.group(2)) > 0:
            done = (int(tile.group(1)) - 1 + done) / int(tile.group(2))
    elif line.endswith("| Finished"):
        done = 1.0
    return None if done is None else max(0.0, min(0.99, done))


def _last_error(log_tail: list[str]) -> str:
    """The most telling line of the tail: the last error, else the last line."""
    lines = [ln for ln in log_tail if ln.strip() and not _NOISE.search(ln)]
    for line in reversed(lines):
        if _ERROR_WORD.search(line):
            return line
    return lines[-1] if lines else ""


def _warnings(log_tail: list[str], task: TaskSpec) -> tuple[str, ...]:
    """Missing images and libraries: from the setup status file, then from the log."""
    found: list[str] = []
    try:
        with open(os.path.join(task.workdir, STATUS_NAME), encoding="utf-8") as f:
            status = json.load(f)
        found += [f"Warning: rendernode: {w}" for w in status.get("warnings", [])]
    except (OSError, ValueError):
        pass
    found += [ln for ln in log_tail if _WARNING.search(ln) and not ln.startswith("Error:")]
    return tuple(dict.fromkeys(found))


class BlenderRenderer:
    """Renders .blend scenes with Blender in background mode."""

    name = "blender"

    def __init__(self, executable: str = "blender") -> None:
        self.executable = executable

    def detect(self) -> str | None:
        """Blender's version, e.g. "3.4.1" (asked once per executable), or None."""
        return blender_version(self.executable)

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """Blender with the setup script on its command line; cwd is the scene's folder."""
        fmt = FORMATS.get(task.extension.lower(), "PNG")
        argv = [shutil.which(self.executable) or self.executable, "-noaudio", "-b", task.scene,
                "--python-exit-code", "1", "--python-expr", setup_script(task)]
        if not task.tiles:  # the setup script renders a tiled task's tiles itself
            argv += ["-o", os.path.join(task.workdir, "frame_######"), "-F", fmt, "-x", "1",
                     *frame_args(task.frames)]
        cwd = os.path.dirname(task.scene)
        return argv, cwd if os.path.isdir(cwd) else task.workdir

    def progress(self, line: str, task: TaskSpec) -> float | None:
        """Frames saved plus the current frame's samples (or tiles), over the task's frames."""
        frames = sorted(task.frames)
        if not frames:
            return None
        tiles = _TILES_DONE.match(line)
        if tiles:
            return int(tiles.group(1)) / max(1, int(tiles.group(2)))
        if task.tiles:
            return None
        saved = _SAVED.match(line)
        if saved:
            name = _FRAME_FILE.search(saved.group(1))
            if name is None:
                return None
            index = bisect.bisect_left(frames, int(name.group(1)))
            return (index + 1) / len(frames) if index < len(frames) else None
        fra = _FRA.match(line)
        if fra is None:
            return None
        frame = int(fra.group(1))
        index = bisect.bisect_left(frames, frame)
        if index >= len(frames) or frames[index] != frame:
            return None
        within = _frame_fraction(line)
        return None if within is None else (index + within) / len(frames)

    def outcome(self, returncode: int, log_tail: list[str], task: TaskSpec) -> Outcome:
        """Map Blender's exit status and messages to a RENDERRESULT_*."""
        warnings = _warnings(log_tail, task)
        if not os.path.isfile(task.scene):
            return Outcome(RenderResult.RENDERRESULT_PROJECTNOTFOUND,
                           f"the scene {task.scene} does not exist", warnings)
        message = _last_error(log_tail)
        if returncode != 0:
            errors = [ln for ln in log_tail if not ln.startswith("Warning:")]
            for result, pattern in _ERRORS:
                hits = [ln for ln in errors if pattern.search(ln)]
                if hits:
                    return Outcome(result, hits[-1], warnings)
            if not os.path.exists(os.path.join(task.workdir, STATUS_NAME)):
                return Outcome(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                               f"blender could not load the scene (status {returncode}): {message}",
                               warnings)
            return Outcome(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                           f"blender exited with status {returncode}: {message}", warnings)
        missing = missing_frames(task)
        if missing:
            return Outcome(RenderResult.RENDERRESULT_SAVINGFAILED,
                           f"blender wrote no file for frames {missing}: {message}", warnings)
        return Outcome(RenderResult.RENDERRESULT_OK, "", warnings)
