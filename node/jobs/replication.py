"""Replication of the job book between verified peers.

- Deltas made on this node are pushed to every live session as they happen
  (batched per wake-up, merged per job); after a push the next one waits
  ``PUSH_INTERVAL``, so under a stream of changes (a server assigning a
  thousand tasks a second) each peer gets a few messages a second holding
  many changes instead of one message per change, while a change made after
  a quiet spell still leaves at once.
- Anti-entropy: with every new neighbour (the overlay's active view; every
  session when there is no overlay), and every ``ANTI_ENTROPY_INTERVAL``,
  both sides send the digest of every job they hold; each then sends its
  document of every job whose digest differs or that the other lacks.  A big
  job (over ``PARTS_FROM`` tasks) the other holds too is compared part by part
  first (``JobParts``: its head, 16 buckets of its log lines by window of
  time, and 64 buckets of its tasks), and each side sends the other only the
  parts that differ: while a job renders
  every digest of it differs, and whole documents of hundreds of tasks went
  back and forth.  Merging is a join, so both end equal.
- ``replicate`` sends deltas as requests and counts the peers that answer once
  the deltas are on their disk (submit waits for ``replicas`` of them).

Documents larger than one control message are split into parts (head and log
first, then tasks in slices); each part is itself a valid delta.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

from node.jobs.book import JobBook
from node.membership.peers import Peers
from node.membership.session import RequestFailed, Session, SessionLost
from node.nursery import service_nursery
from protocol import ProtocolError
from protocol.crdt import JobDoc, absorb, differing_parts, job_from_wire, job_to_wire
from protocol.messages import JobDelta, JobDigest, JobParts, Reply

log = logging.getLogger("rendernode.replication")
TASKS_PER_PART = 2000
LOG_PER_PART = 500
BATCH_BYTES = 512 * 1024
MAX_PENDING_JOBS = 10_000
REPLICATE_TIMEOUT = 10.0
PUSH_INTERVAL = 0.02  #: seconds between two pushes of local changes
ANTI_ENTROPY_INTERVAL = 10.0  #: seconds between digest exchanges with every peer
PARTS_FROM = 64  #: tasks above which a job that differs is compared part by part first


def split(doc: JobDoc) -> list[JobDoc]:
    """``doc`` as deltas small enough for one message each."""
    if len(doc.tasks) <= TASKS_PER_PART and len(doc.log) <= LOG_PER_PART:
        return [doc]
    logs = list(doc.log.items())
    parts = [JobDoc(doc.uuid, doc.fields, doc.gen, doc.deleted, {}, dict(logs[:LOG_PER_PART]), doc.log_base)]
    for i in range(LOG_PER_PART, len(logs), LOG_PER_PART):
        parts.append(JobDoc(doc.uuid, log=dict(logs[i : i + LOG_PER_PART])))
    tasks = list(doc.tasks.items())
    for i in range(0, len(tasks), TASKS_PER_PART):
        parts.append(JobDoc(doc.uuid, tasks=dict(tasks[i : i + TASKS_PER_PART])))
    return parts


def batches(parts: list[JobDoc]) -> list[list[dict[str, Any]]]:
    """Wire forms of ``parts`` grouped into messages of about BATCH_BYTES or less."""
    out: list[list[dict[str, Any]]] = []
    size = BATCH_BYTES
    for part in parts:
        wire = job_to_wire(part)
        n = len(msgpack.packb(wire, use_bin_type=True))
        if size + n > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(wire)
        size += n
    return out


class Replication:
    """Pushes local changes, answers peers' deltas and digests."""

    def __init__(self, book: JobBook, peers: Peers) -> None:
        self.book = book
        self.peers = peers
        self._pending: dict[str, JobDoc] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._incoming: JobDoc | None = None  #: the peer's delta being merged
        self._random = random.Random()
        #: jobs submitted here that fewer peers hold than they want: job -> (wanted, holders)
        self.short: dict[str, tuple[int, set[str]]] = {}
        book.listeners.append(self._on_change)
        peers.register_handler(JobDelta, self._on_delta)
        peers.register_delivery(JobDelta, self._on_pushed)
        peers.register_handler(JobDigest, self._on_digest)
        peers.register_handler(JobParts, self._on_parts)
        peers.on_session.append(self._on_session)
        peers.on_neighbour.append(self._on_neighbour)

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        if delta is self._incoming:
            return  # a peer's change: its author pushes it to everyone
        # made here: also a change a listener made while a peer's change merged
        # (the scheduler re-queueing the tasks of a job a peer stopped)
        self._pending[delta.uuid] = absorb(self._pending.get(delta.uuid), delta)[0]
        self._wake.set()

    def _on_session(self, session: Session) -> None:
        if self.peers.overlay is None:  # a full mesh: every session is a neighbour
            self._on_neighbour(session)

    def _on_neighbour(self, session: Session) -> None:
        """A new neighbour: exchange digests now (it may have been cut off).  Not on
        the sessions opened for work (assignments, fetches, deliveries): they
        come and go all through a job, and each exchange of a busy job's digest
        sent its whole document both ways."""
        if self._nursery is not None:
            self._nursery.start_soon(self._send_digest, session)

    async def _send_digest(self, session: Session, digests: JobDigest | JobParts | None = None) -> None:
        try:
            await session.send(digests if digests is not None else JobDigest(self.book.digests()))
        except (SessionLost, ProtocolError):
            pass

    async def _on_delta(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, JobDelta)
        for wire in msg.jobs:
            self._incoming = job_from_wire(wire)
            try:
                self.book.apply(self._incoming)
            finally:
                self._incoming = None
        if req_id and self._nursery is not None:
            self._nursery.start_soon(self._ack_when_durable, session, req_id)

    def _on_pushed(self, origin: str, msg: Any) -> None:
        """Deltas another node broadcast through the overlay."""
        assert isinstance(msg, JobDelta)
        for wire in msg.jobs:
            self._incoming = job_from_wire(wire)
            try:
                self.book.apply(self._incoming)
            finally:
                self._incoming = None

    async def _ack_when_durable(self, session: Session, req_id: int) -> None:
        await self.book.durable()
        try:
            await session.send(Reply(True), req_id)
        except (SessionLost, ProtocolError):
            pass

    def watch(self, job: str, wanted: int, holders: set[str]) -> None:
        """Count the peers holding ``job`` until ``wanted`` of them do (a peer's
        digest naming the job counts it)."""
        if len(holders) < wanted:
            self.short[job] = (wanted, set(holders))

    def copies(self, job: str) -> tuple[int, int] | None:
        """(peers known to hold it, peers it wants) for a job submitted here that is
        under-replicated; None once it has its replicas (or was never watched)."""
        entry = self.short.get(job)
        if entry is None:
            return None
        if self.book.get(job) is None:  # deleted
            del self.short[job]
            return None
        return len(entry[1]), entry[0]

    async def _on_digest(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, JobDigest)
        for job in [j for j in self.short if j in msg.digests]:
            self._held_by(job, session.uuid)
        ours = self.book.digests()
        differ = [u for u, d in ours.items() if msg.digests.get(u) != d]
        # a big job the peer holds too: compare parts first (a busy job differs in a few)
        big = {u: self.book.part_digests(u) or b"" for u in differ
               if u in msg.digests and len(self.book.docs[u].tasks) > PARTS_FROM}
        whole = [self.book.docs[u] for u in differ if u not in big]
        if self._nursery is not None:
            if whole:
                self._nursery.start_soon(self._send_docs, session, whole)
            if big:
                self._nursery.start_soon(self._send_digest, session, JobParts(big, reply=True))

    async def _on_parts(self, session: Session, msg: Any, req_id: int) -> None:
        """A peer's part digests of jobs whose digests differ: send it the parts that
        differ (the whole job if it lacks it) and, when asked, ours of them."""
        assert isinstance(msg, JobParts)
        deltas: list[JobDoc] = []
        ours: dict[str, bytes] = {}
        for uuid, theirs in msg.parts.items():
            doc = self.book.docs.get(uuid)
            mine = self.book.part_digests(uuid)
            if doc is None or mine is None:
                ours[uuid] = b""  # lacking it: the peer sends all of it
                continue
            ours[uuid] = mine
            delta = doc if not theirs else differing_parts(doc, mine, theirs)
            if delta is not None:
                deltas.append(delta)
        if self._nursery is not None:
            if deltas:
                self._nursery.start_soon(self._send_docs, session, deltas)
            if msg.reply:
                self._nursery.start_soon(self._send_digest, session, JobParts(ours))

    def _held_by(self, job: str, uuid: str) -> None:
        """``uuid`` holds ``job``: one more copy of an under-replicated job."""
        entry = self.short.get(job)
        if entry is None:
            return
        wanted, holders = entry
        holders.add(uuid)
        if len(holders) >= wanted:
            del self.short[job]

    async def _send_docs(self, session: Session, docs: list[JobDoc]) -> None:
        """Send the peer the jobs (or the parts of them) its digest lacks or holds
        older; the last batch of an under-replicated job is a request, answered
        once the peer has it on disk, which counts the copy (its next digest may
        be many seconds away)."""
        try:
            for doc in docs:
                uuid = doc.uuid
                wires = batches(split(doc))
                for i, wire in enumerate(wires):
                    if uuid in self.short and i == len(wires) - 1:
                        with trio.fail_after(REPLICATE_TIMEOUT):
                            reply = await session.request(JobDelta(wire))
                        if isinstance(reply, Reply):
                            self._held_by(uuid, session.uuid)
                    else:
                        await session.send(JobDelta(wire))
        except (SessionLost, ProtocolError, RequestFailed, trio.TooSlowError) as exc:
            log.debug("anti-entropy with %s stopped: %s", session.uuid, exc)

    async def _anti_entropy(self) -> None:
        """Exchange digests now and then, so a change that reached only some nodes
        still spreads: with one random peer at a time when the farm's overlay runs
        (its cost does not grow with the farm), else with every peer."""
        while True:
            await trio.sleep(ANTI_ENTROPY_INTERVAL)
            sessions = list(self.peers.sessions.values())
            if self.peers.overlay is not None and sessions:
                sessions = [self._random.choice(sessions)]
            digests = JobDigest(self.book.digests())  # once for all: hashing a big busy job takes ~0.1 s
            for session in sessions:
                await self._send_digest(session, digests)

    async def replicate(self, deltas: list[JobDoc], want: int,
                        then: Callable[[Session], Awaitable[None]] | None = None,
                        patience: float = REPLICATE_TIMEOUT, holders: set[str] | None = None) -> int:
        """Send ``deltas`` to every live peer; return once ``want`` of them have them
        on disk (and have done ``then``, e.g. fetched the job's assets), or every
        peer answered, or ``patience`` seconds passed: the count (the peers counted
        are added to ``holders``).  Only ``want`` peers do ``then`` at a time;
        another takes the place of one that fails."""
        sessions = list(self.peers.sessions.values())
        if len(sessions) < want:  # too few sessions up: open some to other online members
            others = [u for u in self.peers.online_uuids() if u not in self.peers.sessions]
            self._random.shuffle(others)
            for uuid in others[: want - len(sessions) + 1]:
                try:
                    sessions.append(await self.peers.session(uuid))
                except SessionLost:
                    continue
        if want <= 0 or not sessions:
            return 0
        messages = batches([p for d in deltas for p in split(d)])
        acked = 0
        doers = trio.CapacityLimiter(want)
        enough = trio.Event()
        answered = 0

        async def one(session: Session) -> None:
            nonlocal acked, answered
            try:
                for wire in messages:
                    reply = await session.request(JobDelta(wire))
                    if not isinstance(reply, Reply):
                        raise SessionLost("unexpected answer")
                if then is not None:
                    async with doers:
                        if acked >= want:  # handed the slot as the last doer finished: not needed
                            return
                        await then(session)
                acked += 1
                if holders is not None:
                    holders.add(session.uuid)
            except (SessionLost, ProtocolError, RequestFailed) as exc:
                log.info("replica %s did not take the job: %s", session.uuid, exc)
            answered += 1
            if acked >= want or answered == len(sessions):
                enough.set()

        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(one, session)
            with trio.move_on_after(patience):
                await enough.wait()
            nursery.cancel_scope.cancel()
        return acked

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Push local deltas as they happen."""
        async with service_nursery(self) as nursery:
            nursery.start_soon(self._anti_entropy)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                pending, self._pending = self._pending, {}
                if not pending:
                    continue
                for wire in batches([p for d in pending.values() for p in split(d)]):
                    await self.peers.broadcast(JobDelta(wire))
                await trio.sleep(PUSH_INTERVAL)
