"""The machine table: every machine ever seen, with its verification bits, and
a machine log per machine (events plus AddLogToMachine lines).

The table lives in memory (the peers service changes it on every session
event) and is written behind to SQLite, so offline machines stay listed
across restarts (MACHINELIST_OFFLINE).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from node.db import Database
from protocol.verification import VerificationBits, bit_names

SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    uuid TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS machine_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    ts REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS machine_log_uuid ON machine_log(uuid, seq);
"""
LOG_KEEP = 1000  #: log lines kept per machine


@dataclass
class Machine:
    """One row of the machine table."""

    uuid: str
    name: str = ""
    addresses: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)  #: local, mdns, static
    bits: int = 0
    online: bool = False
    build_id: str = ""
    arch: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0
    pinned_key: str = ""  #: hex static key first seen with this UUID
    was_verified: bool = False
    reason: str = ""  #: why it is not verified, if it is not
    mac: str = ""
    server_priority: int = 0
    term: int = 0

    @property
    def local(self) -> bool:
        """True for this node's own row."""
        return "local" in self.via

    def public(self) -> dict[str, Any]:
        """The row as shown by ``machines --json``."""
        out = asdict(self)
        out.pop("pinned_key")
        out["address"] = self.addresses[0] if self.addresses else ""
        out["local"] = self.local
        out["bits"] = bit_names(self.bits)
        out["bits_value"] = self.bits
        return out


class MachineTable:
    """In-memory machine table with write-behind persistence and bounded logs."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(SCHEMA)
        self._rows: dict[str, Machine] = {}
        self._logs: dict[str, deque[tuple[float, str]]] = {}
        self._dirty: set[str] = set()
        self._log_queue: list[tuple[str, float, str]] = []
        self._removed: set[str] = set()
        self._wake = trio.Event()
        for uuid, data in db.conn.execute("SELECT uuid, data FROM machines"):
            try:
                row = Machine(**json.loads(data))
            except (TypeError, ValueError):
                continue  # a row from a future version we cannot read; keep it on disk
            row.online = False
            row.bits &= ~(VerificationBits.VERIFICATIONBIT_ONLINE | VerificationBits.VERIFICATIONBIT_VERIFYING)
            self._rows[uuid] = row
        for uuid, ts, line in db.conn.execute(
            "SELECT uuid, ts, line FROM machine_log ORDER BY seq"
        ):
            self._logs.setdefault(uuid, deque(maxlen=LOG_KEEP)).append((ts, line))

    def get(self, uuid: str) -> Machine | None:
        """The row for ``uuid``, if any."""
        return self._rows.get(uuid)

    def all(self) -> list[Machine]:
        """Every row, local first, then by name."""
        return sorted(self._rows.values(), key=lambda m: (not m.local, m.name, m.uuid))

    def by_key(self, key_hex: str) -> Machine | None:
        """The row whose pinned static key is ``key_hex``."""
        for row in self._rows.values():
            if row.pinned_key == key_hex:
                return row
        return None

    def update(self, uuid: str, **changes: Any) -> Machine:
        """Create or change a row; persisted shortly after."""
        row = self._rows.get(uuid)
        now = time.time()
        if row is None:
            row = Machine(uuid=uuid, first_seen=now)
            self._rows[uuid] = row
            self._removed.discard(uuid)
        via = changes.pop("via", None)
        for key, value in changes.items():
            setattr(row, key, value)
        if via and via not in row.via:
            row.via = sorted([*row.via, via])
        row.last_seen = now
        self._mark(uuid)
        return row

    def remove(self, uuid: str) -> bool:
        """Drop a row and its log; False if there was none."""
        if self._rows.pop(uuid, None) is None:
            return False
        self._logs.pop(uuid, None)
        self._removed.add(uuid)
        self._mark(uuid)
        return True

    def log(self, uuid: str, line: str) -> None:
        """Append a line to a machine's log."""
        now = time.time()
        self._logs.setdefault(uuid, deque(maxlen=LOG_KEEP)).append((now, line))
        self._log_queue.append((uuid, now, line))
        self._wake.set()

    def log_tail(self, uuid: str, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` log lines of a machine (all if count < 0)."""
        lines = list(self._logs.get(uuid, ()))
        if count >= 0:
            lines = lines[-count:] if count else []
        return [{"time": ts, "line": line} for ts, line in lines]

    def _mark(self, uuid: str) -> None:
        self._dirty.add(uuid)
        self._wake.set()

    async def flush(self) -> None:
        """Write every pending change now."""
        dirty, self._dirty = self._dirty, set()
        logs, self._log_queue = self._log_queue, []
        rows = [(u, json.dumps(asdict(self._rows[u]))) for u in dirty if u in self._rows]
        gone = [u for u in dirty if u in self._removed]

        def write(conn: Any) -> None:
            conn.executemany("INSERT OR REPLACE INTO machines(uuid, data) VALUES (?, ?)", rows)
            for u in gone:
                conn.execute("DELETE FROM machines WHERE uuid = ?", (u,))
                conn.execute("DELETE FROM machine_log WHERE uuid = ?", (u,))
            conn.executemany("INSERT INTO machine_log(uuid, ts, line) VALUES (?, ?, ?)", logs)
            for u in {u for u, _, _ in logs}:
                conn.execute(
                    "DELETE FROM machine_log WHERE uuid = ? AND seq <= "
                    "(SELECT seq FROM machine_log WHERE uuid = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (u, u, LOG_KEEP),
                )

        if rows or gone or logs:
            await self._db.run(write)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write changes behind, batching those that come within 50 ms."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(0.05)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
