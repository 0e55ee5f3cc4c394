"""HyParView (Leitão, Pereira, Rodrigues, DSN 2007): which sessions a node keeps.

Design.  The *active view* is a small symmetric set of neighbours, each with a
session up: broadcasts travel only on these links and only these neighbours
watch this node's liveness.  The *passive view* is a larger set of known
addresses from which a lost neighbour is replaced.

    Join(me)             new node -> contact; the contact links to it and sends
                         ForwardJoin(new, arwl) to each other neighbour
    ForwardJoin(n, ttl)  a random walk; where ttl reaches 0 (or the walker has
                         one neighbour) it links to n; at ttl == prwl it keeps n
                         in its passive view
    Neighbor(me, high)   link to me; high: even if your view is full (you drop
                         a random neighbour); low: only if it has room
    NeighborReply        yes/no to Join and Neighbor; a "yes" links both ends
    Disconnect           the sender dropped the link on purpose (not a failure)
    Shuffle/ShuffleReply a walk of shuffle_ttl hops exchanging samples of the
                         views every shuffle_interval, the reply going back
                         along the walk's path

Departures from the paper, because here every member is known (members.py)
and a link is an authenticated session, not a bare TCP connection:

*   A view with room is refilled from, in this order, members whose session is
    already up, the passive view, and any ALIVE member; with a backoff that
    doubles on each refusal, so full views cost nothing at rest.
*   Every ``reconnect_interval`` (randomised) a node dials one DEAD member and
    asks it with high priority: that is how the halves of a healed partition
    find each other again (Serf does the same).
*   A node alone (no neighbour, nobody to ask) joins through the contacts the
    node layer discovered (mDNS, static peers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from . import messages as m
from .effects import Config, Connect, Disconnect, Outbox
from .entries import Member, State
from .members import MemberTable

ATTEMPT_TIMEOUT = 5.0  #: an attempt with no answer by then is given up
CONTACT_RETRY = 30.0  #: a contact we could not join through is tried after the others


@dataclass
class Attempt:
    """A link we asked for: dial, then Join or Neighbor, then wait for the reply."""

    kind: str  #: "join" or "neighbor"
    high: bool
    since: float
    sent: bool = False


class Views:
    """Active and passive views, and the messages that keep them."""

    def __init__(self, me: str, config: Config, outbox: Outbox, table: MemberTable,
                 rng: random.Random) -> None:
        self.me = me
        self.config = config
        self.outbox = outbox
        self.table = table
        self.rng = rng
        self.active: dict[str, float] = {}  #: neighbour -> since when
        self.passive: dict[str, tuple[str, ...]] = {}  #: uuid -> addresses
        self.contacts: dict[str, tuple[str, ...]] = {}  #: discovered by the node layer
        self.unreachable: dict[str, float] = {}  #: contact -> when a join through it failed
        self.attempts: dict[str, Attempt] = {}
        self.on_up: Callable[[str, float], None] = lambda uuid, now: None
        self.on_down: Callable[[str, float], None] = lambda uuid, now: None
        self.next_fill = self.next_join = 0.0
        self.next_shuffle = self.next_reconnect = 0.0
        self.backoff = config.fill_interval
        self._shuffles: dict[int, tuple[str, ...]] = {}  #: nonce -> uuids we sent
        self.linked = False  #: a neighbour was up once, before the one coming up (a join now is a rejoin)

    def start(self, now: float) -> None:
        """Set the periodic timers."""
        self.next_shuffle = now + self.config.shuffle_interval * self.rng.uniform(0.5, 1.5)
        self.next_reconnect = now + self.config.reconnect_interval * self.rng.uniform(0.5, 1.5)

    # -- node layer inputs -----------------------------------------------------------

    def discovered(self, uuid: str, addresses: tuple[str, ...], now: float) -> None:
        """The node layer found a farm member at ``addresses`` (mDNS, static peer)."""
        if uuid == self.me or not addresses:
            return
        self.contacts[uuid] = addresses
        self._add_passive(uuid, addresses)
        if not self.active and not self.attempts:
            self.next_join = now

    def connected(self, uuid: str, now: float) -> None:
        """A session to ``uuid`` is up: go on with the attempt that asked for it."""
        a = self.attempts.get(uuid)
        if a is None and not self.active and not self.attempts:
            a = self.attempts[uuid] = Attempt("join", True, now)
        if a is None or a.sent:
            return
        a.sent = True
        if a.kind == "join":
            self.outbox.send(uuid, m.Join(self.table.me))
        else:
            self.outbox.send(uuid, m.Neighbor(self.table.me, a.high))

    def failed(self, uuid: str, now: float) -> None:
        """A dial to ``uuid`` failed, or its session ended before an attempt finished."""
        a = self.attempts.pop(uuid, None)
        if a is None:
            return
        self.passive.pop(uuid, None)
        if a.kind == "join":
            self.unreachable[uuid] = now
            self.next_join = now + self.config.join_retry * self.rng.uniform(0.5, 1.0)
        self._back_off(now)

    def lost(self, uuid: str, now: float) -> bool:
        """The session to ``uuid`` ended; True if it was an active neighbour."""
        self.failed(uuid, now)
        if uuid not in self.active:
            return False
        self._remove_active(uuid, now)
        self.next_fill = now
        return True

    # -- messages --------------------------------------------------------------------

    def on_join(self, sender: str, msg: m.Join, now: float) -> None:
        """Take a new node in and announce it on random walks."""
        self.attempts.pop(sender, None)
        self._add_active(sender, now)
        self.outbox.send(sender, m.NeighborReply(self.table.me, True))
        for n in list(self.active):
            if n != sender:
                self.outbox.send(n, m.ForwardJoin(msg.member, self.config.arwl))

    def on_forward_join(self, sender: str, msg: m.ForwardJoin, now: float) -> None:
        """One step of a join's random walk."""
        new = msg.member.uuid
        if new == self.me or new in self.active:
            return
        nxt = [n for n in self.active if n not in (sender, new)]
        if msg.ttl == 0 or len(self.active) <= 1 or not nxt:
            self._attempt(new, msg.member.addresses, high=False, now=now)
            return
        if msg.ttl == self.config.prwl:
            self._add_passive(new, msg.member.addresses)
        self.outbox.send(self.rng.choice(nxt), m.ForwardJoin(msg.member, msg.ttl - 1))

    def on_neighbor(self, sender: str, msg: m.Neighbor, now: float) -> None:
        """Link to ``sender`` if asked with high priority or if there is room."""
        accept = sender in self.active or msg.high or len(self.active) < self.config.active_max
        if accept:
            self._add_active(sender, now)
        self.outbox.send(sender, m.NeighborReply(self.table.me, accept))

    def on_neighbor_reply(self, sender: str, msg: m.NeighborReply, now: float) -> None:
        """The answer to our Join or Neighbor."""
        a = self.attempts.pop(sender, None)
        if msg.accept:
            self._add_active(sender, now)
            return
        if sender not in self.active:
            self.outbox.emit(Disconnect(sender))
        if a is not None:
            self._back_off(now)

    def on_disconnect(self, sender: str, now: float) -> None:
        """``sender`` dropped our link on purpose."""
        self.attempts.pop(sender, None)
        if sender in self.active:
            self._remove_active(sender, now)
            self.next_fill = max(self.next_fill, now + self.config.fill_interval)

    def on_shuffle(self, sender: str, msg: m.Shuffle, now: float) -> None:
        """Pass the walk on, or end it: answer with our sample and keep theirs."""
        nxt = [n for n in self.active if n != sender and n not in msg.path]
        if msg.ttl > 0 and nxt and len(msg.path) < 15:
            self.outbox.send(self.rng.choice(nxt), m.Shuffle(
                msg.nonce, msg.ttl - 1, msg.sample, msg.path + (self.me,)))
            return
        mine = self._sample(len(msg.sample), active=0)
        self.outbox.send(sender, m.ShuffleReply(msg.nonce, tuple(mine), msg.path[:-1]))
        self._integrate(msg.sample, [u for u, _ in mine])

    def on_shuffle_reply(self, sender: str, msg: m.ShuffleReply, now: float) -> None:
        """Pass the reply back along the path, or keep the sample if it is ours."""
        if msg.path:
            self.outbox.send(msg.path[-1], m.ShuffleReply(msg.nonce, msg.sample, msg.path[:-1]))
            return
        sent = self._shuffles.pop(msg.nonce, None)
        if sent is not None:
            self._integrate(msg.sample, list(sent))

    # -- timers ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Give up stale attempts; join, refill, shuffle and reconnect when due."""
        for uuid, a in list(self.attempts.items()):
            if a.since + ATTEMPT_TIMEOUT <= now:
                self.failed(uuid, now)
                if uuid not in self.active:
                    self.outbox.emit(Disconnect(uuid))
        if not self.active and not self.attempts and now >= self.next_join:
            self._join(now)
        links = len(self.active) + sum(a.kind == "neighbor" for a in self.attempts.values())
        if self.active and links < self.config.active_max and now >= self.next_fill:
            self._fill(now)
        if now >= self.next_shuffle:
            if self.active:
                self._shuffle(now)
            self.next_shuffle = now + self.config.shuffle_interval * self.rng.uniform(0.5, 1.5)
        if now >= self.next_reconnect:
            self._reconnect(now)
            self.next_reconnect = now + self.config.reconnect_interval * self.rng.uniform(0.5, 1.5)

    def next_deadline(self) -> float:
        """The earliest of this part's timers."""
        t = min(self.next_shuffle, self.next_reconnect)
        if self.attempts:
            t = min(t, min(a.since for a in self.attempts.values()) + ATTEMPT_TIMEOUT)
        if not self.active and not self.attempts and (self.contacts or self.passive):
            t = min(t, self.next_join)
        elif self.active and len(self.active) + len(self.attempts) < self.config.active_max:
            t = min(t, self.next_fill)
        return t

    def leave(self) -> None:
        """Say goodbye to every neighbour."""
        for n in list(self.active):
            self.outbox.send(n, m.Disconnect())
            self.outbox.emit(Disconnect(n))
        self.active.clear()
        self.attempts.clear()

    # -- internals -------------------------------------------------------------------

    def _join(self, now: float) -> None:
        fresh = [u for u in self.contacts
                 if self.unreachable.get(u, -CONTACT_RETRY) + CONTACT_RETRY <= now]
        # a node that lost every neighbour (a partition put them all on the other
        # side) rejoins through the members it knew last, its passive view, before
        # the contacts it started from: those may be across the partition, and it
        # only ever tried them, so it stayed cut off from its own side
        passive = [u for u in self.passive if self._usable(u)]
        with_session = [u for u in self.contacts if u in self.outbox.sessions]
        if self.linked:
            pool = with_session or passive or fresh or list(self.contacts)
        else:
            pool = with_session or fresh or list(self.contacts) or passive
        if pool:
            uuid = self.rng.choice(pool)
            self._attempt(uuid, self._addresses(uuid), high=True, now=now, kind="join")
        self.next_join = now + self.config.join_retry * self.rng.uniform(0.5, 1.5)

    def _fill(self, now: float) -> None:
        skip = set(self.active) | set(self.attempts) | {self.me}
        pool = [u for u in sorted(self.outbox.sessions) if u not in skip and self._usable(u)]
        if not pool:
            pool = [u for u in self.passive if u not in skip and self._usable(u)]
        if pool:
            uuid: str | None = self.rng.choice(pool)
        else:
            member = self.table.choose(self.rng, (State.ALIVE,), skip)
            uuid = None if member is None else member.uuid
        if uuid is None:
            self._back_off(now)
            return
        self._attempt(uuid, self._addresses(uuid), high=not self.active, now=now)
        self.next_fill = now + self.backoff

    def _reconnect(self, now: float) -> None:
        skip = set(self.attempts) | self.outbox.sessions
        member = self.table.choose(self.rng, (State.DEAD,), skip)
        if member is not None and member.addresses:
            self._attempt(member.uuid, member.addresses, high=True, now=now)

    def _shuffle(self, now: float) -> None:
        sample = self._sample(self.config.shuffle_passive, active=self.config.shuffle_active)
        sample.insert(0, (self.me, self.table.me.addresses))
        nonce = self.rng.getrandbits(62)
        self._shuffles = dict(list(self._shuffles.items())[-3:])
        self._shuffles[nonce] = tuple(u for u, _ in sample)
        target = self.rng.choice(list(self.active))
        self.outbox.send(target, m.Shuffle(nonce, self.config.shuffle_ttl, tuple(sample),
                                           (self.me,)))

    def _sample(self, passive: int, active: int) -> list[m.Contact]:
        act = self.rng.sample(list(self.active), min(active, len(self.active)))
        pas = self.rng.sample(list(self.passive), min(passive, len(self.passive)))
        return [(u, self._addresses(u)) for u in act + pas]

    def _integrate(self, sample: tuple[m.Contact, ...], sent: list[str]) -> None:
        for uuid, addresses in sample:
            if uuid == self.me or uuid in self.active or not addresses:
                continue
            if uuid not in self.passive and len(self.passive) >= self.config.passive_max:
                drop = next((u for u in sent if u in self.passive), None)
                self.passive.pop(drop if drop else self.rng.choice(list(self.passive)))
            self.passive[uuid] = addresses

    def _attempt(self, uuid: str, addresses: tuple[str, ...], *, high: bool, now: float,
                 kind: str = "neighbor") -> None:
        if uuid == self.me or uuid in self.attempts:
            return
        self.attempts[uuid] = Attempt(kind, high, now)
        if uuid in self.outbox.sessions:  # no dial needed
            self.connected(uuid, now)
        else:
            self.outbox.emit(Connect(uuid, addresses))

    def request(self, uuid: str, now: float, *, high: bool = False) -> None:
        """Ask ``uuid`` to be a neighbour (dialing it first if needed)."""
        if uuid not in self.active:
            self._attempt(uuid, self._addresses(uuid), high=high, now=now)

    def _add_active(self, uuid: str, now: float) -> None:
        if uuid == self.me or uuid in self.active:
            return
        if len(self.active) >= self.config.active_max:
            victim = self.rng.choice(list(self.active))
            self.outbox.send(victim, m.Disconnect())
            self.outbox.emit(Disconnect(victim))
            self._remove_active(victim, now)
        self.active[uuid] = now
        self.attempts.pop(uuid, None)  # whoever asked first, the link is up
        self.passive.pop(uuid, None)
        self.backoff = self.config.fill_interval
        self.on_up(uuid, now)
        self.linked = True

    def _remove_active(self, uuid: str, now: float) -> None:
        del self.active[uuid]
        self._add_passive(uuid, self._addresses(uuid))
        self.on_down(uuid, now)

    def _add_passive(self, uuid: str, addresses: tuple[str, ...]) -> None:
        if uuid == self.me or uuid in self.active or not addresses:
            return
        if uuid not in self.passive and len(self.passive) >= self.config.passive_max:
            self.passive.pop(self.rng.choice(list(self.passive)))
        self.passive[uuid] = addresses

    def _usable(self, uuid: str) -> bool:
        member = self.table.get(uuid)
        return member is None or member.state.online

    def _addresses(self, uuid: str) -> tuple[str, ...]:
        member: Member | None = self.table.get(uuid)
        if member is not None and member.addresses:
            return member.addresses
        return self.passive.get(uuid) or self.contacts.get(uuid, ())

    def _back_off(self, now: float) -> None:
        self.next_fill = now + self.backoff
        self.backoff = min(self.backoff * 2, self.config.fill_backoff_max)
