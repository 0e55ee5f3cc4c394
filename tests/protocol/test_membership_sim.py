"""The whole overlay at 50 nodes with 1 % packet loss: the farm forms, a
partition splits it and heals, and every node converges to the same list of
ALIVE members with no live node ever declared dead by a node that could reach
it.  (bench/scale.py runs the same code at 1,000.)"""

from __future__ import annotations

import random

from protocol.membership import MemberChanged, State
from protocol.membership.simnet import SimNet

N = 50


def test_fifty_nodes_with_loss_survive_a_partition_and_converge() -> None:
    net = SimNet(seed=7, loss=0.01)
    rng = random.Random(7)
    names = [f"n{i:02d}" for i in range(N)]
    false: list[tuple[float, str, str]] = []

    def changed(observer: str, eff: MemberChanged, now: float) -> None:
        uuid = eff.member.uuid
        if (eff.member.state == State.DEAD and net.nodes[uuid].state == "up"
                and net._reachable(observer, uuid)):
            false.append((now, observer, uuid))

    net.on_change.append(changed)
    for i, u in enumerate(names):
        net.add(u, contacts=[names[rng.randrange(i)]] if i else [], at=i * 0.02)
    net.run_until(N * 0.02 + 5.0)

    def alive_views() -> set[frozenset[str]]:
        return {frozenset(x.uuid for x in net.nodes[u].machine.members()
                          if x.state == State.ALIVE) for u in net.up()}

    assert alive_views() == {frozenset(names)}

    left, right = names[: N // 2], names[N // 2 :]
    net.partition([left, right])
    net.run_until(net.now + 10.0)
    for side, other in ((left, right), (right, left)):
        for u in side:  # each side holds the other dead and itself alive
            states = {x.uuid: x.state for x in net.nodes[u].machine.members()}
            assert all(states[v] == State.ALIVE for v in side)
            assert all(states[v] == State.DEAD for v in other)

    net.heal()
    start = net.now
    while alive_views() != {frozenset(names)} and net.now - start < 20.0:
        net.run_until(net.now + 0.1)
    assert alive_views() == {frozenset(names)}, "did not converge within 20 s of the heal"
    assert net.now - start < 5.0
    assert false == []

    # and the overlay is one again: a broadcast from one side reaches the other
    got: set[str] = set()
    net.on_deliver.append(lambda node, eff, now: got.add(node))
    origin = net.nodes[left[0]]
    origin.machine.broadcast(b"after the heal", net.now)
    net._settle(origin)
    net.run_until(net.now + 1.0)
    assert got == set(names) - {left[0]}


def test_two_islands_that_never_knew_each_other_merge_within_seconds_of_one_link() -> None:
    """Nodes started at once can form islands: on the 16-host bed a batch of new
    nodes linked among themselves before any of them reached the farm, and their
    own announcements went round their island only.  Once one link joins the
    islands, a sync round that brings members new to one side makes the next
    round go to every neighbour, so the news spreads from every node that has
    it (along one chain of syncs, the last node heard 20 s after the link here
    and 36 s after it on the bed)."""
    net = SimNet(seed=3)
    left = [f"a{i}" for i in range(8)]
    right = [f"b{i}" for i in range(8)]
    net.partition([left, right])
    for side in (left, right):
        for i, u in enumerate(side):
            net.add(u, contacts=[side[0]] if i else [], at=i * 0.01)
    net.run_until(3.0)
    assert all(len(net.nodes[u].machine.members()) == 8 for u in net.up())
    net.heal()
    b3 = net.nodes["b3"]
    net._input(b3, lambda: b3.machine.views.request("a5", net.now, high=True))  # one link across
    start = net.now
    everyone = frozenset(left + right)

    def merged() -> bool:
        return all(frozenset(x.uuid for x in net.nodes[u].machine.members() if x.state == State.ALIVE)
                   == everyone for u in net.up())

    while not merged() and net.now - start < 30.0:
        net.run_until(net.now + 0.1)
    assert merged(), "the islands did not merge within 30 s"
    assert net.now - start < 3.0, net.now - start
