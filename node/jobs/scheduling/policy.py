"""The assignment policy: which queued task goes to which worker.

Queued tasks go to idle, verified, sharing workers that have the job's
renderer, in queue order and within the job's machine filter (``renders_on``)
less the machines excluded from it.  A task that failed on a machine goes to
another able machine that has not failed it when there is one, so one bad
machine cannot use up a task's retries.

Prefetch (queue depth ``DEPTH`` = 2): a worker holds at most one task waiting
behind the one it renders, so it starts the next task the moment the current
one ends instead of after a report -> assign round trip.  Idle workers are
served first, in queue order, exactly as without prefetch; then a worker
rendering one task gets a second from the first job in queue order it can
render, only while that job has more queued tasks than machines able to
render it (the last tasks go to whichever worker frees first, so a waiting
task never holds up the tail) and never from a job behind one that still has
queued tasks for it.

Busy workers rest: one that refuses a second task as busy is not sent one
again until the membership changes; one that refuses its first (it holds
tasks this server does not count: a former server's, or lapsed here) gets
nothing until it ends a task or a lease time passes.

``plan`` decides; it takes the tasks it hands out off the queue index's heaps
and returns them as ``Assignment``s (and whether each job has a machine at
all), which the scheduler carries out: it leases each task, writes it to the
book and sends the Assign.  Who may render a job is cached until the roster,
the job or its exclusions change.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from node.jobs.operations import renders_on
from node.jobs.scheduling.leases import Key, Leases
from node.jobs.scheduling.queue import QueueIndex
from protocol.crdt import JobDoc, Phase, task_current

DEPTH = 2  #: tasks a worker holds at once: the one it renders and one waiting


@dataclass(frozen=True)
class Assignment:
    """A decision: hand ``job``'s task ``tid`` to ``worker`` (``prefetch``: as the
    task waiting behind the one it renders)."""

    job: str
    tid: int
    worker: str
    prefetch: bool = False


@dataclass
class Plan:
    """What one pass decided, in the order decided."""

    assignments: list[Assignment] = field(default_factory=list)
    #: each queued job looked at, in queue order -> True if no machine may render it
    nomachine: dict[str, bool] = field(default_factory=dict)
    limit: int | None = None  #: assignments at most; the pass stops there (``full``), the rest wait for the next
    _given: dict[str, int] = field(default_factory=dict, init=False, repr=False)  #: worker -> tasks given
    _taken: set[Key] = field(default_factory=set, init=False, repr=False)  #: tasks given

    def held(self, leases: Leases, worker: str) -> int:
        """Tasks ``worker`` holds, counting those this plan gives it."""
        return len(leases.busy.get(worker, ())) + self._given.get(worker, 0)

    def gives(self, key: Key) -> bool:
        """This plan hands out ``key`` already (a heap can list a task twice)."""
        return key in self._taken

    @property
    def full(self) -> bool:
        """The pass stopped at its ``limit``: more may be handed out by the next."""
        return self.limit is not None and len(self.assignments) >= self.limit

    def give(self, assignment: Assignment) -> None:
        """Decide ``assignment``."""
        self.assignments.append(assignment)
        self._taken.add((assignment.job, assignment.tid))
        self._given[assignment.worker] = self._given.get(assignment.worker, 0) + 1


class Policy:
    """Who gets which task, and the machine rules: exclusions after failures,
    the workers resting after a busy refusal."""

    def __init__(self, queue: QueueIndex, leases: Leases, exclude_after: int) -> None:
        self.queue = queue
        self.leases = leases
        self.exclude_after = exclude_after
        #: worker -> until when it gets no task: it refused one as busy while counted free
        #: (it holds tasks this server does not count), so it is not asked again at once
        self.rest: dict[str, float] = {}
        self.no_prefetch: set[str] = set()  #: workers that refused a waiting task
        self.failures: dict[tuple[str, str], int] = {}  #: (job, worker) -> its failed attempts there
        self.failed_on: dict[Key, set[str]] = {}  #: task -> workers it failed on
        self.excluded: dict[str, set[str]] = {}  #: job -> workers excluded from it
        self._able: dict[str, list[str]] = {}  #: job -> workers that may render it (roster order)

    # -- what the policy hears ------------------------------------------------------

    def roster_changed(self) -> None:
        """Workers came, went, or one could not be reached: who may render what is
        worked out again."""
        self._able.clear()

    def membership_changed(self) -> None:
        """The membership changed: as ``roster_changed``, and the workers that
        refused a waiting task may be offered one again."""
        self._able.clear()
        self.no_prefetch.clear()

    def job_changed(self, job: str) -> None:
        """``job``'s fields changed (its renderer or machine filter, perhaps)."""
        self._able.pop(job, None)

    def forget(self, job: str) -> None:
        """``job`` is no longer scheduled."""
        self._able.pop(job, None)
        for key in [k for k in self.failed_on if k[0] == job]:
            del self.failed_on[key]

    def reset(self) -> None:
        """A new term of scheduling (or none): nobody rests, every worker may prefetch."""
        self._able.clear()
        self.no_prefetch.clear()
        self.rest.clear()

    def refused(self, worker: str, prefetched: bool, now: float) -> None:
        """``worker`` refused a task as busy: a waiting task (no more of those until
        the membership changes), or one sent while it was counted free (it rests a
        lease time from ``now``, or until it ends a task)."""
        if prefetched:
            self.no_prefetch.add(worker)
        else:  # it was counted free: it holds tasks this server does not know of
            self.rest[worker] = now + self.leases.length

    def freed(self, worker: str) -> bool:
        """``worker`` ended a task (or is gone): it rests no longer; True if it rested."""
        return self.rest.pop(worker, None) is not None

    def resting_until(self, now: float) -> float | None:
        """When the first rest still running at ``now`` ends, or None."""
        return min((until for until in self.rest.values() if until > now), default=None)

    def failed(self, job: str, tid: int, worker: str, exclude: bool) -> tuple[int, bool]:
        """``job``'s task ``tid`` failed on ``worker``.  The job's failures on that
        worker, and whether it is excluded from the job now (``exclude``: the job
        excludes machines after ``exclude_after`` failures)."""
        count = self.failures.get((job, worker), 0) + 1
        self.failures[(job, worker)] = count
        self.failed_on.setdefault((job, tid), set()).add(worker)
        if exclude and count >= self.exclude_after:
            self.excluded.setdefault(job, set()).add(worker)
            self._able.pop(job, None)
            return count, True
        return count, False

    def allowed(self, doc: JobDoc, worker: str, names: dict[str, str]) -> bool:
        """The job's machine filter admits ``worker`` (called ``names[worker]``) and
        the worker is not excluded from the job."""
        return renders_on(doc, worker, names.get(worker, "")) and worker not in self.excluded.get(doc.uuid, ())

    # -- deciding -----------------------------------------------------------------------

    def plan(self, now: float, workers: dict[str, set[str]], names: dict[str, str],
             jobs: Iterable[JobDoc], limit: int | None = None) -> Plan:
        """Hand queued tasks to idle workers in queue order, then a waiting task to
        workers rendering one (see Prefetch above); ``limit`` assignments at most.
        ``workers``: the machines that may render now (uuid -> renderer names),
        ``names`` their names, ``jobs`` the scheduled jobs' documents in queue order."""
        busy = self.leases.busy
        plan = Plan(limit=limit)
        resting = {w for w, until in self.rest.items() if until > now}
        idle = sum(1 for w in workers if w not in busy and w not in resting)
        looked: list[tuple[JobDoc, list[str]]] = []
        for doc in jobs:
            uuid = doc.uuid
            if doc.value("state") not in ("queued",) or uuid not in self.queue:
                continue
            able = self._able.get(uuid)
            if able is None:
                renderer = str(doc.value("renderer"))
                able = [w for w, r in workers.items() if renderer in r and self.allowed(doc, w, names)]
                self._able[uuid] = able
            plan.nomachine[uuid] = not able
            looked.append((doc, able))
            if idle:
                idle -= self._hand_out(plan, doc, [w for w in able if plan.held(self.leases, w) == 0
                                                   and w not in resting], keep=0, able=able)
        blocked: set[str] = set()  # workers a job ahead still has queued tasks for
        for doc, able in looked:
            heap = self.queue.queued(doc.uuid)
            if not heap:
                continue
            if len(heap) > len(able):
                self._hand_out(plan, doc, [w for w in able if plan.held(self.leases, w) == DEPTH - 1
                                           and w not in resting and w not in blocked
                                           and w not in self.no_prefetch], keep=len(able), able=able)
            if self.queue.queued(doc.uuid):  # queued tasks left: later jobs may not overtake them
                blocked.update(able)
        return plan

    def _hand_out(self, plan: Plan, doc: JobDoc, candidates: list[str], keep: int, able: list[str]) -> int:
        """Give ``doc``'s queued tasks, lowest first, to ``candidates`` while more
        than ``keep`` are queued (keep > 0: waiting tasks); the count.  A task that
        failed on a machine goes to another able machine that has not failed it
        when there is one, so one bad machine cannot use up a task's retries."""
        heap = self.queue.queued(doc.uuid)
        assert heap is not None
        free = list(candidates)
        deferred: list[int] = []
        given = 0
        while len(heap) > keep and free and not plan.full:
            tid = heapq.heappop(heap)
            state = task_current(doc, tid)
            key = (doc.uuid, tid)
            if state.done or state.phase != Phase.QUEUED or key in self.leases or plan.gives(key):
                continue
            failed = self.failed_on.get(key, set())
            worker = next((w for w in free if w not in failed), None)
            if worker is None:
                if any(w not in failed for w in able):
                    deferred.append(tid)  # wait for a machine that has not failed it
                    continue
                worker = free[0]
            free.remove(worker)
            plan.give(Assignment(doc.uuid, tid, worker, prefetch=keep > 0))
            given += 1
        for tid in deferred:
            heapq.heappush(heap, tid)
        return given
