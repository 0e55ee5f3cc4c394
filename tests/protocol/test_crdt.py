"""The job book's merge rules (protocol.crdt), synchronously: registers, task
order, generations, tombstones, logs, the merge algebra, position keys, the
hybrid logical clock, the wire form and digests."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crdt import (
    LOG_BUCKETS,
    LOG_WINDOW_MS,
    PART_BUCKETS,
    ZERO,
    JobDoc,
    Phase,
    Register,
    Stamp,
    TaskState,
    absorb,
    differing_parts,
    digest,
    hlc_observe,
    hlc_tick,
    job_from_wire,
    job_to_wire,
    key_between,
    merge_job,
    merge_register,
    merge_task,
    part_digests,
    parts,
    replace,
    task_current,
    task_from_wire,
    task_to_wire,
    tombstone,
)
from protocol.errors import RemoteProtocolError
from tests.harness.crdt_strategies import (
    JOB,
    copy_doc,
    documents,
    events,
    merge_all,
    wire_round_trip,
)

# -- last-writer-wins registers ---------------------------------------------------


def test_register_with_the_later_stamp_wins_whichever_side_it_is_on() -> None:
    old, new = Register((100, 0, "b"), "old"), Register((101, 0, "a"), "new")
    assert merge_register(old, new) is new
    assert merge_register(new, old) is new
    assert merge_register(None, old) is old and merge_register(old, None) is old


def test_register_counter_breaks_a_tie_of_wall_time() -> None:
    first, second = Register((100, 0, "z"), 1), Register((100, 1, "a"), 2)
    assert merge_register(first, second) is second
    assert merge_register(second, first) is second


def test_register_node_uuid_breaks_a_tie_of_time_and_counter() -> None:
    a, b = Register((100, 3, "aaaa"), "from a"), Register((100, 3, "bbbb"), "from b")
    assert merge_register(a, b) is b
    assert merge_register(b, a) is b


def test_job_field_keeps_the_later_write_and_ignores_an_older_one() -> None:
    doc = JobDoc(JOB, fields={"name": Register((5, 0, "a"), "new")})
    merged = merge_job(doc, JobDoc(JOB, fields={"name": Register((4, 9, "z"), "stale"),
                                                "priority": Register((1, 0, "a"), 10)}))
    assert merged.value("name") == "new"
    assert merged.value("priority") == 10
    tie = merge_job(doc, JobDoc(JOB, fields={"name": Register((5, 0, "b"), "b wins the tie")}))
    assert tie.value("name") == "b wins the tie"


# -- task states ----------------------------------------------------------------


def test_task_state_only_moves_forward_on_gen_done_attempt_phase() -> None:
    # each state supersedes the previous one, whatever the stamps say
    ladder = [
        TaskState(0, 0, 0, Phase.QUEUED, (900, 0, "z")),
        TaskState(0, 0, 0, Phase.ASSIGNED, (10, 0, "a")),
        TaskState(0, 0, 0, Phase.RENDERING, (5, 0, "a")),
        TaskState(0, 0, 1, Phase.QUEUED, (4, 0, "a")),  # lease lapsed: the next attempt
        TaskState(0, 0, 1, Phase.DELIVERING, (3, 0, "a")),
        TaskState(0, 1, 0, Phase.FAILED, (2, 0, "a")),  # done beats any attempt
        TaskState(0, 1, 0, Phase.SUCCEEDED, (1, 0, "a")),
        TaskState(1, 0, 0, Phase.QUEUED, (0, 0, "a")),  # a restart beats everything older
    ]
    for i, j in itertools.combinations(range(len(ladder)), 2):
        older, newer = ladder[i], ladder[j]
        assert merge_task(older, newer) is newer
        assert merge_task(newer, older) is newer
        doc = merge_job(JobDoc(JOB, tasks={7: newer}), JobDoc(JOB, tasks={7: older}))
        assert doc.tasks[7] is newer


def test_a_merge_keeps_every_machine_and_assignment_of_the_losing_state() -> None:
    # a minority server (term 2) assigned the frame to w1 twice and re-queued it;
    # the majority (term 3) had it rendered by w2, done: the done state wins, and
    # still shows both machines and all three assignments
    minority = TaskState(0, 0, 2, Phase.QUEUED, (50, 0, "s2"), machines=("w1",), failures=1,
                         runs=((2, 0), (2, 1)))
    majority = TaskState(0, 1, 0, Phase.SUCCEEDED, (40, 0, "s3"), machines=("w2",), runs=((3, 0),))
    for merged in (merge_task(minority, majority), merge_task(majority, minority)):
        assert merged is not None
        assert merged.key == majority.key and merged.phase == Phase.SUCCEEDED
        assert merged.all_machines == ["w2", "w1"]  # the kept frame's machine first
        assert merged.attempts == 3 and merged.failures == 1
        assert merge_task(merged, minority) == merged == merge_task(merged, merged)
    # a new generation (restart) starts the story again
    restarted = TaskState(1, 0, 0, Phase.QUEUED, (60, 0, "s3"))
    assert merge_task(restarted, merge_task(minority, majority)) is restarted


def test_task_states_stored_before_seen_and_runs_load_with_them_empty() -> None:
    state = TaskState(0, 0, 1, Phase.RENDERING, (1, 0, "n"), worker="w", machines=("w",), failures=1)
    assert len(task_to_wire(state)) == 12
    assert task_from_wire(task_to_wire(state)) == state
    full = replace(state, seen=("v", "w"), runs=((1, 0), (1, 1)))
    assert len(task_to_wire(full)) == 14 and task_from_wire(task_to_wire(full)) == full


def test_task_states_stored_before_previews_load_with_none_and_previews_round_trip() -> None:
    state = TaskState(0, 0, 1, Phase.DELIVERING, (1, 0, "n"), worker="w", machines=("w",))
    with_previews = replace(state, previews=("a" * 64, ""))
    wire = task_to_wire(with_previews)
    assert len(wire) == 15 and task_from_wire(wire_round_trip(wire)) == with_previews
    assert task_from_wire(wire[:14]) == state  # a 14-field state: no previews
    for bad in (["xyz"], "a" * 64, [7], ["A" * 64]):
        with pytest.raises(RemoteProtocolError):
            task_from_wire([*wire[:14], bad])


def test_the_state_that_marks_a_task_done_keeps_the_workers_previews() -> None:
    # the worker's DELIVERING state names the preview; the submitter's SUCCEEDED
    # state, built without it, wins the merge and still shows it, whatever the order
    delivering = TaskState(0, 0, 0, Phase.DELIVERING, (10, 0, "w"), worker="w", machines=("w",),
                           previews=("c" * 64,))
    done = TaskState(0, 1, 0, Phase.SUCCEEDED, (11, 0, "o"), machines=("w",))
    for merged in (merge_task(delivering, done), merge_task(done, delivering)):
        assert merged is not None and merged.phase == Phase.SUCCEEDED
        assert merged.previews == ("c" * 64,)
    restarted = TaskState(1, 0, 0, Phase.QUEUED, (12, 0, "o"))
    assert merge_task(restarted, merge_task(done, delivering)) is restarted  # a new generation drops them


def test_task_stamp_breaks_a_tie_of_the_same_step() -> None:
    a = TaskState(0, 0, 0, Phase.RENDERING, (5, 0, "a"), worker="w1")
    b = TaskState(0, 0, 0, Phase.RENDERING, (5, 0, "b"), worker="w2")
    assert merge_task(a, b) is b and merge_task(b, a) is b
    assert merge_task(None, a) is a and merge_task(a, None) is a


def test_generation_bump_resets_every_older_task_to_queued() -> None:
    done = TaskState(0, 1, 2, Phase.SUCCEEDED, (5, 0, "a"), worker="w", render_time=3.0)
    doc = JobDoc(JOB, tasks={0: done, 1: TaskState(0, 0, 0, Phase.RENDERING, (6, 0, "a"))})
    assert task_current(doc, 0) is done
    restarted = merge_job(doc, JobDoc(JOB, gen=1))
    assert restarted.gen == 1
    for tid in (0, 1, 2):  # 2: a task no state was ever written for
        assert task_current(restarted, tid) == TaskState(gen=1)
    fresh = TaskState(1, 0, 0, Phase.ASSIGNED, (7, 0, "a"))
    assert task_current(merge_job(restarted, JobDoc(JOB, tasks={0: fresh})), 0) is fresh
    # generation is a max: an older restart arriving late changes nothing
    assert merge_job(restarted, JobDoc(JOB, gen=0)) == restarted


# -- tombstones -----------------------------------------------------------------


def _full_doc() -> JobDoc:
    return JobDoc(JOB, fields={"name": Register((10, 0, "a"), "shot")}, gen=2,
                  tasks={0: TaskState(2, 0, 0, Phase.RENDERING, (11, 0, "a"))},
                  log={(12, 0, "a"): "started"}, log_base=(12, 0, "a"))


def test_delete_beats_every_change_and_strips_the_content() -> None:
    dead = JobDoc(JOB, deleted=(1, 0, "a"))  # older than every change of the job
    for merged in (merge_job(_full_doc(), dead), merge_job(dead, _full_doc())):
        assert merged == JobDoc(JOB, deleted=(1, 0, "a"))
        assert merged.fields == {} and merged.tasks == {} and merged.log == {}
        assert merged.gen == 0 and merged.log_base is None


def test_later_deltas_cannot_resurrect_a_deleted_job() -> None:
    dead = JobDoc(JOB, deleted=(20, 0, "a"))
    later = [
        JobDoc(JOB, fields={"name": Register((99, 0, "z"), "back")}),
        JobDoc(JOB, gen=9),
        JobDoc(JOB, tasks={0: TaskState(9, 1, 0, Phase.SUCCEEDED, (99, 0, "z"))}),
        JobDoc(JOB, log={(99, 0, "z"): "hello?"}, log_base=(99, 0, "z")),
        _full_doc(),
    ]
    for delta in later:
        doc, changes = absorb(copy_doc(dead), delta)
        assert doc == dead
        assert not changes


def test_the_later_of_two_deletes_is_kept_on_every_replica() -> None:
    a, b = JobDoc(JOB, deleted=(3, 0, "a")), JobDoc(JOB, deleted=(3, 0, "b"))
    assert merge_job(a, b) == merge_job(b, a) == b
    doc, changes = absorb(copy_doc(b), a)
    assert doc == b and not changes


def test_tombstone_keeps_only_the_uuid_and_the_delete_stamp() -> None:
    live = _full_doc()
    assert tombstone(live) is live
    marked = JobDoc(live.uuid, live.fields, live.gen, (30, 0, "a"), live.tasks, live.log, live.log_base)
    assert tombstone(marked) == JobDoc(JOB, deleted=(30, 0, "a"))


# -- the job log ----------------------------------------------------------------


def test_log_appends_are_kept_and_shown_oldest_first() -> None:
    doc = merge_all([JobDoc(JOB, log={(3, 0, "b"): "third"}), JobDoc(JOB, log={(1, 0, "a"): "first"}),
                     JobDoc(JOB, log={(2, 0, "a"): "second"}), JobDoc(JOB, log={(1, 0, "a"): "first"})])
    assert doc is not None
    assert [line for _, line in doc.visible_log()] == ["first", "second", "third"]


def test_log_replace_hides_older_lines_even_ones_that_arrive_later() -> None:
    doc = merge_all([JobDoc(JOB, log={(1, 0, "a"): "old"}),
                     JobDoc(JOB, log={(5, 0, "a"): "fresh start"}, log_base=(5, 0, "a")),
                     JobDoc(JOB, log={(3, 0, "b"): "late but older"}),
                     JobDoc(JOB, log={(6, 0, "b"): "after"})])
    assert doc is not None
    assert [line for _, line in doc.visible_log()] == ["fresh start", "after"]
    assert len(doc.log) == 4  # hidden, not lost: the set only grows
    # an older replace arriving late does not bring hidden lines back
    again = merge_job(doc, JobDoc(JOB, log={(2, 0, "c"): "older replace"}, log_base=(2, 0, "c")))
    assert again.log_base == (5, 0, "a")
    assert [line for _, line in again.visible_log()] == ["fresh start", "after"]


# -- the merge algebra ------------------------------------------------------------


@st.composite
def three_documents(draw: st.DrawFn) -> tuple[JobDoc, JobDoc, JobDoc]:
    universe = draw(events())
    a, b, c = (draw(documents(universe)) for _ in range(3))
    assert a is not None and b is not None and c is not None
    return a, b, c


@settings(max_examples=200, deadline=None)
@given(three_documents())
def test_merge_is_idempotent_commutative_and_associative(docs: tuple[JobDoc, JobDoc, JobDoc]) -> None:
    a, b, c = docs
    before = copy.deepcopy(docs)
    assert merge_job(a, a) == a
    assert merge_job(a, b) == merge_job(b, a)
    assert merge_job(merge_job(a, b), c) == merge_job(a, merge_job(b, c))
    assert merge_job(merge_job(a, b), b) == merge_job(a, b)
    assert (a, b, c) == before  # merge_job is pure


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_delivery_order_with_duplicates_gives_the_same_document(data: st.DataObject) -> None:
    universe = data.draw(events())
    order = data.draw(st.permutations(universe))
    dupes = data.draw(st.lists(st.sampled_from(universe), max_size=5))
    assert merge_all([*order, *dupes]) == merge_all(universe)


def _same_head(a: JobDoc, b: JobDoc) -> bool:
    return (a.fields, a.gen, a.deleted, a.log_base) == (b.fields, b.gen, b.deleted, b.log_base)


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_absorb_equals_merge_job_and_reports_exactly_what_changed(data: st.DataObject) -> None:
    universe = data.draw(events())
    doc = data.draw(documents(universe, allow_none=True))
    delta = data.draw(documents(universe))
    assert delta is not None
    delta_before = copy.deepcopy(delta)
    expected = merge_job(doc, delta)
    new, changes = absorb(copy_doc(doc), delta)
    assert new == expected
    assert delta == delta_before
    assert bool(changes) == (doc is None or new != doc)
    if new.deleted is not None:
        if doc is None or doc.deleted != new.deleted:
            # a delete: the head changes and the content goes with it
            assert changes.head and not changes.tasks and not changes.logs
        else:
            assert not changes
        return
    base = doc if doc is not None else JobDoc(JOB)
    assert changes.head == (doc is None or not _same_head(new, doc))
    assert sorted(changes.tasks) == sorted(t for t in new.tasks if new.tasks[t] != base.tasks.get(t))
    assert len(changes.tasks) == len(set(changes.tasks))
    assert sorted(changes.logs) == sorted(set(new.log) - set(base.log))


def test_absorb_updates_the_replica_in_place_and_returns_what_changed() -> None:
    doc = copy_doc(_full_doc())
    assert doc is not None
    delta = JobDoc(JOB, tasks={0: TaskState(2, 1, 0, Phase.SUCCEEDED, (13, 0, "b")),
                               1: TaskState(2, 0, 0, Phase.QUEUED, (13, 1, "b"))},
                   log={(12, 0, "a"): "started", (14, 0, "b"): "done"})
    new, changes = absorb(doc, delta)
    assert not changes.head
    assert sorted(changes.tasks) == [0, 1]
    assert changes.logs == [(14, 0, "b")]
    assert new.tasks is doc.tasks  # cost proportional to the delta: no copy of the job
    _, again = absorb(new, delta)
    assert not again


def test_merging_documents_of_different_jobs_is_refused() -> None:
    with pytest.raises(ValueError):
        merge_job(JobDoc("a"), JobDoc("b"))


# -- position keys --------------------------------------------------------------


def test_key_between_open_ends_and_neighbours() -> None:
    first = key_between(None, None)
    assert first
    assert key_between(first, None) > first
    assert key_between(None, first) < first
    assert first < key_between(first, key_between(first, None)) < key_between(first, None)
    assert "1" < key_between("1", "2") < "2"
    assert "1" < key_between("1", "1i") < "1i"


@pytest.mark.parametrize("lo, hi", [("5", "5"), ("6", "5"), ("a", "1")])
def test_key_between_refuses_lo_not_below_hi(lo: str, hi: str) -> None:
    with pytest.raises(ValueError):
        key_between(lo, hi)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=80))
def test_key_between_is_strictly_between_and_never_renumbers(picks: list[int]) -> None:
    keys: list[str] = []
    for pick in picks:
        i = pick % (len(keys) + 1)
        lo = keys[i - 1] if i > 0 else None
        hi = keys[i] if i < len(keys) else None
        before = list(keys)
        key = key_between(lo, hi)
        assert (lo is None or lo < key) and (hi is None or key < hi)
        assert not key.endswith("0")  # so a key below it always exists
        keys.insert(i, key)
        assert keys[:i] + keys[i + 1:] == before  # nobody else moved
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_key_between_keeps_inserting_at_the_front_and_between_neighbours() -> None:
    keys = [key_between(None, None)]
    for _ in range(200):
        keys.insert(0, key_between(None, keys[0]))
        keys.insert(1, key_between(keys[0], keys[1]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


# -- hybrid logical clock -------------------------------------------------------

clock_ops = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 50)),
    st.tuples(st.just("observe"), st.integers(0, 50),
              st.tuples(st.integers(0, 60), st.integers(0, 5), st.sampled_from(["a", "m", "z"]))),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(clock_ops)
def test_hlc_never_goes_back_and_passes_every_stamp_it_saw(ops: list[Any]) -> None:
    last: Stamp = ZERO
    for op in ops:
        if op[0] == "tick":
            new = hlc_tick(last, op[1], "m")
            assert new[0] >= op[1]  # follows the wall clock when it is ahead
        else:
            seen = op[2]
            new = hlc_observe(last, seen, op[1], "m")
            assert new > seen and new[:2] > seen[:2]
        assert new > last and new[:2] > last[:2]  # by time alone, whatever the node ids
        assert new[2] == "m"
        last = new


def test_hlc_tick_follows_the_wall_clock_and_counts_when_it_stalls() -> None:
    assert hlc_tick(ZERO, 1000, "n") == (1000, 0, "n")
    assert hlc_tick((1000, 0, "n"), 1000, "n") == (1000, 1, "n")
    assert hlc_tick((1000, 1, "n"), 400, "n") == (1000, 2, "n")  # the wall went back
    assert hlc_observe((1000, 2, "n"), (5000, 7, "o"), 1200, "n") == (5000, 8, "n")


# -- wire form ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_job_wire_form_round_trips_through_msgpack(data: st.DataObject) -> None:
    doc = data.draw(documents(data.draw(events())))
    assert doc is not None
    back = job_from_wire(wire_round_trip(job_to_wire(doc)))
    assert back == doc
    assert digest(back) == digest(doc)


def test_task_wire_form_round_trips() -> None:
    state = TaskState(3, 1, 2, Phase.SUCCEEDED, (5, 6, "w"), "w", ("w", "v"), 2.5, "", 99.0, 4, 1)
    assert task_from_wire(wire_round_trip(task_to_wire(state))) == state


def test_a_task_state_stored_before_failures_were_counted_reads_as_none_failed() -> None:
    """Books written by a build whose task states had 11 fields still load."""
    state = task_from_wire([3, 0, 2, Phase.QUEUED, [5, 6, "w"], "", ["w"], 0.0, "lost", 99.0, 4])
    assert state.attempt == 2 and state.failures == 0


GOOD_TASK = [0, 0, 0, 0, [1, 0, "a"], "", [], 0.0, "", 0.0, 0]
MALFORMED_JOBS: list[Any] = [
    None, 7, "job", [], {}, {"uuid": 5}, {"uuid": None},
    {"uuid": "j", "f": []}, {"uuid": "j", "f": {"name": 5}}, {"uuid": "j", "f": {"name": []}},
    {"uuid": "j", "f": {"name": [[1, 0], "x"]}}, {"uuid": "j", "f": {"name": [["1", 0, "a"], "x"]}},
    {"uuid": "j", "f": {"name": [[1, 0, 7], "x"]}}, {"uuid": "j", "f": {"name": [None, "x"]}},
    {"uuid": "j", "g": "many"}, {"uuid": "j", "g": None}, {"uuid": "j", "g": [1]},
    {"uuid": "j", "x": "yes"}, {"uuid": "j", "x": [1, 2]}, {"uuid": "j", "lb": [1, "0", "a"]},
    {"uuid": "j", "t": 5}, {"uuid": "j", "t": [[0]]}, {"uuid": "j", "t": [["zero", GOOD_TASK]]},
    {"uuid": "j", "t": [[0, GOOD_TASK[:5]]]}, {"uuid": "j", "t": [[0, None]]},
    {"uuid": "j", "t": [[0, [0, 0, 0, 0, [1, 0], "", [], 0.0, "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, ["a", 0, 0, 0, [1, 0, "a"], "", [], 0.0, "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, [0, 0, 0, 0, [1, 0, "a"], "", 5, 0.0, "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, [0, 0, 0, 0, [1, 0, "a"], "", [], "slow", "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, [0, 0, 0, 99, [1, 0, "a"], "", [], 0.0, "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, [0, 2, 0, 0, [1, 0, "a"], "", [], 0.0, "", 0.0, 0]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK, -1]]]}, {"uuid": "j", "t": [[0, [*GOOD_TASK, "one"]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK, 0, 0]]]}, {"uuid": "j", "t": [[0, "0000000000000"]]},
    {"uuid": "j", "l": 3}, {"uuid": "j", "l": [[[1, 0, "a"]]]}, {"uuid": "j", "l": [[[1, 0], "x"]]},
    {"uuid": "j", "l": [["stamp", "x"]]},
    # found by bench/fuzz.py: each raised OverflowError or KeyError, or parsed into
    # a number msgpack cannot write back
    {"uuid": "j", "g": float("inf")}, {"uuid": "j", "g": 1e300}, {"uuid": "j", "g": 2.0},
    {"uuid": "j", "f": {"name": {}}}, {"uuid": "j", "f": {"name": {"0": 1}}},
    {"uuid": "j", "t": [[float("inf"), GOOD_TASK]]}, {"uuid": "j", "t": [[1e300, GOOD_TASK]]},
    {"uuid": "j", "t": [["7", GOOD_TASK]]},
    {"uuid": "j", "t": [[0, [float("inf"), *GOOD_TASK[1:]]]]},
    {"uuid": "j", "t": [[0, [1e300, *GOOD_TASK[1:]]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK[:3], float("-inf"), *GOOD_TASK[4:]]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK[:10], float("inf")]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK, 1e300]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK, 0, [], [{}]]]]}, {"uuid": "j", "t": [[0, [*GOOD_TASK, 0, [], [[1.5, 0]]]]]},
    {"uuid": "j", "t": [[0, [*GOOD_TASK, 0, [], [[float("inf"), 0]]]]]},
]


@pytest.mark.parametrize("wire", MALFORMED_JOBS, ids=[repr(w)[:60] for w in MALFORMED_JOBS])
def test_malformed_job_documents_are_a_remote_protocol_error(wire: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        job_from_wire(wire)


def test_a_valid_minimal_document_parses() -> None:
    assert job_from_wire({"uuid": "j"}) == JobDoc("j")
    doc = job_from_wire({"uuid": "j", "t": [[0, GOOD_TASK]], "unknown": "ignored"})
    assert doc.tasks[0].stamp == (1, 0, "a")


# -- digests --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_digest_is_equal_exactly_when_documents_are_equal(data: st.DataObject) -> None:
    universe = data.draw(events())
    a = data.draw(documents(universe))
    b = data.draw(documents(universe))
    assert a is not None and b is not None
    assert (digest(a) == digest(b)) == (a == b)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_two_replicas_that_send_each_other_their_differing_parts_end_equal(data: st.DataObject) -> None:
    universe = data.draw(events())
    a = data.draw(documents(universe))
    b = data.draw(documents(universe))
    assert a is not None and b is not None
    whole = merge_all(parts(a))
    assert whole is not None and digest(whole) == digest(a)  # the parts are the document
    pa, pb = part_digests(a), part_digests(b)
    to_b, to_a = differing_parts(a, pa, pb), differing_parts(b, pb, pa)
    assert (to_b is None) == (to_a is None) == (pa == pb)
    if to_b is not None and to_a is not None:
        a2 = merge_job(copy_doc(a), job_from_wire(wire_round_trip(job_to_wire(to_a))))
        b2 = merge_job(copy_doc(b), job_from_wire(wire_round_trip(job_to_wire(to_b))))
        assert a2 == b2 == merge_job(copy_doc(a), b)


def test_differing_parts_hold_only_the_task_buckets_that_differ() -> None:
    tasks = {tid: TaskState(stamp=(100, 0, "n")) for tid in range(200)}
    a = JobDoc(JOB, {"name": Register((100, 0, "n"), "job")}, tasks=tasks, log={(100, 1, "n"): "made"})
    changed = {3: TaskState(phase=Phase.RENDERING, stamp=(101, 0, "n"), worker="w"),
               40: TaskState(phase=Phase.SUCCEEDED, done=1, stamp=(102, 0, "n"))}
    b = merge_job(copy_doc(a), JobDoc(JOB, tasks=changed))
    delta = differing_parts(b, part_digests(b), part_digests(a))
    assert delta is not None and not delta.fields and not delta.log
    assert set(delta.tasks) == {t for t in range(200) if t % PART_BUCKETS in (3, 40 % PART_BUCKETS)}  # two buckets
    assert merge_job(copy_doc(a), delta) == b
    assert differing_parts(b, part_digests(b), part_digests(b)) is None
    with pytest.raises(RemoteProtocolError, match="part digests of 5 bytes"):
        differing_parts(b, part_digests(b), b"short")


def test_differing_parts_hold_only_the_log_lines_of_the_windows_that_differ() -> None:
    """A long job's log (2,300 lines, 365 kB on the 100-host bed) went whole with
    every exchange while lines were still spreading; now only the windows of time
    whose lines differ go."""
    log = {(t * 1000, 0, "n"): f"line {t}" for t in range(0, 600)}  # ten minutes, a line a second
    a = JobDoc(JOB, {"name": Register((100, 0, "n"), "job")}, log=log)
    new = (599_500, 1, "n")
    b = merge_job(copy_doc(a), JobDoc(JOB, log={new: "a line still spreading"}))
    delta = differing_parts(b, part_digests(b), part_digests(a))
    assert delta is not None and not delta.fields and not delta.tasks and new in delta.log
    window = new[0] // LOG_WINDOW_MS
    assert {s[0] // LOG_WINDOW_MS % LOG_BUCKETS for s in delta.log} == {window % LOG_BUCKETS}
    same = [s for s in log if s[0] // LOG_WINDOW_MS % LOG_BUCKETS == window % LOG_BUCKETS]
    assert len(delta.log) == 1 + len(same)  # the new line and its bucket's old ones
    assert len(delta.log) < len(b.log) / 8
    assert merge_job(copy_doc(a), delta) == b


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_digest_does_not_depend_on_the_order_changes_arrived_in(data: st.DataObject) -> None:
    universe = data.draw(events())
    shuffled = data.draw(st.permutations(universe))
    a, b = merge_all(universe), merge_all(shuffled)
    assert a is not None and b is not None
    assert a == b and digest(a) == digest(b)
