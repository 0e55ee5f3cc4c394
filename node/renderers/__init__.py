"""Renderer backends behind one interface (``base.Renderer``): builtin (numpy
ray tracer, always present), blender, povray, command.  ``load`` asks each
backend whether it can run here and which version it is.

Asking Blender its version takes seconds, so versions of external programs
are cached in the state dir, keyed by the program's path, size and mtime:
an upgraded program is asked again.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil

from .base import Renderer

log = logging.getLogger("rendernode.renderers")
BACKENDS = {
    "builtin": ("node.renderers.builtin", "BuiltinRenderer"),
    "blender": ("node.renderers.blender", "BlenderRenderer"),
    "povray": ("node.renderers.povray", "PovrayRenderer"),
    "command": ("node.renderers.command", "CommandRenderer"),
}


def _program_key(backend: Renderer) -> str | None:
    """``path:size:mtime`` of the backend's program, "" if it has none, None if absent."""
    executable = getattr(backend, "executable", None)
    if not isinstance(executable, str):
        return ""
    path = shutil.which(executable)
    if path is None:
        return None
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def load(cache_file: str | None = None) -> tuple[dict[str, Renderer], dict[str, str]]:
    """Every backend present on this machine by name, and each one's version."""
    cache: dict[str, str] = {}
    if cache_file:
        try:
            with open(cache_file) as f:
                cache = {k: v for k, v in json.load(f).items() if isinstance(v, str)}
        except (OSError, ValueError, AttributeError):
            cache = {}
    out: dict[str, Renderer] = {}
    versions: dict[str, str] = {}
    for name, (module, cls) in BACKENDS.items():
        try:
            backend: Renderer = getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError) as exc:
            log.debug("renderer %s unavailable: %s", name, exc)
            continue
        key = _program_key(backend)
        if key is None:
            continue
        version = cache.get(key) if key else None
        if version is None:
            version = backend.detect()
            if key and version is not None:
                cache[key] = version
        if version is not None:
            out[name] = backend
            versions[name] = version
    if cache_file:
        try:
            tmp = cache_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, cache_file)
        except OSError as exc:
            log.debug("cannot cache renderer versions: %s", exc)
    return out, versions


def output_formats(renderer: str) -> list[str] | None:
    """File types (extensions) ``renderer`` writes its frames as; None for a
    renderer whose command writes whatever it writes (``command``)."""
    if renderer == "builtin":
        from .builtin import writable_formats

        return writable_formats()
    if renderer == "blender":
        from .blender import FORMATS as BLENDER

        return sorted(BLENDER)
    if renderer == "povray":
        from .povray import FORMATS as POVRAY

        return sorted(POVRAY)
    return None


#: scene file extension -> the renderer that renders it
SCENE_TYPES = {".json": "builtin", ".toml": "builtin", ".blend": "blender", ".pov": "povray",
               ".ini": "povray"}
_INI_KEY = re.compile(r"^\s*(Initial_Frame|Final_Frame|Subset_Start_Frame|Subset_End_Frame)\s*=\s*(-?\d+)",
                      re.IGNORECASE | re.MULTILINE)


def detect_renderer(scene: str, command: str | None = None) -> str:
    """The renderer a scene file asks for by its extension (``command`` when a
    command template is given; builtin for an unknown type)."""
    if command:
        return "command"
    return SCENE_TYPES.get(os.path.splitext(scene)[1].lower(), "builtin")


def scene_mismatch(scene: str, renderer: str) -> str:
    """"" if ``renderer`` can render ``scene``'s type, else why not, saying which can."""
    ext = os.path.splitext(scene)[1].lower()
    meant = SCENE_TYPES.get(ext)
    if renderer == "command" or meant is None or meant == renderer:
        return ""
    own = ", ".join(e for e, r in SCENE_TYPES.items() if r == renderer)
    return (f"the {renderer} renderer cannot render a {ext} scene ({scene}); it renders {own} "
            f"files, and {ext} scenes are for --renderer {meant}")


_INI_SIZE = re.compile(r"^\s*(Width|Height)\s*=\s*(\d+)", re.IGNORECASE | re.MULTILINE)


def povray_ini_size(path: str) -> tuple[int, int] | None:
    """Width and Height of a POV-Ray .ini file, None unless it names both."""
    with open(path, encoding="utf-8", errors="replace") as f:
        keys = {k.lower(): int(v) for k, v in _INI_SIZE.findall(f.read())}
    return (keys["width"], keys["height"]) if "width" in keys and "height" in keys else None


def frame_size(scene: str, renderer: str, rdata: dict[str, object]) -> tuple[int, int] | None:
    """The pixel size of the frames a job renders, from its rdata and the scene
    (a .blend's resolution and percentage, a builtin scene's resolution, a POV-Ray
    .ini's Width and Height); None when neither says.  Blocking (a .blend is read
    through Blender); OSError, ValueError (SceneError), RuntimeError."""
    def pair(a: str, b: str) -> tuple[int, int] | None:
        x, y = rdata.get(a), rdata.get(b)
        return (x, y) if isinstance(x, int) and isinstance(y, int) else None

    if renderer == "builtin":
        from .builtin import scene_size

        return scene_size(scene, rdata)
    if renderer == "blender":
        from .blender_deps import blend_info

        own = [int(v) for v in blend_info(scene)["resolution"]]
        x, y, pct = (int(v) if isinstance(v, int) else o for v, o in zip(
            (rdata.get("resolution_x"), rdata.get("resolution_y"), rdata.get("resolution_percentage")),
            own, strict=True))
        return max(1, x * pct // 100), max(1, y * pct // 100)
    if renderer == "povray":
        given = pair("resolution_x", "resolution_y")
        if given is None and scene.lower().endswith(".ini"):
            return povray_ini_size(scene)
        return given
    return pair("width", "height")


def povray_ini_frames(path: str) -> str:
    """Initial_Frame-Final_Frame of a POV-Ray .ini file ("1" when it animates nothing)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        keys = {k.lower(): int(v) for k, v in _INI_KEY.findall(f.read())}
    first = keys.get("subset_start_frame", keys.get("initial_frame", 1))
    last = keys.get("subset_end_frame", keys.get("final_frame", first))
    return f"{first}-{last}" if last > first else str(first)


def scene_frames(path: str, renderer: str) -> str:
    """The frame range a scene renders when the submit names none: the scene's own
    (builtin scenes, a .blend's frame_start..frame_end read through Blender, a
    POV-Ray .ini's Initial_Frame..Final_Frame), else "1".  Blocking."""
    try:
        if renderer == "builtin":
            from .builtin import scene_frames as builtin_frames

            return builtin_frames(path)
        if renderer == "blender":
            from .blender_deps import blend_frames

            return blend_frames(path)
        if renderer == "povray" and path.lower().endswith(".ini"):
            return povray_ini_frames(path)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        log.warning("cannot read the frame range of %s (%s); rendering frame 1", path, exc)
    return "1"
