"""The node's SQLite database (WAL) in the state dir.

One connection, used from worker threads one call at a time through a single
limiter: SQLite work never blocks the trio thread, and calls never interleave
(a lock also keeps a service's ``migrate`` at start out of a transaction in
flight).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

T = TypeVar("T")
FILENAME = "rendernode.db"


class Database:
    """A SQLite connection whose calls run off the trio thread, one at a time."""

    def __init__(self, state_dir: str | Path) -> None:
        path = Path(state_dir) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._limiter = trio.CapacityLimiter(1)
        self._lock = threading.Lock()

    def migrate(self, schema: str) -> None:
        """Run ``schema`` (CREATE ... IF NOT EXISTS statements) synchronously at start."""
        with self._lock:
            self.conn.executescript(schema)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread inside one transaction."""

        def work() -> T:
            with self._lock, self.conn:
                self.conn.execute("BEGIN")
                return fn(self.conn)

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
