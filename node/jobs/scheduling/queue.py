"""The queue index: what the scheduler schedules, kept current by the job
book's change listener (``on_change``).

Per job it schedules (a queued or rendering job, finished ones too until they
are found finished), the index keeps a heap of its queued task ids and the
set of its task ids not done; the queue order of those jobs is cached until a
position changes, and each job's task frames are parsed once per frame spec.
A heap may hold stale entries (a tid queued twice, or assigned since): the
policy skips tids whose task is not QUEUED when it pops them.

Cost: a change costs what changed, not the size of the book (a new
generation, or a job joining the schedule, indexes that job's tasks once).
A job is tested for done/failed (``finished``) only once none of its tasks
is open (or its head changed).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.jobs.operations import task_frames
from protocol.crdt import JobDoc, Phase, TaskState, task_current


@dataclass
class Change:
    """What one change of a job's document did to the index."""

    #: the job left the schedule ("job stopped" or "job deleted"): its leases are the caller's
    dropped: str | None = None
    head: bool = False  #: its fields, generation or deletion changed (who may render it, say)
    tasks: dict[int, TaskState] = field(default_factory=dict)  #: its changed tasks, as they are now


class QueueIndex:
    """The scheduled jobs' queued and open tasks and their queue order."""

    def __init__(self) -> None:
        self._queued: dict[str, list[int]] = {}  #: scheduled job -> heap of its queued tids
        self._open: dict[str, set[int]] = {}  #: scheduled job -> its tids not done
        self._settled: set[str] = set()  #: scheduled jobs to test for done/failed
        self._order: list[str] | None = None  #: scheduled jobs in queue order (None: stale)
        self._frames: dict[str, tuple[tuple[Any, Any, str], list[list[int]]]] = {}

    def __contains__(self, job: object) -> bool:
        return job in self._queued

    def __len__(self) -> int:
        return len(self._queued)

    def queued(self, job: str) -> list[int] | None:
        """The heap of ``job``'s queued tids (None: not scheduled).  The policy pops
        the tasks it hands out and pushes back those it defers."""
        return self._queued.get(job)

    def open(self, job: str) -> set[int]:
        """``job``'s tids not done (empty: not scheduled, or nothing left to do)."""
        return self._open.get(job, set())

    def frames(self, doc: JobDoc) -> list[list[int]]:
        """``task_frames(doc)``, parsed once per job and frame spec."""
        spec = (doc.value("frames", "1"), doc.value("chunk", 1), str(doc.value("tiling")))
        hit = self._frames.get(doc.uuid)
        if hit is None or hit[0] != spec:
            hit = (spec, task_frames(doc))
            self._frames[doc.uuid] = hit
        return hit[1]

    def index(self, doc: JobDoc) -> None:
        """Schedule ``doc``'s job afresh: every task of its generation."""
        heap: list[int] = []  # ascending tids: already a heap
        open_tids: set[int] = set()
        for tid in range(len(self.frames(doc))):
            s = task_current(doc, tid)
            if not s.done:
                open_tids.add(tid)
                if s.phase == Phase.QUEUED:
                    heap.append(tid)
        self._queued[doc.uuid] = heap
        self._open[doc.uuid] = open_tids
        self._settled.add(doc.uuid)
        self._order = None

    def unschedule(self, job: str) -> None:
        """``job`` is no longer scheduled (finished, stopped or deleted)."""
        self._queued.pop(job, None)
        self._open.pop(job, None)
        self._frames.pop(job, None)
        self._settled.discard(job)
        self._order = None

    def clear(self) -> None:
        """Schedule nothing."""
        self._queued.clear()
        self._open.clear()
        self._frames.clear()
        self._settled.clear()
        self._order = None

    def on_change(self, delta: JobDoc, doc: JobDoc) -> Change:
        """The book merged ``delta`` into ``doc`` (a job's document, or its tombstone):
        a stopped (or not started) or deleted job leaves the schedule; a new
        generation, or a job not scheduled yet, is indexed afresh; otherwise the
        changed tasks move in or out of the heap and the open set."""
        uuid = doc.uuid
        change = Change()
        indexed = False
        if doc.deleted is not None or delta.fields or delta.gen:
            change.head = True
            if doc.deleted is not None or doc.value("state") in ("stopped", "created"):
                self.unschedule(uuid)
                change.dropped = "job stopped" if doc.deleted is None else "job deleted"
            elif delta.gen or uuid not in self._queued:
                self.index(doc)
                indexed = True
            if "position" in delta.fields:
                self._order = None
            if uuid in self._queued:
                self._settled.add(uuid)
        if delta.tasks:
            change.tasks = self._on_tasks(doc, delta.tasks, indexed)
        return change

    def _on_tasks(self, doc: JobDoc, tids: Mapping[int, TaskState], indexed: bool) -> dict[int, TaskState]:
        uuid = doc.uuid
        heap = None if indexed else self._queued.get(uuid)
        open_tids = self._open.get(uuid, set())
        n = len(self.frames(doc)) if heap is not None else 0
        states = {}
        for tid in tids:
            state = states[tid] = task_current(doc, tid)
            if state.done:
                open_tids.discard(tid)
            elif heap is not None and 0 <= tid < n:
                open_tids.add(tid)
                if state.phase == Phase.QUEUED:
                    heapq.heappush(heap, tid)
        if heap is not None and not open_tids:
            self._settled.add(uuid)
        return states

    def order(self, docs: Mapping[str, JobDoc]) -> list[str]:
        """The scheduled jobs in queue order (``Jobs.queue``'s order: by position,
        then uuid), ``docs`` being the book's documents."""
        if self._order is None:
            self._order = sorted(self._queued, key=lambda u: (str(docs[u].value("position", "")), u))
        return self._order

    def finished(self) -> Iterator[str]:
        """Scheduled jobs none of whose tasks is open, to test for done/failed; each
        comes out when its turn comes (testing one may settle others)."""
        while self._settled:
            uuid = self._settled.pop()
            if uuid in self._queued and not self._open.get(uuid):
                yield uuid
