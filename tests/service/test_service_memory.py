"""The daemon's malloc tuning (node/service/memory.py): large blocks freed
between small live objects go back to the system, and what the environment
sets is left alone."""

from __future__ import annotations

import subprocess
import sys

from node.service.memory import tune_malloc

#: frees a 4 MiB block (which raises glibc's dynamic mmap threshold to 4 MiB),
#: then allocates 48 MiB as 512 KiB blocks, each followed by a small block that
#: stays, frees the large ones and prints how many MiB of RSS that gave back
PROBE = """
import os, sys
from node.service.memory import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc({}) == ["M_MMAP_THRESHOLD", "M_ARENA_MAX"]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
block = bytearray(4 << 20)
del block
large, small = [], []
for _ in range(96):
    large.append(bytearray(512 << 10))
    small.append(bytearray(2000))
before = rss()
del large
print((before - rss()) / 2**20)
"""


def given_back(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_large_blocks_freed_between_live_small_ones_go_back_to_the_system_once_tuned() -> None:
    # untuned, glibc serves them from the heap after the 4 MiB block raised its threshold,
    # and the small blocks between them keep the heap from shrinking
    assert given_back("untuned") < 8
    assert given_back("tuned") > 40


def test_what_the_environment_sets_is_left_to_it() -> None:
    assert tune_malloc({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "4"}) == []
    assert tune_malloc({"MALLOC_ARENA_MAX": "4"}) == ["M_MMAP_THRESHOLD"]
