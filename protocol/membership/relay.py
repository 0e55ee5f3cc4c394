"""Relay: a payload for one node that this node has no session to.

Design.  Routes are learnt backwards, as a learning bridge does: the first
copy of any broadcast from ``origin`` (and any Relay from ``src``) arrived on
the link that leads back to it, so ``routes[origin] = that neighbour``.

    send_to(dst)   session to dst up       -> Relay straight to dst
                   fresh route, hop up     -> Relay to the hop (ttl relay_ttl)
                   neither                 -> flood: a Plumtree Gossip of kind
                                              "r" for dst, which also teaches
                                              every node a route back to src
    receive Relay  for us                  -> deliver once
                   else                    -> the same choice, ttl - 1; at 0 drop

So the first message between two nodes that cannot dial each other floods
(one copy per node), and the answer and everything after it travels the
learnt path (A-B-C: one hop through B).  A route older than ``route_ttl`` or
whose hop has no session is not used.  Delivery is at most once per id.
"""

from __future__ import annotations

from collections.abc import Callable

from .broadcast import Plumtree
from .effects import Config, Deliver, Outbox
from .messages import KIND_RELAY, Gossip, Relay


class Router:
    """Learnt routes and the Relay messages that use them."""

    def __init__(self, me: str, config: Config, outbox: Outbox, tree: Plumtree) -> None:
        self.me = me
        self.config = config
        self.outbox = outbox
        self.tree = tree
        self.routes: dict[str, tuple[str, float]] = {}  #: destination -> (next hop, learnt at)
        self._delivered: dict[bytes, float] = {}  #: id -> forget at
        self.flooded = 0  #: relays sent as floods (no route known)
        self.on_flood: Callable[[Gossip, float], None] = self.tree.broadcast

    def learn(self, origin: str, via: str, now: float) -> None:
        """A message from ``origin`` came first over the link to ``via``."""
        if origin != self.me and via != self.me:
            self.routes[origin] = (via, now)

    def route(self, uuid: str, now: float) -> str | None:
        """The next hop towards ``uuid`` (itself if a session is up), or None."""
        if uuid in self.outbox.sessions:
            return uuid
        hop = self.routes.get(uuid)
        if hop is None or hop[0] not in self.outbox.sessions or now - hop[1] > self.config.route_ttl:
            return None
        return hop[0]

    def send(self, dst: str, data: bytes, msg_id: bytes, now: float, *, src: str = "",
             ttl: int | None = None, came_from: str = "") -> None:
        """Send ``data`` towards ``dst`` by the best means known (see the design)."""
        src = src or self.me
        ttl = self.config.relay_ttl if ttl is None else ttl
        hop = self.route(dst, now)
        if hop is not None and hop != came_from:
            self.outbox.send(hop, Relay(msg_id, src, dst, ttl, data))
            return
        self.flooded += 1
        self.on_flood(Gossip(msg_id, src, 0, KIND_RELAY, data=data, dst=dst), now)

    def on_relay(self, sender: str, msg: Relay, now: float) -> None:
        """A Relay on a session: deliver it here or pass it on."""
        self.learn(msg.src, sender, now)
        if msg.dst == self.me:
            self._deliver(msg.data, msg.src, msg.msg_id, now)
        elif msg.ttl > 0 and not self.tree.seen_before(msg.msg_id):
            self.send(msg.dst, msg.data, msg.msg_id, now, src=msg.src, ttl=msg.ttl - 1,
                      came_from=sender)

    def on_flooded(self, msg: Gossip, now: float) -> None:
        """A flooded relay reached this node (Plumtree passes it on by itself)."""
        if msg.dst == self.me:
            self._deliver(msg.data, msg.origin, msg.msg_id, now)

    def expire(self, now: float) -> None:
        """Forget delivered ids and routes past their time."""
        while self._delivered:
            msg_id, until = next(iter(self._delivered.items()))
            if until > now:
                break
            del self._delivered[msg_id]
        if len(self.routes) > 4 * 4096:
            cutoff = now - self.config.route_ttl
            self.routes = {d: r for d, r in self.routes.items() if r[1] >= cutoff}

    def _deliver(self, data: bytes, src: str, msg_id: bytes, now: float) -> None:
        if msg_id in self._delivered:
            return
        self._delivered[msg_id] = now + self.config.seen_ttl
        self.outbox.emit(Deliver(data, src, msg_id, unicast=True))
