"""What this machine is: architecture and installed rendernode version."""

from __future__ import annotations

import platform
from importlib import metadata


def arch() -> str:
    """This machine's architecture as peers compare it."""
    return platform.machine() or "unknown"


def version() -> str:
    """The installed rendernode version."""
    try:
        return metadata.version("rendernode")
    except metadata.PackageNotFoundError:
        return "0+unknown"
