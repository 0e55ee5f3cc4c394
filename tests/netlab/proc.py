"""Processes running inside a netlab bed, and the call that starts them.

Design: every command in a bed is started through ``_launch.py`` (see there),
a small launcher in the root PID namespace whose child is the real process
inside the bed.  :func:`launch` reads the child's root-namespace PID from a
pipe; :class:`Proc` signals that PID (or its process group: the child is a
session leader) and waits on the launcher, whose exit status mirrors the
child's (``-9`` after SIGKILL, as with :mod:`subprocess`).  Signals are only
sent while the launcher is alive: the launcher exits right after reaping the
child, and PIDs are allocated cyclically, so the PID is not yet reused then.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["LAUNCHER", "NetlabError", "Proc", "launch"]

LAUNCHER = Path(__file__).with_name("_launch.py")


class NetlabError(RuntimeError):
    """A bed operation failed (command error, dead supervisor, timeout)."""


def launch(
    ns_spec: str,
    netns: str | None,
    argv: Sequence[str],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 10.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` in the bed described by ``ns_spec`` and return (launcher, pid).

    ``netns`` names a host namespace (``None`` runs in the bed's own network
    namespace, where the bridge lives).  ``env`` replaces the environment.
    """
    if not argv:
        raise ValueError("empty argv")
    r, w = os.pipe()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), ns_spec, netns or "-", str(w), "--", *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=(w,),
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        pid = _read_pid(r, timeout)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    finally:
        os.close(r)
    if pid is None:
        code = popen.wait()
        why = popen.stderr.read().decode(errors="replace") if popen.stderr is not None else ""
        raise NetlabError(f"could not start {list(argv)!r} in the bed (exit {code}) {why}".rstrip())
    return popen, pid


def _read_pid(fd: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetlabError("timed out waiting for the launcher to report a PID")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        data += chunk
    return int(data)


class Proc:
    """A process started in a bed host: its real PID, its log, and signals."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pid: int,
        argv: Sequence[str],
        log_path: Path | None,
        host: str,
    ) -> None:
        """Wrap a launcher ``popen`` whose child has root-namespace ``pid``."""
        self._popen = popen
        self.pid = pid
        self.argv = list(argv)
        self.log_path = log_path
        self.host = host

    def __repr__(self) -> str:
        state = "running" if self.poll() is None else f"exited {self.returncode}"
        return f"<Proc {self.pid} on {self.host} {state}: {' '.join(self.argv)[:60]}>"

    @property
    def returncode(self) -> int | None:
        """Exit code, ``-signal`` if killed by a signal, ``None`` while running."""
        return self._popen.returncode

    def poll(self) -> int | None:
        """Return the exit status if the process has ended, else ``None``."""
        return self._popen.poll()

    def alive(self) -> bool:
        """True until the process has exited (a frozen process is alive)."""
        return self.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the status; raises ``subprocess.TimeoutExpired``."""
        return self._popen.wait(timeout)

    def signal(self, sig: int, *, group: bool = True) -> bool:
        """Send ``sig`` to the process group (or only the process); False if it is gone."""
        if self.poll() is not None:
            return False
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def freeze(self) -> None:
        """SIGSTOP the process and anything in its process group."""
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process and anything in its process group."""
        self.signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM the process group (thawing it first so the signal is handled)."""
        if self.signal(signal.SIGTERM):
            self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process group."""
        self.signal(signal.SIGKILL)

    def stop(self, timeout: float = 5.0) -> int:
        """Terminate, wait up to ``timeout`` seconds, then kill; return the status."""
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait(timeout)

    def state(self) -> str:
        """The kernel's state letter from /proc (``R``, ``S``, ``T`` = stopped, ``Z``...)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return "gone"
        return stat.rsplit(")", 1)[1].split()[0]

    def read_log(self) -> str:
        """The process's combined stdout/stderr so far ('' without a log file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll the log until it contains ``text``; return the log.

        Raises :class:`NetlabError` (with the log's tail) on timeout or if the
        process exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self.read_log()
            if text in log:
                return log
            if self.poll() is not None:
                log = self.read_log()
                if text in log:
                    return log
                raise NetlabError(
                    f"{self!r} exited before logging {text!r}; log tail:\n{log[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise NetlabError(f"{self!r} did not log {text!r} in {timeout}s:\n{log[-2000:]}")
            time.sleep(0.02)
