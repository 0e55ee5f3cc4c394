"""The scheduler: runs on the node that holds the server role.

It assigns queued tasks to idle, verified, sharing workers that have the
job's renderer, in queue order and within the job's machine filter.  It is
woken by events (a task re-queued, a worker freed, a job started, a machine
joining), never by polling, so an idle worker gets work as soon as it exists.

The decisions are pure parts of ``node.jobs.scheduling``, each with its own
rules and costs: the leases and their deadline heap (``leases``), the queue
index the job book's change listener keeps current (``queue``), and who gets
which task, with prefetch and the machine rules (``policy``).  This module
carries them out: it writes the job book, sends Assign and Cancel, keeps
sessions to the workers and hears their reports.

Assignments are leases: a worker's progress reports renew them; a lease that
lapses (its Assign went astray, the worker dropped the task, went offline or
fell silent for long: ``node.jobs.scheduling.leases`` says when) re-queues the
task as a new attempt.  A lease lapses only the server's lag
(node/membership/health.py: how far behind its loop runs) after its
deadline, so the reports that wait unread while a starved server does not
run do not lapse them.  After ``retries`` attempts that failed in the render
the task fails.  An attempt lost with its worker (gone, silent, or giving the
task up as it shuts down) is not the task's fault and does not count, up to
``LOST_LIMIT`` times the retries in all.  Only an attempt the worker took up
counts towards that limit (it reported on the task, or went offline with it:
a frame that takes down every machine it reaches); one whose Assign may never
have reached its worker does not: on the 100-host bed, where handshakes timed
out by the thousand and Assigns went astray, tasks lapsed up to ten times of
the twelve allowed, though no frame harmed a machine.  A worker that goes
offline (no longer online in the farm's membership; with no overlay, its
session ends) loses its leases at their deadlines: a lease time after its
last report at most, so a false death refuted meanwhile (on the 100-host bed,
each daemon saw dozens a minute) costs nothing.
Every Assign and Cancel carries the server's term.

A waiting (prefetched) task is an ordinary lease: ASSIGNED in the book,
renewed by the worker's reports (it reports its waiting task with each report
of its current one), lapsed, lost with the session, retried and cancelled
like any other.

A worker can hold tasks this server does not know of (an earlier term's server
assigned them, or their leases lapsed while it was cut off or frozen and it
rendered on).  It refuses what it has no slot for, as busy; the refused task
is queued again and the worker is left out until it reports a task finished
(it freed a slot, whoever assigned the task), the server fails to reach it,
or a lease time passes.  Without that, the refusal's requeue handed the task
straight back to the same "idle" worker: a refusal loop, and with this node's
own worker one that never yielded (the daemon hung).  Sends to this node's
own worker also yield after each message, so no cycle through it can hold
the run loop.

State written to the job book: ASSIGNED (here), DELIVERING or SUCCEEDED (by
the worker / the submitter), QUEUED of the next attempt or FAILED (here).  A
job that ends gets its ``ended`` field ([generation, "done" or "failed"]) and
its "job done" line once: a new server indexes every job, finished ones too,
and used to log every finished job's end again at each takeover.
Progress stays in memory: it changes too often to replicate.

Cost: a wake-up costs what changed, not the size of the book (see the
parts' own notes); the roster of workers is cached until the membership
changes, and leases are scanned for offline workers only when it changed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

import trio

from node.jobs.election import Election
from node.jobs.operations import Jobs, job_state, tiling_of
from node.jobs.scheduling.leases import ACTIVE, Key, Lease, Leases
from node.jobs.scheduling.policy import Policy
from node.jobs.scheduling.queue import QueueIndex
from node.membership.health import STALL_CATCHUP
from node.membership.peers import Peers
from node.membership.session import Session, SessionLost
from node.nursery import service_nursery
from protocol import ProtocolError
from protocol.crdt import JobDoc, Phase, TaskState, task_current
from protocol.enums import NetRenderFlags, RenderResult
from protocol.messages import Assign, Cancel, TaskUpdate

log = logging.getLogger("rendernode.scheduler")
F = NetRenderFlags
UNREACHABLE_WAIT = 5.0  #: seconds a member the server could not reach is not offered work
#: workers the server dials at once to deliver their assignments: at a job's start on a
#: farm of 100, all of them at once made every handshake slow, and many timed out half done
DIALS_AT_ONCE = 8
#: assignments handed out in one go; the rest follow once the loop has yielded.  A job's
#: start on a farm of 100 hands out 200 (a task and a waiting one per worker) without a
#: yield, a stretch that on the 100-host bed, where a daemon gets a fiftieth of a core,
#: can keep its heartbeats in for seconds.  (The farm there still held the server dead
#: 2-13 s into a job with bursts, as 4-5 s into three of five without: that has another
#: cause, not found yet.)
ASSIGN_BURST = 16
LATE_WAKE = 0.05  #: seconds late from which the loop lets the sessions read before it checks leases
LOST_LIMIT = 4  #: attempts in all, in multiples of ``retries``, before a task that keeps losing its workers fails


class LocalWorker(Protocol):
    """What the scheduler needs of this node's own worker."""

    async def assign(self, msg: Assign, server: str) -> None:
        """Take an assignment from ``server``."""

    async def cancel(self, msg: Cancel) -> None:
        """Stop a task."""


class Scheduler:
    """Task assignment, leases and retries for the server role: carries out the
    decisions of ``node.jobs.scheduling``."""

    def __init__(self, jobs: Jobs, peers: Peers, election: Election, local: LocalWorker,
                 renderers: dict[str, str], share: bool, retries: int, exclude_after: int,
                 lease: float) -> None:
        self.jobs = jobs
        self.book = jobs.book
        self.peers = peers
        self.election = election
        self.local = local
        self.me = peers.ident.uuid
        self.renderers = renderers
        self.share = share
        self.retries = retries
        self.lease_time = lease
        self.leases = Leases(lease)
        self.queue = QueueIndex()
        self.policy = Policy(self.queue, self.leases, exclude_after)
        self.losses: dict[Key, int] = {}  #: task -> attempts lost with their worker
        self._roster: tuple[dict[str, set[str]], dict[str, str]] | None = None
        self._membership = True  #: sessions changed since ``_online`` was taken
        self._online: set[str] = set()  #: the workers online, as of the last check of the leases
        #: worker -> Assign/Cancel not yet sent (a few: DEPTH assignments and their cancels)
        self._outbox: dict[str, deque[Assign | Cancel]] = {}
        self._dials = trio.CapacityLimiter(DIALS_AT_ONCE)  #: sends that wait on a dial to their worker
        self._active = False
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.assigned_count = 0
        self._held: set[str] = set()  #: workers whose sessions the server holds
        self._unreachable: dict[str, float] = {}  #: worker -> when the server last failed to reach it
        self.book.listeners.append(self._on_change)
        peers.on_change.append(self._peers_changed)
        peers.register_handler(TaskUpdate, self._on_update_msg)
        peers.register_delivery(TaskUpdate, self._on_relayed_update)
        election.on_role.append(self.poke)

    # -- events --------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: look for work to assign."""
        self._wake.set()

    def _peers_changed(self) -> None:
        self._roster = None
        self.policy.membership_changed()
        self._membership = True
        self._wake.set()

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        if not self._active:
            return
        uuid = doc.uuid
        if doc.deleted is None and self.book.get(uuid) is None:
            return  # not a job yet: changes that overtook its creation
        change = self.queue.on_change(delta, doc)
        if change.dropped is not None:
            self._drop_job(uuid, change.dropped)
        if change.head:
            self.policy.job_changed(uuid)
        for tid, state in change.tasks.items():
            if state.done:
                self.leases.retire((uuid, tid))  # nothing more to wait for
            else:
                self._adopt(uuid, tid, state)
        self._wake.set()

    def _adopt(self, job: str, tid: int, state: TaskState) -> None:
        """Lease a task another server assigned, as ``_take_over`` does: a state
        merged in when a partition heals, or an Assign a stale server sent before it
        stepped down (its worker ignores it), of an earlier term or of this one (two
        starved nodes can claim the role with the same term, each having seen the
        same highest one: on the 100-host bed the one that stepped down left 2 tasks
        ASSIGNED that nobody waited on; this node's own Assign of this term is
        written before its lease is granted, and is not another's).  The lease is
        renewed if the worker reports on the task, and lapses (re-queueing it) if
        nobody does; without it the task would stay ASSIGNED for good."""
        key = (job, tid)
        term = self.election.term
        other_server = state.term < term or (state.term == term and state.stamp[2] != self.me)
        if state.phase in ACTIVE and state.worker and other_server and key not in self.leases and job in self.queue:
            self.leases.adopt(key, state, time.monotonic())

    def _tiles(self, doc: JobDoc, tid: int) -> dict[str, Any]:
        """The Assign fields of a tiled job's task: its tiles' regions, the frame size
        and the overscan (none for an untiled job)."""
        tiling = tiling_of(doc)
        if tiling is None:
            return {}
        tiles = tiling.tiles_of(tid, int(doc.value("chunk", 1)))
        return {"tiles": [[t, *tiling.region(t)] for t in tiles], "size": [tiling.width, tiling.height],
                "overscan": tiling.overscan}

    def _unschedule(self, job: str) -> None:
        self.queue.unschedule(job)
        self._forget(job)

    def _forget(self, job: str) -> None:
        """Drop what the scheduler kept of ``job``'s tasks (the queue index dropped it)."""
        self.policy.forget(job)
        for key in [k for k in self.losses if k[0] == job]:
            del self.losses[key]

    def _reset(self) -> None:
        self.queue.clear()
        self.leases.clear()
        self.policy.reset()
        self._membership = True

    def _take_over(self) -> None:
        """Become the scheduler: rebuild queues and leases from the job book."""
        now = time.monotonic()
        self._reset()
        for doc in self.book.live():
            self.queue.index(doc)
            for tid in self.queue.open(doc.uuid):
                s = task_current(doc, tid)
                if s.phase in ACTIVE and s.worker:
                    self.leases.adopt((doc.uuid, tid), s, now)
        log.info("scheduler active: %d jobs, %d leases carried over", len(self.queue), len(self.leases))

    def _drop_job(self, job: str, reason: str) -> None:
        """``job`` stopped or was deleted (the queue index dropped it): end its leases,
        queue their tasks again and cancel them."""
        self._forget(job)
        for key in self.leases.of_job(job):
            lease = self.leases.pop(key)
            doc = self.book.docs.get(job)
            if doc is not None and doc.deleted is None and not lease.finished:
                cur = task_current(doc, key[1])
                if not cur.done:  # stopped by a user: neither a failure nor a loss
                    self._requeue(doc, key[1], cur, reason, count=False)
            self._send_soon(lease.worker, Cancel(job=job, task=key[1], term=self.election.term, reason=reason))

    # -- assignment -------------------------------------------------------------------

    def workers(self) -> dict[str, set[str]]:
        """Machines that may render now: uuid -> renderer names.  Those with a
        session say so in their Hello; the farm's other online members in their
        membership metadata (the server dials them when it assigns).  A member the
        server could not reach lately is left out for ``UNREACHABLE_WAIT`` s."""
        out: dict[str, set[str]] = {}
        if self.share:
            out[self.me] = set(self.renderers)
        for uuid, session in self.peers.sessions.items():
            hello = session.hello
            if hello is not None and hello.sharing:
                out[uuid] = set(hello.capabilities)
        overlay = self.peers.overlay
        if overlay is not None:
            now = time.monotonic()
            for uuid in overlay.online():
                entry = overlay.member(uuid)
                if (uuid in out or uuid in self.peers.sessions or entry is None or not entry.meta.sharing
                        or now - self._unreachable.get(uuid, -UNREACHABLE_WAIT) < UNREACHABLE_WAIT):
                    continue
                out[uuid] = {name for name in entry.meta.capabilities.split(",") if name}
        return out

    def _hold_workers(self, workers: dict[str, set[str]] | None) -> None:
        """Keep sessions to the farm's workers while this node is the server."""
        wanted = set(workers or ()) - {self.me}
        for uuid in self._held - wanted:
            self.peers.release(uuid, "worker")
        for uuid in wanted - self._held:
            self.peers.hold(uuid, "worker")
        self._held = wanted

    def _names(self) -> dict[str, str]:
        names = {self.me: self.peers.prefs.name}
        overlay = self.peers.overlay
        if overlay is not None:
            for uuid in overlay.online():
                entry = overlay.member(uuid)
                if entry is not None and entry.meta.name:
                    names[uuid] = entry.meta.name
        for uuid, session in self.peers.sessions.items():
            if session.hello is not None:
                names[uuid] = session.hello.name
        return names

    def _scheduled(self) -> list[JobDoc]:
        """The scheduled jobs' documents, in queue order."""
        docs = []
        for uuid in self.queue.order(self.book.docs):
            doc = self.book.get(uuid)
            if doc is not None:
                docs.append(doc)
        return docs

    def assign_all(self) -> None:
        """Hand queued tasks to idle workers in queue order, then a waiting task
        to workers rendering one (the policy decides; see node.jobs.scheduling.policy),
        ``ASSIGN_BURST`` at a time: the run loop hands out the rest after it yields."""
        if self._roster is None:
            self._roster = (self.workers(), self._names())
            self._hold_workers(self._roster[0])
        workers, names = self._roster
        plan = self.policy.plan(time.monotonic(), workers, names, self._scheduled(), limit=ASSIGN_BURST)
        for uuid, none in plan.nomachine.items():
            doc = self.book.get(uuid)
            if doc is not None:
                self._mark_nomachine(doc, none)
        for a in plan.assignments:
            doc = self.book.get(a.job)
            if doc is not None:
                self._assign(doc, a.tid, task_current(doc, a.tid), a.worker, prefetch=a.prefetch)
        if plan.full:
            self._wake.set()  # the run loop plans the rest after a checkpoint

    def _mark_nomachine(self, doc: JobDoc, none: bool) -> None:
        nomachine = int(RenderResult.RENDERRESULT_NOMACHINE)
        current = doc.value("result")
        if none and current != nomachine:
            self.jobs.set_fields(doc, "no verified machine can render this job (RENDERRESULT_NOMACHINE)",
                                 result=nomachine)
        elif not none and current == nomachine:
            self.jobs.set_fields(doc, "a machine that can render this job is available",
                                 result=int(RenderResult.RENDERRESULT_OK))

    def _assign(self, doc: JobDoc, tid: int, cur: TaskState, worker: str, prefetch: bool = False) -> None:
        term = self.election.term
        state = TaskState(gen=doc.gen, done=0, attempt=cur.attempt, phase=Phase.ASSIGNED,
                          stamp=self.book.stamp(), worker=worker,
                          machines=tuple(dict.fromkeys((*cur.machines, worker))),
                          lease_until=time.time() + self.lease_time, term=term, failures=cur.failures,
                          runs=tuple(sorted({*cur.runs, (term, cur.attempt)})))
        self.jobs.set_task(doc, tid, state)
        self.leases.grant((doc.uuid, tid), worker, doc.gen, cur.attempt, time.monotonic(), prefetched=prefetch,
                          delivered=False)
        self.assigned_count += 1
        msg = Assign(job=doc.uuid, task=tid, frames=self.queue.frames(doc)[tid], gen=doc.gen,
                     attempt=cur.attempt, term=term, renderer=str(doc.value("renderer")),
                     scene=str(doc.value("scene")), origin=str(doc.value("origin")),
                     scene_sha256=str(doc.value("scene_sha256", "")), rdata=dict(doc.value("rdata") or {}),
                     flags=int(doc.value("flags", 0)), outputs=bool(doc.value("outputs", True)),
                     **self._tiles(doc, tid))
        self._send_soon(worker, msg)

    def _send_soon(self, worker: str, msg: Assign | Cancel) -> None:
        """Send in the background; one worker's messages leave in the order made."""
        if self._nursery is None:
            return
        box = self._outbox.get(worker)
        if box is not None:
            box.append(msg)
            return
        self._outbox[worker] = deque([msg])
        self._nursery.start_soon(self._drain, worker)

    async def _drain(self, worker: str) -> None:
        box = self._outbox[worker]
        try:
            while box:
                await self._send(worker, box.popleft())
        finally:
            del self._outbox[worker]

    async def _send(self, worker: str, msg: Assign | Cancel) -> None:
        if worker == self.me:
            if isinstance(msg, Assign):
                await self.local.assign(msg, self.me)
                self.leases.delivered((msg.job, msg.task), worker, msg.gen, msg.attempt, time.monotonic())
            else:
                await self.local.cancel(msg)
            # this node's worker answers at once (a refusal re-enters the scheduler without
            # awaiting anything): yield, so no cycle through it can hold the run loop
            await trio.lowlevel.checkpoint()
            return
        try:
            if worker in self.peers.sessions:
                await self.peers.deliver_to(worker, msg, hold="worker")
            else:  # a dial first: a few at a time (a job's start has the server dial every worker)
                async with self._dials:
                    await self.peers.deliver_to(worker, msg, hold="worker")
            if isinstance(msg, Assign):  # its lease runs from its delivery, not its turn to dial
                self.leases.delivered((msg.job, msg.task), worker, msg.gen, msg.attempt, time.monotonic())
        except (SessionLost, ProtocolError) as exc:
            self._unreachable[worker] = time.monotonic()
            self._roster = None
            self.policy.roster_changed()
            self._lost_worker(worker, f"cannot reach worker: {exc}")

    # -- reports ----------------------------------------------------------------------

    async def _on_update_msg(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, TaskUpdate)
        self.on_update(session.uuid, msg)

    def _on_relayed_update(self, origin: str, msg: Any) -> None:
        """A worker's report that reached us through the overlay (no session between us)."""
        assert isinstance(msg, TaskUpdate)
        self.on_update(origin, msg)

    def on_update(self, worker: str, msg: TaskUpdate) -> None:
        """A worker's progress or end of a task."""
        if not self._active:
            return
        key = (msg.job, msg.task)
        if msg.finished and msg.result != RenderResult.RENDERRESULT_NOMACHINE and self.policy.freed(worker):
            self._wake.set()  # a worker that refused as busy ended one of its tasks: it has room
        self.leases.report(worker, time.monotonic())
        lease = self.leases.get(key)
        if lease is None or lease.worker != worker or (lease.gen, lease.attempt) != (msg.gen, msg.attempt):
            return  # a report of an attempt we no longer wait for
        self.leases.renew(lease, time.monotonic())
        lease.progress = msg.progress
        if not msg.finished:
            return
        self.leases.release(worker, key)
        doc = self.book.get(msg.job)
        if msg.result == RenderResult.RENDERRESULT_OK:
            lease.finished = True
            if doc is None or task_current(doc, msg.task).done:
                self.leases.retire(key)
        elif msg.result == RenderResult.RENDERRESULT_USERBREAK:
            # a task this server cancelled has no lease any more: the worker stopped
            # it on its own (shutting down), so it goes back to the queue
            self._lapse(key, f"the worker gave it up ({msg.error or 'user break'})")
        elif msg.result == RenderResult.RENDERRESULT_NOMACHINE:  # refused: busy or no renderer
            self.leases.retire(key)
            self.policy.refused(worker, lease.prefetched, time.monotonic())
            if doc is not None:
                cur = task_current(doc, msg.task)
                if not cur.done:
                    self._requeue(doc, msg.task, cur, msg.error, count=False)
        else:
            self.leases.retire(key)
            if doc is not None:
                self._failed(doc, msg, worker)
        self.assign_all()  # the freed worker's next task leaves now, not one scheduler pass later
        self._wake.set()

    def _failed(self, doc: JobDoc, msg: TaskUpdate, worker: str) -> None:
        name = RenderResult(msg.result).name if msg.result in RenderResult._value2member_map_ else str(msg.result)
        reason = f"{name}: {msg.error}" if msg.error else name
        self.jobs.add_log(doc, f"task {msg.task} attempt {msg.attempt + 1} failed on {worker}: {reason}")
        exclude = bool(int(doc.value("flags", 0)) & F.NETRENDERFLAGS_EXCLUDECLIENTONRENDERINGERROR)
        count, excluded = self.policy.failed(doc.uuid, msg.task, worker, exclude)
        if excluded:
            self.jobs.add_log(doc, f"machine {worker} excluded from this job after {count} failures")
        self._requeue(doc, msg.task, task_current(doc, msg.task), reason)

    def _requeue(self, doc: JobDoc, tid: int, cur: TaskState, reason: str, count: bool = True,
                 lost: bool = False) -> None:
        """Queue ``tid`` again as a new attempt.  Only attempts that failed in the render
        (``count``) use up the job's retries.  One ``lost`` with its worker (gone, silent,
        given up while shutting down) did not fail, but ``LOST_LIMIT`` times the retries
        of those (a frame that takes down every machine it reaches) fail it too; a
        worker refusing a task (busy) is neither."""
        attempt = cur.attempt + 1
        failures = cur.failures + (1 if count else 0)
        losses = self.losses.get((doc.uuid, tid), 0) + (1 if lost else 0)
        if lost:
            self.losses[(doc.uuid, tid)] = losses
        if (count and failures >= self.retries) or (lost and losses >= self.retries * LOST_LIMIT):
            state = TaskState(gen=doc.gen, done=1, attempt=attempt, phase=Phase.FAILED,
                              stamp=self.book.stamp(), machines=cur.machines, error=reason,
                              render_time=cur.render_time, term=self.election.term, failures=failures)
            what = f"{failures} failed attempts" if count else f"its worker was lost {losses} times"
            self.jobs.add_log(doc, f"task {tid} failed after {what}: {reason}")
        else:
            state = TaskState(gen=doc.gen, done=0, attempt=attempt, phase=Phase.QUEUED,
                              stamp=self.book.stamp(), machines=cur.machines, error=reason,
                              term=self.election.term, failures=failures)
        self.jobs.set_task(doc, tid, state)

    def _lost_worker(self, worker: str, reason: str) -> None:
        self.policy.freed(worker)
        for key in self.leases.of_worker(worker):
            self._lapse(key, reason)
        self.leases.free(worker)

    def _lapse(self, key: Key, reason: str) -> None:
        self._lapsed(key, self.leases.pop(key), reason)

    def _lapsed(self, key: Key, lease: Lease, reason: str) -> None:
        """``key``'s lease ended unfulfilled: queue the task again, unless it moved on."""
        doc = self.book.get(key[0])
        if doc is None:
            return
        cur = task_current(doc, key[1])
        if cur.done or (cur.gen, cur.attempt) != (lease.gen, lease.attempt):
            return
        self.jobs.add_log(doc, f"task {key[1]} on {lease.worker}: {reason}; re-queued")
        self._requeue(doc, key[1], cur, reason, count=False, lost=lease.taken_up(reason))

    def _check(self) -> float:
        """Lapse the leases that are due; return seconds to the next deadline.
        (Leases whose task is done were retired when the task state arrived.)"""
        now = time.monotonic()
        if self._membership:
            self._membership = False
            self._online = set(self.peers.online_uuids()) | {self.me}  # sessions or, relayed, the membership
        # a report sent within the loop's lag may still wait unread (node/membership/health.py)
        lag = self.peers.health.lag(trio.current_time())
        for key, lease, why in self.leases.due(now - lag, self._online):
            self._lapsed(key, lease, why)
        self._finish_jobs()
        rest = self.policy.resting_until(now)
        deadline = self.leases.next_deadline()
        return min(3600.0, (now + 3600.0 if rest is None else rest) - now,
                   deadline + lag - now if deadline is not None else 3600.0)

    def _finish_jobs(self) -> None:
        for uuid in self.queue.finished():
            doc = self.book.get(uuid)
            if doc is None:
                continue
            state = job_state(doc)
            if state in ("done", "failed"):
                self._unschedule(uuid)
                ended = [doc.gen, state]
                if doc.value("ended") == ended:
                    continue  # an earlier server said so (every new server indexes every job)
                self.jobs.set_fields(doc, f"job {state}", ended=ended)
                if state == "done" and int(doc.value("flags", 0)) & F.NETRENDERFLAGS_DELETEAFTERRENDERING:
                    self.jobs.delete(doc)

    # -- service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Assign whenever something changes while this node is the server."""
        async with service_nursery(self):
            task_status.started()
            while True:
                is_server = self.election.role == "server"
                if is_server and not self._active:
                    self._active = True
                    self._take_over()
                elif not is_server and self._active:
                    self._active = False
                    self._reset()
                    self._hold_workers(None)
                wait = 3600.0
                if self._active:
                    self.assign_all()
                    wait = self._check()
                began = trio.current_time()
                with trio.move_on_after(wait) as timer:
                    await self._wake.wait()
                if timer.cancelled_caught:  # how late this loop woke tells the node's health
                    if self.peers.health.woke_for(began + wait, began, trio.current_time()) >= LATE_WAKE:
                        # stalled: read the reports that wait before leases are checked
                        await trio.sleep(STALL_CATCHUP)
                self._wake = trio.Event()

    def status(self) -> dict[str, Any]:
        """What the scheduler is doing, for ``rendernode status``."""
        return {"active": self._active, "leases": len(self.leases), "busy": len(self.leases.busy),
                "assigned": self.assigned_count}

    def progress(self, job: str) -> dict[int, float]:
        """In-flight progress of a job's tasks."""
        return {tid: lease.progress for (j, tid), lease in self.leases.items() if j == job}
