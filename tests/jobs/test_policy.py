"""The assignment policy (node.jobs.scheduling.policy) on its own, with the time
passed in and no farm: idle workers first in queue order, a waiting task
(prefetch) only while a job has more queued tasks than machines for it and
never past a job ahead, the machine filter and exclusions, a failed task
steered to another machine, busy workers resting after a refusal, and a
tiled job's tasks."""

from __future__ import annotations

import heapq
from typing import Any

from node.jobs.scheduling.leases import Leases
from node.jobs.scheduling.policy import DEPTH, Assignment, Policy
from node.jobs.scheduling.queue import QueueIndex
from node.jobs.tiling import Tiling
from protocol.crdt import JobDoc, Phase, Register, TaskState
from protocol.enums import NetRenderFlags

LENGTH = 30.0
T0 = 1_000.0
STAMP = (1, 0, "test")
EXCLUDE = int(NetRenderFlags.NETRENDERFLAGS_EXCLUDECLIENTONRENDERINGERROR)


def job(uuid: str, frames: str = "1-4", position: str = "m", renderer: str = "builtin",
        **fields: Any) -> JobDoc:
    values = {"frames": frames, "position": position, "renderer": renderer, "state": "queued",
              "chunk": 1, "created": 1.0, **fields}
    return JobDoc(uuid, fields={k: Register(STAMP, v) for k, v in values.items()})


class Setup:
    """A queue index, leases and a policy over them, and the jobs in queue order."""

    def __init__(self, *docs: JobDoc, workers: dict[str, set[str]] | None = None,
                 names: dict[str, str] | None = None) -> None:
        self.queue = QueueIndex()
        self.leases = Leases(LENGTH)
        self.policy = Policy(self.queue, self.leases, exclude_after=2)
        self.docs = {doc.uuid: doc for doc in docs}
        for doc in docs:
            self.queue.index(doc)
        self.workers = workers if workers is not None else {"w1": {"builtin"}, "w2": {"builtin"}}
        self.names = names or {}

    def plan(self, now: float = T0, limit: int | None = None) -> list[tuple[str, int, str, bool]]:
        """Plan a pass and carry it out as the scheduler does (lease each task)."""
        jobs = [self.docs[u] for u in self.queue.order(self.docs)]
        plan = self.policy.plan(now, self.workers, self.names, jobs, limit=limit)
        self.full = plan.full
        for a in plan.assignments:
            self.leases.grant((a.job, a.tid), a.worker, 0, 0, now, prefetched=a.prefetch)
            self.docs[a.job].tasks[a.tid] = TaskState(phase=Phase.ASSIGNED, worker=a.worker)
        self.nomachine = plan.nomachine
        return [(a.job, a.tid, a.worker, a.prefetch) for a in plan.assignments]

    def end(self, job: str, tid: int) -> None:
        """The worker rendered the task (its lease retired)."""
        self.leases.retire((job, tid))
        self.docs[job].tasks[tid] = TaskState(done=1, phase=Phase.SUCCEEDED)


def test_idle_workers_get_the_first_jobs_lowest_tasks_then_a_waiting_one_each() -> None:
    s = Setup(job("a", "1-8", position="1"), job("b", "1-6", position="2"))
    assert s.plan() == [("a", 0, "w1", False), ("a", 1, "w2", False),
                        ("a", 2, "w1", True), ("a", 3, "w2", True)]
    assert s.nomachine == {"a": False, "b": False}
    assert s.plan() == []  # both hold DEPTH tasks
    assert all(len(s.leases.busy[w]) == DEPTH for w in ("w1", "w2"))
    s.end("a", 0)
    assert s.plan() == [("a", 4, "w1", True)]  # it renders its waiting task: the next one waits
    s.end("a", 1)
    s.end("a", 2)  # each renders one task now, and 3 are queued for the 2 of them:
    assert s.plan() == [("a", 5, "w1", True)]  # one more waits; the last 2 go to whoever frees first
    assert s.queue.queued("a") == [6, 7]


def test_a_pass_with_a_limit_stops_there_and_the_next_goes_on_in_the_same_order() -> None:
    """The scheduler hands out a burst at a time; a pass stopped at its limit
    leaves the rest queued (its heap untouched), and the passes together make
    the decisions one pass would have made."""
    whole = Setup(job("a", "1-8", position="1"), job("b", "1-6", position="2"))
    at_once = whole.plan()
    assert not whole.full
    s = Setup(job("a", "1-8", position="1"), job("b", "1-6", position="2"))
    first = s.plan(limit=3)
    assert s.full and len(first) == 3 and sorted(s.queue.queued("a")) == [3, 4, 5, 6, 7]
    assert first + s.plan(limit=3) == at_once and not s.full
    assert s.plan(limit=3) == [] and not s.full


def test_the_last_tasks_wait_for_whichever_worker_frees_first() -> None:
    s = Setup(job("a", "1-3"))
    assert s.plan() == [("a", 0, "w1", False), ("a", 1, "w2", False)]  # 1 left for 2 machines: no waiting task
    assert s.queue.queued("a") == [2]
    s.end("a", 1)
    assert s.plan() == [("a", 2, "w2", False)]


def test_no_waiting_task_from_a_job_behind_one_with_queued_tasks_for_the_worker() -> None:
    s = Setup(job("a", "1-3", position="1"), job("b", "1-9", position="2"))
    # a's last task waits for a free machine; b may not overtake it with a waiting task
    assert s.plan() == [("a", 0, "w1", False), ("a", 1, "w2", False)]
    only_w3 = Setup(job("a", "1-3", position="1", machines=["w1", "w2"]), job("b", "1-9", position="2"),
                    workers={"w1": {"builtin"}, "w2": {"builtin"}, "w3": {"builtin"}})
    assert only_w3.plan() == [("a", 0, "w1", False), ("a", 1, "w2", False), ("b", 0, "w3", False),
                              ("b", 1, "w3", True)]  # w3 may not render a: b's waiting task is its


def test_the_machine_filter_and_the_renderer_decide_who_may_render_a_job() -> None:
    workers = {"w1": {"builtin"}, "w2": {"builtin", "blender"}, "w3": {"blender"}}
    s = Setup(job("by-name", "1", position="1", machines=["second"]),
              job("blend", "1", position="2", renderer="blender", machines=["w3"]),
              job("pov", "1", position="3", renderer="povray"),
              workers=workers, names={"w2": "second"})
    assert s.plan() == [("by-name", 0, "w2", False), ("blend", 0, "w3", False)]
    assert s.nomachine == {"by-name": False, "blend": False, "pov": True}
    assert s.queue.queued("pov") == [0]


def test_a_task_that_failed_on_a_machine_goes_to_another_and_exclusion_after_failures() -> None:
    workers = {"w1": {"builtin"}, "w2": {"builtin"}}
    s = Setup(job("a", "1-2", flags=EXCLUDE), workers=workers)
    assert s.policy.failed("a", 0, "w1", exclude=True) == (1, False)
    s.policy.failed("a", 1, "w1", exclude=True)
    assert s.policy.failed("a", 0, "w1", exclude=True) == (3, True)
    assert s.policy.excluded == {"a": {"w1"}}
    assert s.plan() == [("a", 0, "w2", False)]  # w1 may not render a any more; 1 waits for w2
    assert s.nomachine == {"a": False}
    other = Setup(job("b", "1-2"), workers=workers)
    assert other.policy.failed("b", 0, "w1", exclude=False) == (1, False)
    assert other.policy.failed("b", 0, "w1", exclude=False) == (2, False)  # the job does not exclude
    assert other.plan() == [("b", 0, "w2", False), ("b", 1, "w1", False)]


def test_a_failed_task_waits_for_a_machine_that_has_not_failed_it() -> None:
    workers = {"w1": {"builtin"}, "w2": {"builtin"}}
    s = Setup(job("a", "1"), workers=workers)
    s.leases.grant(("x", 0), "w2", 0, 0, T0)
    s.leases.grant(("x", 1), "w2", 0, 0, T0)  # w2 is full
    s.policy.failed("a", 0, "w1", exclude=False)
    assert s.plan() == []  # w1 failed it and w2 will be free: it waits
    assert s.queue.queued("a") == [0]  # back on the queue
    s.leases.retire(("x", 0))
    assert s.plan() == []  # nor as a waiting task: the last tasks go to whichever worker frees first
    s.leases.retire(("x", 1))
    assert s.plan() == [("a", 0, "w2", False)]
    alone = Setup(job("b", "1"), workers={"w1": {"builtin"}})
    alone.policy.failed("b", 0, "w1", exclude=False)
    assert alone.plan() == [("b", 0, "w1", False)]  # nobody else may render it
    alone.policy.forget("b")
    assert alone.policy.failed_on == {}


def test_a_worker_that_refuses_its_first_task_as_busy_rests_a_lease_time_or_until_it_ends_one() -> None:
    s = Setup(job("a", "1-3"), workers={"w1": {"builtin"}})
    assert s.plan() == [("a", 0, "w1", False), ("a", 1, "w1", True)]
    for tid in (0, 1):  # refused both: it holds tasks this server does not count
        lease = s.leases.retire(("a", tid))
        assert lease is not None
        s.policy.refused("w1", lease.prefetched, T0 + 1)
        s.docs["a"].tasks[tid] = TaskState(attempt=1)
        heap = s.queue.queued("a")
        assert heap is not None
        heapq.heappush(heap, tid)
    assert s.policy.rest == {"w1": T0 + 1 + LENGTH} and s.policy.no_prefetch == {"w1"}
    assert s.plan(T0 + 2) == [] and s.policy.resting_until(T0 + 2) == T0 + 1 + LENGTH
    assert s.plan(T0 + 1 + LENGTH) == [("a", 0, "w1", False)]  # the rest is over; still no waiting task
    assert s.policy.resting_until(T0 + 1 + LENGTH) is None
    s.policy.membership_changed()
    assert s.plan(T0 + 1 + LENGTH) == [("a", 1, "w1", True)]


def test_a_resting_worker_that_ends_a_task_is_offered_work_again() -> None:
    s = Setup(job("a", "1"), workers={"w1": {"builtin"}})
    s.policy.refused("w1", False, T0)
    assert s.plan(T0 + 1) == []
    assert s.policy.freed("w1") and not s.policy.freed("w1")
    assert s.plan(T0 + 1) == [("a", 0, "w1", False)]


def test_leased_and_not_queued_tasks_and_twice_listed_ones_are_skipped() -> None:
    a = job("a", "1-4")
    a.tasks[1] = TaskState(phase=Phase.ASSIGNED, worker="elsewhere")
    a.tasks[2] = TaskState(done=1, phase=Phase.SUCCEEDED)
    s = Setup(a, workers={"w1": {"builtin"}, "w2": {"builtin"}, "w3": {"builtin"}})
    heap = s.queue.queued("a")
    assert heap == [0, 3]
    heap.insert(1, 0)  # task 0 listed twice (queued again, say)
    s.leases.grant(("a", 3), "old", 0, 0, T0)  # leased and not yet written as assigned
    assert s.plan() == [("a", 0, "w1", False)]
    assert heap == []


def test_a_tiled_jobs_tasks_go_out_one_tile_task_each() -> None:
    tiled = job("t", "7", tiling=Tiling(2, 2, 64, 64).to_field())
    s = Setup(tiled, workers={"w1": {"builtin"}, "w2": {"builtin"}, "w3": {"builtin"}})
    assert s.queue.frames(tiled) == [[7], [7], [7], [7]]
    assert s.plan() == [("t", 0, "w1", False), ("t", 1, "w2", False), ("t", 2, "w3", False)]
    s.end("t", 1)
    assert s.plan() == [("t", 3, "w2", False)]


def test_a_stopped_or_unscheduled_job_gets_nothing() -> None:
    s = Setup(job("a", "1", position="1", state="stopped"), job("b", "1", position="2"))
    s.queue.unschedule("b")
    assert s.plan() == [] and s.nomachine == {}


def test_assignments_are_data() -> None:
    assert Assignment("j", 3, "w1") == Assignment("j", 3, "w1", prefetch=False)
    assert Assignment("j", 3, "w1", True).prefetch
