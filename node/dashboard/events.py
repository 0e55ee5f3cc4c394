"""Live updates: what changed in the farm, as server-sent events.

Sources (all synchronous callbacks, kept cheap: they only note what changed
and wake the publisher): the job book's listeners (every merge, local or
from a peer), the peers' session changes, the election's role changes, the
statuses peers send, and farm messages.

The publisher waits ``COALESCE`` seconds after the first change, then turns
everything noted into events, numbered in one sequence, kept in a ring of the
last ``RING`` events, and wakes every open stream:

    job    {"job": queue row}                a job's row changed (or a new job)
    tasks  {"job": uuid, "tasks": [rows]}    task states changed
    log    {"job": uuid, "lines": [...]}     job log lines arrived
    gone   {"job": uuid}                     a job was deleted
    farm   {"machines": [...], ...}          machines, roles, statuses
    message {...}                            a farm message (private ones only to sender and recipient)
    reset  {}                                the stream cannot resume: fetch everything again

An event's id is ``BOOT-SEQ``; a page that reconnects with ``Last-Event-ID``
gets the events it missed from the ring, or ``reset`` if they are gone (or
the daemon restarted, which changes BOOT).
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from node.dashboard.views import Views
from protocol.crdt import JobDoc

COALESCE = 0.01  #: seconds the publisher gathers changes before it publishes
FARM_EVERY = 0.5  #: seconds between two farm events at most
RING = 4096  #: events kept for streams that reconnect


@dataclass(frozen=True)
class Published:
    """One event as it goes on the wire, with who may see it (None: everyone)."""

    seq: int
    wire: bytes
    audience: frozenset[str] | None = None


def _encode(seq: int, boot: str, name: str, data: Any) -> bytes:
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"id: {boot}-{seq}\nevent: {name}\ndata: {body}\n\n".encode()


class Broker:
    """Notes changes, publishes events, and lets streams wait for them."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.ring: deque[Published] = deque(maxlen=RING)
        self._new = trio.Event()  #: set (and replaced) on every publish
        self._kick = trio.Event()
        self._tasks: dict[str, set[int]] = {}
        self._heads: set[str] = set()
        self._resets: set[str] = set()
        self._farm_due = trio.Event()
        self._logs: dict[str, list[tuple[Any, str]]] = {}
        self._farm = False
        self.watchers = 0  #: event streams open; with none, the farm is not computed (O(machines))
        self._messages: list[dict[str, Any]] = []
        self.published_at = 0.0  #: trio time of the last publish (for the benchmark)

    # -- sources (synchronous, cheap) -----------------------------------------------------

    def on_book(self, delta: JobDoc, doc: JobDoc) -> None:
        """A job book listener: note what the merge changed."""
        head = bool(delta.fields or delta.gen or delta.deleted is not None or delta.log_base is not None)
        self.views.forget(delta.uuid, head)
        if delta.tasks:
            self._tasks.setdefault(delta.uuid, set()).update(delta.tasks)
            if doc.deleted is None:
                self.views.note_tasks(doc, delta.tasks.items())
        if head:
            self._heads.add(delta.uuid)
            if delta.gen:
                self._resets.add(delta.uuid)
        if delta.log:
            self._logs.setdefault(delta.uuid, []).extend(delta.log.items())
        self._kick.set()

    def on_farm(self) -> None:
        """Machines, roles or statuses changed."""
        self._farm = True
        self._kick.set()

    def on_message(self, message: dict[str, Any]) -> None:
        """A farm message arrived (or was sent here)."""
        self._messages.append(message)
        self._kick.set()

    def kick(self) -> None:
        """Wake every stream (a revoke: each checks its session)."""
        self._new.set()
        self._new = trio.Event()

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, name: str, data: Any, audience: frozenset[str] | None = None) -> None:
        self.seq += 1
        self.ring.append(Published(self.seq, _encode(self.seq, self.boot, name, data), audience))

    def flush(self) -> int:
        """Turn what was noted into events; how many were published.  With no
        stream open nobody reads them: what was noted is dropped, and the ring
        with it (a page that comes back is told to fetch everything).  Building
        them took a twentieth of every daemon's loop on the 100-host bed during a
        job, with no page open anywhere."""
        before = self.seq
        tasks, self._tasks = self._tasks, {}
        heads, self._heads = self._heads, set()
        resets, self._resets = self._resets, set()
        logs, self._logs = self._logs, {}
        messages, self._messages = self._messages, []
        if not self.watchers:
            if tasks or heads or logs or messages:
                self.seq += 1  # the events of this change are gone: resuming from before it resets
                self.ring.clear()
            return 0
        book = self.views.book
        for uuid in heads | set(tasks):
            doc = book.docs.get(uuid)
            if doc is None:
                continue
            if doc.deleted is not None:
                self._publish("gone", {"job": uuid})
                continue
            if book.get(uuid) is None:
                continue  # changes that overtook the job's creation
            self._publish("job", {"job": self.views.row(doc)})
            if uuid in resets:  # a new generation: every task is queued again
                self._publish("tasks", {"job": uuid, "tasks": self.views.tasks(doc), "all": True})
            elif uuid in tasks:
                self._publish("tasks", {"job": uuid, "tasks": self.views.tasks(doc, tasks[uuid])})
        for uuid, lines in logs.items():
            doc = book.get(uuid)
            if doc is None:
                continue
            base = doc.log_base
            shown = sorted((s, line) for s, line in lines if base is None or s >= base)
            if shown:
                self._publish("log", {"job": uuid, "replaced": base in dict(lines),
                                      "lines": [{"time": s[0] / 1000, "node": s[2], "line": line}
                                                for s, line in shown]})
        for m in messages:
            audience = frozenset({m["to"], m["sender"]}) if m.get("to") else None
            self._publish("message", m, audience)
        if self.seq != before:
            self.published_at = trio.current_time()
            self.kick()
        return self.seq - before

    def watch(self) -> None:
        """An event stream opens: the farm changes nobody watched are published first
        (a farm event carries the whole farm, so the last one is enough)."""
        self.watchers += 1
        if self._farm:
            self.publish_farm()

    def unwatch(self) -> None:
        """An event stream closed."""
        self.watchers -= 1

    def publish_farm(self) -> None:
        """Publish the farm now."""
        self._farm = False
        self._publish("farm", self.views.farm())
        self.published_at = trio.current_time()
        self.kick()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish what changed, ``COALESCE`` seconds after the first change; the farm at
        most every ``FARM_EVERY`` seconds."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._farm_loop)
            task_status.started()
            while True:
                await self._kick.wait()
                await trio.sleep(COALESCE)
                self._kick = trio.Event()
                self.flush()
                if self._farm and self.watchers:
                    self._farm_due.set()

    async def _farm_loop(self) -> None:
        while True:
            await self._farm_due.wait()
            self._farm_due = trio.Event()
            self.publish_farm()
            await trio.sleep(FARM_EVERY)

    # -- streams ------------------------------------------------------------------------

    def since(self, last_id: str | None, user: str) -> tuple[list[bytes], int] | None:
        """Events after ``last_id`` for ``user`` and the sequence reached; None if the
        stream cannot resume (another boot, or events gone from the ring)."""
        if not last_id:
            return [], self.seq
        boot, _, seq_text = last_id.partition("-")
        try:
            seq = int(seq_text)
        except ValueError:
            return None
        if boot != self.boot or seq > self.seq:
            return None
        if seq < self.seq and (not self.ring or self.ring[0].seq > seq + 1):
            return None
        return self.after(seq, user), self.seq

    def after(self, seq: int, user: str) -> list[bytes]:
        """The wire form of the events after ``seq`` that ``user`` may see."""
        out = []
        for p in reversed(self.ring):
            if p.seq <= seq:
                break
            if p.audience is None or user in p.audience:
                out.append(p.wire)
        out.reverse()
        return out

    def reset_event(self) -> bytes:
        """Tells a page to fetch everything again; carries the current id."""
        return _encode(self.seq, self.boot, "reset", {})

    async def wait(self, seq: int) -> None:
        """Return once events after ``seq`` exist (or streams are kicked)."""
        if self.seq > seq:
            return
        await self._new.wait()
