"""PID 1 of a netlab bed: owns the bed's mount, network and PID namespaces.

Run as a script (stdlib only) by ``unshare --mount --net --pid --fork
--mount-proc``.  It makes every mount private, puts a tmpfs on /run/netns so
``ip netns add`` names exist only in this mount namespace, brings lo up,
prints ``ready`` and then blocks reading stdin.  When stdin reaches EOF (the
owning test process closed the pipe or died) or it is sent SIGTERM/SIGINT/
SIGHUP, it exits; as init of the PID namespace its exit makes the kernel kill
every process in the bed, and with them go the host namespaces, the bridge and
all rules.  SIGCHLD is ignored so orphans reparented to it are reaped at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def _exit_now(signum: int, frame: object) -> None:
    os._exit(0)


def main() -> None:
    if os.getpid() != 1:
        sys.exit("netlab supervisor must run as PID 1 of a new PID namespace")
    for argv in (
        ["mount", "--make-rprivate", "/"],
        ["mkdir", "-p", "/run/netns"],
        ["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "netlab-netns", "/run/netns"],
        ["ip", "link", "set", "lo", "up"],
    ):
        subprocess.run(argv, check=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _exit_now)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while os.read(0, 4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
