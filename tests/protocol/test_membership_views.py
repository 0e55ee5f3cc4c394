"""HyParView views: bounded, symmetric, refilled; and the state machine's API
contract (start first, messages only on sessions, a Join speaks for its sender)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.membership import Config, Connect, Member, Membership, Send, State
from protocol.membership import messages as m
from protocol.membership.simnet import SimNet

CFG = Config()


def farm(n: int, *, seed: int = 1, spacing: float = 0.02, **kw: float) -> SimNet:
    net = SimNet(seed=seed, **kw)  # type: ignore[arg-type]
    rng = random.Random(seed)
    names = [f"n{i:02d}" for i in range(n)]
    for i, u in enumerate(names):
        net.add(u, contacts=[names[rng.randrange(i)]] if i else [], at=i * spacing)
    net.run_until(n * spacing + 3.0)
    return net


def check_views(net: SimNet) -> None:
    up = set(net.up())
    for u in up:
        mach = net.nodes[u].machine
        active = set(mach.active_view())
        assert len(active) <= CFG.active_max
        assert len(mach.passive_view()) <= CFG.passive_max
        assert u not in active and not active & set(mach.passive_view())
        assert active <= mach.outbox.sessions  # every neighbour has a session
        for v in active & up:
            assert u in net.nodes[v].machine.active_view(), f"{u}->{v} is not symmetric"


def test_a_farm_of_seven_is_a_full_mesh() -> None:
    net = farm(7)
    for node in net.nodes.values():
        assert len(node.machine.active_view()) == 6
    check_views(net)


def test_a_large_farm_keeps_small_symmetric_views_and_everyone_knows_everyone() -> None:
    net = farm(60, spacing=0.005)
    check_views(net)
    sizes = [len(n.machine.active_view()) for n in net.nodes.values()]
    assert sum(sizes) / len(sizes) > CFG.active_max - 1
    for node in net.nodes.values():
        assert sum(x.state == State.ALIVE for x in node.machine.members()) == 60


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["kill", "restart", "join", "freeze", "thaw"]),
                          st.integers(0, 1000)), max_size=8),
       st.integers(0, 1000))
def test_views_stay_bounded_and_symmetric_through_churn(
        events: list[tuple[str, int]], seed: int) -> None:
    net = farm(16, seed=seed)
    extra = 0
    for what, pick in events:
        names = sorted(net.nodes)
        u = names[pick % len(names)]
        node = net.nodes[u]
        if what == "kill" and node.state == "up":
            net.kill(u)
        elif what == "restart" and node.state == "killed":
            net.add(u, contacts=[names[0]], incarnation=int(net.now * 1000))
        elif what == "join":
            extra += 1
            net.add(f"x{extra}", contacts=[u])
        elif what == "freeze" and node.state == "up":
            net.freeze(u)
        elif what == "thaw" and node.state == "frozen":
            net.thaw(u)
        net.run_until(net.now + 0.7)
    for u, node in list(net.nodes.items()):
        if node.state == "frozen":
            net.thaw(u)
    net.run_until(net.now + 15.0)
    check_views(net)


def test_the_neighbours_of_a_dead_node_stay_linked_and_the_views_stay_sound() -> None:
    net = farm(20)
    victim = "n05"
    neighbours = net.nodes[victim].machine.active_view()
    net.kill(victim)
    net.run_until(net.now + 3.0)
    for u in neighbours:
        assert net.nodes[u].machine.active_view()
    check_views(net)


def test_a_node_that_lost_its_last_neighbour_joins_again_through_its_passive_view() -> None:
    mach = machine()
    mach.connected("a", 0.0)
    mach.receive("a", m.Neighbor(Member("a", 0, addresses=("a:1",)), False), 0.0)
    mach.views.passive["p"] = ("p:1",)
    mach.effects()
    mach.disconnected("a", 1.0, "goodbye")
    mach.tick(1.0)
    out = mach.effects()
    assert Connect("p", ("p:1",)) in out or Connect("a", ("a:1",)) in out
    target = next(e.uuid for e in out if isinstance(e, Connect))
    mach.connected(target, 1.1)
    assert Send(target, m.Join(mach.me)) in mach.effects()


def test_a_node_cut_off_from_its_neighbours_rejoins_through_its_passive_view_before_its_contact() -> None:
    """Its contact (the member it started from) may be across the partition that
    took every neighbour: it used to try only the contact, again and again, and
    stayed cut off from its own side.  A first join still goes to the contact."""
    mach = machine()
    mach.discovered("c", ["c:1"], 0.0)
    mach.tick(0.0)
    assert Connect("c", ("c:1",)) in mach.effects()  # a first join: through the contact
    mach.connected("c", 0.1)
    mach.receive("c", m.Neighbor(Member("c", 0, addresses=("c:1",)), True), 0.1)
    mach.views.passive.update({"p": ("p:1",), "q": ("q:1",)})
    mach.effects()
    mach.disconnected("c", 1.0, "timeout")  # the partition: the contact is on the other side
    tried: list[str] = []
    for t in (1.0, 2.5, 4.0, 5.5):
        mach.tick(t)
        dials = [e.uuid for e in mach.effects() if isinstance(e, Connect)]
        tried += dials
        for uuid in dials:
            mach.connect_failed(uuid, t + 0.1)
    assert {"p", "q"} <= set(tried), tried  # not the contact alone, again and again


def machine(uuid: str = "me", **kw: object) -> Membership:
    mach = Membership(uuid, rng=random.Random(1), addresses=[f"{uuid}:1"], **kw)  # type: ignore[arg-type]
    mach.start(0.0)
    mach.effects()
    return mach


def test_inputs_before_start_are_a_local_error() -> None:
    mach = Membership("me", rng=random.Random(1))
    with pytest.raises(LocalProtocolError):
        mach.connected("x", 0.0)
    with pytest.raises(LocalProtocolError):
        mach.broadcast(b"x", 0.0)


def test_a_message_without_a_session_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        machine().receive("stranger", m.Ack(1), 0.0)


def test_a_join_speaking_for_another_node_is_refused() -> None:
    mach = machine()
    mach.connected("eve", 0.0)
    with pytest.raises(RemoteProtocolError):
        mach.receive("eve", m.Join(Member("alice", 0)), 0.0)
    assert mach.member("alice") is None and mach.active_view() == []


def test_a_malformed_wire_message_is_refused_and_changes_nothing() -> None:
    mach = machine()
    mach.connected("eve", 0.0)
    mach.effects()
    with pytest.raises(RemoteProtocolError):
        mach.receive_wire("eve", {"t": "join", "member": ["eve", -1, 0, [], []]}, 0.0)
    assert mach.effects() == [] and mach.member("eve") is None


def test_discovering_a_contact_dials_it_and_joins_through_it() -> None:
    mach = machine()
    mach.discovered("contact", ["10.0.0.2:7000"], 1.0)
    mach.tick(1.0)
    assert Connect("contact", ("10.0.0.2:7000",)) in mach.effects()
    mach.connected("contact", 1.1)
    assert mach.effects() == [Send("contact", m.Join(mach.me))]
    mach.receive("contact", m.NeighborReply(Member("contact", 3), True), 1.2)
    assert mach.active_view() == ["contact"]
    sent = [e.msg for e in mach.effects() if isinstance(e, Send)]
    assert any(isinstance(x, m.Gossip) and x.entries == (mach.me,) for x in sent)  # announces itself
    assert any(isinstance(x, m.SyncHash) for x in sent)  # and asks for the member list


def test_a_full_view_refuses_a_low_priority_neighbour_and_evicts_for_a_high_one() -> None:
    mach = machine()
    for i in range(CFG.active_max):
        mach.connected(f"n{i}", 0.0)
        mach.receive(f"n{i}", m.Neighbor(Member(f"n{i}", 0, addresses=(f"n{i}:1",)), False), 0.0)
    assert len(mach.active_view()) == CFG.active_max
    mach.effects()
    mach.connected("late", 0.0)
    mach.receive("late", m.Neighbor(Member("late", 0), False), 0.0)
    assert Send("late", m.NeighborReply(mach.me, False)) in mach.effects()
    mach.receive("late", m.Neighbor(Member("late", 0), True), 0.0)
    assert "late" in mach.active_view() and len(mach.active_view()) == CFG.active_max
    out = mach.effects()
    evicted = [e.to for e in out if isinstance(e, Send) and isinstance(e.msg, m.Disconnect)]
    assert len(evicted) == 1 and evicted[0] in mach.passive_view()
