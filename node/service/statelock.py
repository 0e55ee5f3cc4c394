"""One daemon per state dir: an exclusive ``flock`` on ``<state dir>/lock``,
held for the daemon's life.  The file names the holder (pid and control
socket), so a second daemon started on the same dir can say which one runs.

The kernel drops the lock when its holder exits, however it exits: a stale
file after a crash is taken over, never refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from types import TracebackType

from node.errors import ConfigError

LOCK_NAME = "lock"


class StateLock:
    """``with StateLock(state_dir, socket):`` runs the daemon; ConfigError if
    another daemon holds the state dir."""

    def __init__(self, state_dir: str, socket: str) -> None:
        self.path = os.path.join(state_dir, LOCK_NAME)
        self.state_dir = state_dir
        self.socket = socket
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's pid and socket into the file."""
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"the state dir {self.state_dir} is in use by another rendernode daemon "
                f"({holder}); stop it first, or give this one its own --state-dir") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "socket": self.socket}).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; its content is stale from now on)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> str:
    """"pid N, control socket S" as the holder wrote it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(info['pid'])}, control socket {info['socket']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
