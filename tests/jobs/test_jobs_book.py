"""The SQLite-backed job book (node.jobbook): what is on disk after a reopen,
group commit, and ``durable()`` returning only once the disk has the change;
plus queue moves (node.jobs) on keys that concurrent writers made equal."""

from __future__ import annotations

import copy
import tempfile
import threading
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from node.jobs.book import JobBook, decode_task_blob
from node.jobs.operations import Jobs
from protocol.crdt import JobDoc, Phase, Register, TaskState, digest_of_parts, part_digests
from tests.harness.crdt_strategies import events
from tests.harness.jobs import FAST_TMP, FakeWall, open_book, spec, table_rows

ME = "node-a"


async def _fill(book: JobBook) -> dict[str, Any]:
    """Every kind of change, made here and received from a peer."""
    jobs = Jobs(book, ME, ["root"])
    kept = jobs.create(spec(frames="1-10", rdata={"samples": 4}), "root")
    restarted = jobs.create(spec(frames="1-4", chunk=2), "bob")
    gone = jobs.create(spec(frames="1-3"), "root")
    doc = jobs.find(kept.uuid)
    jobs.set_task(doc, 3, TaskState(0, 1, 0, Phase.SUCCEEDED, book.stamp(), "w1", ("w1",), 2.5))
    jobs.set_task(doc, 4, TaskState(0, 0, 1, Phase.RENDERING, book.stamp(), "w2", ("w1", "w2")))
    jobs.add_log(doc, "first line")
    jobs.add_log(doc, "log replaced", replace=True)
    jobs.add_log(doc, "after the replace")
    jobs.stop(doc, "root")
    jobs.start(jobs.find(restarted.uuid), "bob", restart=True)
    jobs.add_log(jobs.find(gone.uuid), "about to go")
    jobs.delete(jobs.find(gone.uuid))
    # a peer's job, with a stamp far ahead of our clock
    far = (10**13, 5, "node-b")
    book.apply(JobDoc("peer-job", fields={"name": Register(far, "theirs"), "created": Register(far, 1.0)},
                      tasks={0: TaskState(0, 0, 0, Phase.QUEUED, far)}, log={far: "made on b"}))
    return {"kept": kept.uuid, "restarted": restarted.uuid, "gone": gone.uuid, "gone_delta": gone}


async def test_reopened_book_holds_identical_documents(tmp_path: Path) -> None:
    book = open_book(tmp_path, ME)
    async with trio.open_nursery() as nursery:
        await nursery.start(book.run)
        ids = await _fill(book)
        await book.durable()
        digests = book.digests()
        docs = copy.deepcopy(book.docs)
        nursery.cancel_scope.cancel()
    book._db.close()

    again = open_book(tmp_path, ME, FakeWall(0.0))  # a wall clock far behind every stamp
    assert again.digests() == digests
    assert again.docs == docs
    kept = again.docs[ids["kept"]]
    assert kept.value("state") == "stopped" and kept.value("rdata") == {"samples": 4}
    assert kept.tasks[3].phase == Phase.SUCCEEDED and kept.tasks[3].render_time == 2.5
    assert kept.tasks[4].machines == ("w1", "w2")
    assert [line for _, line in kept.visible_log()] == [
        "log replaced", "after the replace", "stopped by root (RENDERRESULT_USERBREAK)"]
    assert again.docs[ids["restarted"]].gen == 1
    # the deleted job is a tombstone, with its rows gone from the other tables
    assert again.docs[ids["gone"]] == JobDoc(ids["gone"], deleted=docs[ids["gone"]].deleted)
    assert again.get(ids["gone"]) is None and ids["gone"] not in {d.uuid for d in again.live()}
    assert table_rows(tmp_path, "SELECT count(*) FROM tasks WHERE job = ?", ids["gone"]) == [(0,)]
    assert table_rows(tmp_path, "SELECT count(*) FROM job_log WHERE job = ?", ids["gone"]) == [(0,)]
    # tasks and log lines live in their own tables, one row each
    assert table_rows(tmp_path, "SELECT count(*) FROM tasks WHERE job = ?", ids["kept"]) == [(10,)]
    (blob,) = table_rows(tmp_path, "SELECT state FROM tasks WHERE job = ? AND tid = 3", ids["kept"])[0]
    assert decode_task_blob(blob) == kept.tasks[3]
    assert table_rows(tmp_path, "SELECT count(*) FROM job_log WHERE job = ?", ids["kept"]) == [
        (len(kept.log),)]
    # a stale copy of the deleted job cannot bring it back after the restart
    assert not again.apply(ids["gone_delta"])
    # the clock resumes after every stamp on disk, whatever the wall clock says
    assert again.stamp() > (10**13, 5, "node-b")
    again._db.close()


async def test_changes_not_awaited_are_flushed_when_the_writer_stops(tmp_path: Path) -> None:
    book = open_book(tmp_path, ME)
    async with trio.open_nursery() as nursery:
        await nursery.start(book.run)
        await trio.testing.wait_all_tasks_blocked()
        ids = await _fill(book)
        nursery.cancel_scope.cancel()  # at once: no durable(), no checkpoint
    digests = book.digests()
    book._db.close()
    again = open_book(tmp_path, ME)
    assert again.digests() == digests
    assert again.get(ids["kept"]) is not None
    again._db.close()


async def test_many_applies_are_committed_in_one_transaction(tmp_path: Path) -> None:
    book = open_book(tmp_path, ME)
    begins: list[str] = []
    lock = threading.Lock()

    def trace(statement: str) -> None:
        if statement.strip().upper().startswith("BEGIN"):
            with lock:
                begins.append(statement)

    book._db.conn.set_trace_callback(trace)
    jobs = Jobs(book, ME, ["root"])
    async with trio.open_nursery() as nursery:
        await nursery.start(book.run)
        await trio.testing.wait_all_tasks_blocked()
        made = [jobs.create(spec(frames="1-5"), "root") for _ in range(200)]
        for delta in made[:50]:
            jobs.add_log(jobs.find(delta.uuid), "hello")
        await book.durable()
        assert len(begins) == 1
        assert table_rows(tmp_path, "SELECT count(*) FROM jobs") == [(200,)]
        assert table_rows(tmp_path, "SELECT count(*) FROM tasks") == [(1000,)]
        assert table_rows(tmp_path, "SELECT count(*) FROM job_log") == [(250,)]
        await book.durable()  # nothing new: no transaction, no wait
        assert len(begins) == 1
        nursery.cancel_scope.cancel()
    book._db.close()


async def test_durable_returns_only_after_the_commit_and_batches_what_came_meanwhile(
        tmp_path: Path) -> None:
    book = open_book(tmp_path, ME)
    db = book._db
    gate = trio.Event()
    commits = 0
    real_run = db.run

    async def gated_run(fn: Any) -> Any:
        nonlocal commits
        commits += 1
        if commits == 1:
            await gate.wait()
        return await real_run(fn)

    db.run = gated_run  # type: ignore[method-assign]
    jobs = Jobs(book, ME, ["root"])
    durable_returned = trio.Event()

    async def wait_durable() -> None:
        await book.durable()
        durable_returned.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(book.run)
        first = jobs.create(spec(), "root")
        nursery.start_soon(wait_durable)
        await trio.testing.wait_all_tasks_blocked()
        assert commits == 1 and not durable_returned.is_set()
        assert table_rows(tmp_path, "SELECT count(*) FROM jobs") == [(0,)]
        later = [jobs.create(spec(), "root") for _ in range(100)]  # while the commit is held
        await trio.testing.wait_all_tasks_blocked()
        assert not durable_returned.is_set()
        gate.set()
        with trio.fail_after(5):
            await durable_returned.wait()
        assert table_rows(tmp_path, "SELECT uuid FROM jobs WHERE uuid = ?", first.uuid) == [(first.uuid,)]
        with trio.fail_after(5):
            await book.durable()
        assert commits == 2  # the 100 changes made during the first commit went in one more
        assert table_rows(tmp_path, "SELECT count(*) FROM jobs") == [(1 + len(later),)]
        nursery.cancel_scope.cancel()
    db.close()


def test_changes_that_overtake_a_jobs_creation_are_kept_but_no_job_shows_until_it_arrives(
        tmp_path: Path) -> None:
    origin = Jobs(open_book(tmp_path / "a", "node-a"), "node-a", ["root"])
    here = Jobs(open_book(tmp_path / "b", "node-b"), "node-b", ["root"])
    mine = here.create(spec(), "root")
    created = origin.create(spec(name="late"), "root")
    stopped = origin.stop(origin.find(created.uuid), "root")
    logged = origin.add_log(origin.find(created.uuid), "a line")
    for delta in (stopped, logged):  # the creation is still on its way
        assert here.book.apply(delta)
    assert here.book.get(created.uuid) is None
    assert [d.uuid for d in here.queue()] == [mine.uuid]
    assert here.find(mine.uuid[:8]).uuid == mine.uuid
    later = here.create(spec(), "root")  # appends after the real last job
    assert [d.uuid for d in here.queue()] == [mine.uuid, later.uuid]
    here.book.apply(created)
    doc = here.find(created.uuid)
    assert doc.value("state") == "stopped" and doc.value("name") == "late"
    assert [line for _, line in doc.visible_log()][-1] == "a line"
    origin.book._db.close()
    here.book._db.close()


# -- queue order ------------------------------------------------------------------


def _replicas(tmp_path: Path, n: int) -> list[Jobs]:
    return [Jobs(open_book(tmp_path / f"r{i}", f"node-{i}"), f"node-{i}", ["root"]) for i in range(n)]


def _ids(jobs: Jobs) -> list[str]:
    return [d.uuid for d in jobs.queue()]


def test_jobs_created_at_once_on_different_nodes_share_a_key_and_still_move_where_asked(
        tmp_path: Path) -> None:
    replicas = _replicas(tmp_path, 4)
    made = [r.create(spec(), "root", f"{i}0000000-0000-0000-0000-000000000000")
            for i, r in enumerate(replicas)]
    jobs = replicas[0]
    for delta in made[1:]:
        jobs.book.apply(delta)
    x, y, z, w = _ids(jobs)
    assert len({jobs.find(u).value("position") for u in (x, y, z, w)}) == 1
    jobs.move(jobs.find(w), jobs.find(y), before=True)
    assert _ids(jobs) == [x, w, y, z]
    jobs.move(jobs.find(x), jobs.find(z), before=True)
    assert _ids(jobs) == [w, y, x, z]
    jobs.move(jobs.find(z), jobs.find(w), before=False)
    assert _ids(jobs) == [w, z, y, x]


@st.composite
def _queue_script(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int, bool]]]:
    creators = draw(st.lists(st.integers(0, 2), min_size=2, max_size=9))
    n = len(creators)
    moves = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.booleans()),
                          max_size=12))
    return creators, moves


@settings(max_examples=60, deadline=None)
@given(_queue_script())
def test_move_puts_the_job_next_to_the_other_and_keeps_everyone_else_in_order(
        script: tuple[list[int], list[tuple[int, int, bool]]]) -> None:
    import tempfile

    creators, moves = script
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        replicas = _replicas(Path(tmp), 3)
        deltas = [replicas[c].create(spec(), "root", f"{i:08d}-0000-0000-0000-000000000000")
                  for i, c in enumerate(creators)]
        jobs = replicas[0]
        for delta in deltas:
            jobs.book.apply(delta)
        for a, b, before in moves:
            if a == b:
                continue
            order = _ids(jobs)
            doc, other = jobs.find(order[a]), jobs.find(order[b])
            jobs.move(doc, other, before)
            after = _ids(jobs)
            at = after.index(other.uuid)
            assert after[at - 1 if before else at + 1] == doc.uuid
            assert [u for u in after if u != doc.uuid] == [u for u in order if u != doc.uuid]
        for r in replicas:
            r.book._db.close()


# -- digests --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_books_kept_part_digests_are_those_of_the_document_after_any_changes(data: st.DataObject) -> None:
    """The book keeps each part's digest until a change touches its part: after
    any changes, in any order, asked for between them or not, the digests it
    gives are those computed afresh from the document."""
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as where:
        book = open_book(Path(where), ME)
        try:
            for delta in data.draw(events()):
                book.apply(delta)
                if data.draw(st.booleans()):
                    book.digests()  # fill the cache midway
            for uuid, doc in book.docs.items():
                assert book.part_digests(uuid) == part_digests(doc)
                assert book.digests()[uuid] == digest_of_parts(part_digests(doc))
        finally:
            book._db.close()
