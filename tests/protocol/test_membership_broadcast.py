"""Plumtree: each payload is delivered exactly once on every node, copies stay
near one per node once the tree has formed, and the tree repairs itself when a
link drops; relay reaches a node that cannot be dialed."""

from __future__ import annotations

import collections
import random

from protocol.membership import Config, Deliver, Send
from protocol.membership import messages as m
from protocol.membership.broadcast import Plumtree
from protocol.membership.effects import Outbox
from protocol.membership.simnet import SimNet, payload_copies


def farm(n: int, *, seed: int = 1, **kw: float) -> SimNet:
    net = SimNet(seed=seed, **kw)  # type: ignore[arg-type]
    rng = random.Random(seed)
    names = [f"n{i:02d}" for i in range(n)]
    for i, u in enumerate(names):
        net.add(u, contacts=[names[rng.randrange(i)]] if i else [], at=i * 0.01)
    net.run_until(n * 0.01 + 3.0)
    return net


class Recorder:
    """Deliveries per (node, id) and payload copies sent."""

    def __init__(self, net: SimNet) -> None:
        self.got: collections.Counter[tuple[str, bytes]] = collections.Counter()
        self.when: dict[bytes, list[float]] = collections.defaultdict(list)
        self.copies = 0
        net.on_deliver.append(self._deliver)
        net.on_send.append(self._sent)

    def _deliver(self, node: str, eff: Deliver, now: float) -> None:
        self.got[(node, eff.msg_id)] += 1
        self.when[eff.msg_id].append(now)

    def _sent(self, sender: str, to: str, msg: m.Message) -> None:
        self.copies += payload_copies(msg)


def broadcast(net: SimNet, origin: str, payload: bytes) -> bytes:
    node = net.nodes[origin]
    msg_id = node.machine.broadcast(payload, net.now)
    net._settle(node)
    return msg_id


def test_every_node_delivers_every_payload_exactly_once_with_few_copies() -> None:
    net = farm(40)
    rec = Recorder(net)
    rng = random.Random(2)
    ids = []
    for i in range(30):
        origin = rng.choice(sorted(net.nodes))
        ids.append((origin, broadcast(net, origin, b"change %d" % i)))
        net.run_until(net.now + 0.05)
    net.run_until(net.now + 2.0)
    for origin, msg_id in ids:
        for u in net.nodes:
            assert rec.got[(u, msg_id)] == (0 if u == origin else 1)
        assert max(rec.when[msg_id]) - min(rec.when[msg_id]) < 0.5
    assert rec.copies / (40 * 30) < 1.5


def test_with_messages_dropped_nothing_is_delivered_twice_and_most_arrive() -> None:
    net = farm(30, drop=0.05)
    rec = Recorder(net)
    ids = [broadcast(net, f"n{i:02d}", b"x") for i in range(0, 30, 3)]
    net.run_until(net.now + 5.0)
    assert max(rec.got.values()) == 1
    delivered = sum(1 for (_, i) in rec.got if i in ids)
    assert delivered >= 0.95 * len(ids) * 29


def test_the_tree_heals_after_a_tree_link_drops() -> None:
    net = farm(30)
    rec = Recorder(net)
    broadcast(net, "n00", b"form the tree")
    net.run_until(net.now + 1.0)
    # cut every tree link of one node by closing its sessions (the processes live on)
    victim = "n07"
    tree = net.nodes[victim].machine.tree
    for peer in sorted(tree.eager):
        link = net.links[frozenset((victim, peer))]
        net._close(link, victim, "closed", notify_self=True, self_reason="closed")
    net.run_until(net.now + 1.0)
    msg_id = broadcast(net, "n20", b"after the cut")
    net.run_until(net.now + 1.0)
    assert all(rec.got[(u, msg_id)] == 1 for u in net.nodes if u != "n20")
    assert max(rec.when[msg_id]) - net.now + 1.0 < 0.5


def plumtree(me: str, peers: list[str]) -> Plumtree:
    out = Outbox()
    out.sessions.update(peers)
    tree = Plumtree(me, Config(), out, random.Random(1))
    for p in peers:
        tree.neighbor_up(p, 0.0)
    return tree


def test_a_duplicate_prunes_its_link_and_a_graft_is_answered_from_the_cache() -> None:
    tree = plumtree("b", ["a", "c"])
    msg = m.Gossip(b"id1", "a", 0, m.KIND_APP, data=b"x")
    delivered: list[bytes] = []
    tree.deliver = lambda g, sender, now: delivered.append(g.msg_id)
    tree.on_gossip("a", msg, 0.0)
    assert Send("c", m.Gossip(b"id1", "a", 1, m.KIND_APP, data=b"x")) in tree.outbox.drain()
    tree.on_gossip("c", msg, 0.0)  # the same message again, on another link
    assert delivered == [b"id1"] and tree.outbox.drain() == [Send("c", m.Prune())]
    assert tree.lazy == {"c"} and tree.eager == {"a"}
    tree.on_graft("c", m.Graft((b"id1",)), 0.1)
    assert tree.outbox.drain() == [Send("c", msg)] and "c" in tree.eager


def test_an_announced_message_that_does_not_come_is_grafted_from_the_announcer() -> None:
    cfg = Config()
    tree = plumtree("b", ["a", "c"])
    tree.on_prune("c")
    tree.on_ihave("c", m.IHave(((b"id9", 2),)), 1.0)
    tree.tick(1.0 + cfg.graft_timeout / 2)
    assert tree.outbox.drain() == []
    tree.tick(1.0 + cfg.graft_timeout)
    assert tree.outbox.drain() == [Send("c", m.Graft((b"id9",)))] and "c" in tree.eager


def test_a_lost_tree_link_grafts_a_lazy_one_at_once() -> None:
    tree = plumtree("b", ["a", "c", "d"])
    tree.on_prune("c")
    tree.on_prune("d")
    tree.neighbor_down("a")
    out = tree.outbox.drain()
    assert len(out) == 1 and out[0].msg == m.Graft(())  # type: ignore[union-attr]
    assert len(tree.eager) == 1


def test_a_relay_reaches_a_node_that_cannot_be_dialed_and_the_answer_takes_the_learnt_route() -> None:
    net = SimNet(seed=1)
    net.block("A", "C")
    net.add("B")
    net.add("A", contacts=["B"], at=0.01)
    net.add("C", contacts=["A", "B"], at=0.02)
    got: list[tuple[str, bytes, str, bool]] = []
    net.on_deliver.append(lambda n, e, t: got.append((n, e.payload, e.origin, e.unicast)))
    net.run_until(4.0)  # C's first contact, A, cannot be dialed: it joins through B
    a, c = net.nodes["A"].machine, net.nodes["C"].machine
    assert a.active_view() == ["B"] and c.active_view() == ["B"]
    start = net.now
    broadcast(net, "A", b"book change")
    a.send_to("C", b"to C", net.now)
    net._settle(net.nodes["A"])
    net.run_until(start + 0.05)
    c.send_to("A", b"to A", net.now)
    net._settle(net.nodes["C"])
    net.run_until(start + 0.1)
    assert ("C", b"book change", "A", False) in got and ("C", b"to C", "A", True) in got
    assert ("A", b"to A", "C", True) in got and len(got) == 4
    assert c.route("A", net.now) == "B" and a.router.flooded + c.router.flooded == 0


def test_a_relay_with_no_route_floods_and_is_delivered_once() -> None:
    net = farm(20)
    rec = Recorder(net)
    src = net.nodes["n03"].machine
    target = next(u for u in sorted(net.nodes) if u != "n03" and u not in src.active_view()
                  and src.route(u, net.now) is None)
    msg_id = src.send_to(target, b"hello", net.now)
    net._settle(net.nodes["n03"])
    net.run_until(net.now + 0.5)
    assert [k for k in rec.got if k[1] == msg_id] == [(target, msg_id)]
    assert src.router.flooded == 1
