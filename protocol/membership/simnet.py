"""An in-memory network of ``Membership`` nodes on a simulated clock (for tests
and ``bench/scale.py``): the real state machines, a model of the node layer.

The model of the node layer (what docs/membership.md asks of it):

*   A session is a pair's TCP connection.  Messages on it arrive in order after
    ``delay`` (+-``jitter``); a lost packet (``loss``) costs TCP a
    retransmission (``rto``, doubling), so loss shows as delay, as on a LAN.
    ``drop`` discards whole messages instead (a node layer shedding load).
*   Keepalives: each side sends a heartbeat when it sent nothing else for
    ``keepalive`` seconds; a side that hears nothing for ``window`` seconds
    closes the session ("timeout") and the peer, if it can hear, sees "closed".
*   ``Connect`` takes ``connect_delay`` to a live node; it fails after one
    round trip to a killed process (refused), ``handshake_timeout`` to a
    frozen one, ``connect_timeout`` across a cut.
*   A session closed on purpose (``Disconnect``) delivers what was sent on it
    first, then "goodbye".  A killed node's sessions close at once ("closed" on the far side); a
    frozen node's (SIGSTOP) or a cut one's time out.  A frozen node handles
    nothing until thawed, and then hears its sessions closed.

Events run in time order (a heap); each node's ``tick`` is scheduled at its
``next_deadline()``.  ``wire=True`` passes every message through
``pack``/``unpack``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .effects import Config, Connect, Deliver, Disconnect, MemberChanged, Send
from .entries import Meta, State
from .machine import Membership
from .messages import Gossip, Message, Relay, pack, unpack


@dataclass
class Link:
    """One session between two nodes."""

    a: str
    b: str
    epoch: int
    last_arrival: dict[str, float] = field(default_factory=dict)  #: receiver -> last arrival
    last_sent: dict[str, float] = field(default_factory=dict)  #: sender -> last send
    doomed: bool = False  #: a timeout is scheduled

    def other(self, uuid: str) -> str:
        """The far end from ``uuid``."""
        return self.b if uuid == self.a else self.a


@dataclass
class SimNode:
    """A simulated daemon: its machine and its process state."""

    uuid: str
    machine: Membership
    state: str = "up"  #: "up", "killed", "frozen"
    timer_at: float | None = None
    inbox: list[tuple[str, int, Message]] = field(default_factory=list)  #: while frozen
    sent: int = 0  #: messages sent, keepalives included
    heartbeats: int = 0
    dials: int = 0


class SimNet:
    """N nodes on a simulated network; see the module docstring for the model."""

    def __init__(self, *, seed: int = 1, loss: float = 0.0, drop: float = 0.0,
                 delay: float = 0.001, jitter: float = 0.5, rto: float = 0.2,
                 keepalive: float = 0.75, window: float = 1.5, connect_delay: float = 0.004,
                 handshake_timeout: float = 2.0, connect_timeout: float = 1.0,
                 config: Config | None = None, wire: bool = False) -> None:
        self.rng = random.Random(seed)
        self.loss, self.drop, self.delay, self.jitter, self.rto = loss, drop, delay, jitter, rto
        self.keepalive, self.window = keepalive, window
        self.connect_delay, self.handshake_timeout = connect_delay, handshake_timeout
        self.connect_timeout = connect_timeout
        self.config = config or Config()
        self.wire = wire
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.links: dict[frozenset[str], Link] = {}
        self.dialing: set[tuple[str, str]] = set()
        self.group: dict[str, int] = {}  #: partition group per node (equal: reachable)
        self.blocked: set[frozenset[str]] = set()  #: pairs that cannot reach each other
        self._draining: set[tuple[int, str]] = set()  #: (link epoch, closer) closed on purpose
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._epochs = 0
        self.bytes_sent = 0
        self.on_change: list[Callable[[str, MemberChanged, float], None]] = []
        self.on_deliver: list[Callable[[str, Deliver, float], None]] = []
        self.on_send: list[Callable[[str, str, Message], None]] = []
        self._keepalive_started = False

    # -- scenario API ----------------------------------------------------------------

    def add(self, uuid: str, *, contacts: Sequence[str] = (), incarnation: int = 0,
            at: float | None = None) -> None:
        """Start a node ``uuid`` (now or at ``at``) that knows ``contacts``."""
        def start() -> None:
            machine = Membership(uuid, rng=random.Random(self.rng.random()),
                                 addresses=(f"{uuid}:7000",), incarnation=incarnation,
                                 meta=Meta(name=uuid), config=self.config)
            self.nodes[uuid] = SimNode(uuid, machine)
            self.group.setdefault(uuid, 0)
            machine.start(self.now)
            for c in contacts:
                if c != uuid:
                    machine.discovered(c, (f"{c}:7000",), self.now)
            self._settle(self.nodes[uuid])
        self.at(self.now if at is None else at, start)
        if not self._keepalive_started:
            self._keepalive_started = True
            self.at(self.now + self.keepalive / 4, self._keepalives)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``t``."""
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn))

    def run_until(self, t: float) -> None:
        """Run every event up to time ``t``."""
        q = self._queue
        while q and q[0][0] <= t:
            when, _, fn = heapq.heappop(q)
            self.now = max(self.now, when)
            fn()
        self.now = max(self.now, t)

    def kill(self, uuid: str) -> None:
        """SIGKILL: the process is gone; its sessions close at once."""
        node = self.nodes[uuid]
        node.state = "killed"
        for link in [lk for lk in self.links.values() if uuid in (lk.a, lk.b)]:
            self._close(link, uuid, "closed", notify_self=False)

    def freeze(self, uuid: str) -> None:
        """SIGSTOP: the process stops; its sessions time out."""
        self.nodes[uuid].state = "frozen"

    def thaw(self, uuid: str) -> None:
        """SIGCONT: handle what arrived meanwhile, then run on."""
        node = self.nodes[uuid]
        node.state = "up"
        inbox, node.inbox = node.inbox, []
        for sender, epoch, msg in inbox:
            link = self.links.get(frozenset((uuid, sender)))
            if link is not None and link.epoch == epoch:
                self._input(node, partial(self._receive, node, sender, msg))
        self._input(node, lambda: node.machine.tick(self.now))

    def partition(self, groups: list[list[str]]) -> None:
        """Cut the network into ``groups`` (nodes not named stay in group 0)."""
        for i, members in enumerate(groups):
            for u in members:
                self.group[u] = i

    def heal(self) -> None:
        """Undo every partition and block."""
        for u in self.group:
            self.group[u] = 0
        self.blocked.clear()

    def block(self, a: str, b: str) -> None:
        """``a`` and ``b`` cannot reach each other (both still reach everyone else)."""
        self.blocked.add(frozenset((a, b)))

    def up(self) -> list[str]:
        """Nodes whose process runs and is not frozen."""
        return [u for u, n in self.nodes.items() if n.state == "up"]

    # -- the model -------------------------------------------------------------------

    def _reachable(self, a: str, b: str) -> bool:
        return (self.group.get(a, 0) == self.group.get(b, 0)
                and (not self.blocked or frozenset((a, b)) not in self.blocked))

    def _latency(self) -> float:
        d = self.delay * (1 + self.jitter * (2 * self.rng.random() - 1))
        rto = self.rto
        while self.loss and self.rng.random() < self.loss:
            d += rto
            rto *= 2
        return d

    def _input(self, node: SimNode, fn: Callable[[], None]) -> None:
        if node.state != "up":
            return
        fn()
        self._settle(node)

    def _settle(self, node: SimNode) -> None:
        """Carry out the node's effects and schedule its next tick."""
        m = node.machine
        for eff in m.effects():
            if isinstance(eff, Send):
                self._send(node, eff.to, eff.msg)
            elif isinstance(eff, Connect):
                self._dial(node, eff.uuid)
            elif isinstance(eff, Disconnect):
                link = self.links.get(frozenset((node.uuid, eff.uuid)))
                if link is not None:
                    self._close(link, node.uuid, "goodbye", notify_self=True, self_reason="local")
            elif isinstance(eff, MemberChanged):
                for cb in self.on_change:
                    cb(node.uuid, eff, self.now)
            else:
                for cbd in self.on_deliver:
                    cbd(node.uuid, eff, self.now)
        deadline = m.next_deadline()
        if deadline is not None and (node.timer_at is None or deadline < node.timer_at
                                     or node.timer_at < self.now):
            node.timer_at = deadline
            self.at(max(deadline, self.now), partial(self._tick, node, deadline))

    def _receive(self, node: SimNode, sender: str, msg: Message) -> None:
        node.machine.receive(sender, msg, self.now)

    def _tick(self, node: SimNode, deadline: float) -> None:
        if node.timer_at != deadline or node.state != "up":
            return
        node.timer_at = None
        self._input(node, lambda: node.machine.tick(self.now))
        after = node.machine.next_deadline()
        if node.state == "up" and after is not None and after <= self.now:
            mc = node.machine
            parts = {"views": mc.views.next_deadline(), "sync": mc.sync.next_deadline(),
                     "members": mc.table.next_deadline(), "detector": mc.detector.next_deadline(),
                     "broadcast": mc.tree.next_deadline()}
            raise RuntimeError(f"{node.uuid}: tick({self.now}) left a deadline at {after}: {parts}")

    def _send(self, node: SimNode, to: str, msg: Message) -> None:
        link = self.links.get(frozenset((node.uuid, to)))
        if link is None:
            return
        node.sent += 1
        for cb in self.on_send:
            cb(node.uuid, to, msg)
        link.last_sent[node.uuid] = self.now
        if self.wire:
            data = pack(msg)
            self.bytes_sent += len(data)
            msg = unpack(data)
        if self.drop and self.rng.random() < self.drop or not self._reachable(node.uuid, to):
            return
        arrival = max(self.now + self._latency(), link.last_arrival.get(to, 0.0))
        link.last_arrival[to] = arrival
        epoch = link.epoch
        self.at(arrival, lambda: self._arrive(to, node.uuid, epoch, msg))

    def _arrive(self, to: str, sender: str, epoch: int, msg: Message) -> None:
        link = self.links.get(frozenset((to, sender)))
        target = self.nodes.get(to)
        live = link is not None and link.epoch == epoch
        if target is None or not (live or (epoch, sender) in self._draining):
            return
        if target.state == "frozen":
            target.inbox.append((sender, epoch, msg))
            return
        self._input(target, lambda: target.machine.receive(sender, msg, self.now))

    def _dial(self, node: SimNode, to: str) -> None:
        key = frozenset((node.uuid, to))
        if key in self.links:
            self._input(node, lambda: node.machine.connected(to, self.now))
            return
        if (node.uuid, to) in self.dialing:
            return
        node.dials += 1
        self.dialing.add((node.uuid, to))
        target = self.nodes.get(to)
        if target is None or not self._reachable(node.uuid, to):
            self.at(self.now + self.connect_timeout, lambda: self._dial_done(node, to, False))
        elif target.state == "killed":
            self.at(self.now + 2 * self.delay,
                    lambda: self._dial_done(node, to, False, refused=True))
        elif target.state == "frozen":
            self.at(self.now + self.handshake_timeout, lambda: self._dial_done(node, to, False))
        else:
            self.at(self.now + self.connect_delay + self._latency(),
                    lambda: self._dial_done(node, to, True))

    def _dial_done(self, node: SimNode, to: str, ok: bool, refused: bool = False) -> None:
        self.dialing.discard((node.uuid, to))
        target = self.nodes.get(to)
        key = frozenset((node.uuid, to))
        ok = (ok and target is not None and target.state == "up" and node.state == "up"
              and self._reachable(node.uuid, to))
        if not ok:
            refused = refused and target is not None and target.state == "killed"
            self._input(node, lambda: node.machine.connect_failed(to, self.now, refused=refused))
            return
        assert target is not None
        if key not in self.links:
            self._epochs += 1
            link = Link(node.uuid, to, self._epochs)
            link.last_arrival = {node.uuid: self.now, to: self.now}
            self.links[key] = link
            self._input(target, lambda: target.machine.connected(node.uuid, self.now))
        self._input(node, lambda: node.machine.connected(to, self.now))

    def _close(self, link: Link, by: str, reason: str, *, notify_self: bool,
               self_reason: str = "local") -> None:
        """``by`` ends the session; the far end hears ``reason`` when it can."""
        if self.links.get(frozenset((link.a, link.b))) is not link:
            return
        del self.links[frozenset((link.a, link.b))]
        other = link.other(by)
        if reason == "goodbye":  # a close on purpose: what ``by`` sent still arrives
            self._draining.add((link.epoch, by))
        if notify_self:
            n = self.nodes[by]
            self._input(n, lambda: n.machine.disconnected(other, self.now, self_reason))
        far = self.nodes[other]
        if far.state == "killed":
            return
        if not self._reachable(by, other):
            self.at(link.last_arrival.get(other, self.now) + self.window,
                    partial(self._notify, far, by, "timeout"))
            return
        when = max(self.now + self.delay, link.last_arrival.get(other, 0.0))
        self.at(when, partial(self._notify, far, by, reason))

    def _notify(self, node: SimNode, peer: str, reason: str) -> None:
        """Tell ``node`` its session to ``peer`` ended (unless a new one is up by then:
        the node layer keeps one session per pair and reports the pair's state)."""
        if node.state == "killed" or frozenset((node.uuid, peer)) in self.links:
            return
        if node.state == "frozen":
            self.at(self.now + 0.01, partial(self._notify, node, peer, reason))
            return
        self._input(node, lambda: node.machine.disconnected(peer, self.now, reason))

    def _keepalives(self) -> None:
        """Every quarter ``keepalive``: a heartbeat where a side sent nothing for
        ``keepalive``; a timeout where a side will have heard nothing for ``window``."""
        for link in list(self.links.values()):
            for src in (link.a, link.b):
                dst = link.other(src)
                node = self.nodes[src]
                if node.state == "up" and self._reachable(src, dst):
                    if self.now - link.last_sent.get(src, -1.0) >= self.keepalive - 1e-9:
                        node.sent += 1
                        node.heartbeats += 1
                        link.last_sent[src] = self.now
                        arrival = max(self.now + self._latency(), link.last_arrival.get(dst, 0.0))
                        if arrival - link.last_arrival.get(dst, 0.0) <= self.window:
                            link.last_arrival[dst] = arrival
                            continue
                    elif self.now + self.delay - link.last_arrival.get(dst, 0.0) <= self.window:
                        continue
                if not link.doomed and self.nodes[dst].state != "killed":
                    link.doomed = True
                    t = link.last_arrival.get(dst, self.now) + self.window
                    self.at(max(t, self.now), partial(self._timeout, link, dst))
        self.at(self.now + self.keepalive / 4, self._keepalives)

    def _timeout(self, link: Link, side: str) -> None:
        """``side`` heard nothing for a window: it closes the session."""
        if self.links.get(frozenset((link.a, link.b))) is not link:
            return
        node = self.nodes[side]
        if node.state == "frozen":  # it notices only when thawed
            link.doomed = False
            return
        self._close(link, side, "closed", notify_self=True, self_reason="timeout")

    # -- observations ----------------------------------------------------------------

    def views_of(self, state: State) -> dict[str, set[str]]:
        """For each running node: the members it holds in ``state``."""
        return {u: {x.uuid for x in n.machine.members() if x.state == state}
                for u, n in self.nodes.items() if n.state == "up"}


def payload_copies(msg: Any) -> int:
    """1 if ``msg`` carries an application payload (a broadcast or relay body)."""
    return int((isinstance(msg, Gossip) and msg.kind != "m") or isinstance(msg, Relay))
