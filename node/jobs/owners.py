"""Who submitted each job through this node: the uid, gid and groups the
control socket saw (SO_PEERCRED, SO_PEERGROUPS), or a watch folder's owner.

The record stays on the submitting node, in its database, and is never
replicated: uids mean something only on the machine that saw them, and a job
document comes from any holder of the farm token, who must not be able to
name the account this node writes files as.  Frames are written, and result
files removed, with these rights (``node.service.runas``); a job this node
has no record of gets no file written.
"""

from __future__ import annotations

import json

from node.db import Database
from node.service.accounts import Account

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    job TEXT PRIMARY KEY, name TEXT NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    groups TEXT NOT NULL
);
"""


class Owners:
    """The submitter of each job submitted here."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)

    async def record(self, job: str, account: Account) -> None:
        """Remember that ``account`` submitted ``job``."""
        row = (job, account.name, account.uid, account.gid, json.dumps(list(account.groups)))
        await self.db.run(lambda c: c.execute("INSERT OR REPLACE INTO owners VALUES (?,?,?,?,?)", row))

    def get(self, job: str) -> Account | None:
        """The account that submitted ``job`` here, or None."""
        row = self.db.conn.execute("SELECT name, uid, gid, groups FROM owners WHERE job=?",
                                   (job,)).fetchone()
        if row is None:
            return None
        return Account(str(row[0]), int(row[1]), int(row[2]), tuple(int(g) for g in json.loads(row[3])))
