"""Replication between running nodes (node.replication): anti-entropy brings a
node that was down up to date, and the two sides of a partition, each with its
own server and its own submits, end with identical job books and one server
once the links come back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon import Node
from node.jobs.election import TERM_FILE
from node.jobs.operations import job_state
from node.jobs.replication import LOG_PER_PART, TASKS_PER_PART, Replication
from protocol.crdt import PART_BUCKETS, JobDoc, Phase, TaskState
from tests.harness.jobs import Farm, Member, agreed_server, book_digests, connected, me
from tests.harness.waiting import wait_until


def _converged(members: list[Member]) -> bool:
    first = book_digests(members[0])
    return all(book_digests(m) == first for m in members[1:])


def _digest_detail(members: list[Member]) -> object:
    return {m.name: len(book_digests(m)) for m in members}


async def test_a_node_that_was_down_gets_what_it_missed_on_reconnect(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    # no server: its scheduler would mark the jobs NOMACHINE (nothing here renders)
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0})
    a, b, c = await farm.mesh("a", "b", "c")
    before = (await a.submit())["uuid"]
    await wait_until(lambda: _converged([a, b, c]), 5, "the first job everywhere")
    await c.stop()
    made = []
    for _ in range(3):
        result = await a.submit(frames="1-30")
        assert result["replicas"] == 1  # only b is online
        made.append(result["uuid"])
    await b.call(lambda cl: cl.stop_rendering(made[0]))
    await a.call(lambda cl: cl.add_log_to_job(made[1], "while c slept"))
    await a.call(lambda cl: cl.delete_render_job(before))
    # a job too big for one message: its tasks and log go in parts
    big = await a.submit(frames=f"1-{TASKS_PER_PART * 2 + 10}")
    assert big["replicas"] == 1
    made.append(big["uuid"])
    for i in range(LOG_PER_PART + 20):
        a.node.jobs.add_log(a.node.jobs.find(big["uuid"]), f"line {i}")
    assert c.node.book.get(made[0]) is None

    def from_its_own_disk(node: Node) -> None:  # before it talks to anyone
        assert node.book.get(before) is not None

    c = await farm.restart(c, built=from_its_own_disk)
    with trio.fail_after(5):
        await connected([a, b, c])
        await wait_until(lambda: _converged([a, b, c]), 5, "c to catch up", lambda: _digest_detail([a, b, c]))
    book = c.node.book
    assert book.get(before) is None and book.docs[before].deleted is not None
    assert [d.uuid for d in c.node.jobs.queue()] == made
    assert book.docs[made[0]].value("state") == "stopped"
    assert book.docs[made[1]].visible_log()[-1][1].endswith("while c slept")
    assert len(book.docs[made[2]].tasks) == 30
    assert len(book.docs[made[3]].tasks) == TASKS_PER_PART * 2 + 10
    assert len(book.docs[made[3]].visible_log()) == LOG_PER_PART + 21


async def test_a_node_behind_on_a_few_tasks_of_a_big_job_gets_only_their_buckets(
        short_dir: Path, token: bytes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anti-entropy of a big job both hold compares it part by part: the node that
    missed two task changes gets the two buckets of tasks holding them, not the
    job's 200 tasks (while a job renders, its whole document went back and
    forth with every digest exchange)."""
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0})
    a, b = await farm.mesh("a", "b")
    uuid = (await a.submit(frames="1-200"))["uuid"]
    await wait_until(lambda: _converged([a, b]), 5, "the job on both")
    await b.stop()
    doc = a.node.jobs.find(uuid)
    a.node.jobs.set_task(doc, 3, TaskState(phase=Phase.RENDERING, stamp=a.node.book.stamp(), worker=a.uuid))
    a.node.jobs.set_task(doc, 40, TaskState(phase=Phase.SUCCEEDED, done=1, stamp=a.node.book.stamp()))
    sent: list[JobDoc] = []
    real = Replication._send_docs

    async def recording(self: Replication, session: Any, docs: list[JobDoc]) -> None:
        if self is a.node.replication and session.uuid == b.uuid:
            sent.extend(docs)
        await real(self, session, docs)

    monkeypatch.setattr(Replication, "_send_docs", recording)
    b = await farm.restart(b)
    with trio.fail_after(5):
        await connected([a, b])
        await wait_until(lambda: _converged([a, b]), 5, "b to catch up", lambda: _digest_detail([a, b]))
    assert b.node.book.docs[uuid].tasks[40].phase == Phase.SUCCEEDED
    assert sent and all(d.uuid == uuid and not d.fields and not d.log for d in sent), sent
    assert {tid % PART_BUCKETS for d in sent for tid in d.tasks} == {3, 40 % PART_BUCKETS}


@pytest.mark.parametrize("right_saw", [0, 5], ids=["same-term", "right-term-higher"])
async def test_both_sides_of_a_partition_keep_working_and_converge_on_heal(
        short_dir: Path, token: bytes, nursery: trio.Nursery, right_saw: int) -> None:
    farm = Farm(nursery, short_dir, token)
    # with right_saw=5 the second pair once saw term 5, so its server claims term 6
    for name in ("c", "d"):
        (short_dir / name).mkdir()
        (short_dir / name / TERM_FILE).write_text(str(right_saw))
    a, b = await farm.mesh("a", "b")
    c, d = await farm.mesh("c", "d")
    left, right = [a, b], [c, d]
    with trio.fail_after(5):
        left_server = await agreed_server(left)
        right_server = await agreed_server(right)
    assert left_server.term == 1 and right_server.term == right_saw + 1
    # both servers are followed; the greater (term, priority, uuid) keeps the role
    winner, loser = sorted([left_server, right_server], key=lambda m: (m.term, m.uuid))[::-1]
    # both sides accept submits and changes
    left_jobs, right_jobs = [], []
    for i in range(2):
        result = await a.submit(frames=f"1-{i + 2}")
        assert result["replicas"] == 1
        left_jobs.append(result["uuid"])
        result = await d.submit(frames=f"1-{i + 5}")
        assert result["replicas"] == 1
        right_jobs.append(result["uuid"])
    await b.call(lambda cl: cl.stop_rendering(left_jobs[0]))
    await c.call(lambda cl: cl.add_log_to_job(right_jobs[1], "right side was here"))
    await c.call(lambda cl: cl.delete_render_job(right_jobs[0]))
    assert not set(book_digests(a)) & set(book_digests(c))

    # heal: the first pair dials the second
    for member in left:
        for other in right:
            await member.link(other)
    everyone = [a, b, c, d]
    with trio.fail_after(5):
        await connected(everyone)
        await wait_until(lambda: _converged(everyone), 5, "identical job books",
                         lambda: _digest_detail(everyone))
        server = await agreed_server(everyone)
    assert server is winner and server.term == right_saw + 1
    assert loser.role == "worker"  # it saw the greater claim and stepped down
    assert all(m.node.election.max_term == server.term for m in everyone)
    # every side's work survived, in one queue order everywhere
    queue = [j.uuid for j in a.node.jobs.queue()]
    assert sorted(queue) == sorted([*left_jobs, right_jobs[1]])
    assert all([j.uuid for j in m.node.jobs.queue()] == queue for m in everyone)
    assert c.node.book.docs[left_jobs[0]].value("state") == "stopped"
    assert a.node.book.docs[right_jobs[0]].deleted is not None
    listed = await b.call(lambda cl: cl.get_jobs_list())
    assert [j["uuid"] for j in listed] == queue


async def _cut(left: list[Member], right: list[Member]) -> None:
    """Partition: each side forgets the other (the dialing side first, so nobody
    redials); as long as the caller's ``trio.fail_after`` lets it."""
    for y in right:
        for x in left:
            await y.forget(x)
    for x in left:
        for y in right:
            await x.forget(y)
    await wait_until(lambda: not any(x.sees(y) or y.sees(x) for x in left for y in right),
                     math.inf, "the two sides to lose each other")


async def test_concurrent_changes_to_one_job_on_both_sides_merge_into_one_document(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    a, b, c, d = everyone = await farm.mesh("a", "b", "c", "d")
    left, right = [a, b], [c, d]
    with trio.fail_after(5):
        first_term = (await agreed_server(everyone)).term
    shared = (await a.submit(frames="1-6"))["uuid"]
    doomed = (await a.submit())["uuid"]
    with trio.fail_after(5):
        await wait_until(lambda: _converged(everyone), 5, "both jobs everywhere")
        await _cut(left, right)
        # the side without the old server elects its own, with the next term
        left_server = await agreed_server(left)
        right_server = await agreed_server(right)
    assert {left_server.term, right_server.term} == {first_term, first_term + 1}

    await a.call(lambda cl: cl.stop_rendering(shared))
    await a.call(lambda cl: cl.set_default_scene_name(shared, "left.scn"))
    await a.call(lambda cl: cl.add_log_to_job(shared, "left"))
    await b.call(lambda cl: cl.delete_render_job(doomed))
    await c.call(lambda cl: cl.call("start", job=shared, restart=True))
    await c.call(lambda cl: cl.set_default_scene_name(shared, "right.scn"))
    await d.call(lambda cl: cl.add_log_to_job(shared, "right"))
    await d.call(lambda cl: cl.stop_rendering(doomed))
    left_only = (await b.submit())["uuid"]
    right_only = (await d.submit())["uuid"]
    ldoc, rdoc = a.node.book.docs[shared], c.node.book.docs[shared]
    scene = max(ldoc.fields["default_scene"], rdoc.fields["default_scene"], key=lambda r: r.stamp)
    state = max(ldoc.fields["state"], rdoc.fields["state"], key=lambda r: r.stamp)

    for x in left:
        for y in right:
            await x.link(y)
    with trio.fail_after(5):
        await connected(everyone)
        await wait_until(lambda: _converged(everyone), 5, "identical job books",
                         lambda: _digest_detail(everyone))
        server = await agreed_server(everyone)
    assert server.term == first_term + 1  # the lower term stepped down
    for m in everyone:
        doc = m.node.book.docs[shared]
        assert doc.gen == 1  # the restart made on the right
        assert doc.value("default_scene") == scene.value and doc.value("state") == state.value
        lines = [line for _, line in doc.visible_log()]
        assert f"[{me()}] left" in lines and f"[{me()}] right" in lines
        assert m.node.book.get(doomed) is None  # the delete beats the stop made meanwhile
        assert [j.uuid for j in m.node.jobs.queue()] == [shared, left_only, right_only] or \
            [j.uuid for j in m.node.jobs.queue()] == [shared, right_only, left_only]
    assert len({tuple(j.uuid for j in m.node.jobs.queue()) for m in everyone}) == 1


async def test_a_node_linked_to_one_peer_only_still_gets_every_job(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    a = await farm.start("a")
    b = await farm.start("b", peers=[a])
    c = await farm.start("c", peers=[b])  # c knows b only (another subnet, say)
    await wait_until(lambda: b.sees(a, c), 5, "the chain a - b - c")
    uuid = (await a.submit())["uuid"]
    await wait_until(lambda: c.node.book.get(uuid) is not None, 1, "the job to reach c")


async def test_a_worker_the_server_cannot_dial_gets_its_work_through_another_node(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    """A firewall between the server and a worker (neither can dial the other),
    a third node that reaches both: the server's assignments and the worker's
    reports travel through the overlay's relay, and the job renders there."""
    farm = Farm(nursery, short_dir, token, defaults={"share": True})
    a = await farm.start("a", server_priority=100)
    b = await farm.start("b", peers=[a], server_priority=0)
    c = await farm.start("c", peers=[b], server_priority=0, share=True)
    for x, y in ((a, c), (c, a)):  # the firewall: x never gets a session to y
        _unreachable(x, y)
    for x, y in ((a, c), (c, a)):  # one the overlay made before the firewall went up ends
        session = x.node.peers.sessions.get(y.uuid)
        if session is not None:
            await x.node.peers._goodbye(session, "firewalled")
    await wait_until(lambda: c.uuid in a.node.peers.online_uuids() and a.node.election.role == "server"
                     and c.node.election.server == a.uuid, 10, "c online at the server a, through b")
    assert c.uuid not in a.node.peers.sessions and a.uuid not in c.node.peers.sessions
    uuid = (await a.submit(renderer="command", frames="1-6",
                           rdata={"command": "true"}, machines=[c.uuid]))["uuid"]
    await wait_until(lambda: job_state(a.node.book.get(uuid) or JobDoc(uuid)) == "done",
                     30, "the job rendered on c through the relay")
    doc = a.node.book.get(uuid)
    assert doc is not None
    assert all(c.uuid in t.all_machines for t in doc.tasks.values())
    assert c.uuid not in a.node.peers.sessions


def _unreachable(x: Member, y: Member) -> None:
    """``x`` can neither dial ``y`` nor take a session from it (a firewall between them)."""
    peers = x.node.peers
    connect, register = peers.connect, peers._register

    def no_connect(uuid: str, addresses: Any = None, on_failure: Any = None) -> None:
        if uuid == y.uuid:
            if on_failure is not None:
                on_failure(uuid, False)
            return
        connect(uuid, addresses, on_failure)

    def no_register(s: Any, facts: Any) -> bool:
        if s.uuid == y.uuid:
            peers._nursery.start_soon(peers._goodbye, s, "firewalled")  # type: ignore[union-attr]
            return False
        return register(s, facts)

    peers.connect = no_connect  # type: ignore[method-assign]
    peers._register = no_register  # type: ignore[method-assign]
