"""The member table: SWIM's merge order, Lifeguard's suspicion timer, refutation
by incarnation, and what anti-entropy may and may not do."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.membership import Config, Member, MemberChanged, Meta, State
from protocol.membership.effects import Outbox
from protocol.membership.members import MemberTable

CFG = Config()


def table(me: str = "me", incarnation: int = 0, others: int = 9) -> MemberTable:
    t = MemberTable(Member(me, incarnation), CFG, Outbox())
    for i in range(others):
        t.apply(Member(f"n{i}", 0), 0.0)
    t.outbox.drain()
    t.pending.clear()
    return t


def test_the_merge_order_is_incarnation_then_state() -> None:
    alive, suspect, dead, left = (Member("x", 3, s) for s in State)
    assert suspect.newer_than(alive) and dead.newer_than(suspect) and left.newer_than(dead)
    assert Member("x", 4).newer_than(left)  # only the member's own refutation beats them
    assert alive.newer_than(Member("x", 2, State.DEAD))
    assert not Member("x", 2).newer_than(alive) and not alive.newer_than(alive)


entries = st.builds(Member, st.sampled_from(["a", "b", "c"]), st.integers(0, 4),
                    st.sampled_from(list(State)))


@settings(max_examples=200, deadline=None)
@given(st.lists(entries, max_size=12), st.randoms(use_true_random=False))
def test_any_order_of_the_same_entries_gives_the_same_list(
        heard: list[Member], rnd: random.Random) -> None:
    first, second = table(others=0), table(others=0)
    for e in heard:
        first.apply(e, 0.0)
    shuffled = list(heard) * 2
    rnd.shuffle(shuffled)
    for e in shuffled:
        second.apply(e, 0.0)
    assert first.entries == second.entries
    assert first.bucket_hashes() == second.bucket_hashes()


def test_equal_lists_have_equal_bucket_hashes_and_one_change_shows_in_one_bucket() -> None:
    a, b = table(), table()
    assert a.bucket_hashes() == b.bucket_hashes()
    b.apply(Member("n3", 0, State.SUSPECT), 0.0)
    assert a.differing(b.bucket_hashes()) == [b.bucket_of("n3")]
    assert [e.uuid for e in b.in_buckets([b.bucket_of("n3")]) if e.uuid == "n3"] == ["n3"]


def test_a_suspicion_alone_runs_the_longest_timeout_then_kills() -> None:
    t = table()
    t.apply(Member("n1", 0, State.SUSPECT), 10.0, by="n2")
    assert t.get("n1").state == State.SUSPECT  # type: ignore[union-attr]
    deadline = t.next_deadline()
    assert deadline == pytest.approx(10.0 + CFG.suspicion_max + CFG.bystander_grace)
    t.tick(deadline - 0.01)  # type: ignore[operator]
    assert t.get("n1").state == State.SUSPECT  # type: ignore[union-attr]
    t.tick(deadline)  # type: ignore[arg-type]
    assert t.get("n1").state == State.DEAD  # type: ignore[union-attr]
    assert t.pending[-1].entry.state == State.DEAD and t.pending[-1].dedup


def test_independent_confirmations_shrink_the_timeout_to_the_minimum() -> None:
    t = table()
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n2")
    alone = t.next_deadline()
    t.apply(Member("n1", 0, State.SUSPECT), 0.1, by="n3")
    one_more = t.next_deadline()
    t.apply(Member("n1", 0, State.SUSPECT), 0.2, by="n3")  # the same node twice counts once
    assert t.next_deadline() == one_more
    t.apply(Member("n1", 0, State.SUSPECT), 0.2, by="n4")
    assert alone > one_more > t.next_deadline()  # type: ignore[operator]
    assert t.next_deadline() == pytest.approx(CFG.suspicion_min + CFG.bystander_grace)


def test_a_node_that_suspects_itself_has_no_grace_and_a_refused_dial_means_the_minimum() -> None:
    t = table()
    t.suspect("n1", 5.0, refused=True)
    assert t.next_deadline() == pytest.approx(5.0 + CFG.suspicion_min)
    update = t.pending[-1]
    assert update.entry == Member("n1", 0, State.SUSPECT) and update.by == "me" and update.refused


def test_a_starved_node_stretches_its_suspicion_timers_by_its_slowness() -> None:
    """The refutation it waits for comes through nodes as slow as itself; a
    timer keeps the factor of when it was set, and so does the Ping that a
    timer run out on a member with a session sends in its place."""
    t = table()
    t.slowness = 4.0
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n2")
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n3")
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n4")
    assert t.next_deadline() == pytest.approx(4.0 * CFG.suspicion_min + CFG.bystander_grace)
    t.slowness = 1.0
    t.tick(CFG.suspicion_min + CFG.bystander_grace)
    assert t.get("n1").state == State.SUSPECT  # type: ignore[union-attr]
    t.tick(4.0 * CFG.suspicion_min + CFG.bystander_grace)
    assert t.get("n1").state == State.DEAD  # type: ignore[union-attr]
    t.slowness = 3.0
    t.outbox.sessions.add("n5")
    t.apply(Member("n5", 0, State.SUSPECT), 0.0, by="n2")
    timer = t.next_deadline()
    assert timer == pytest.approx(3.0 * CFG.suspicion_max + CFG.bystander_grace)
    t.tick(timer)  # type: ignore[arg-type]
    assert t.get("n5").state == State.SUSPECT  # type: ignore[union-attr]
    assert t.next_deadline() == pytest.approx(timer + 3.0 * CFG.suspicion_min)  # type: ignore[operator]


def test_the_timeout_formula_is_lifeguards() -> None:
    t = table(others=20)
    assert t.timeout(0) == CFG.suspicion_max
    assert CFG.suspicion_min < t.timeout(1) < CFG.suspicion_max
    assert t.timeout(CFG.suspicion_k) == CFG.suspicion_min
    small = table(others=1)  # two members: nobody else can confirm
    assert small.timeout(0) == CFG.suspicion_min


def test_a_refutation_beats_the_suspicion_and_stops_the_timer() -> None:
    t = table()
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n2")
    assert t.apply(Member("n1", 1), 0.5)
    assert t.get("n1").state == State.ALIVE and not t.suspicions  # type: ignore[union-attr]
    t.tick(100.0)
    assert t.get("n1").state == State.ALIVE  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [State.SUSPECT, State.DEAD])
def test_hearing_itself_suspected_or_dead_a_node_refutes_with_a_higher_incarnation(
        state: State) -> None:
    t = table(incarnation=4)
    assert t.apply(Member("me", 4, state), 1.0)
    assert t.me.incarnation == 5 and t.me.state == State.ALIVE
    assert t.pending[-1].entry == t.me
    assert not t.apply(Member("me", 3, State.DEAD), 1.0)  # older news: nothing to do


def test_a_restarted_node_rises_above_what_the_farm_saw_of_its_previous_run() -> None:
    t = table(incarnation=0)  # nothing persisted
    t.apply(Member("me", 41, State.DEAD), 1.0)
    assert t.me.incarnation == 42
    t.apply(Member("me", 50), 1.0)  # an ALIVE of a previous run, higher still
    assert t.me.incarnation == 51


def test_a_leaving_node_says_left_and_does_not_refute() -> None:
    t = table(incarnation=2)
    t.leaving = True
    t.bump()
    assert t.me.state == State.LEFT and t.me.incarnation == 3
    assert not t.apply(Member("me", 3, State.DEAD), 1.0)


def test_metadata_changes_take_a_new_incarnation() -> None:
    t = table()
    new = t.bump(meta=Meta(name="renamed", term=4))
    assert new.incarnation == 1 and new.meta.term == 4 and t.pending[-1].entry == new


def test_anti_entropy_never_kills_a_member_held_online_it_suspects_it_instead() -> None:
    t = table()
    assert t.apply(Member("n1", 0, State.DEAD), 1.0, via="sync")
    assert t.get("n1") == Member("n1", 0, State.SUSPECT)
    assert t.pending[-1].by == "me"  # broadcast as our suspicion, so n1 hears it and refutes
    assert not t.apply(Member("n1", 0, State.DEAD), 1.1, via="sync")  # our timer decides
    assert t.get("n1").state == State.SUSPECT  # type: ignore[union-attr]
    assert t.apply(Member("n1", 0, State.DEAD), 1.2)  # gossip of a death is news: accepted
    assert t.get("n1").state == State.DEAD  # type: ignore[union-attr]


def test_anti_entropy_takes_a_dead_member_it_never_saw() -> None:
    t = table()
    assert t.apply(Member("gone", 3, State.DEAD), 1.0, via="sync")
    assert t.get("gone").state == State.DEAD  # type: ignore[union-attr]


def test_every_change_is_reported_with_the_previous_state() -> None:
    t = table()
    t.apply(Member("n1", 0, State.SUSPECT), 0.0, by="n2")
    t.apply(Member("new", 0), 0.0)
    assert t.outbox.drain() == [MemberChanged(Member("n1", 0, State.SUSPECT), State.ALIVE),
                                MemberChanged(Member("new", 0), None)]


def test_online_count_follows_the_states() -> None:
    t = table(others=3)
    assert t.online_count() == 4
    t.apply(Member("n0", 0, State.SUSPECT), 0.0, by="x")
    assert t.online_count() == 4
    t.apply(Member("n0", 0, State.DEAD), 0.0)
    t.apply(Member("n1", 0, State.LEFT), 0.0)
    assert t.online_count() == 2
