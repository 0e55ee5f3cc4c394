"""Logging to stderr: with timestamps on a terminal; under systemd
(``JOURNAL_STREAM`` set) without them and with ``<N>`` syslog level prefixes,
so journald keeps each line's level."""

from __future__ import annotations

import logging
import os
import sys

_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` lines for journald."""

    def format(self, record: logging.LogRecord) -> str:
        level = _SYSLOG.get(record.levelno, 6)
        return f"<{level}>{record.name}: {super().format(record)}"


def setup(level: str = "info") -> None:
    """Configure the root logger once for the daemon."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)


def sd_notify(*states: str) -> None:
    """Send states (READY=1, STOPPING=1, STATUS=...) to $NOTIFY_SOCKET, if set."""
    import socket

    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
            sock.sendall("\n".join(states).encode())
        except OSError:
            pass
