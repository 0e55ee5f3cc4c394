"""A job rendered by a farm of in-process nodes: every frame reaches the
submitting node's output pattern, pixel for pixel what one machine renders
alone, spread over the farm's machines; and the farm still delivers every
frame when a worker dies in the middle of one."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from node.jobs import scheduler as scheduler_module
from node.membership import peers as peers_module
from protocol.crdt import Phase, TaskState, task_current
from protocol.membership.effects import Config
from tests.harness.cli import rn
from tests.harness.jobs import Member, agreed_server
from tests.harness.render import (
    SLOW,
    SMALL,
    RenderFarm,
    attempts,
    doc_of,
    frame_files,
    log_lines,
    mid_frame,
    pov_scene,
    reference_render,
    render_pids,
    same_pixels,
    settled,
    submit,
    tasks,
    wait_state,
    without_povray,
)
from tests.harness.waiting import wait_until


async def test_a_job_renders_on_several_machines_exactly_as_on_one(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b, c), _ = await farm.ready("a", "b", "c")
    out = short_dir / "out"
    uuid = await submit(a, farm.scene, frames="1-6", rdata=SMALL, output=str(out / "frame_####.png"))
    with trio.fail_after(60):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))

    got = frame_files(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    reference = await trio.to_thread.run_sync(reference_render, farm.scene, "1-6", short_dir / "ref", SMALL)
    for frame, path in got.items():
        assert same_pixels(path, reference[frame]), f"frame {frame} differs from a single-machine render"

    rows = await a.call(lambda cl: cl.copy_render_task_from(uuid))
    assert [r["frame"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["state"] == "done" and r["machines"] and r["render_time"] > 0 for r in rows), rows
    members = {m.uuid for m in (a, b, c)}
    renderers = {r["machines"][-1] for r in rows}
    assert renderers <= members and len(renderers) > 1, f"every frame rendered on {renderers}"

    results = await a.call(lambda cl: cl.results(uuid))
    assert sorted(r["frame"] for r in results if r["kind"] == "output") == [1, 2, 3, 4, 5, 6]
    assert {r["path"] for r in results} == {str(p) for p in got.values()}
    assert all(r["machine"] in members for r in results)
    with trio.fail_after(10):
        for m in (b, c):  # every node's book says the same
            await wait_state(m, uuid, "done")


async def test_a_worker_that_dies_mid_frame_loses_only_that_attempt(
        farm: RenderFarm, short_dir: Path) -> None:
    """The victim is cancelled (its node gone at once, its session with it) while
    its render process is running; the server re-queues the task as a new
    attempt and another machine renders it."""
    members, server = await farm.ready("a", "b", "c", retries=1)
    victim = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(server, farm.scene, frames="1-8", rdata=SLOW, output=str(out / "frame_####.png"))
    its_renders = f"{victim.node.prefs.work_dir}/tasks/{uuid}-"  # in every render's command line
    await wait_until(lambda: mid_frame(victim, uuid) and bool(render_pids(its_renders)),
                     60, "the victim renders a frame of the job")
    running = victim.node.worker.current
    assert running is not None
    lost_task = running.msg.task
    await victim.stop()
    assert not render_pids(its_renders), "the render process outlived its node"

    with trio.fail_after(90):
        assert await wait_state(server, uuid, "done", "failed") == "done", "\n".join(log_lines(server, uuid))
    assert sorted(frame_files(out)) == list(range(1, 9))
    rows = tasks(server, uuid)
    assert all(r["state"] == "done" for r in rows)
    assert attempts(server, uuid)[lost_task] >= 1, "the lost task was not re-queued as a new attempt"
    assert victim.uuid in rows[lost_task]["machines"] and rows[lost_task]["machines"][-1] != victim.uuid
    # the frame kept is the survivor's: ``rendered_by`` names it, here and in ``rendernode tasks``
    kept_by = rows[lost_task]["rendered_by"]
    assert kept_by == rows[lost_task]["machines"][-1] and kept_by != victim.uuid
    listed = (await rn(server.sock, "tasks", uuid, "--json")).json()
    assert next(r for r in listed if r["task"] == lost_task)["rendered_by"] == kept_by
    table = (await rn(server.sock, "tasks", uuid)).out
    kept_name = next(m.node.prefs.name for m in members if m.uuid == kept_by)
    assert kept_name in table
    assert any(f"task {lost_task} on {victim.uuid}" in line and "re-queued" in line
               for line in log_lines(server, uuid)), log_lines(server, uuid)
    survivors = [m for m in members if m is not victim]
    assert await settled(survivors) in survivors


async def test_a_task_its_worker_gives_up_while_shutting_down_goes_back_to_the_queue(
        farm: RenderFarm, short_dir: Path) -> None:
    """A worker shutting down stops its render and reports it stopped
    (USERBREAK) before its sessions close.  The server did not cancel that
    task, so it must re-queue it; it used to drop the lease only, leaving the
    task assigned to a machine that was gone, and the job never ended.  With
    one attempt allowed, it also shows that a task lost with its worker (given
    up, or gone with the node) does not use up the job's retries."""
    members, server = await farm.ready("a", "b", "c", retries=1)
    victim = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(server, farm.scene, frames="1-8", rdata=SLOW, output=str(out / "frame_####.png"))
    await wait_until(lambda: mid_frame(victim, uuid), 60, "the victim renders a frame of the job")
    running = victim.node.worker.current
    assert running is not None
    given_up = running.msg.task
    running.scope.cancel()  # what a shutdown does to the task it renders: reported as stopped
    await wait_until(lambda: attempts(server, uuid)[given_up] >= 1,
                     10, "the server hears that the victim stopped the task")
    await victim.stop()

    with trio.fail_after(60):
        assert await wait_state(server, uuid, "done", "failed") == "done", "\n".join(log_lines(server, uuid))
    assert sorted(frame_files(out)) == list(range(1, 9))
    row = tasks(server, uuid)[given_up]
    assert row["state"] == "done" and row["attempt"] >= 1 and row["failures"] == 0, row
    assert f"task {given_up} on {victim.uuid}: the worker gave it up (stopped); re-queued" \
        in log_lines(server, uuid)


async def _farm_beyond_the_active_view(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> tuple[Member, Member, Callable[[], list[Member]]]:
    """Six nodes whose overlays keep two neighbours each, so the server has no
    session with some workers: (the first node, the server, the workers it has
    no session with now), once every node counts the five others ONLINE, the
    server counts them all as workers, and it has no session with two of them."""
    monkeypatch.setattr(peers_module, "IDLE_CLOSE", 0.5)  # sessions outside the active view close soon
    small_views = Config(active_max=2)

    def built(node: Any) -> None:
        node.overlay.config = small_views

    first = await farm.start("a", built=built)
    members = [first] + [await farm.start(f"w{i}", peers=[first], built=built) for i in range(5)]
    with trio.fail_after(30):
        await wait_until(lambda: all(len(m.node.peers.online_uuids()) == 5 for m in members),
                         30, "every node counts the five others ONLINE",
                         lambda: {m.name: len(m.node.peers.online_uuids()) for m in members})
        server = await agreed_server(members)
        want = {m.uuid for m in members}
        await wait_until(lambda: set(server.node.scheduler.workers()) == want,
                         30, "the server counts every node as a worker",
                         lambda: server.node.scheduler.workers())

        def undialed() -> list[Member]:
            return [m for m in members if m is not server and m.uuid not in server.node.peers.sessions]

        await wait_until(lambda: len(undialed()) >= 2, 30, "the server has no session with two workers",
                         lambda: sorted(server.node.peers.sessions))
    return first, server, undialed


async def test_leases_of_online_workers_the_server_is_still_dialing_do_not_lapse(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a farm larger than the overlay's active view the server assigns tasks to
    members it has no session with and dials them.  A session coming up
    meanwhile (another worker's) must not lapse the leases of the workers still
    being dialed as "worker went offline": they are online in the farm.  (With
    100 hosts this re-queued the tasks of every undialed worker at each job
    start, again and again, until the farm drowned in re-assignments.)"""
    first, server, undialed = await _farm_beyond_the_active_view(farm, monkeypatch)
    strangers = {m.uuid for m in undialed()}
    real_dial = server.node.peers._dial_member
    delays = iter([0.0, 0.5, 1.0, 1.5])

    async def staggered(uuid: str, addresses: list[tuple[str, int]]) -> None:
        await trio.sleep(next(delays, 0.0))  # one session comes up while other dials are in flight
        await real_dial(uuid, addresses)

    monkeypatch.setattr(server.node.peers, "_dial_member", staggered)
    uuid = await submit(first, farm.scene, frames="1-30", renderer="command", rdata={"command": "true"})
    with trio.fail_after(60):
        assert await wait_state(first, uuid, "done", "failed") == "done", "\n".join(log_lines(first, uuid))
    lines = log_lines(first, uuid)
    assert not [ln for ln in lines if "worker went offline" in ln], lines
    rows = tasks(first, uuid)
    assert strangers & {m for r in rows for m in r["machines"]}, "no undialed worker got a task"


async def test_a_server_stalled_longer_than_a_lease_lapses_no_lease(farm: RenderFarm) -> None:
    """A starved server (its loop does not run for longer than a lease) finds the
    workers' progress reports waiting unread when it wakes: a lease lapses only
    the server's lag after its deadline (node/membership/health.py ``lag``), so
    none does.  On the 100-host bed, leases lapsing this way re-queued hundreds
    of frames."""
    (a, b), server = await farm.ready("a", "b")
    uuid = await submit(a, farm.scene, frames="1-2", renderer="command", rdata={"command": "sleep 5"})
    lease = server.node.scheduler.lease_time
    with trio.fail_after(30):
        await wait_until(lambda: len(server.node.scheduler.leases) == 2, 30, "both tasks leased",
                         lambda: tasks(server, uuid))
        await trio.sleep(1.0)  # rendering: reports flow
    time.sleep(lease + 1.0)  # noqa: ASYNC251 -- the whole process stalls, every in-process node with it
    with trio.fail_after(60):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    health = server.node.peers.health
    assert health.worst >= lease, health.status(trio.current_time())  # it did see the stall
    lines = log_lines(a, uuid)
    assert not [ln for ln in lines if "re-queued" in ln], lines
    assert attempts(a, uuid) == {0: 0, 1: 0}


async def test_a_worker_online_but_silent_for_longer_than_a_lease_keeps_its_task(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose reports stop for two lease times while the membership still
    has it online (starved, as every daemon on the 100-host bed was) keeps its
    lease: it lapses only after ``SILENT_LEASES`` lease times of silence, or when
    the worker goes offline.  Lapsing it at the deadline re-queued thousands of
    tasks that were rendering there."""
    (a, b), server = await farm.ready("a", "b")
    worker = b if server is a else a
    uuid = await submit(a, farm.scene, frames="1-2", renderer="command", rdata={"command": "sleep 8"})
    lease = server.node.scheduler.lease_time
    with trio.fail_after(30):
        await wait_until(lambda: worker.uuid in server.node.scheduler.leases.busy, 30,
                         "the worker holds a task", lambda: tasks(server, uuid))
    real_report = worker.node.worker._report
    quiet_until = trio.current_time() + 2 * lease

    async def starved(target: str, update: Any) -> None:
        if trio.current_time() < quiet_until:
            return  # the report never leaves
        await real_report(target, update)

    monkeypatch.setattr(worker.node.worker, "_report", starved)
    await trio.sleep(lease + 1.0)
    [held] = server.node.scheduler.leases.busy[worker.uuid]  # past its deadline, still rendering
    assert time.monotonic() - server.node.scheduler.leases[held].renewed > lease
    with trio.fail_after(60):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    lines = log_lines(a, uuid)
    assert not [ln for ln in lines if "re-queued" in ln], lines
    assert attempts(a, uuid) == {0: 0, 1: 0}


async def test_a_task_another_server_of_the_same_term_assigned_is_leased_and_lapses(
        farm: RenderFarm, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two starved nodes can claim the role with the same term (each saw the
    same highest term and took the next).  The one that steps down leaves the
    tasks it assigned ASSIGNED in the book; the server that stays must lease
    them like an earlier term's, or they stay assigned for good (on the
    100-host bed, 2 frames were still assigned to workers that never heard of
    them at 600 s)."""
    without_povray(monkeypatch)
    (a, b), server = await farm.ready("a", "b")
    other = b if server is a else a
    # no machine has the renderer: only the other "server" assigns the task
    uuid = await submit(a, pov_scene(short_dir), frames="1", renderer="povray")
    await wait_until(lambda: doc_of(server, uuid) is not None and doc_of(other, uuid) is not None, 10,
                     "the job on both nodes")
    doc = doc_of(other, uuid)
    assert doc is not None
    ghost = str(uuidlib.uuid4())
    cur = task_current(doc, 0)
    other.node.jobs.set_task(doc, 0, TaskState(gen=doc.gen, done=0, attempt=cur.attempt, phase=Phase.ASSIGNED,
                                               stamp=other.node.book.stamp(), worker=ghost, machines=(ghost,),
                                               term=server.node.election.term))
    line = f"task 0 on {ghost}: worker went offline; re-queued"
    await wait_until(lambda: line in log_lines(server, uuid), 30, "the server leases the task and it lapses",
                     lambda: log_lines(server, uuid))
    assert attempts(server, uuid) == {0: cur.attempt + 1}


async def test_a_worker_following_another_server_still_reports_to_the_one_that_assigned_its_task(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two starved nodes can serve side by side for a while (on the 100-host bed,
    for a whole job).  A worker reports to the server it follows and, while the
    server that assigned the task is another live node, to that one too: else
    that server's lease on a task being rendered lapsed for silence."""
    (a, b, c), server = await farm.ready("a", "b", "c")
    worker, elsewhere = [m for m in (a, b, c) if m is not server]
    uuid = await submit(a, farm.scene, frames="1", renderer="command", rdata={"command": "sleep 8"},
                        machines=[worker.name])
    leases = server.node.scheduler.leases
    with trio.fail_after(30):
        await wait_until(lambda: (uuid, 0) in leases and leases[(uuid, 0)].delivered, 30, "the task leased",
                         lambda: tasks(server, uuid))
    # it follows another server now (the farm's own election would put it right at once)
    monkeypatch.setattr(worker.node.worker, "election",
                        SimpleNamespace(server=elsewhere.uuid, term=worker.node.election.term))
    since = time.monotonic()
    await wait_until(lambda: (uuid, 0) in leases and leases[(uuid, 0)].renewed > since + 1.0, 4,
                     "a report renews the assigning server's lease")  # well before the render ends
    with trio.fail_after(60):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    assert not [ln for ln in log_lines(a, uuid) if "re-queued" in ln]


async def test_the_server_dials_its_workers_a_few_at_a_time_and_their_leases_wait_for_delivery(
        farm: RenderFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's start has the server dial every worker it has no session with; it
    dials ``DIALS_AT_ONCE`` at a time (on the 100-host bed, all at once made every
    handshake slow and many timed out half done), and a lease whose Assign
    waits for its dial does not lapse: its lease time runs from the delivery."""
    monkeypatch.setattr(scheduler_module, "DIALS_AT_ONCE", 1)
    first, server, _ = await _farm_beyond_the_active_view(farm, monkeypatch)
    peers = server.node.peers
    real_dial, real_deliver = peers._dial_member, peers.deliver_to
    in_flight: set[str] = set()
    most = 0

    async def slow_dial(uuid: str, addresses: list[tuple[str, int]]) -> None:
        await trio.sleep(server.node.scheduler.lease_time / 2)  # two in a row outlast a lease
        await real_dial(uuid, addresses)

    async def counting(uuid: str, message: Any, hold: str = "") -> str:
        nonlocal most
        dialing = uuid not in peers.sessions
        if dialing:
            in_flight.add(uuid)
            most = max(most, len(in_flight))
        try:
            return await real_deliver(uuid, message, hold)
        finally:
            in_flight.discard(uuid)

    monkeypatch.setattr(peers, "_dial_member", slow_dial)
    monkeypatch.setattr(peers, "deliver_to", counting)
    uuid = await submit(first, farm.scene, frames="1-12", renderer="command", rdata={"command": "sleep 1"})
    with trio.fail_after(90):
        assert await wait_state(first, uuid, "done", "failed") == "done", "\n".join(log_lines(first, uuid))
    assert most == 1
    lines = log_lines(first, uuid)
    assert not [ln for ln in lines if "re-queued" in ln], lines
