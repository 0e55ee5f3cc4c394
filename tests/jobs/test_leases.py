"""The leases (node.jobs.scheduling.leases) on their own, with the time passed
in: deadlines come due in order, a renewal postpones one, a task leased again
lapses on its new lease's deadline only, finished leases wait on delivery,
a worker holds the unfinished tasks leased to it, oldest first, and a lease
past its deadline lapses when its worker is offline or reports other tasks,
but a silent worker online keeps it for a while."""

from __future__ import annotations

from collections.abc import Container

import pytest

from node.jobs.scheduling.leases import OFFLINE, SILENT_LEASES, Leases
from protocol.crdt import Phase, TaskState

LENGTH = 30.0
T0 = 1_000.0


def due(leases: Leases, now: float, online: Container[str] = ()) -> list[tuple[str, int]]:
    """The keys that lapse by ``now``; with no worker ``online`` (by default) each
    lapses at its deadline."""
    return [key for key, _, _ in leases.due(now, online)]


def test_a_grant_runs_a_lease_time_and_holds_a_slot_of_the_worker() -> None:
    leases = Leases(LENGTH)
    lease = leases.grant(("j", 0), "w1", gen=2, attempt=1, now=T0)
    assert (lease.worker, lease.gen, lease.attempt, lease.deadline) == ("w1", 2, 1, T0 + LENGTH)
    assert ("j", 0) in leases and leases[("j", 0)] is lease and list(leases) == [("j", 0)] and len(leases) == 1
    assert leases.busy == {"w1": [("j", 0)]}
    assert leases.next_deadline() == T0 + LENGTH


def test_leases_come_due_in_deadline_order_and_only_once_past() -> None:
    leases = Leases(LENGTH)
    leases.grant(("j", 2), "w1", 0, 0, now=T0 + 2)
    leases.grant(("j", 0), "w2", 0, 0, now=T0)
    leases.grant(("j", 1), "w3", 0, 0, now=T0 + 1)
    assert due(leases, T0 + LENGTH - 0.5) == []
    assert due(leases, T0 + LENGTH + 1) == [("j", 0), ("j", 1)]
    assert set(leases) == {("j", 2)}  # the lapsed ones are taken out, their slots freed
    assert leases.busy == {"w1": [("j", 2)]}
    assert leases.next_deadline() == T0 + 2 + LENGTH
    assert due(leases, T0 + 100) == [("j", 2)]
    assert len(leases) == 0 and leases.busy == {} and leases.next_deadline() is None


def test_a_renewed_lease_comes_due_at_its_new_deadline_not_the_old_one() -> None:
    leases = Leases(LENGTH)
    lease = leases.grant(("j", 0), "w1", 0, 0, now=T0)
    leases.renew(lease, now=T0 + 20)
    assert due(leases, T0 + LENGTH + 1) == []
    assert ("j", 0) in leases
    assert leases.next_deadline() == T0 + 20 + LENGTH  # its entry went back with the new deadline
    assert due(leases, T0 + 20 + LENGTH) == [("j", 0)]


def test_a_task_leased_again_lapses_on_its_new_lease_only() -> None:
    leases = Leases(LENGTH)
    leases.grant(("j", 0), "w1", 0, 0, now=T0)
    assert leases.retire(("j", 0)) is not None  # the worker failed it; it is queued again
    again = leases.grant(("j", 0), "w2", 0, 1, now=T0 + 10)
    assert list(leases.due(T0 + LENGTH + 1, ())) == []  # the old entry is stale
    assert leases.busy == {"w2": [("j", 0)]}
    assert list(leases.due(T0 + 10 + LENGTH, ())) == [(("j", 0), again, "worker went offline")]


def test_a_finished_lease_holds_no_slot_and_lapses_only_when_its_worker_is_offline() -> None:
    leases = Leases(LENGTH)
    lease = leases.grant(("j", 0), "w1", 0, 0, now=T0)
    leases.release("w1", ("j", 0))  # it reported the render finished
    lease.finished = True
    assert leases.busy == {}
    assert due(leases, T0 + 10 * LENGTH, online={"w1"}) == []  # however long the delivery takes
    assert leases.get(("j", 0)) is lease  # waiting for the task to be done
    assert due(leases, T0 + 11 * LENGTH) == [("j", 0)]  # gone with the frames
    again = leases.grant(("j", 0), "w1", 0, 1, now=T0, finished=True)
    assert leases.retire(("j", 0)) is again and leases.retire(("j", 0)) is None


def test_adopting_a_state_another_server_assigned() -> None:
    leases = Leases(LENGTH)
    rendering = TaskState(gen=1, attempt=3, phase=Phase.RENDERING, worker="w1")
    delivering = TaskState(gen=1, attempt=0, phase=Phase.DELIVERING, worker="w2")
    a = leases.adopt(("j", 0), rendering, now=T0)
    b = leases.adopt(("j", 1), delivering, now=T0)
    assert (a.worker, a.gen, a.attempt, a.finished, a.deadline) == ("w1", 1, 3, False, T0 + LENGTH)
    assert (b.worker, b.finished) == ("w2", True)
    assert leases.busy == {"w1": [("j", 0)]}  # the delivering worker holds no render slot
    assert due(leases, T0 + LENGTH, online={"w2"}) == [("j", 0)]


def test_a_worker_holds_its_tasks_oldest_first_and_frees_them_as_they_end() -> None:
    leases = Leases(LENGTH)
    leases.grant(("a", 0), "w1", 0, 0, now=T0)
    leases.grant(("b", 5), "w1", 0, 0, now=T0 + 1, prefetched=True)
    leases.grant(("a", 1), "w2", 0, 0, now=T0)
    assert leases.busy["w1"] == [("a", 0), ("b", 5)]
    assert leases[("b", 5)].prefetched and not leases[("a", 0)].prefetched
    assert leases.of_worker("w1") == [("a", 0), ("b", 5)] and leases.of_job("a") == [("a", 0), ("a", 1)]
    assert leases.pop(("a", 0)).worker == "w1"
    assert leases.busy["w1"] == [("b", 5)]
    with pytest.raises(KeyError):
        leases.pop(("a", 0))
    leases.free("w1")  # the worker is gone: its slots with it
    assert leases.busy == {"w2": [("a", 1)]}
    leases.clear()
    assert len(leases) == 0 and leases.busy == {} and leases.next_deadline() is None


def test_a_silent_worker_online_keeps_its_leases_until_it_has_been_silent_for_long() -> None:
    """Starved (on the 100-host bed every daemon's wakes came seconds late) or cut
    off, not gone: its leases wait ``SILENT_LEASES`` lease times of silence."""
    leases = Leases(LENGTH)
    leases.grant(("j", 0), "w1", 0, 0, now=T0)
    leases.report("w1", T0)
    silence = SILENT_LEASES * LENGTH
    assert due(leases, T0 + LENGTH, online={"w1"}) == []
    assert due(leases, T0 + silence - 1, online={"w1"}) == []
    assert leases.next_deadline() == T0 + silence  # not a moment later
    [(key, _, why)] = leases.due(T0 + silence, {"w1"})
    assert key == ("j", 0) and why == f"worker online but silent for {silence:.0f} s"


def test_a_silent_worker_that_goes_offline_loses_its_leases_at_the_next_look() -> None:
    leases = Leases(LENGTH)
    lease = leases.grant(("j", 0), "w1", 0, 0, now=T0)
    assert due(leases, T0 + 2 * LENGTH, online={"w1"}) == []
    looks_again = leases.next_deadline()
    assert looks_again is not None and T0 + 2 * LENGTH < looks_again <= T0 + 3 * LENGTH
    assert list(leases.due(looks_again, ())) == [(("j", 0), lease, "worker went offline")]


def test_an_offline_worker_keeps_its_leases_to_their_deadlines() -> None:
    """A false death refuted within a lease time costs nothing."""
    leases = Leases(LENGTH)
    lease = leases.grant(("j", 0), "w1", 0, 0, now=T0)
    assert due(leases, T0 + LENGTH - 1) == []  # offline, but the lease runs
    leases.renew(lease, T0 + LENGTH - 1)  # a report: back online
    assert due(leases, T0 + LENGTH + 1, online={"w1"}) == [] and ("j", 0) in leases


def test_a_worker_that_reports_other_tasks_but_not_this_one_loses_it_at_its_deadline() -> None:
    """Its Assign went astray, or it dropped the task: it talks, but not of this task."""
    leases = Leases(LENGTH)
    lost = leases.grant(("j", 0), "w1", 0, 0, now=T0)
    rendering = leases.grant(("j", 1), "w1", 0, 0, now=T0)
    for t in (T0 + 1, T0 + LENGTH / 2, T0 + LENGTH):  # it reports the task it renders
        leases.report("w1", t)
        leases.renew(rendering, t)
    [(key, lease, why)] = leases.due(T0 + LENGTH, {"w1"})
    assert (key, lease) == (("j", 0), lost) and why == f"no progress report for {LENGTH:.0f} s " \
        "(the worker reports its other tasks)"


def test_a_report_in_the_first_half_of_a_lease_time_does_not_count_as_talking() -> None:
    """It may have left the worker before the Assign reached it."""
    leases = Leases(LENGTH)
    leases.grant(("j", 0), "w1", 0, 0, now=T0)
    leases.report("w1", T0 + LENGTH / 2 - 1)
    assert due(leases, T0 + LENGTH, online={"w1"}) == []


def test_a_lease_whose_assign_waits_on_a_dial_does_not_lapse_until_a_lease_time_after_delivery() -> None:
    leases = Leases(LENGTH)
    waiting = leases.grant(("j", 0), "w1", 0, 0, now=T0, delivered=False)
    leases.grant(("j", 1), "w2", 0, 0, now=T0)  # on a session already: delivered at once
    assert due(leases, T0 + LENGTH) == [("j", 1)]
    assert due(leases, T0 + 3 * LENGTH) == [] and ("j", 0) in leases  # the dial takes long
    leases.delivered(("j", 0), "w1", gen=0, attempt=1, now=T0 + 3 * LENGTH)  # another attempt's: no
    assert not waiting.delivered
    leases.delivered(("j", 0), "w1", gen=0, attempt=0, now=T0 + 3 * LENGTH)
    assert waiting.delivered and waiting.deadline == T0 + 4 * LENGTH
    assert due(leases, T0 + 4 * LENGTH - 1) == []
    assert due(leases, T0 + 4 * LENGTH) == [("j", 0)]


def test_a_lease_was_taken_up_once_its_worker_reported_on_it_or_when_it_went_offline() -> None:
    """Only a lease the worker took up counts as a task lost with its worker: one
    that lapsed with no report of it (its Assign may never have arrived) does not;
    its delivery alone is no report."""
    leases = Leases(LENGTH)
    online = {"w1", "w2"}
    never = leases.grant(("j", 0), "w1", 0, 0, now=T0, delivered=False)
    leases.delivered(("j", 0), "w1", 0, 0, now=T0 + 1)
    leases.grant(("j", 1), "w2", 0, 0, now=T0)
    leases.report("w1", T0 + 2 * LENGTH)  # w1 talks of other tasks only
    [(_, lapsed, why)] = leases.due(T0 + 2 * LENGTH, online)
    assert lapsed is never and "reports its other tasks" in why and not never.taken_up(why)
    ran = leases.grant(("j", 2), "w1", 0, 0, now=T0 + 2 * LENGTH)
    leases.renew(ran, T0 + 2 * LENGTH + 1)
    assert ran.reported and ran.taken_up("cannot reach worker")
    silent = leases.get(("j", 1))
    assert silent is not None and not silent.taken_up("worker online but silent for 180 s")
    assert silent.taken_up(OFFLINE)  # a frame can take its machine down before the first report
