"""Renderers this machine offers, detected at start: name -> version."""

from __future__ import annotations

import platform
from importlib import metadata


def detect() -> dict[str, str]:
    """The built-in renderer is always there; other backends add themselves here."""
    try:
        numpy_version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return {}
    return {"builtin": f"numpy-{numpy_version}"}


def arch() -> str:
    """This machine's architecture as peers compare it."""
    return platform.machine() or "unknown"


def version() -> str:
    """The installed rendernode version."""
    try:
        return metadata.version("rendernode")
    except metadata.PackageNotFoundError:
        return "0+unknown"
