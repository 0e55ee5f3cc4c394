"""The files a .blend needs, asked of Blender itself.

Blender loads the scene with every linked library, and the libraries those
link in turn (it follows them recursively and resolves each relative ``//``
path against the file that holds it); ``bpy.utils.blend_paths(absolute=True)``
then names every external file: images, libraries, sounds, fonts, caches.
Packed files are inside the .blend and are not listed.  Image sequences, UDIM
tiles and volume or cache sequences name one file in Blender; they are
expanded here to the files on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

DEPS_TIMEOUT = 300.0  #: seconds Blender may take to load a scene and list its files
INFO_CACHE = 64  #: versions of .blend files whose listing is kept
_MARK = "RENDERNODE-DEPS "  #: starts the line of LIST_SCRIPT's answer

LIST_SCRIPT = '''\
import json
import bpy

paths = bpy.utils.blend_paths(absolute=True, packed=False, local=False)
sequences = []
tiled = []
for img in bpy.data.images:
    path = bpy.path.abspath(img.filepath, library=img.library)
    if img.packed_file:
        continue
    if img.source == "SEQUENCE":
        sequences.append(path)
    elif img.source == "TILED":
        tiled.append(path)
for group in (bpy.data.volumes, bpy.data.cache_files):
    for item in group:
        if getattr(item, "is_sequence", False):
            sequences.append(bpy.path.abspath(item.filepath, library=item.library))
for clip in bpy.data.movieclips:
    if clip.source == "SEQUENCE":
        sequences.append(bpy.path.abspath(clip.filepath, library=clip.library))
scene = bpy.context.scene
frames = [scene.frame_start, scene.frame_end, scene.frame_step]
render = scene.render
resolution = [render.resolution_x, render.resolution_y, render.resolution_percentage]
denoise = []
if hasattr(scene, "cycles"):
    if scene.cycles.use_denoising:
        denoise.append("render")
    denoise += ["view layer " + layer.name for layer in scene.view_layers
                if hasattr(layer, "cycles") and layer.cycles.use_denoising and scene.cycles.use_denoising]
adaptive = bool(hasattr(scene, "cycles") and render.engine == "CYCLES" and scene.cycles.use_adaptive_sampling)
compositor = []
if scene.use_nodes and scene.node_tree is not None and render.use_compositing:
    compositor = sorted({node.bl_idname for node in scene.node_tree.nodes if not node.mute})
print("RENDERNODE-DEPS " + json.dumps({"paths": paths, "sequences": sequences, "tiled": tiled,
                                      "frames": frames, "resolution": resolution,
                                      "denoise": denoise, "adaptive": adaptive,
                                      "compositor": compositor}), flush=True)
'''


_INFO: dict[tuple[str, int, int, str], dict[str, Any]] = {}


class BlendDepsError(ValueError):
    """Blender could not list a scene's files; the message says why."""


def expand_sequence(path: str) -> list[str]:
    """Every file on disk in the numbered sequence ``path`` belongs to (``path`` if none).

    Blender numbers a sequence by the last run of digits in the file name and
    pads frames to at least that many digits.
    """
    folder, name = os.path.split(path)
    runs = list(re.finditer(r"\d+", name))
    if not runs:
        return [path]
    run = runs[-1]
    head, tail = name[:run.start()], name[run.end():]
    pattern = re.compile(re.escape(head) + rf"\d{{{len(run.group())},}}" + re.escape(tail) + "$")
    return _matching(folder, pattern) or [path]


def expand_tiles(path: str) -> list[str]:
    """The files of a UDIM image: ``<UDIM>`` is four digits, ``<UVTILE>`` is uN_vM."""
    folder, name = os.path.split(path)
    if "<UDIM>" not in name and "<UVTILE>" not in name:
        return [path]
    pattern = re.escape(name).replace(re.escape("<UDIM>"), r"\d{4}")
    pattern = pattern.replace(re.escape("<UVTILE>"), r"u\d+_v\d+")
    return _matching(folder, re.compile(pattern + "$")) or [path]


def _matching(folder: str, pattern: re.Pattern[str]) -> list[str]:
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return [os.path.join(folder, n) for n in sorted(names) if pattern.match(n)]


def blend_info(path: str, executable: str = "blender") -> dict[str, Any]:
    """What Blender says of ``path``: its files (``paths``, ``sequences``, ``tiled``)
    and the scene's ``frames`` [start, end, step].  Asked once per version of the
    file (path, size, mtime): a submit reads both the frame range and the files."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError:
        raise BlendDepsError(f"{path} does not exist") from None
    key = (path, st.st_size, st.st_mtime_ns, executable)
    info = _INFO.get(key)
    if info is None:
        info = _ask_blender(path, executable)
        _INFO[key] = info
        while len(_INFO) > INFO_CACHE:
            _INFO.pop(next(iter(_INFO)))
    return info


def blend_frames(path: str, executable: str = "blender") -> str:
    """The scene's own frame range, e.g. ``"1-250"`` (``"1-250x2"`` with a step)."""
    start, end, step = (int(v) for v in blend_info(path, executable)["frames"])
    if end <= start:
        return str(start)
    return f"{start}-{end}" + (f"x{step}" if step > 1 else "")


#: compositor nodes whose output pixel depends on other pixels than its own
NEIGHBOUR_NODES = {
    "CompositorNodeBlur", "CompositorNodeBokehBlur", "CompositorNodeDBlur", "CompositorNodeDefocus",
    "CompositorNodeDenoise", "CompositorNodeDespeckle", "CompositorNodeDilateErode",
    "CompositorNodeFilter", "CompositorNodeGlare", "CompositorNodeInpaint", "CompositorNodeLensdist",
    "CompositorNodeMovieDistortion", "CompositorNodeSunBeams", "CompositorNodeVecBlur",
    "CompositorNodePixelate", "CompositorNodeTransform", "CompositorNodeTranslate",
    "CompositorNodeRotate", "CompositorNodeScale", "CompositorNodeFlip", "CompositorNodeCrop",
    "CompositorNodeDisplace", "CompositorNodeMapUV", "CompositorNodeKeying", "CompositorNodeNormalize",
    "CompositorNodeLevels", "CompositorNodeAntiAliasing", "CompositorNodeCornerPin",
    "CompositorNodePlaneTrackDeform", "CompositorNodeStabilize",
}


@dataclass(frozen=True)
class Neighbours:
    """What in a scene reads neighbouring pixels (``blend_neighbours``)."""

    denoise: list[str]  #: where denoising is on
    adaptive: bool  #: Cycles' adaptive sampling: a pixel stops sampling when it and its neighbours converged
    nodes: list[str]  #: compositor nodes (by type, "CompositorNode" left off) that read neighbours


def blend_neighbours(path: str, executable: str = "blender") -> Neighbours:
    """What in the scene reads neighbouring pixels."""
    info = blend_info(path, executable)
    nodes = [n.removeprefix("CompositorNode") for n in info.get("compositor", []) if n in NEIGHBOUR_NODES]
    return Neighbours(list(info.get("denoise", [])), bool(info.get("adaptive")), nodes)


def _ask_blender(path: str, executable: str) -> dict[str, Any]:
    blender = shutil.which(executable)
    if blender is None:
        raise BlendDepsError(f"{executable} is not installed")
    if not os.path.isfile(path):
        raise BlendDepsError(f"{path} does not exist")
    argv = [blender, "-noaudio", "-b", path, "--python-exit-code", "1",
            "--python-expr", LIST_SCRIPT]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=DEPS_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BlendDepsError(f"blender took over {DEPS_TIMEOUT:.0f} s to list {path}") from None
    except OSError as exc:
        raise BlendDepsError(f"cannot run {blender}: {exc}") from None
    found = [ln for ln in done.stdout.splitlines() if ln.startswith(_MARK)]
    if done.returncode != 0 or not found:
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if re.search(r"\b[Ee]rror\b", ln)]
        raise BlendDepsError(f"blender could not list the files of {path}: "
                             f"{lines[-1] if lines else f'status {done.returncode}'}")
    listing: dict[str, Any] = json.loads(found[-1][len(_MARK):])
    return listing


def blend_dependencies(path: str, executable: str = "blender") -> list[str]:
    """Absolute paths of every external file ``path`` needs, sorted; missing ones too.

    Runs Blender (once per version of the file); BlendDepsError if it is absent,
    cannot read the file or does not answer within DEPS_TIMEOUT.
    """
    path = os.path.abspath(path)
    listing = blend_info(path, executable)
    sequences = {os.path.normpath(p) for p in listing["sequences"]}
    tiled = {os.path.normpath(p) for p in listing["tiled"]}
    out: set[str] = set()
    for raw in listing["paths"]:
        if raw.startswith("<"):  # <builtin> fonts
            continue
        dep = os.path.normpath(os.path.join(os.path.dirname(path), raw))
        if dep in tiled:
            out.update(expand_tiles(dep))
        elif dep in sequences:
            out.update(expand_sequence(dep))
        else:
            out.add(dep)
    return sorted(out)
