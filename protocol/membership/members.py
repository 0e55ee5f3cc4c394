"""The full member list with SWIM's merge rules and Lifeguard's suspicion timer.

Design.  Every node holds an entry for every member (entries.py) and merges
each entry it hears by the (incarnation, state) order, so all nodes that heard
the same entries hold the same list.  Failure detection itself is elsewhere
(detector.py); this table only keeps its consequences:

    ALIVE --suspect(i)--> SUSPECT(i) --timer--> DEAD(i)
      ^                      |                     |
      +---- ALIVE(j > i), only ever sent by the member itself

*   A suspicion starts a timer.  Lifeguard: it starts at ``suspicion_max`` and
    shrinks towards ``suspicion_min`` as independent confirmations (distinct
    suspecting nodes) arrive, reaching the minimum at ``suspicion_k`` of them:
    a node that several neighbours lost at once is dead quickly, a node one
    neighbour lost has ample time to refute.  A starved node (``slowness``
    above 1, the node layer's local health factor) stretches its timers that
    much: the refutation it waits for comes through nodes as slow as itself
    (on the 100-host bed, every daemon's wakes came seconds late, and members
    the farm held DEAD a second after two suspicions came back alive dozens
    of times a minute: the server among them, so the role moved again and
    again).  A node that did not suspect the
    member itself waits ``bystander_grace`` longer, so the few neighbours that
    did are the ones that declare the death (fewer duplicate broadcasts).
*   A member that hears it is suspected or dead at incarnation ``i`` (or alive
    at a higher incarnation, from a previous run) takes ``i + 1`` and says so:
    that is the only refutation.
*   Entries learnt by anti-entropy (``via="sync"``) never kill: a DEAD entry
    about a member we hold ONLINE becomes our own suspicion instead.  When a
    partition heals, each side holds the other dead; this rule makes every
    member hear of it and refute, instead of the merge killing live nodes.
*   A suspicion learnt by anti-entropy is broadcast again, so the member hears
    it and refutes, and so is a member back from the dead (after a partition,
    one whose entry already beat its death on its side has nothing to refute); a node that was cut off from all its neighbours drops the
    suspicions only it held when it gets a neighbour back (``forgive``); a timer
    that runs out on a member we still have a session to sends it the news in
    a Ping instead of killing it.
*   Nothing is forgotten: DEAD and LEFT entries stay (OFFLINE machines).

Anti-entropy compares bucket hashes: each entry hashes to 8 bytes and a
bucket's hash is the XOR of its entries' (updated in O(1) per change).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .effects import Config, MemberChanged, Outbox
from .entries import Member, Meta, State
from .messages import Ping


@dataclass
class Suspicion:
    """A running suspicion of one member at one incarnation."""

    incarnation: int
    start: float
    confirmers: set[str] = field(default_factory=set)
    local: bool = False  #: this node suspects it itself
    refused: bool = False  #: a suspecter's dial was refused: the process is gone
    deadline: float = 0.0


class Update(NamedTuple):
    """An entry to broadcast."""

    entry: Member
    by: str = ""  #: the node suspecting it, for a suspicion
    dedup: bool = False  #: the same id from whichever node declares it (a death)
    refused: bool = False  #: the suspecter's dial was refused


def _digest(m: Member) -> int:
    h = hashlib.blake2b(f"{m.uuid}\0{m.incarnation}\0{int(m.state)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


class MemberTable:
    """Every member this node knows, itself included."""

    def __init__(self, me: Member, config: Config, outbox: Outbox) -> None:
        self.me_uuid = me.uuid
        self.config = config
        self.outbox = outbox
        self.entries: dict[str, Member] = {}
        self.suspicions: dict[str, Suspicion] = {}
        self.pending: list[Update] = []  #: to broadcast; drained by the machine
        self.leaving = False
        self.isolated = False  #: linked before, and no neighbour now (the machine sets it)
        self.slowness = 1.0  #: suspicion timers are stretched this much (Membership.slowness)
        self.deaths: deque[float] = deque(maxlen=16)  #: when members died, latest last
        self._bucket_of: dict[str, int] = {}
        self._bucket_hash = [0] * config.sync_buckets
        self._bucket_members: list[set[str]] = [set() for _ in range(config.sync_buckets)]
        self._online = 0
        self._store(me, None)

    # -- reading ---------------------------------------------------------------------

    @property
    def me(self) -> Member:
        """This node's own entry."""
        return self.entries[self.me_uuid]

    def get(self, uuid: str) -> Member | None:
        """The entry for ``uuid``, if known."""
        return self.entries.get(uuid)

    def online_count(self) -> int:
        """ALIVE and SUSPECT members, this node included."""
        return self._online

    def choose(self, rng: random.Random, states: tuple[State, ...],
               exclude: set[str] | frozenset[str] = frozenset()) -> Member | None:
        """A random member in one of ``states``, not this node nor in ``exclude``."""
        pool = [m for u, m in self.entries.items()
                if m.state in states and u != self.me_uuid and u not in exclude]
        return rng.choice(pool) if pool else None

    def bucket_hashes(self) -> tuple[bytes, ...]:
        """The anti-entropy digest: one 8-byte hash per bucket."""
        return tuple(h.to_bytes(8, "big") for h in self._bucket_hash)

    def differing(self, theirs: tuple[bytes, ...]) -> list[int]:
        """Buckets whose hash differs from ``theirs`` (all, if the shapes differ)."""
        ours = self.bucket_hashes()
        if len(theirs) != len(ours):
            return list(range(len(ours)))
        return [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]

    def bucket_of(self, uuid: str) -> int:
        """The anti-entropy bucket of ``uuid``."""
        b = self._bucket_of.get(uuid)
        if b is None:
            h = hashlib.blake2b(uuid.encode(), digest_size=4).digest()
            b = int.from_bytes(h, "big") % len(self._bucket_hash)
        return b

    def in_buckets(self, buckets: list[int] | tuple[int, ...]) -> list[Member]:
        """Every entry in ``buckets``."""
        return [self.entries[u] for b in buckets if 0 <= b < len(self._bucket_members)
                for u in sorted(self._bucket_members[b])]

    # -- changing --------------------------------------------------------------------

    def apply(self, entry: Member, now: float, *, by: str = "", via: str = "gossip",
              refused: bool = False) -> bool:
        """Merge ``entry`` (heard by gossip or sync; ``by``: the node suspecting it,
        ``refused``: its dial was refused).  True if it changed our list (or our own
        incarnation)."""
        if entry.uuid == self.me_uuid:
            return self._about_me(entry)
        old = self.entries.get(entry.uuid)
        if (via == "sync" and entry.state == State.DEAD and old is not None
                and old.state.online and entry.incarnation >= old.incarnation):
            if old.state == State.SUSPECT and old.incarnation == entry.incarnation:
                return False  # our own timer decides
            entry, by = old.with_state(State.SUSPECT, entry.incarnation), self.me_uuid
            self.pending.append(Update(entry, by))
        if not entry.newer_than(old):
            if (old is not None and old.state == State.SUSPECT and entry.state == State.SUSPECT
                    and entry.incarnation == old.incarnation and by):
                self._confirm(entry.uuid, by, refused)
            return False
        self._store(entry, old)
        if entry.state == State.DEAD and (old is None or old.state.online):
            self.deaths.append(now)
        if via == "sync" and entry.state == State.SUSPECT and by != self.me_uuid:
            self.pending.append(Update(entry))  # so the member hears it and refutes
        elif via == "sync" and old is not None and entry.state.online and not old.state.online:
            self.pending.append(Update(entry))  # back from the dead: news the broadcast missed
        if entry.state == State.SUSPECT:
            s = Suspicion(entry.incarnation, now, local=by == self.me_uuid, refused=refused)
            if by:
                s.confirmers.add(by)
            self.suspicions[entry.uuid] = s
            self._reschedule(s)
        else:
            self.suspicions.pop(entry.uuid, None)
        return True

    def suspect(self, uuid: str, now: float, *, refused: bool = False) -> None:
        """This node suspects ``uuid`` (lost its session and could not reach it;
        ``refused``: a dial to it was refused, so no process listens there)."""
        m = self.entries.get(uuid)
        if m is None or uuid == self.me_uuid or m.state not in (State.ALIVE, State.SUSPECT):
            return
        if m.state == State.ALIVE:
            self.apply(m.with_state(State.SUSPECT), now, by=self.me_uuid, via="local",
                       refused=refused)
            self.pending.append(Update(self.entries[uuid], self.me_uuid, refused=refused))
            return
        s = self.suspicions[uuid]
        s.local = True
        if self._confirm(uuid, self.me_uuid, refused):
            self.pending.append(Update(m, self.me_uuid, refused=refused))

    def bump(self, at_least: int = 0, *, addresses: tuple[str, ...] | None = None,
             meta: Meta | None = None) -> Member:
        """Take a new incarnation (above ``at_least``), with new addresses or meta."""
        me = self.me
        inc = max(me.incarnation, at_least) + 1
        new = Member(self.me_uuid, inc, State.LEFT if self.leaving else State.ALIVE,
                     me.addresses if addresses is None else addresses,
                     me.meta if meta is None else meta)
        self._store(new, me)
        self.pending.append(Update(new))
        return new

    def forgive(self) -> None:
        """This node was cut off from every neighbour: drop the suspicions only it
        holds (it could reach nobody, so they say nothing about the members)."""
        for uuid, s in list(self.suspicions.items()):
            if s.confirmers <= {self.me_uuid}:
                del self.suspicions[uuid]
                m = self.entries[uuid]
                self._store(m.with_state(State.ALIVE), m)

    def tick(self, now: float) -> None:
        """Declare DEAD every suspect whose timer ran out (one with a session up to
        us gets the news in a Ping and another ``suspicion_min`` instead).  A node
        cut off from every neighbour (``isolated``) declares nobody: its suspicions
        say nothing about the members, and are forgiven when a link comes back."""
        if self.isolated:
            return
        for uuid, s in list(self.suspicions.items()):
            if s.deadline > now:
                continue
            m = self.entries[uuid]
            if uuid in self.outbox.sessions and m.state == State.SUSPECT:
                self.outbox.send(uuid, Ping(0, m))
                s.deadline = now + self.config.suspicion_min * self.slowness
                continue
            del self.suspicions[uuid]
            if m.state == State.SUSPECT and m.incarnation == s.incarnation:
                dead = m.with_state(State.DEAD)
                self._store(dead, m)
                self.deaths.append(now)
                self.pending.append(Update(dead, dedup=True))

    def next_deadline(self) -> float | None:
        """When the next suspicion runs out (None while isolated)."""
        if self.isolated or not self.suspicions:
            return None
        return min((s.deadline for s in self.suspicions.values()), default=None)

    def timeout(self, confirmations: int) -> float:
        """Lifeguard's suspicion timeout after ``confirmations`` beyond the first."""
        c = self.config
        k = min(c.suspicion_k, self._online - 2)
        if k <= 0 or confirmations >= k:
            return c.suspicion_min
        frac = math.log(confirmations + 1) / math.log(k + 1)
        return max(c.suspicion_min, c.suspicion_max - frac * (c.suspicion_max - c.suspicion_min))

    # -- internals -------------------------------------------------------------------

    def _about_me(self, entry: Member) -> bool:
        me = self.me
        if self.leaving:
            return False
        if entry.state == State.ALIVE and entry.incarnation <= me.incarnation:
            return False
        if entry.state != State.ALIVE and entry.incarnation < me.incarnation:
            return False
        self.bump(entry.incarnation)
        return True

    def _confirm(self, uuid: str, by: str, refused: bool = False) -> bool:
        s = self.suspicions.get(uuid)
        if s is None or (by in s.confirmers and (s.refused or not refused)):
            return False
        if refused and not s.refused:
            s.refused = True
            s.confirmers.add(by)
            self._reschedule(s)
            return True
        fresh = len(s.confirmers) <= self.config.suspicion_k
        s.confirmers.add(by)
        self._reschedule(s)
        return fresh

    def _reschedule(self, s: Suspicion) -> None:
        grace = 0.0 if s.local else self.config.bystander_grace
        confirmations = self.config.suspicion_k if s.refused else len(s.confirmers) - 1
        s.deadline = s.start + self.timeout(max(0, confirmations)) * self.slowness + grace

    def _store(self, new: Member, old: Member | None) -> None:
        self.entries[new.uuid] = new
        b = self._bucket_of.get(new.uuid)
        if b is None:
            b = self._bucket_of[new.uuid] = self.bucket_of(new.uuid)
            self._bucket_members[b].add(new.uuid)
        if old is not None:
            self._bucket_hash[b] ^= _digest(old)
            self._online -= old.state.online
        self._bucket_hash[b] ^= _digest(new)
        self._online += new.state.online
        self.outbox.emit(MemberChanged(new, None if old is None else old.state))
