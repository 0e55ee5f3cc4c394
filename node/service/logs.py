"""Logging to stderr: with timestamps on a terminal; under systemd
(``JOURNAL_STREAM`` names the device and inode of our stderr) without them and
with ``<N>`` syslog level prefixes on every line, so journald keeps each
line's level (a traceback's lines too).  ``sd_notify`` tells the service
manager about readiness, reloads and shutdown."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def syslog_level(levelno: int) -> int:
    """The syslog priority (0-7) journald should record for a logging level."""
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SYSLOG[threshold]
    return _SYSLOG[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` lines for journald; continuation lines get ``<N>`` too."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_level(record.levelno)}>"
        lines = f"{record.name}: {super().format(record)}".splitlines() or [""]
        return "\n".join(prefix + line for line in lines)


def stderr_is_journal(env: dict[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True if ``JOURNAL_STREAM`` (``DEVICE:INODE``) is the stream stderr is
    connected to, as systemd.exec(5) asks; a child whose stderr was redirected
    elsewhere inherits the variable but must not use the journal format."""
    env = dict(os.environ if env is None else env)
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str = "info", env: dict[str, str] | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger once for the daemon."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stderr_is_journal(env, stream):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)


def sd_notify(*states: str) -> None:
    """Send states (READY=1, RELOADING=1, STOPPING=1, STATUS=...) to
    ``$NOTIFY_SOCKET``, if set: a path, or an abstract socket written ``@name``.
    A manager that went away is not our problem; the daemon goes on."""
    import socket

    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(states).encode(), path)
        except OSError:
            pass
