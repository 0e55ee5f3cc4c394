"""The queue index (node.jobs.scheduling.queue) on its own, kept current by a
job book's change listener as the scheduler keeps it, with no farm: jobs join
it as they start and leave as they stop or go, its queue order follows moves
and inserts, task changes move tasks out of (and back into) the heap and the
open set, a new generation is indexed afresh, and a tiled job's tasks are its
frames times its tiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.db import Database
from node.jobs.book import JobBook
from node.jobs.operations import Jobs, JobSpec
from node.jobs.scheduling.queue import Change, QueueIndex
from node.jobs.tiling import Tiling
from protocol.crdt import JobDoc, Phase, TaskState


class Farmless:
    """A job book over SQLite with a queue index listening to it."""

    def __init__(self, path: Path) -> None:
        self.book = JobBook(Database(path), "node-a", lambda: 1_000.0)
        self.jobs = Jobs(self.book, "node-a", ["root"])
        self.index = QueueIndex()
        self.changes: list[Change] = []
        self.book.listeners.append(lambda delta, doc: self.changes.append(self.index.on_change(delta, doc)))

    def create(self, frames: str = "1-4", start: bool = True, tiling: Tiling | None = None) -> str:
        spec = JobSpec.from_args({"scene": "/scenes/shot.scn", "frames": frames, "start": start})
        return self.jobs.create(dataclasses.replace(spec, tiling=tiling), "root").uuid

    def doc(self, uuid: str) -> JobDoc:
        doc = self.book.get(uuid)
        assert doc is not None
        return doc

    def set_task(self, uuid: str, tid: int, phase: Phase, attempt: int = 0, done: int = 0) -> Change:
        doc = self.doc(uuid)
        self.jobs.set_task(doc, tid, TaskState(gen=doc.gen, done=done, attempt=attempt, phase=phase,
                                               stamp=self.book.stamp(), worker="w1"))
        return self.changes[-1]

    def order(self) -> list[str]:
        return self.index.order(self.book.docs)


@pytest.fixture
def farmless(tmp_path: Path) -> Farmless:
    return Farmless(tmp_path)


def test_jobs_join_the_index_as_they_start_and_leave_as_they_stop_or_go(farmless: Farmless) -> None:
    a = farmless.create("1-4")
    assert a in farmless.index and farmless.index.queued(a) == [0, 1, 2, 3]
    assert farmless.index.open(a) == {0, 1, 2, 3}
    b = farmless.create("1-2", start=False)
    assert b not in farmless.index and farmless.index.queued(b) is None and farmless.index.open(b) == set()
    farmless.jobs.start(farmless.doc(b), "root")
    assert farmless.changes[-1].head and farmless.changes[-1].dropped is None
    assert farmless.index.queued(b) == [0, 1] and len(farmless.index) == 2
    farmless.jobs.stop(farmless.doc(a), "root")
    assert farmless.changes[-1].dropped == "job stopped" and a not in farmless.index
    farmless.jobs.delete(farmless.doc(b))
    assert farmless.changes[-1].dropped == "job deleted" and b not in farmless.index
    assert len(farmless.index) == 0 and farmless.order() == []


def test_the_queue_order_follows_moves_and_inserts(farmless: Farmless) -> None:
    a, b, c = (farmless.create("1") for _ in range(3))
    assert farmless.order() == [a, b, c]
    farmless.jobs.move(farmless.doc(c), farmless.doc(a), before=True)
    assert farmless.order() == [c, a, b]
    d = farmless.create("1")  # a new job goes to the end
    assert farmless.order() == [c, a, b, d]
    farmless.jobs.move(farmless.doc(a), farmless.doc(d), before=False)
    assert farmless.order() == [c, b, d, a]
    assert farmless.order() == [doc.uuid for doc in farmless.jobs.queue()]  # the queue users see
    farmless.jobs.stop(farmless.doc(b), "root")
    assert farmless.order() == [c, d, a]
    farmless.jobs.start(farmless.doc(b), "root")  # back in its place, not at the end
    assert farmless.order() == [c, b, d, a]


def test_task_changes_move_tasks_out_of_the_heap_and_the_open_set(farmless: Farmless) -> None:
    a = farmless.create("1-3")
    index = farmless.index
    assert list(index.finished()) == []  # tasks open: not finished
    change = farmless.set_task(a, 1, Phase.ASSIGNED)
    assert change.tasks[1].phase == Phase.ASSIGNED and not change.head and change.dropped is None
    assert index.open(a) == {0, 1, 2}  # assigned: still open (its stale heap entry is skipped when popped)
    farmless.set_task(a, 1, Phase.SUCCEEDED, done=1)
    assert index.open(a) == {0, 2}
    heap = index.queued(a)
    assert heap is not None
    heap.remove(0)  # the policy took task 0 off the queue and handed it out ...
    farmless.set_task(a, 0, Phase.ASSIGNED)
    farmless.set_task(a, 0, Phase.QUEUED, attempt=1)  # ... its worker failed it: queued again
    assert 0 in heap and min(heap) == 0
    farmless.set_task(a, 0, Phase.SUCCEEDED, attempt=1, done=1)
    assert list(index.finished()) == []
    farmless.set_task(a, 2, Phase.FAILED, done=1)
    assert index.open(a) == set()
    assert list(index.finished()) == [a]  # to test for done or failed, once
    assert list(index.finished()) == []


def test_a_new_generation_is_indexed_afresh(farmless: Farmless) -> None:
    a = farmless.create("1-2")
    for tid in (0, 1):
        farmless.set_task(a, tid, Phase.SUCCEEDED, done=1)
    assert farmless.index.open(a) == set() and farmless.index.queued(a) == [0, 1]  # stale entries
    heap = farmless.index.queued(a)
    assert heap is not None
    heap.clear()
    farmless.jobs.start(farmless.doc(a), "root", restart=True)
    assert farmless.index.queued(a) == [0, 1] and farmless.index.open(a) == {0, 1}


def test_a_tiled_jobs_tasks_are_its_frames_times_its_tiles(farmless: Farmless) -> None:
    a = farmless.create("1-2", tiling=Tiling(2, 2, 64, 64))
    doc = farmless.doc(a)
    assert farmless.index.frames(doc) == [[1]] * 4 + [[2]] * 4
    assert farmless.index.queued(a) == list(range(8)) and farmless.index.open(a) == set(range(8))
    assert farmless.index.frames(doc) is farmless.index.frames(doc)  # parsed once
    farmless.set_task(a, 5, Phase.SUCCEEDED, done=1)
    assert farmless.index.open(a) == set(range(8)) - {5}


def test_a_task_id_beyond_the_job_is_not_indexed(farmless: Farmless) -> None:
    a = farmless.create("1-2")
    doc = farmless.doc(a)
    change = farmless.set_task(a, 7, Phase.QUEUED, attempt=1)
    assert 7 in change.tasks
    assert farmless.index.open(a) == {0, 1} and 7 not in (farmless.index.queued(a) or [])
    farmless.jobs.set_fields(doc, None, frames="1-3")  # a new frame spec: its frames parsed again
    assert farmless.index.frames(farmless.doc(a)) == [[1], [2], [3]]


def test_clear_schedules_nothing(farmless: Farmless) -> None:
    a = farmless.create("1-2")
    farmless.index.clear()
    assert a not in farmless.index and farmless.order() == [] and list(farmless.index.finished()) == []
    farmless.index.index(farmless.doc(a))
    assert farmless.index.queued(a) == [0, 1] and farmless.order() == [a]
