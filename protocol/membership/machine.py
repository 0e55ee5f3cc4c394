"""The membership state machine: one object per node, no I/O, time and
randomness passed in.

Design.  The node layer feeds inputs and carries out the effects they leave:

    start(now)                      once, first
    discovered(uuid, addrs, now)    mDNS or a static peer found a member
    connected(uuid, now)            a verified session to uuid is up
    disconnected(uuid, now, why)    it ended: "closed", "timeout", "goodbye", "local"
    connect_failed(uuid, now, refused)  a dial failed (refused: nothing listens)
    receive(uuid, msg, now)         a message on the session to uuid
    tick(now)                       at next_deadline() (or later)
    broadcast(payload, now)         an application payload for every node
    send_to(uuid, payload, now)     ... for one node, relayed if need be
    update(now, meta=, addresses=)  this node's metadata changed
    leave(now)                      shutting down

    effects() -> [Send | Connect | Disconnect | MemberChanged | Deliver]

The parts, one module each: ``views`` (HyParView: which sessions),
``members`` (the list, SWIM merge rules, Lifeguard timers), ``detector``
(what losing a neighbour means), ``broadcast`` (Plumtree), ``sync``
(anti-entropy), ``relay`` (routes for unicast).  This module wires them: a
neighbour coming up or going down reaches Plumtree and anti-entropy, member
updates the parts produce are broadcast as one batch at the end of each
input, and a node whose view was empty announces itself when it gains a link.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import messages as m
from .broadcast import Plumtree
from .detector import Detector
from .effects import Config, Deliver, Effect, Outbox
from .entries import Member, Meta, State
from .members import MemberTable, Update
from .relay import Router
from .sync import AntiEntropy
from .views import Views
from .wire import MAX_PAYLOAD

REASONS = ("closed", "timeout", "goodbye", "local")


class Membership:
    """Membership, failure detection, broadcast and relay for one node."""

    def __init__(self, uuid: str, *, rng: random.Random, addresses: Sequence[str] = (),
                 meta: Meta | None = None, incarnation: int = 0,
                 config: Config | None = None) -> None:
        self.uuid = uuid
        self.config = config or Config()
        self.rng = rng
        self.outbox = Outbox()
        me = Member(uuid, incarnation, State.ALIVE, tuple(addresses), meta or Meta())
        self.table = MemberTable(me, self.config, self.outbox)
        self.views = Views(uuid, self.config, self.outbox, self.table, rng)
        self.tree = Plumtree(uuid, self.config, self.outbox, rng)
        self.router = Router(uuid, self.config, self.outbox, self.tree)
        self.detector = Detector(uuid, self.config, self.outbox, self.table, self.views, rng)
        self.sync = AntiEntropy(self.config, self.outbox, self.table, rng,
                                lambda: list(self.views.active))
        self.views.on_up = self._neighbor_up
        self.views.on_down = self._neighbor_down
        self.tree.deliver = self._delivered
        self.started = False
        self.left = False
        self._handlers: dict[type[m.Message], Any] = {
            m.Join: self.views.on_join, m.ForwardJoin: self.views.on_forward_join,
            m.Neighbor: self.views.on_neighbor, m.NeighborReply: self.views.on_neighbor_reply,
            m.Shuffle: self.views.on_shuffle, m.ShuffleReply: self.views.on_shuffle_reply,
            m.PingReq: self.detector.on_ping_req, m.Ping: self.detector.on_ping,
            m.Ack: self.detector.on_ack, m.PingReqResult: self.detector.on_result,
            m.Gossip: self.tree.on_gossip, m.IHave: self.tree.on_ihave,
            m.Graft: self.tree.on_graft, m.SyncHash: self.sync.on_hash,
            m.SyncEntries: self.sync.on_entries, m.Relay: self.router.on_relay,
        }

    @property
    def slowness(self) -> float:
        """How much this node stretches the timeouts of its checks of a lost
        neighbour and its suspicion timers (>= 1): the node layer's local health
        factor, as Lifeguard stretches its probe timeouts (1 when healthy).  A
        suspicion timer takes the factor of when it was set."""
        return self.detector.slowness

    @slowness.setter
    def slowness(self, factor: float) -> None:
        self.detector.slowness = self.table.slowness = max(1.0, factor)

    # -- inputs ----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: set the periodic timers (call once, before any other input)."""
        if self.started:
            raise LocalProtocolError("membership already started")
        self.started = True
        self.views.start(now)
        self.sync.start(now)

    def discovered(self, uuid: str, addresses: Sequence[str], now: float) -> None:
        """The node layer found a farm member (mDNS, static peer): a contact to join by."""
        if self._live():
            self.views.discovered(uuid, tuple(addresses), now)
            self._after(now)

    def connected(self, uuid: str, now: float) -> None:
        """A verified session to ``uuid`` is up (whoever dialed)."""
        self._require_started()
        self.outbox.sessions.add(uuid)
        if self.left:
            return
        if self.detector.connected(uuid, now) and uuid not in self.views.active:
            self.views.request(uuid, now, high=not self.views.active)
        self.views.connected(uuid, now)
        self._after(now)

    def disconnected(self, uuid: str, now: float, reason: str = "closed") -> None:
        """The session to ``uuid`` ended; ``reason`` is one of ``REASONS``."""
        if reason not in REASONS:
            raise LocalProtocolError(f"disconnect reason {reason!r} is none of {REASONS}")
        self.outbox.sessions.discard(uuid)
        if not self._live():
            return
        if self.views.lost(uuid, now):
            self.detector.lost(uuid, now, reason)
        else:
            self.detector.connect_failed(uuid, now, dial=False)
        self._after(now)

    def connect_failed(self, uuid: str, now: float, *, refused: bool = False) -> None:
        """A dial to ``uuid`` (ours, or the node layer's own) could not open a session;
        ``refused``: every address refused the connection (no process listens)."""
        if self._live():
            self.views.failed(uuid, now)
            self.detector.connect_failed(uuid, now, refused=refused)
            self._after(now)

    def receive(self, sender: str, msg: m.Message, now: float) -> None:
        """A message from ``sender`` (the session's verified uuid)."""
        self._require_started()
        if sender not in self.outbox.sessions:
            raise LocalProtocolError(f"message from {sender} with no session up: call connected()")
        if self.left:
            return
        if isinstance(msg, (m.Join, m.ForwardJoin, m.Neighbor, m.NeighborReply)):
            direct = not isinstance(msg, m.ForwardJoin)
            if direct and msg.member.uuid != sender:
                raise RemoteProtocolError(f"{msg.TYPE} from {sender} speaks for {msg.member.uuid}")
            self.table.apply(msg.member, now)
        if isinstance(msg, m.Disconnect):
            self.views.on_disconnect(sender, now)
        elif isinstance(msg, m.Prune):
            self.tree.on_prune(sender)
        else:
            handler = self._handlers.get(type(msg))
            if handler is None:
                raise LocalProtocolError(f"no handler for {type(msg).__name__}")
            handler(sender, msg, now)
        self._after(now)

    def receive_wire(self, sender: str, obj: Any, now: float) -> None:
        """``receive`` of a peer's msgpack-decoded map (RemoteProtocolError if malformed)."""
        self.receive(sender, m.decode(obj), now)

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        if not self._live():
            return
        self.detector.tick(now)
        self.views.tick(now)
        self.tree.tick(now)
        self.sync.tick(now)
        self.router.expire(now)
        self.table.tick(now)  # last: the parts above may have confirmed a suspicion
        self._after(now)

    def broadcast(self, payload: bytes, now: float, msg_id: bytes | None = None) -> bytes:
        """Send ``payload`` to every node (each delivers it once); returns its id."""
        self._require_started()
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        msg_id = msg_id or self._new_id()
        self.tree.broadcast(m.Gossip(msg_id, self.uuid, 0, m.KIND_APP, data=payload), now)
        self._after(now)
        return msg_id

    def send_to(self, uuid: str, payload: bytes, now: float, msg_id: bytes | None = None) -> bytes:
        """Send ``payload`` to one node, directly or relayed; returns its id."""
        self._require_started()
        if uuid == self.uuid or len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("send_to needs another node and a payload within the limit")
        msg_id = msg_id or self._new_id()
        self.router.send(uuid, payload, msg_id, now)
        self._after(now)
        return msg_id

    def update(self, now: float, *, meta: Meta | None = None,
               addresses: Sequence[str] | None = None) -> Member:
        """This node's metadata or addresses changed: a new incarnation, broadcast."""
        self._require_started()
        new = self.table.bump(meta=meta, addresses=None if addresses is None else tuple(addresses))
        self._after(now)
        return new

    def leave(self, now: float) -> None:
        """Say LEFT to the farm and drop every link (then stop feeding inputs)."""
        if not self._live():
            return
        self.table.leaving = True
        self.table.bump()
        self._after(now)
        self.tree.tick(now + self.config.lazy_interval)  # the IHaves go before the goodbyes
        self.views.leave()
        self.left = True

    # -- outputs and queries ---------------------------------------------------------

    def effects(self) -> list[Effect]:
        """The effects produced since the last call, in order."""
        return self.outbox.drain()

    def next_deadline(self) -> float | None:
        """When ``tick`` should next run (None: nothing scheduled)."""
        if not self._live():
            return None
        t = min(self.views.next_deadline(), self.sync.next_deadline())
        for part in (self.table.next_deadline(), self.detector.next_deadline(),
                     self.tree.next_deadline()):
            if part is not None and part < t:
                t = part
        return t

    @property
    def me(self) -> Member:
        """This node's entry (its incarnation is what the node layer persists)."""
        return self.table.me

    def members(self) -> list[Member]:
        """Every member known, this node included, DEAD and LEFT ones too."""
        return list(self.table.entries.values())

    def member(self, uuid: str) -> Member | None:
        """One member's entry."""
        return self.table.get(uuid)

    def active_view(self) -> list[str]:
        """Neighbours this node keeps a session to for the overlay."""
        return list(self.views.active)

    def passive_view(self) -> list[str]:
        """Known members kept as replacements."""
        return list(self.views.passive)

    def route(self, uuid: str, now: float) -> str | None:
        """Next hop towards ``uuid`` (itself with a session up), or None if unknown."""
        return self.router.route(uuid, now)

    # -- internals -------------------------------------------------------------------

    def _live(self) -> bool:
        self._require_started()
        return not self.left

    def _require_started(self) -> None:
        if not self.started:
            raise LocalProtocolError("membership not started: call start(now) first")

    def _new_id(self) -> bytes:
        return self.rng.getrandbits(128).to_bytes(16, "big")

    def _neighbor_up(self, uuid: str, now: float) -> None:
        alone = not (self.tree.eager or self.tree.lazy)
        if alone:  # first link (a join, or back from isolation)
            # what a node cut off said and began meanwhile is stale news: its suspicions
            # of members it simply could not reach are dropped before the first sync or
            # catch-up carries them out, and so are its own member broadcasts and checks
            self.table.forgive()
            if self.views.linked:  # a first link after that is a return from isolation
                self.tree.drop_own(m.KIND_MEMBERS)
                self.detector.forget_checks()
        self.table.isolated = False
        self.tree.neighbor_up(uuid, now)
        self.sync.begin(uuid)
        if alone:  # announce ourselves: back from isolation under a new incarnation (the
            # farm may hold us SUSPECT or DEAD at our current one, which the same
            # incarnation cannot beat); at a start our incarnation is new already
            if self.views.linked:
                self.table.bump()
            else:
                self.table.pending.append(Update(self.table.me))

    def _neighbor_down(self, uuid: str, now: float) -> None:
        self.tree.neighbor_down(uuid)
        self.table.isolated = not (self.tree.eager or self.tree.lazy)

    def _delivered(self, msg: m.Gossip, sender: str, now: float) -> None:
        self.router.learn(msg.origin, sender, now)
        if msg.kind == m.KIND_MEMBERS:
            for entry in msg.entries:
                self.table.apply(entry, now, by=msg.by, refused=msg.refused)
        elif msg.kind == m.KIND_APP:
            self.outbox.emit(Deliver(msg.data, msg.origin, msg.msg_id))
        else:
            self.router.on_flooded(msg, now)

    def _after(self, now: float) -> None:
        """Broadcast the member updates the input produced: one Gossip per suspecter
        (a death alone, under an id every declarer computes alike)."""
        if not self.table.pending:
            return
        pending, self.table.pending = self.table.pending, []
        groups: dict[tuple[str, bool], dict[str, Member]] = {}
        for u in pending:
            if u.dedup:
                e = u.entry
                key = f"{e.uuid}\0{e.incarnation}\0{int(e.state)}".encode()
                msg_id = hashlib.blake2b(key, digest_size=16).digest()
                self.tree.broadcast(m.Gossip(msg_id, self.uuid, 0, m.KIND_MEMBERS,
                                             entries=(e,)), now)
                continue
            group = groups.setdefault((u.by, u.refused), {})
            if u.entry.newer_than(group.get(u.entry.uuid)):
                group[u.entry.uuid] = u.entry
        for (by, refused), entries in groups.items():
            batch = list(entries.values())
            for i in range(0, len(batch), self.config.sync_chunk):
                self.tree.broadcast(m.Gossip(self._new_id(), self.uuid, 0, m.KIND_MEMBERS,
                                             entries=tuple(batch[i : i + self.config.sync_chunk]),
                                             by=by, refused=refused), now)
