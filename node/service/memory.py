"""The daemon's heap: glibc's malloc tuned so a long-running daemon gives
memory back.

glibc serves a large block (at least ``M_MMAP_THRESHOLD``, 128 KiB at first)
with a mapping of its own, returned to the system when freed, but it raises
that threshold to the size of every such block freed (up to 32 MiB): after
the first asset chunk (1 MiB) or frame passed through, chunks come from the
heap, where one small object allocated above them keeps their pages from
ever being returned.  The daemon moves many such blocks (chunks, frames,
tiles) between long-lived objects, and its RSS grew by about 45 KB a job for
that alone (``bench/memory.py``: 75.6 KB per job per node with assets, 29.3
with the threshold fixed).  Fixing the threshold turns the dynamic rise off;
``M_ARENA_MAX`` 2 keeps the trio worker threads from each growing an arena of
their own.

What the administrator set (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_ARENA_MAX``
in the unit's environment) is left as it is; elsewhere than glibc nothing
is done.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_MMAP_THRESHOLD = -3  #: mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  #: glibc's own default, kept from rising
ARENA_MAX = 2


def tune_malloc(env: Mapping[str, str] | None = None) -> list[str]:
    """Fix glibc's mmap threshold and cap its arenas, unless ``env`` (default:
    this process's) sets them; the parameters set, e.g. ``["M_MMAP_THRESHOLD"]``."""
    env = os.environ if env is None else env
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return []
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = []
    for name, variable, param, value in (
            ("M_MMAP_THRESHOLD", "MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("M_ARENA_MAX", "MALLOC_ARENA_MAX", M_ARENA_MAX, ARENA_MAX)):
        if variable not in env and mallopt(param, value) == 1:
            done.append(name)
    return done
