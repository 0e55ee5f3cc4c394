"""The scheduler: runs on the node that holds the server role.

It assigns queued tasks to idle, verified, sharing workers that have the
job's renderer, in queue order and within the job's machine filter.  It is
woken by events (a task re-queued, a worker freed, a job started, a machine
joining), never by polling, so an idle worker gets work as soon as it exists.

Assignments are leases: a worker's progress reports renew them; a lease that
lapses (worker frozen, cut off, killed) re-queues the task as a new attempt;
after ``retries`` attempts the task fails.  A worker whose session ends loses
its leases at once.  Every Assign and Cancel carries the server's term.

State written to the job book: ASSIGNED (here), DELIVERING or SUCCEEDED (by
the worker / the submitter), QUEUED of the next attempt or FAILED (here).
Progress stays in memory: it changes too often to replicate.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from protocol import ProtocolError
from protocol.crdt import JobDoc, Phase, TaskState, task_current
from protocol.enums import NetRenderFlags, RenderResult
from protocol.messages import Assign, Cancel, TaskUpdate

from .election import Election
from .jobs import Jobs, job_state, task_frames
from .peers import Peers
from .session import Session, SessionLost

log = logging.getLogger("rendernode.scheduler")
F = NetRenderFlags
ACTIVE = (Phase.ASSIGNED, Phase.RENDERING, Phase.DELIVERING)


class LocalWorker(Protocol):
    """What the scheduler needs of this node's own worker."""

    async def assign(self, msg: Assign, server: str) -> None:
        """Take an assignment from ``server``."""

    async def cancel(self, msg: Cancel) -> None:
        """Stop a task."""


@dataclass
class Lease:
    """One assignment the server is waiting on."""

    worker: str
    gen: int
    attempt: int
    deadline: float
    progress: float = 0.0
    finished: bool = False  #: rendered; the worker is delivering the frames


class Scheduler:
    """Task assignment, leases and retries for the server role."""

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
        self.exclude_after = exclude_after
        self.lease_time = lease
        self.leases: dict[tuple[str, int], Lease] = {}
        self.busy: dict[str, tuple[str, int]] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.excluded: dict[str, set[str]] = {}
        self._queued: dict[str, list[int]] = {}
        self._active = False
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.assigned_count = 0
        self.book.listeners.append(self._on_change)
        peers.on_change.append(self.poke)
        peers.handlers[TaskUpdate] = self._on_update_msg
        election.on_role.append(self.poke)

    # -- events --------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: look for work to assign."""
        self._wake.set()

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        if not self._active:
            return
        if doc.deleted is not None or delta.fields or delta.gen:
            if doc.deleted is not None or doc.value("state") in ("stopped", "created"):
                self._drop_job(doc.uuid, "job stopped" if doc.deleted is None else "job deleted")
            elif delta.gen or doc.uuid not in self._queued:
                self._index_job(doc)
        for tid in delta.tasks:
            state = task_current(doc, tid)
            if not state.done and state.phase == Phase.QUEUED:
                heapq.heappush(self._queued.setdefault(doc.uuid, []), tid)
        self._wake.set()

    def _index_job(self, doc: JobDoc) -> None:
        heap = [tid for tid in range(len(task_frames(doc)))
                if (s := task_current(doc, tid)).phase == Phase.QUEUED and not s.done]
        heapq.heapify(heap)
        self._queued[doc.uuid] = heap

    def _take_over(self) -> None:
        """Become the scheduler: rebuild queues and leases from the job book."""
        now = time.monotonic()
        self._queued.clear()
        self.leases.clear()
        self.busy.clear()
        for doc in self.book.live():
            self._index_job(doc)
            for tid in range(len(task_frames(doc))):
                s = task_current(doc, tid)
                if not s.done and s.phase in ACTIVE and s.worker:
                    self.leases[(doc.uuid, tid)] = Lease(s.worker, s.gen, s.attempt,
                                                         now + self.lease_time, finished=s.phase == Phase.DELIVERING)
                    if s.phase != Phase.DELIVERING:
                        self.busy[s.worker] = (doc.uuid, tid)
        log.info("scheduler active: %d jobs, %d leases carried over", len(self._queued), len(self.leases))

    def _drop_job(self, job: str, reason: str) -> None:
        self._queued.pop(job, None)
        for key in [k for k in self.leases if k[0] == job]:
            lease = self.leases.pop(key)
            if self.busy.get(lease.worker) == key:
                del self.busy[lease.worker]
            doc = self.book.docs.get(job)
            if doc is not None and doc.deleted is None and not lease.finished:
                cur = task_current(doc, key[1])
                if not cur.done:
                    self._requeue(doc, key[1], cur, reason, count=False)
            self._send_soon(lease.worker, Cancel(job=job, task=key[1], term=self.election.term, reason=reason))

    # -- assignment -------------------------------------------------------------------

    def workers(self) -> dict[str, set[str]]:
        """Machines that may render now: uuid -> renderer names."""
        out: dict[str, set[str]] = {}
        if self.share:
            out[self.me] = set(self.renderers)
        for uuid, session in self.peers.sessions.items():
            hello = session.hello
            if hello is not None and hello.sharing:
                out[uuid] = set(hello.capabilities)
        return out

    def _allowed(self, doc: JobDoc, worker: str, names: dict[str, str]) -> bool:
        wanted = doc.value("machines") or []
        if wanted and worker not in wanted and names.get(worker, "") not in wanted:
            return False
        return worker not in self.excluded.get(doc.uuid, ())

    def _names(self) -> dict[str, str]:
        names = {self.me: self.peers.prefs.name}
        for uuid, session in self.peers.sessions.items():
            if session.hello is not None:
                names[uuid] = session.hello.name
        return names

    def assign_all(self) -> None:
        """Hand queued tasks to idle workers, in queue order."""
        workers = self.workers()
        idle = [w for w in workers if w not in self.busy]
        names = self._names()
        for doc in self.jobs.queue():
            if doc.value("state") not in ("queued",) or doc.uuid not in self._queued:
                continue
            renderer = str(doc.value("renderer"))
            able = [w for w, r in workers.items() if renderer in r and self._allowed(doc, w, names)]
            self._mark_nomachine(doc, not able)
            if not idle:
                continue
            heap = self._queued[doc.uuid]
            candidates = [w for w in idle if w in able]
            while heap and candidates:
                tid = heapq.heappop(heap)
                state = task_current(doc, tid)
                if state.done or state.phase != Phase.QUEUED or (doc.uuid, tid) in self.leases:
                    continue
                worker = candidates.pop(0)
                idle.remove(worker)
                self._assign(doc, tid, state, worker)

    def _mark_nomachine(self, doc: JobDoc, none: bool) -> None:
        nomachine = int(RenderResult.RENDERRESULT_NOMACHINE)
        current = doc.value("result")
        if none and current != nomachine:
            self.jobs.set_fields(doc, "no verified machine can render this job (RENDERRESULT_NOMACHINE)",
                                 result=nomachine)
        elif not none and current == nomachine:
            self.jobs.set_fields(doc, "a machine that can render this job is available",
                                 result=int(RenderResult.RENDERRESULT_OK))

    def _assign(self, doc: JobDoc, tid: int, cur: TaskState, worker: str) -> None:
        term = self.election.term
        state = TaskState(gen=doc.gen, done=0, attempt=cur.attempt, phase=Phase.ASSIGNED,
                          stamp=self.book.stamp(), worker=worker,
                          machines=tuple(dict.fromkeys((*cur.machines, worker))),
                          lease_until=time.time() + self.lease_time, term=term)
        self.jobs.set_task(doc, tid, state)
        self.leases[(doc.uuid, tid)] = Lease(worker, doc.gen, cur.attempt, time.monotonic() + self.lease_time)
        self.busy[worker] = (doc.uuid, tid)
        self.assigned_count += 1
        msg = Assign(job=doc.uuid, task=tid, frames=task_frames(doc)[tid], gen=doc.gen,
                     attempt=cur.attempt, term=term, renderer=str(doc.value("renderer")),
                     scene=str(doc.value("scene")), origin=str(doc.value("origin")),
                     scene_sha256=str(doc.value("scene_sha256", "")), rdata=dict(doc.value("rdata") or {}),
                     flags=int(doc.value("flags", 0)), outputs=bool(doc.value("outputs", True)))
        self._send_soon(worker, msg)

    def _send_soon(self, worker: str, msg: Assign | Cancel) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._send, worker, msg)

    async def _send(self, worker: str, msg: Assign | Cancel) -> None:
        if worker == self.me:
            if isinstance(msg, Assign):
                await self.local.assign(msg, self.me)
            else:
                await self.local.cancel(msg)
            return
        session = self.peers.sessions.get(worker)
        if session is None:
            self._lost_worker(worker, "worker went offline")
            return
        try:
            await session.send(msg)
        except (SessionLost, ProtocolError) as exc:
            self._lost_worker(worker, f"cannot reach worker: {exc}")

    # -- reports ----------------------------------------------------------------------

    async def _on_update_msg(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, TaskUpdate)
        self.on_update(session.uuid, msg)

    def on_update(self, worker: str, msg: TaskUpdate) -> None:
        """A worker's progress or end of a task."""
        if not self._active:
            return
        key = (msg.job, msg.task)
        lease = self.leases.get(key)
        if lease is None or lease.worker != worker or (lease.gen, lease.attempt) != (msg.gen, msg.attempt):
            return  # a report of an attempt we no longer wait for
        lease.deadline = time.monotonic() + self.lease_time
        lease.progress = msg.progress
        if not msg.finished:
            return
        if self.busy.get(worker) == key:
            del self.busy[worker]
        doc = self.book.get(msg.job)
        if msg.result == RenderResult.RENDERRESULT_OK:
            lease.finished = True
            if doc is None or task_current(doc, msg.task).done:
                self.leases.pop(key, None)
        elif msg.result == RenderResult.RENDERRESULT_USERBREAK:
            self.leases.pop(key, None)
        elif msg.result == RenderResult.RENDERRESULT_NOMACHINE:  # refused: busy or no renderer
            self.leases.pop(key, None)
            if doc is not None:
                cur = task_current(doc, msg.task)
                if not cur.done:
                    self._requeue(doc, msg.task, cur, msg.error, count=False)
        else:
            self.leases.pop(key, None)
            if doc is not None:
                self._failed(doc, msg, worker)
        self._wake.set()

    def _failed(self, doc: JobDoc, msg: TaskUpdate, worker: str) -> None:
        name = RenderResult(msg.result).name if msg.result in RenderResult._value2member_map_ else str(msg.result)
        reason = f"{name}: {msg.error}" if msg.error else name
        self.jobs.add_log(doc, f"task {msg.task} attempt {msg.attempt + 1} failed on {worker}: {reason}")
        flags = int(doc.value("flags", 0))
        count = self.failures.get((doc.uuid, worker), 0) + 1
        self.failures[(doc.uuid, worker)] = count
        if flags & F.NETRENDERFLAGS_EXCLUDECLIENTONRENDERINGERROR and count >= self.exclude_after:
            self.excluded.setdefault(doc.uuid, set()).add(worker)
            self.jobs.add_log(doc, f"machine {worker} excluded from this job after {count} failures")
        self._requeue(doc, msg.task, task_current(doc, msg.task), reason)

    def _requeue(self, doc: JobDoc, tid: int, cur: TaskState, reason: str, count: bool = True) -> None:
        attempt = cur.attempt + 1
        if count and attempt >= self.retries:
            state = TaskState(gen=doc.gen, done=1, attempt=attempt, phase=Phase.FAILED,
                              stamp=self.book.stamp(), machines=cur.machines, error=reason,
                              render_time=cur.render_time, term=self.election.term)
            self.jobs.add_log(doc, f"task {tid} failed after {attempt} attempts: {reason}")
        else:
            state = TaskState(gen=doc.gen, done=0, attempt=attempt, phase=Phase.QUEUED,
                              stamp=self.book.stamp(), machines=cur.machines, error=reason,
                              term=self.election.term)
        self.jobs.set_task(doc, tid, state)

    def _lost_worker(self, worker: str, reason: str) -> None:
        for key in [k for k, lease in self.leases.items() if lease.worker == worker]:
            self._lapse(key, reason)
        self.busy.pop(worker, None)

    def _lapse(self, key: tuple[str, int], reason: str) -> None:
        lease = self.leases.pop(key)
        if self.busy.get(lease.worker) == key:
            del self.busy[lease.worker]
        doc = self.book.get(key[0])
        if doc is None:
            return
        cur = task_current(doc, key[1])
        if cur.done or (cur.gen, cur.attempt) != (lease.gen, lease.attempt):
            return
        self.jobs.add_log(doc, f"task {key[1]} on {lease.worker}: {reason}; re-queued")
        self._requeue(doc, key[1], cur, reason)

    def _check(self) -> float:
        """Lapse expired leases, retire finished ones; return seconds to the next deadline."""
        now = time.monotonic()
        online = set(self.peers.sessions) | {self.me}
        nearest = 3600.0
        for key, lease in list(self.leases.items()):
            doc = self.book.get(key[0])
            if doc is None or task_current(doc, key[1]).done:
                self.leases.pop(key, None)
                if self.busy.get(lease.worker) == key:
                    del self.busy[lease.worker]
                continue
            if lease.worker not in online:
                self._lapse(key, "worker went offline")
            elif lease.deadline <= now and not lease.finished:
                self._lapse(key, f"no progress report for {self.lease_time:.0f} s")
            else:
                nearest = min(nearest, lease.deadline - now)
        self._finish_jobs()
        return nearest

    def _finish_jobs(self) -> None:
        for doc in self.book.live():
            if doc.uuid in self._queued and job_state(doc) in ("done", "failed"):
                del self._queued[doc.uuid]
                state = job_state(doc)
                self.jobs.add_log(doc, f"job {state}")
                if state == "done" and int(doc.value("flags", 0)) & F.NETRENDERFLAGS_DELETEAFTERRENDERING:
                    self.jobs.delete(doc)

    # -- service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Assign whenever something changes while this node is the server."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                is_server = self.election.role == "server"
                if is_server and not self._active:
                    self._active = True
                    self._take_over()
                elif not is_server and self._active:
                    self._active = False
                    self.leases.clear()
                    self.busy.clear()
                    self._queued.clear()
                wait = 3600.0
                if self._active:
                    self.assign_all()
                    wait = self._check()
                with trio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = trio.Event()

    def status(self) -> dict[str, Any]:
        """What the scheduler is doing, for ``rendernode status``."""
        return {"active": self._active, "leases": len(self.leases), "busy": len(self.busy),
                "assigned": self.assigned_count}

    def progress(self, job: str) -> dict[int, float]:
        """In-flight progress of a job's tasks."""
        return {tid: lease.progress for (j, tid), lease in self.leases.items() if j == job}
