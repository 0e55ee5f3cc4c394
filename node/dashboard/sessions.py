"""Who may see the dashboard: one-time login tokens and browser sessions.

The Jupyter pattern: ``rendernode dashboard`` asks the daemon over the control
socket, where SO_PEERCRED names the caller, for a login URL holding a random
one-time token bound to that user and valid for ``LOGIN_TTL`` seconds.
Opening it trades the token for a session id carried in an HttpOnly,
SameSite=Strict cookie.  Only SHA-256 hashes of tokens and session ids are
kept (in memory; sessions also in SQLite, so a session outlives a daemon
restart and an open page reconnects by itself).  A session ends
``SESSION_TTL`` seconds after its login, or for everyone at once with
``rendernode dashboard --revoke``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.db import Database

LOGIN_TTL = 60.0  #: seconds a login URL stays valid
SESSION_TTL = 12 * 3600.0  #: seconds a session lasts after its login
MAX_LOGINS = 256  #: unredeemed login tokens kept at once (the oldest go first)
SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    hash TEXT PRIMARY KEY, user TEXT NOT NULL, expires REAL NOT NULL
);
"""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Login:
    """A one-time login token, as given to the user once."""

    token: str
    user: str
    expires: float


class Sessions:
    """Login tokens and sessions; ``generation`` grows on every revoke."""

    def __init__(self, db: Database, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall
        db.migrate(SCHEMA)
        self._logins: dict[str, tuple[str, float]] = {}  #: token hash -> (user, expires)
        now = wall()
        self._sessions: dict[str, tuple[str, float]] = {
            h: (user, exp) for h, user, exp in db.conn.execute(
                "SELECT hash, user, expires FROM dashboard_sessions") if exp > now}
        self.generation = 0

    def issue_login(self, user: str) -> Login:
        """A fresh one-time login token for ``user``."""
        now = self._wall()
        self._logins = {h: v for h, v in self._logins.items() if v[1] > now}
        while len(self._logins) >= MAX_LOGINS:
            del self._logins[next(iter(self._logins))]
        token = secrets.token_urlsafe(32)
        expires = now + LOGIN_TTL
        self._logins[_hash(token)] = (user, expires)
        return Login(token, user, expires)

    async def redeem(self, token: str) -> tuple[str, str] | None:
        """Trade a valid login token (once) for (session id, user); None if it is
        unknown, used or expired."""
        entry = self._logins.pop(_hash(token), None)
        now = self._wall()
        if entry is None or entry[1] <= now:
            return None
        user = entry[0]
        sid = secrets.token_urlsafe(32)
        row = (_hash(sid), user, now + SESSION_TTL)
        self._sessions[row[0]] = (user, row[2])
        await self._db.run(lambda c: self._store(c, row))
        return sid, user

    def _store(self, conn: Any, row: tuple[str, str, float]) -> None:
        conn.execute("DELETE FROM dashboard_sessions WHERE expires <= ?", (self._wall(),))
        conn.execute("INSERT OR REPLACE INTO dashboard_sessions VALUES (?, ?, ?)", row)

    def user_of(self, sid: str | None) -> str | None:
        """The user of a live session, else None."""
        if not sid:
            return None
        entry = self._sessions.get(_hash(sid))
        if entry is None:
            return None
        if entry[1] <= self._wall():
            self._sessions.pop(_hash(sid), None)
            return None
        return entry[0]

    async def end(self, sid: str) -> None:
        """End one session (sign out)."""
        h = _hash(sid)
        self._sessions.pop(h, None)
        await self._db.run(lambda c: c.execute("DELETE FROM dashboard_sessions WHERE hash = ?", (h,)))

    async def revoke_all(self) -> int:
        """End every session and forget every login token; how many sessions ended."""
        count = len(self._sessions)
        self._sessions.clear()
        self._logins.clear()
        self.generation += 1
        await self._db.run(lambda c: c.execute("DELETE FROM dashboard_sessions"))
        return count
