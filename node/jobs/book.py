"""The job book: every job's replicated document, in memory for reads and in
SQLite for durability.

Documents change only by merge (``protocol.crdt.merge_job``), whether the
delta was made here or arrived from a peer.  Writes are group-committed: a
writer task takes every change made since its last commit and writes them in
one transaction (synchronous=FULL, so a commit survives power loss); callers
that must not acknowledge before the disk has it ``await durable()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from node.db import Database
from protocol.crdt import (
    PART_BYTES,
    PARTS,
    ZERO,
    JobDoc,
    Stamp,
    absorb,
    digest,
    digest_of_parts,
    hlc_observe,
    hlc_tick,
    job_from_wire,
    job_to_wire,
    log_part_index,
    part_digest,
    part_index,
    parts,
    task_from_wire,
    task_to_wire,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (uuid TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    job TEXT NOT NULL, tid INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (job, tid)
);
CREATE TABLE IF NOT EXISTS job_log (
    job TEXT NOT NULL, ms INTEGER NOT NULL, counter INTEGER NOT NULL, node TEXT NOT NULL,
    line TEXT NOT NULL, PRIMARY KEY (job, ms, counter, node)
);
"""
Listener = Callable[[JobDoc, JobDoc], None]
#: a job's creation writes this field and nothing else does: a document without it
#: holds only changes that overtook the creation on their way here (a stop, a task
#: state, a log line), so it is not a job yet
CREATED = "created"


def is_live(doc: JobDoc) -> bool:
    """True once the job's creation has arrived, until it is deleted."""
    return doc.deleted is None and CREATED in doc.fields


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


class JobBook:
    """All jobs' documents; ``apply`` merges, ``durable`` waits for the disk."""

    def __init__(self, db: Database, node: str, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self.node = node
        self._wall = wall
        db.migrate(SCHEMA)
        self.docs: dict[str, JobDoc] = {}
        self._digests: dict[str, bytes] = {}  #: uuid -> digest, dropped when the job changes
        #: uuid -> each part's digest (protocol.crdt.part), None once a change touched it
        self._part_digests: dict[str, list[bytes | None]] = {}
        self._clock: Stamp = ZERO
        self._load()
        self._dirty_jobs: set[str] = set()
        self._dirty_tasks: set[tuple[str, int]] = set()
        self._new_logs: list[tuple[str, Stamp, str]] = []
        self._applied = 0
        self._written = 0
        self._wake = trio.Event()
        self._written_event = trio.Event()
        self.listeners: list[Listener] = []

    def _load(self) -> None:
        conn = self._db.conn
        parts: dict[str, dict[str, Any]] = {}
        for uuid, blob in conn.execute("SELECT uuid, doc FROM jobs"):
            parts[uuid] = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        tasks: dict[str, list[Any]] = {}
        for job, tid, blob in conn.execute("SELECT job, tid, state FROM tasks"):
            tasks.setdefault(job, []).append([tid, msgpack.unpackb(blob, raw=False)])
        logs: dict[str, list[Any]] = {}
        for job, ms, counter, node, line in conn.execute(
            "SELECT job, ms, counter, node, line FROM job_log"
        ):
            logs.setdefault(job, []).append([[ms, counter, node], line])
        for uuid, wire in parts.items():
            wire["t"] = tasks.get(uuid, [])
            wire["l"] = logs.get(uuid, [])
            doc = job_from_wire(wire)
            self.docs[uuid] = doc
            self._observe_doc(doc)

    # -- clock ------------------------------------------------------------------

    def stamp(self) -> Stamp:
        """A fresh stamp, greater than any this node made or saw."""
        self._clock = hlc_tick(self._clock, int(self._wall() * 1000), self.node)
        return self._clock

    def _observe_doc(self, doc: JobDoc) -> None:
        top = max([ZERO, *(r.stamp for r in doc.fields.values()),
                   *(t.stamp for t in doc.tasks.values()), *doc.log.keys(),
                   *([doc.deleted] if doc.deleted else [])])
        if top > self._clock:
            self._clock = hlc_observe(self._clock, top, int(self._wall() * 1000), self.node)

    # -- reads ------------------------------------------------------------------

    def get(self, uuid: str) -> JobDoc | None:
        """A live job's document: its creation has arrived and it is not deleted."""
        doc = self.docs.get(uuid)
        return doc if doc is not None and is_live(doc) else None

    def live(self) -> list[JobDoc]:
        """Every live job."""
        return [d for d in self.docs.values() if is_live(d)]

    def digests(self) -> dict[str, bytes]:
        """uuid -> digest, for anti-entropy: a hash of the job's part digests
        (``part_digests``), so a change costs the rehash of the parts it touched.
        Hashing a whole busy job at every digest exchange took a starved daemon
        on the 100-host bed a sixth of its CPU."""
        cache = self._digests
        out = {}
        for uuid in self.docs:
            d = cache.get(uuid)
            if d is None:
                d = cache[uuid] = digest_of_parts(self._parts_of(uuid))
            out[uuid] = d
        return out

    def part_digests(self, uuid: str) -> bytes | None:
        """A job's part digests (``protocol.crdt.part_digests``), each kept until a
        change touches its part; None if this node lacks the job."""
        if uuid not in self.docs:
            return None
        return self._parts_of(uuid)

    def _parts_of(self, uuid: str) -> bytes:
        doc = self.docs[uuid]
        cached = self._part_digests.setdefault(uuid, [None] * PARTS)
        missing = [i for i, d in enumerate(cached) if d is None]
        if len(missing) > 2:  # cut the document once, not once per part
            whole = parts(doc)
            for i in missing:
                cached[i] = digest(whole[i])[:PART_BYTES]
        else:
            for i in missing:
                cached[i] = part_digest(doc, i)
        return b"".join(d for d in cached if d is not None)

    # -- changes ----------------------------------------------------------------

    def apply(self, delta: JobDoc) -> bool:
        """Merge ``delta``; True if it changed anything.  Listeners hear of changes."""
        new, changes = absorb(self.docs.get(delta.uuid), delta)
        if not changes:
            return False
        self.docs[delta.uuid] = new
        self._digests.pop(delta.uuid, None)
        parts = self._part_digests.get(delta.uuid)
        if parts is not None:
            if changes.head:  # a new generation may have dropped tasks of every part
                del self._part_digests[delta.uuid]
            else:
                for stamp in changes.logs:
                    parts[log_part_index(stamp)] = None
                for tid in changes.tasks:
                    parts[part_index(tid)] = None
        self._observe_doc(delta)
        if changes.head:
            self._dirty_jobs.add(delta.uuid)
        for tid in changes.tasks:
            self._dirty_tasks.add((delta.uuid, tid))
        for stamp in changes.logs:
            self._new_logs.append((delta.uuid, stamp, new.log[stamp]))
        self._applied += 1
        self._wake.set()
        for listener in self.listeners:
            listener(delta, new)
        return True

    def apply_wire(self, jobs: list[dict[str, Any]]) -> list[JobDoc]:
        """Merge documents from a peer; returns the deltas that changed something."""
        changed = []
        for wire in jobs:
            delta = job_from_wire(wire)
            if self.apply(delta):
                changed.append(delta)
        return changed

    async def durable(self) -> None:
        """Return once every change applied so far is committed to disk."""
        target = self._applied
        while self._written < target:
            await self._written_event.wait()

    async def flush(self) -> None:
        """Commit every pending change now."""
        jobs, self._dirty_jobs = self._dirty_jobs, set()
        tasks, self._dirty_tasks = self._dirty_tasks, set()
        logs, self._new_logs = self._new_logs, []
        upto = self._applied
        rows_jobs: list[tuple[str, bytes]] = []
        purge: list[str] = []
        for uuid in jobs:
            doc = self.docs[uuid]
            head = JobDoc(doc.uuid, doc.fields, doc.gen, doc.deleted, {}, {}, doc.log_base)
            rows_jobs.append((uuid, _pack(job_to_wire(head))))
            if doc.deleted is not None:
                purge.append(uuid)
        rows_tasks = []
        for job, tid in tasks:
            doc = self.docs[job]
            if doc.deleted is None and tid in doc.tasks:
                rows_tasks.append((job, tid, _pack(task_to_wire(doc.tasks[tid]))))
        rows_logs = [(job, s[0], s[1], s[2], line) for job, s, line in logs
                     if self.docs[job].deleted is None]

        def write(conn: Any) -> None:
            conn.executemany("INSERT OR REPLACE INTO jobs(uuid, doc) VALUES (?, ?)", rows_jobs)
            for uuid in purge:
                conn.execute("DELETE FROM tasks WHERE job = ?", (uuid,))
                conn.execute("DELETE FROM job_log WHERE job = ?", (uuid,))
            conn.executemany("INSERT OR REPLACE INTO tasks(job, tid, state) VALUES (?, ?, ?)", rows_tasks)
            conn.executemany(
                "INSERT OR IGNORE INTO job_log(job, ms, counter, node, line) VALUES (?, ?, ?, ?, ?)",
                rows_logs,
            )

        if rows_jobs or rows_tasks or rows_logs or purge:
            try:
                await self._db.run(write)
            except BaseException:
                # not written (a cancel before the thread ran, or a disk error): the batch
                # stays pending for the next flush, the writer's shielded last one included
                self._dirty_jobs |= jobs
                self._dirty_tasks |= tasks
                self._new_logs[:0] = logs
                raise
        self._written = max(self._written, upto)
        self._written_event.set()
        self._written_event = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()


def decode_task_blob(blob: bytes) -> Any:
    """A stored task state (for tools and tests)."""
    return task_from_wire(msgpack.unpackb(blob, raw=False))
