"""Whether this machine can run a netlab bed, and pytest helpers that skip if not.

Design: one cached probe runs the same ``unshare`` call the bed uses and builds
a veth, a bridge and an nft table inside it, so a skip reason names the exact
missing piece (not root, a missing tool, a kernel feature, a sandbox refusing
namespaces) instead of failing deep inside a test.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

__all__ = ["REQUIRED_TOOLS", "netns_available", "netns_unavailable_reason", "skip_unless_netns"]

# tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "tc": "iproute2",
    "nft": "nftables",
    "unshare": "util-linux",
    "mount": "mount",
}

_PROBE = """
set -e
ip link add name nlprobe0 type veth peer name nlprobe1
ip link add name nlprobebr type bridge
tc qdisc add dev nlprobe0 root handle 1: htb default 1
nft add table inet netlabprobe
"""


@functools.cache
def netns_unavailable_reason() -> str | None:
    """None if beds can be built here, else a human-readable reason."""
    if not sys.platform.startswith("linux"):
        return "netlab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "netlab needs root (network namespaces, veth, tc, nftables)"
    missing = [
        f"{tool} ({pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None
    ]
    if missing:
        return "netlab needs these tools (apt packages): " + ", ".join(missing)
    argv = [
        "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
        "--mount-proc", "--propagation", "private", "sh", "-c", _PROBE,
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "netlab probe (unshare + veth + bridge + htb + nft) timed out"
    if done.returncode != 0:
        return (
            f"namespaces not permitted here: {' '.join(argv[:9])} ... failed: {done.stderr.strip()}"
        )
    return None


def netns_available() -> bool:
    """True if a bed can be built on this machine."""
    return netns_unavailable_reason() is None


def skip_unless_netns() -> None:
    """``pytest.skip`` the calling test (or module, at import) if beds cannot be built."""
    import pytest  # lazily: the bed itself must not need pytest

    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
