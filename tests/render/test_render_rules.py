"""The scheduler's rules, seen from the jobs they shape: retries that end in a
failed job, a machine excluded after its failures, warnings taken as errors,
a job that deletes itself once delivered, a job no machine can render, and
the machines a job names."""

from __future__ import annotations

import faulthandler
import re
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
import trio

from node.jobs import scheduler as scheduler_module
from node.jobs.scheduler import LOST_LIMIT
from node.jobs.scheduling.leases import OFFLINE, Lease
from node.jobs.scheduling.policy import DEPTH
from node.render.worker import Running
from protocol.crdt import task_current
from protocol.enums import RenderResult
from protocol.messages import Assign, TaskUpdate
from tests.harness.jobs import agreed_server
from tests.harness.render import (
    NOMACHINE,
    SMALL,
    RenderFarm,
    doc_of,
    frame_files,
    log_lines,
    pov_scene,
    state,
    submit,
    summary,
    tasks,
    wait_state,
    without_povray,
)
from tests.harness.waiting import wait_until

needs_povray = pytest.mark.skipif(shutil.which("povray") is None,
                                  reason="povray is not installed (Debian: apt-get install povray)")
#: fails fast in a work folder of the node named "bad", takes a moment elsewhere
#: (the command renderer runs in the task's work folder, under the node's state dir)
FAILS_ON_BAD = "sh -c 'case $PWD in */bad-work/*) exit 3;; esac; sleep 0.2'"  # the work_dir of node bad
#: POV-Ray warns of a scene without #version (and without assumed_gamma)
WARNS = """camera { location <0, 1, -3> look_at <0, 0, 0> }
light_source { <2, 4, -3> color rgb 1 }
sphere { <0, 0, 0>, 1 pigment { color rgb <1, 0, 0> } }
"""


async def test_a_command_that_fails_fails_the_job_after_its_retries(farm: RenderFarm) -> None:
    (a, b), _ = await farm.ready("a", "b", retries=2)
    uuid = await submit(a, farm.scene, frames="1-2", renderer="command", rdata={"command": "false"})
    with trio.fail_after(30):
        assert await wait_state(a, uuid, "done", "failed") == "failed"
    rows = tasks(a, uuid)
    assert all(r["state"] == "failed" and r["attempt"] == 2 for r in rows), rows
    assert all("exited with status 1" in r["error"] for r in rows), rows
    job = await a.call(lambda c: c.get_job(uuid))
    assert job["state"] == "failed" and job["tasks_failed"] == 2 and job["frames_done"] == 0
    lines = [e["line"] for e in job["log"]]
    for tid in (0, 1):
        tries = [ln for ln in lines if ln.startswith(f"task {tid} attempt ")]
        assert len(tries) == 2 and all("ERRORLOADINGPROJECT: command exited with status 1" in ln
                                       for ln in tries), lines
        assert any(ln.startswith(f"task {tid} failed after 2 failed attempts") for ln in lines), lines
    assert "job failed" in lines


async def test_a_machine_that_keeps_failing_is_excluded_from_the_job(farm: RenderFarm) -> None:
    (good1, bad, good2), _ = await farm.ready("good1", "bad", "good2", retries=10, exclude_after=2)
    uuid = await submit(good1, farm.scene, frames="1-10", renderer="command",
                        rdata={"command": FAILS_ON_BAD}, flags=["EXCLUDECLIENTONRENDERINGERROR"])
    with trio.fail_after(60):
        assert await wait_state(good1, uuid, "done", "failed") == "done", "\n".join(log_lines(good1, uuid))
    lines = log_lines(good1, uuid)
    assert f"machine {bad.uuid} excluded from this job after 2 failures" in lines, lines
    failures = [ln for ln in lines if re.match(rf"task \d+ attempt \d+ failed on {bad.uuid}:", ln)]
    # it fails twice, and at most the task it held waiting behind the second fails after that
    assert 2 <= len(failures) <= 2 + DEPTH - 1, failures
    assert not [ln for ln in lines if "failed on" in ln and bad.uuid not in ln], lines
    rows = tasks(good1, uuid)
    assert all(r["state"] == "done" and r["machines"][-1] in (good1.uuid, good2.uuid) for r in rows), rows


async def test_without_the_flag_a_failing_machine_never_gets_back_a_task_it_failed(
        farm: RenderFarm) -> None:
    """The control for the test above: the same job without
    EXCLUDECLIENTONRENDERINGERROR.  The failing machine keeps its turn for new
    tasks, but a task it failed goes to another able machine (it used to be
    handed straight back, as the machine that freed first, until its retries
    ran out), so with two attempts allowed every task still renders."""
    (good1, bad, good2), _ = await farm.ready("good1", "bad", "good2", retries=2, exclude_after=2)
    uuid = await submit(good1, farm.scene, frames="1-10", renderer="command",
                        rdata={"command": FAILS_ON_BAD})
    with trio.fail_after(60):
        assert await wait_state(good1, uuid, "done", "failed") == "done", "\n".join(log_lines(good1, uuid))
    lines = log_lines(good1, uuid)
    assert not [ln for ln in lines if "excluded" in ln]
    failed = [m.group(1) for ln in lines if (m := re.match(rf"task (\d+) attempt \d+ failed on {bad.uuid}:", ln))]
    assert failed, lines
    assert len(failed) == len(set(failed)), f"a task failed twice on the bad machine: {lines}"
    rows = tasks(good1, uuid)
    assert all(r["state"] == "done" and r["machines"][-1] in (good1.uuid, good2.uuid) for r in rows), rows


@needs_povray
async def test_handlewarningaserror_fails_a_render_that_warns(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b", retries=2)
    scene = short_dir / "warns.pov"
    scene.write_text(WARNS)
    rdata = {"resolution_x": 16, "resolution_y": 12}
    strict = await submit(a, scene, renderer="povray", rdata=rdata, flags=["HANDLEWARNINGASERROR"],
                          output=str(short_dir / "strict" / "frame_#.png"))
    lenient = await submit(a, scene, renderer="povray", rdata=rdata,
                           output=str(short_dir / "lenient" / "frame_#.png"))
    with trio.fail_after(60):
        assert await wait_state(a, lenient, "done", "failed") == "done"
        assert await wait_state(a, strict, "done", "failed") == "failed"
    (row,) = tasks(a, strict)
    assert row["error"].startswith("RENDERRESULT_ERRORLOADINGPROJECT: warning treated as error: "
                                   "Parse Warning:"), row
    assert any("warning treated as error" in ln for ln in log_lines(a, strict))
    assert not frame_files(short_dir / "strict") and sorted(frame_files(short_dir / "lenient")) == [1]


async def test_deleteafterrendering_deletes_the_job_once_its_frames_are_delivered(
        farm: RenderFarm, short_dir: Path) -> None:
    members, server = await farm.ready("a", "b", "c")
    origin = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(origin, farm.scene, frames="1-4", rdata=SMALL, flags=["DELETEAFTERRENDERING"],
                        output=str(out / "frame_####.png"))
    await wait_until(lambda: all(state(m, uuid) == "gone" for m in members), 60, "the job deleted everywhere",
                     lambda: {m.name: state(m, uuid) for m in members})
    assert sorted(frame_files(out)) == [1, 2, 3, 4]
    assert all(m.node.book.docs[uuid].deleted is not None for m in members)
    assert not any(item.job == uuid for m in members for item in m.node.results.pending())


async def test_a_job_whose_renderer_no_machine_has_is_nomachine_and_holds_up_nothing(
        farm: RenderFarm, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    without_povray(monkeypatch)
    (a, b), server = await farm.ready("a", "b")
    assert not any("povray" in caps for caps in server.node.scheduler.workers().values())
    stuck = await submit(a, pov_scene(short_dir), frames="1-2", renderer="povray")
    behind = await submit(a, farm.scene, frames="1-2", rdata=SMALL, output=str(short_dir / "out" / "f_##.png"))
    with trio.fail_after(30):
        await wait_state(a, stuck, "nomachine")
        assert await wait_state(a, behind, "done", "failed") == "done"
    doc = doc_of(a, stuck)
    assert doc is not None and doc.value("result") == NOMACHINE
    job = await a.call(lambda c: c.get_job(stuck))
    assert job["state"] == "nomachine" and job["result"] == "NOMACHINE"
    assert any("RENDERRESULT_NOMACHINE" in e["line"] for e in job["log"]), job["log"]
    assert all(r["state"] == "queued" and not r["machines"] for r in tasks(a, stuck))


async def test_a_job_renders_only_on_the_machines_it_names(farm: RenderFarm, short_dir: Path) -> None:
    (a, b, c), _ = await farm.ready("a", "b", "c")
    by_name = await submit(a, farm.scene, frames="1-4", rdata=SMALL, machines=[b.name],
                           output=str(short_dir / "b" / "f_##.png"))
    by_uuid = await submit(a, farm.scene, frames="1-4", rdata=SMALL, machines=[c.uuid],
                           output=str(short_dir / "c" / "f_##.png"))
    with trio.fail_after(60):
        for uuid in (by_name, by_uuid):
            assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    assert {m for r in tasks(a, by_name) for m in r["machines"]} == {b.uuid}
    assert {m for r in tasks(a, by_uuid) for m in r["machines"]} == {c.uuid}
    assert {r["machine"] for r in await a.call(lambda cl: cl.results(by_name))} == {b.uuid}
    assert summary(a, by_name)["machines"] == [b.name]


async def test_a_task_that_keeps_losing_its_worker_fails_only_after_lost_limit_times_the_retries(
        farm: RenderFarm) -> None:
    """Lost attempts are free, but not forever: a frame that takes down every
    machine it reaches fails after ``LOST_LIMIT`` x retries losses; a worker
    refusing the task (busy) is not a loss at all."""
    (a,), _ = await farm.ready("a", retries=2)
    uuid = await submit(a, farm.scene, frames="1", start=False)
    sched = a.node.scheduler

    def requeue(**how: bool) -> dict[str, object]:
        doc = doc_of(a, uuid)
        assert doc is not None
        sched._requeue(doc, 0, task_current(doc, 0), "test", **how)
        return tasks(a, uuid)[0]

    for _ in range(10):
        row = requeue(count=False)  # refused as busy
    assert row["state"] == "queued" and row["failures"] == 0, row
    for _ in range(2 * LOST_LIMIT - 1):
        row = requeue(count=False, lost=True)
    assert row["state"] == "queued" and row["failures"] == 0, row
    row = requeue(count=False, lost=True)
    assert row["state"] == "failed" and row["failures"] == 0, row
    assert f"task 0 failed after its worker was lost {2 * LOST_LIMIT} times: test" in log_lines(a, uuid)


async def test_only_attempts_their_worker_took_up_count_towards_the_lost_limit(farm: RenderFarm) -> None:
    """A lease that lapses with no report of its task (the Assign went astray, or
    the worker only talked of other tasks) may never have reached the worker: it
    is queued again however often that happens; one the worker reported on, or
    whose worker went offline, counts as lost with its worker."""
    (a,), _ = await farm.ready("a", retries=1)
    uuid = await submit(a, farm.scene, frames="1", start=False)
    sched = a.node.scheduler
    key = (uuid, 0)

    def lapse(reason: str, reported: bool) -> dict[str, object]:
        doc = doc_of(a, uuid)
        assert doc is not None
        cur = task_current(doc, 0)
        lease = Lease("elsewhere", cur.gen, cur.attempt, deadline=0.0, renewed=0.0, reported=reported)
        sched._lapsed(key, lease, reason)
        return tasks(a, uuid)[0]

    for _ in range(3 * LOST_LIMIT):
        row = lapse("no progress report for 9 s (the worker reports its other tasks)", reported=False)
        row = lapse("worker online but silent for 30 s", reported=False)
        row = lapse("cannot reach worker: cannot reach elsewhere", reported=False)
    assert row["state"] == "queued" and row["attempt"] == 9 * LOST_LIMIT, row
    for _ in range(LOST_LIMIT - 1):
        row = lapse(OFFLINE, reported=False)
    assert row["state"] == "queued", row
    row = lapse("worker online but silent for 30 s", reported=True)
    assert row["state"] == "failed" and row["failures"] == 0, row
    assert (f"task 0 failed after its worker was lost {LOST_LIMIT} times: worker online but silent for 30 s"
            in log_lines(a, uuid))


async def test_the_server_hands_out_a_burst_of_assignments_at_a_time_and_the_rest_after_a_yield(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's start hands out a task and a waiting one per worker; on a farm of
    100 that is 200 assignments in one stretch of the loop, with no heartbeat
    going out meanwhile.  The scheduler hands out ``ASSIGN_BURST`` and wakes its
    own loop for the rest, which comes after a checkpoint."""
    monkeypatch.setattr(scheduler_module, "ASSIGN_BURST", 1)
    (a, b), server = await farm.ready("a", "b")
    sched = server.node.scheduler
    uuid = await submit(server, farm.scene, frames="1-6", start=False)
    doc = doc_of(server, uuid)
    assert doc is not None
    before = sched.assigned_count
    server.node.jobs.start(doc, "test")
    waiting, sched._wake = sched._wake, trio.Event()  # the run loop has not run since: this call alone
    sched.assign_all()
    assert sched.assigned_count == before + 1  # of a task and a waiting one for each of 2 workers
    assert sched._wake.is_set()  # it wakes the run loop for the rest
    waiting.set()  # (the loop waits on the event it saw)
    with trio.fail_after(30):
        assert await wait_state(server, uuid, "done", "failed") == "done", "\n".join(log_lines(server, uuid))
    assert sched.assigned_count >= before + 6


async def test_a_worker_busy_behind_the_servers_back_is_not_asked_again_at_once(
        farm: RenderFarm) -> None:
    """A worker can hold tasks its server does not count (handed out by the
    server before it, or lapsed here while the worker went on).  It refuses a
    new one as busy; the server must not hand it the next task straight back,
    or the two bounce tasks between them as fast as they can (the server's own
    local worker did so without ever yielding, and froze the daemon)."""
    server = await farm.start("server", share=False)
    worker = await farm.start("worker", peers=[server], server_priority=0)
    await wait_until(lambda: server.node.election.role == "server"
                     and set(server.node.scheduler.workers()) == {worker.uuid},
                     30, "the server counts the worker", lambda: server.node.scheduler.workers())
    held = object()  # two tasks the server never handed out
    worker.node.worker.current, worker.node.worker.waiting = held, held  # type: ignore[assignment]
    refusals = 0
    real_report = worker.node.worker._report

    async def report(target: str, update: Any) -> None:
        nonlocal refusals
        refusals += update.error == "worker is busy"
        await real_report(target, update)

    worker.node.worker._report = report  # type: ignore[method-assign]
    uuid = await submit(worker, farm.scene, frames="1-4", renderer="command", rdata={"command": "true"})
    await wait_until(lambda: refusals >= 1, 30, "the worker refuses a task as busy")
    await trio.sleep(1.0)  # a refusal loop would refuse hundreds in this second
    assert refusals <= 2, f"{refusals} refusals in the second after the first"
    worker.node.worker.current = worker.node.worker.waiting = None  # its old tasks end
    with trio.fail_after(30):
        assert await wait_state(worker, uuid, "done", "failed") == "done", "\n".join(log_lines(worker, uuid))


@pytest.mark.parametrize("whose", ["a peer's", "the server's own"])
async def test_a_worker_busy_with_tasks_the_server_never_assigned_is_not_sent_tasks_again_and_again(
        farm: RenderFarm, whose: str) -> None:
    """A worker can hold two tasks this server does not know of (an earlier term's
    server assigned them, or their leases lapsed while it was cut off): it refuses
    the next assignment as busy.  The refused task used to go straight back to the
    same worker, the server still counting it idle: a refusal loop (with the
    server's own worker a loop that never yielded, and the daemon hung; found by
    the chaos soak).  Now the worker is left out until a task of its ends."""
    guard = 120.0  # a hung run loop cannot be cancelled: end the run with every stack instead
    faulthandler.dump_traceback_later(guard, exit=True)
    try:
        (a, b), server = await farm.ready("a", "b")
        worker = server if whose == "the server's own" else next(m for m in (a, b) if m is not server)
        held = [Running(Assign(job=str(uuidlib.uuid4()), task=t, frames=[1], gen=0, attempt=0, term=1,
                               renderer="command", scene=farm.scene, origin=worker.uuid), server.uuid)
                for t in (0, 1)]
        worker.node.worker.current, worker.node.worker.waiting = held
        uuid = await submit(a, farm.scene, frames="1", renderer="command", rdata={"command": "true"},
                            machines=[worker.uuid])
        await trio.sleep(1.0)
        row = tasks(server, uuid)[0]
        assert row["state"] == "queued" and row["attempts"] <= 1, f"{row['state']}, attempts {row['attempts']}"
        assert worker.uuid in server.node.scheduler.policy.rest
        # its tasks end (it reports them, as it does any task, to the current server)
        worker.node.worker.current = worker.node.worker.waiting = None
        for running in held:
            m = running.msg
            await worker.node.worker._report(server.uuid, TaskUpdate(
                job=m.job, task=m.task, gen=m.gen, attempt=m.attempt, finished=True,
                result=int(RenderResult.RENDERRESULT_OK)))
        with trio.fail_after(30):
            assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
        (row,) = tasks(server, uuid)
        assert row["attempts"] <= 2 and row["machines"] == [worker.uuid], row
    finally:
        faulthandler.cancel_dump_traceback_later()


async def test_a_new_server_does_not_log_the_end_of_jobs_that_ended_before_it(farm: RenderFarm) -> None:
    """Every server that takes over indexes every job, finished ones too; it used to
    log "job done" for each of them again (a chaos soak's jobs ended with dozens of
    such lines, one per election, each replicated to every node)."""
    (a, b, c), server = await farm.ready("a", "b", "c")
    uuid = await submit(a, farm.scene, frames="1-2", renderer="command", rdata={"command": "true"})
    with trio.fail_after(30):
        assert await wait_state(a, uuid, "done", "failed") == "done"
        await wait_until(lambda: log_lines(a, uuid).count("job done") == 1, 30, "the end logged")
    rest = [m for m in (a, b, c) if m is not server]
    await server.stop()
    with trio.fail_after(30):
        new = await agreed_server(rest)
        await wait_until(lambda: new.node.scheduler.status()["active"], 30, "the new server schedules")
    await trio.sleep(0.5)
    for m in rest:
        assert log_lines(m, uuid).count("job done") == 1, log_lines(m, uuid)
        assert doc_of(m, uuid).value("ended") == [0, "done"]  # type: ignore[union-attr]
