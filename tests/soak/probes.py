"""What the soak measures from outside the daemons: their processes (RSS, open
file descriptors, CPU), the machine's load, their job books and their logs.

The job books are read read-only from each host's SQLite file (one
transaction, so a consistent snapshot) and rebuilt into documents with the
project's own wire rules; a book's digest is a hash of every job's
``protocol.crdt.digest``, so two books hash alike exactly when every job's
document is equal.  Nothing here talks to a daemon.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from node.db import FILENAME
from protocol.crdt import JobDoc, digest, job_from_wire

__all__ = ["Ledger", "Life", "book_digest", "log_summary", "machine_busy", "read_book"]

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Life:
    """One run of a host's daemon, from a start to its kill (or the end)."""

    host: str
    pid: int
    started: float
    ended: float | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)  #: (monotonic, RSS bytes, fds)
    cpu: float = 0.0  #: the daemon's own CPU seconds, last seen
    child_cpu: float = 0.0  #: CPU seconds of the children it reaped (its renders), last seen


class Ledger:
    """Every daemon life of a bed and its samples."""

    def __init__(self) -> None:
        self.lives: list[Life] = []
        self._current: dict[str, Life] = {}

    def start(self, host: str, pid: int) -> None:
        """A daemon started on ``host``."""
        life = Life(host, pid, time.monotonic())
        self.lives.append(life)
        self._current[host] = life

    def sample(self, host: str) -> None:
        """Read the current daemon's RSS, fds and CPU (nothing if it is gone)."""
        life = self._current.get(host)
        if life is None:
            return
        try:
            stat = Path(f"/proc/{life.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{life.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{life.pid}/fd"))
        except OSError:
            return
        if stat[0] == "Z":
            return
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]
        life.cpu = (int(stat[11]) + int(stat[12])) / TICK
        life.child_cpu = (int(stat[13]) + int(stat[14])) / TICK
        life.samples.append((time.monotonic(), rss, fds))

    def end(self, host: str) -> None:
        """The daemon of ``host`` is about to be killed: a last sample."""
        self.sample(host)
        life = self._current.pop(host, None)
        if life is not None:
            life.ended = time.monotonic()

    def cpu(self) -> tuple[float, float]:
        """(daemons' own CPU seconds, their reaped children's), over every life."""
        return sum(life.cpu for life in self.lives), sum(life.child_cpu for life in self.lives)

    def survivors(self, since: float) -> list[Life]:
        """Lives that began by ``since`` and never ended."""
        return [life for life in self.lives if life.started <= since and life.ended is None]


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / TICK, total / TICK


def read_book(state_dir: Path) -> dict[str, JobDoc]:
    """The job book on a host's disk, as documents (uuid -> doc); {} if unreadable now."""
    path = state_dir / FILENAME
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return {}
    try:
        conn.execute("BEGIN")
        wires: dict[str, dict[str, Any]] = {}
        for uuid, blob in conn.execute("SELECT uuid, doc FROM jobs"):
            wire = msgpack.unpackb(blob, raw=False, strict_map_key=False)
            wire["t"], wire["l"] = [], []
            wires[uuid] = wire
        for job, tid, blob in conn.execute("SELECT job, tid, state FROM tasks"):
            if job in wires:
                wires[job]["t"].append([tid, msgpack.unpackb(blob, raw=False)])
        for job, ms, counter, node, line in conn.execute(
                "SELECT job, ms, counter, node, line FROM job_log"):
            if job in wires:
                wires[job]["l"].append([[ms, counter, node], line])
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {uuid: job_from_wire(wire) for uuid, wire in wires.items()}


def book_digest(docs: dict[str, JobDoc]) -> str:
    """One hash of a whole book: equal exactly when every job's document is."""
    h = hashlib.sha256()
    for uuid in sorted(docs):
        h.update(uuid.encode() + digest(docs[uuid]))
    return h.hexdigest()


_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")
_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)*")


def log_summary(logs: list[Path]) -> tuple[Counter[str], int]:
    """Warnings and errors of the daemons' logs by shape (numbers and UUIDs
    blanked), and how many tracebacks they hold."""
    shapes: Counter[str] = Counter()
    tracebacks = 0
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if line.startswith("Traceback"):
                tracebacks += 1
            m = _LEVEL.search(line)
            if m:
                shapes[f"{m.group(1)} {m.group(2)}: {_VARYING.sub('#', m.group(3))[:140]}"] += 1
    return shapes, tracebacks
