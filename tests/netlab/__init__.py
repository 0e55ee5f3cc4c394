"""netlab: a multi-host network test bed built from Linux network namespaces.

Design: a :class:`Bed` is a disposable sandbox (its own mount, network and PID
namespaces, created by ``unshare`` with a supervisor as PID 1) holding N
:class:`Host` network namespaces joined by one bridge.  Processes started in
hosts are :class:`Proc` objects with their real (root-namespace) PID.  When the
bed closes, or the process owning it dies for any reason, the kernel kills
everything inside and all namespaces, the bridge and the rules disappear.

Needs root and the Debian packages iproute2, util-linux, mount and nftables.
Typical use::

    from tests.netlab import Bed, skip_unless_netns

    skip_unless_netns()
    with Bed(3) as bed:
        a, b, c = bed.hosts
        a.cap("10mbit"); b.loss(5); bed.partition([a], [c])
        d = b.start_daemon(token="t0"); b.wait_daemon_socket(); print(b.cli("status"))

Pytest fixtures live in :mod:`netlab.fixtures` (not imported here, so the bed
works without pytest); traffic helpers in :mod:`netlab.probe`.
"""

from __future__ import annotations

from . import probe
from .bed import BRIDGE, Bed
from .host import CHECKOUT_ROOT, DAEMON_PORT, CliError, Host, python_env
from .proc import NetlabError, Proc
from .shaping import parse_rate
from .skip import REQUIRED_TOOLS, netns_available, netns_unavailable_reason, skip_unless_netns

__all__ = [
    "BRIDGE",
    "CHECKOUT_ROOT",
    "DAEMON_PORT",
    "REQUIRED_TOOLS",
    "Bed",
    "CliError",
    "Host",
    "NetlabError",
    "Proc",
    "netns_available",
    "netns_unavailable_reason",
    "parse_rate",
    "probe",
    "python_env",
    "skip_unless_netns",
]
