"""Start one command inside a netlab bed and mirror its exit status.

Run as a script (stdlib only, ``python -I -S _launch.py``), never imported by
the bed itself.  Usage::

    _launch.py SUP_PID:MNT_INO:NET_INO:PID_INO NETNS PID_FD -- ARGV...

The launcher joins the mount, network and PID namespaces of the bed's
supervisor (checking the namespace inode numbers, so a recycled supervisor PID
is refused), then forks: the child is PID-namespaced inside the bed, becomes a
session leader (so the bed can signal its whole process group) and execs ARGV.
Unless NETNS is ``-`` it first joins host namespace NETNS and, like ``ip
netns exec``, gets its own mount namespace with a sysfs of that host.  Once the child has
exec'd, the parent writes its PID, as seen from the root PID namespace, to
PID_FD (nothing if exec failed), reaps the child itself and then exits with the
child's code or dies by the child's signal.  (No zombie may outlive the
launcher: setns+fork children are reparented to the *root* init, and the
bed's teardown would wait until that init got round to reaping them.)
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from typing import NoReturn

_CLONE = {"mnt": 0x00020000, "net": 0x40000000, "pid": 0x20000000}
_MS_REC = 0x4000
_MS_SLAVE = 0x80000
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _fail(msg: str) -> NoReturn:
    os.write(2, f"netlab launcher: {msg}\n".encode())
    os._exit(126)


def _enter(spec: str) -> None:
    sup, *inos = spec.split(":")
    fds: dict[str, int] = {}
    for kind, ino in zip(("mnt", "net", "pid"), inos, strict=True):
        try:
            fd = os.open(f"/proc/{sup}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            _fail(f"bed supervisor {sup} is gone ({e})")
        if os.fstat(fd).st_ino != int(ino):
            _fail(f"pid {sup} is no longer this bed's supervisor")
        fds[kind] = fd
    for kind in ("pid", "net", "mnt"):
        _setns(fds[kind], _CLONE[kind], kind)


def _setns(fd: int, nstype: int, what: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        _fail(f"setns({what}) failed: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def _enter_host(netns: str) -> None:
    """Join host ``netns`` the way ``ip netns exec`` does, minus its extra exec."""
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        _fail(f"no host namespace {netns!r}: {e}")
    _setns(fd, _CLONE["net"], netns)


def _private_sysfs(netns: str) -> None:
    """In the child: a mount namespace whose /sys shows the host's interfaces."""
    if _libc.unshare(_CLONE["mnt"]) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if _libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rslave /")
    _libc.umount2(b"/sys", _MNT_DETACH)  # may not be mounted: ignore
    if _libc.mount(netns.encode(), b"/sys", b"sysfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount sysfs")


def main(argv: list[str]) -> None:
    if len(argv) < 6 or argv[4] != "--":
        _fail("usage: _launch.py SPEC NETNS PID_FD -- ARGV...")
    spec, netns, pid_fd, cmd = argv[1], argv[2], int(argv[3]), argv[5:]
    cwd = os.getcwd()
    _enter(spec)
    if netns != "-":
        _enter_host(netns)
    exec_r, exec_w = os.pipe()  # close-on-exec: EOF tells the parent exec happened
    try:
        child = os.fork()
    except OSError as e:
        _fail(f"fork into the bed failed (supervisor dead?): {e}")
    if child == 0:
        try:
            os.close(exec_r)
            if pid_fd >= 0:
                os.close(pid_fd)
            os.setsid()
            if netns != "-":
                _private_sysfs(netns)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
            os.execvp(cmd[0], cmd)
        except OSError as e:
            msg = f"netlab launcher: cannot start {cmd[0]!r}: {e}\n".encode()
            os.write(2, msg)
            os.write(exec_w, msg)
        os._exit(127)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    os.close(exec_w)
    exec_failed = os.read(exec_r, 4096)
    os.close(exec_r)
    if pid_fd >= 0:
        # Only after exec: by then the child leads its own process group.
        if not exec_failed:
            os.write(pid_fd, f"{child}\n".encode())
        os.close(pid_fd)
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    termsig = os.WTERMSIG(status)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # mirror a crash without a core
    if termsig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(termsig, signal.SIG_DFL)
    os.kill(os.getpid(), termsig)
    os._exit(128 + termsig)


if __name__ == "__main__":
    main(sys.argv)
