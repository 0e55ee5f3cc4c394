"""Renderer backends behind one interface (``base.Renderer``): builtin (numpy
ray tracer, always present), blender, povray, command.  ``detect`` asks each
backend whether it can run here and which version it is."""

from __future__ import annotations

import importlib
import logging

from .base import Renderer

log = logging.getLogger("rendernode.renderers")
BACKENDS = {
    "builtin": ("node.renderers.builtin", "BuiltinRenderer"),
    "blender": ("node.renderers.blender", "BlenderRenderer"),
    "povray": ("node.renderers.povray", "PovrayRenderer"),
    "command": ("node.renderers.command", "CommandRenderer"),
}


def load() -> tuple[dict[str, Renderer], dict[str, str]]:
    """Every backend present on this machine by name, and each one's version."""
    out: dict[str, Renderer] = {}
    versions: dict[str, str] = {}
    for name, (module, cls) in BACKENDS.items():
        try:
            backend: Renderer = getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError) as exc:
            log.debug("renderer %s unavailable: %s", name, exc)
            continue
        version = backend.detect()
        if version is not None:
            out[name] = backend
            versions[name] = version
    return out, versions
