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
