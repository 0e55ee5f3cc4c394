"""Stopping, starting and deleting a job while the farm renders it: the render
processes die with the stop or the delete, nothing more is delivered, a
started job picks up where it stopped, and a deleted job is gone everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from node.jobs import replication
from protocol.crdt import digest
from tests.harness.jobs import Member
from tests.harness.render import (
    SLOW,
    RenderFarm,
    alive,
    doc_of,
    frame_files,
    log_lines,
    mid_frame,
    render_pids,
    stamps,
    state,
    submit,
    tasks,
    wait_state,
)
from tests.harness.waiting import wait_until


def _quiet(members: list[Member], uuid: str) -> bool:
    """No node renders, holds, waits to render or still delivers anything of the job."""
    for m in members:
        worker = m.node.worker
        if any(r is not None and r.msg.job == uuid for r in (worker.current, worker.waiting)):
            return False
        if any(item.job == uuid for item in m.node.results.pending()):
            return False
        if any(job == uuid for job, _ in m.node.scheduler.leases):
            return False
    return not render_pids(uuid)


def _same_everywhere(members: list[Member], uuid: str) -> bool:
    docs = [doc_of(m, uuid) for m in members]
    return None not in docs and len({digest(d) for d in docs if d is not None}) == 1


async def _mid_job(members: list[Member], origin: Member, uuid: str, out: Path) -> list[int]:
    """Wait until some frames have arrived and render processes of the job are running."""
    def busy() -> bool:
        return len(frame_files(out)) >= 2 and bool(render_pids(uuid)) and any(
            mid_frame(m, uuid) for m in members)

    await wait_until(busy, 60, "frames arriving while others render",
                     lambda: (sorted(frame_files(out)), render_pids(uuid)))
    return render_pids(uuid)


async def test_stop_kills_the_renders_and_start_renders_the_rest(
        farm: RenderFarm, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop is made on a worker; the server re-queues the stopped tasks, and
    that change reaches every node by push (anti-entropy is switched off here)."""
    monkeypatch.setattr(replication, "ANTI_ENTROPY_INTERVAL", 3600.0)
    members, server = await farm.ready("a", "b", "c")
    origin = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(origin, farm.scene, frames="1-12", rdata=SLOW, output=str(out / "frame_####.png"))
    pids = await _mid_job(members, origin, uuid, out)

    assert await origin.call(lambda c: c.stop_rendering(uuid)) == "USERBREAK"
    with trio.fail_after(10):
        for m in members:
            await wait_state(m, uuid, "stopped")
        await wait_until(lambda: _quiet(members, uuid), 10, "nothing of the stopped job runs or travels",
                         lambda: render_pids(uuid))
        await wait_until(lambda: _same_everywhere(members, uuid), 10, "every node holds the same job")
    assert not any(alive(pid) for pid in pids), "a render process outlived the stop"
    rows = tasks(origin, uuid)
    done = {r["frame"] for r in rows if r["state"] == "done"}
    arrived = set(frame_files(out))
    assert arrived == done, "frames arrived that the job does not count as done, or the reverse"
    assert 2 <= len(done) < 12
    assert all(r["state"] == "queued" for r in rows if r["frame"] not in done), rows
    summary = await origin.call(lambda c: c.get_job(uuid))
    assert summary["state"] == "stopped" and summary["result"] == "USERBREAK"
    assert any("stopped by" in e["line"] for e in summary["log"])

    kept = stamps(frame_files(out))
    assert await origin.call(lambda c: c.init_and_start_rendering_full_async(uuid))
    with trio.fail_after(60):
        assert await wait_state(origin, uuid, "done", "failed") == "done", "\n".join(log_lines(origin, uuid))
    assert sorted(frame_files(out)) == list(range(1, 13))
    rows = tasks(origin, uuid)
    assert all(r["state"] == "done" for r in rows)
    after = stamps(frame_files(out))
    assert {f: after[f] for f in done} == kept, "frames done before the stop were delivered again"


async def test_delete_mid_job_removes_it_everywhere_and_the_workers_let_go(
        farm: RenderFarm, short_dir: Path) -> None:
    members, server = await farm.ready("a", "b", "c")
    origin = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(origin, farm.scene, frames="1-12", rdata=SLOW, output=str(out / "frame_####.png"))
    pids = await _mid_job(members, origin, uuid, out)

    reply = await origin.call(lambda c: c.call("delete", job=uuid, inform_clients=True))
    assert reply["deleted"] and reply["replicas"] == 2
    with trio.fail_after(15):
        await wait_until(lambda: all(state(m, uuid) == "gone" for m in members), 15, "the job gone on every node",
                         lambda: {m.name: state(m, uuid) for m in members})
        await wait_until(lambda: _quiet(members, uuid), 15, "nothing of the deleted job runs or travels",
                         lambda: render_pids(uuid))

        def workdirs() -> list[str]:  # removed in a thread once the worker let the task go
            return [n for m in members
                    for folder in (os.path.join(m.node.prefs.state_dir, "work"),
                                   os.path.join(m.node.prefs.work_dir, "tasks"))
                    for n in os.listdir(folder) if uuid in n]

        await wait_until(lambda: not workdirs(), 15, "no work folder of the deleted job left", workdirs)
    assert not any(alive(pid) for pid in pids), "a render process outlived the delete"
    for m in members:
        assert doc_of(m, uuid) is None and m.node.book.docs[uuid].deleted is not None
        assert uuid not in {j["uuid"] for j in await m.call(lambda c: c.get_jobs_list())}
    arrived = set(frame_files(out))
    assert len(arrived) < 12
