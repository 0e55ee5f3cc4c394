"""Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007): broadcast over the active view.

Design.  Each neighbour link is *eager* (the whole message is pushed) or
*lazy* (only its id is announced, in IHave batches every ``lazy_interval``).
Links start eager, so the first broadcasts flood; a copy that arrives twice
makes the receiver Prune the link it came on (it turns lazy), which leaves a
spanning tree of eager links.  A node that hears of a message by IHave and has
not received it ``graft_timeout`` later Grafts the announcer: the link turns
eager again and the message is sent, so the tree heals where it broke; if that
announcer stays silent too, the next one is asked after ``graft_retry``.

    receive Gossip(id) new    -> deliver; eager-push to eager links, announce
                                 to lazy links (except the sender); sender's
                                 link becomes eager
    receive Gossip(id) again  -> Prune the sender's link
    receive IHave(id) unseen  -> timer; on expiry Graft(id) to an announcer
    receive Graft(id)         -> link eager; send the cached message
    neighbour up / down       -> the link starts eager, and is told the ids of
                                 the last catchup_window / its announcements go,
                                 and if it was a tree link a lazy one is grafted

Each node delivers a message id once (ids are remembered ``seen_ttl``) and
keeps message bodies ``cache_ttl`` (within ``cache_max_bytes``) to answer
Grafts.  Anti-entropy of the *application's* state is the application's job.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .effects import Config, Outbox
from .messages import Gossip, Graft, IHave, Prune
from .wire import MAX_IDS


@dataclass
class Missing:
    """A message announced to us that we have not received."""

    announcers: list[str] = field(default_factory=list)


def _size(msg: Gossip) -> int:
    return len(msg.data) + 160 * len(msg.entries) + 64


class Plumtree:
    """Eager and lazy links, and the messages that keep them a tree."""

    def __init__(self, me: str, config: Config, outbox: Outbox, rng: random.Random) -> None:
        self.me = me
        self.rng = rng
        self.config = config
        self.outbox = outbox
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self.seen: dict[bytes, float] = {}  #: id -> forget at (insertion ordered)
        self.cache: dict[bytes, tuple[Gossip, float]] = {}  #: id -> (message, drop at)
        self.cache_bytes = 0
        self.missing: dict[bytes, Missing] = {}
        self._timers: list[tuple[float, bytes]] = []
        self._lazy_queue: dict[str, list[tuple[bytes, int]]] = {}
        self._flush_at: float | None = None
        #: called with (message, sender, now) for each message delivered the first time
        self.deliver: Callable[[Gossip, str, float], None] = lambda msg, sender, now: None
        self.copies_sent = 0  #: messages with a body sent (eager pushes and Graft answers)

    # -- links -----------------------------------------------------------------------

    def neighbor_up(self, uuid: str, now: float) -> None:
        """A new active neighbour: its link starts eager, and it hears of the
        messages of the last ``catchup_window`` (one of them may have been in flight
        on the link whose loss made room for this one)."""
        self.lazy.discard(uuid)
        self.eager.add(uuid)
        since = now - self.config.catchup_window + self.config.seen_ttl
        recent: list[tuple[bytes, int]] = []
        for msg_id in reversed(self.seen):
            if self.seen[msg_id] < since:
                break
            cached = self.cache.get(msg_id)
            if cached is not None:
                recent.append((msg_id, cached[0].round))
        if recent:
            self._lazy_queue.setdefault(uuid, []).extend(reversed(recent))
            if self._flush_at is None:
                self._flush_at = now + self.config.lazy_interval

    def drop_own(self, kind: str) -> int:
        """Forget the bodies of this node's own ``kind`` messages (they are no longer
        announced to new neighbours); how many.  Back from isolation, the member
        updates it made while cut off are stale news (suspicions of members it simply
        could not reach) and must not spread when its first link comes up."""
        stale = [i for i, (msg, _) in self.cache.items() if msg.origin == self.me and msg.kind == kind]
        for msg_id in stale:
            msg, _ = self.cache.pop(msg_id)
            self.cache_bytes -= _size(msg)
        return len(stale)

    def neighbor_down(self, uuid: str) -> None:
        """An active neighbour is gone.  If its link was a tree link, one lazy link
        becomes a tree link at once (both ends, by an empty Graft): the tree may
        have split there, and this rejoins it more often than not, without
        waiting for the next message's Graft; a cycle it makes is pruned by the
        next duplicate."""
        was_eager = uuid in self.eager
        self.eager.discard(uuid)
        self.lazy.discard(uuid)
        if was_eager and self.lazy:
            peer = self.rng.choice(sorted(self.lazy))
            self.lazy.discard(peer)
            self.eager.add(peer)
            self.outbox.send(peer, Graft(()))
        self._lazy_queue.pop(uuid, None)
        for miss in self.missing.values():
            if uuid in miss.announcers:
                miss.announcers.remove(uuid)

    # -- inputs ----------------------------------------------------------------------

    def broadcast(self, msg: Gossip, now: float) -> None:
        """Start broadcasting ``msg`` (not delivered here: the caller has it)."""
        if msg.msg_id in self.seen:
            return
        self._remember(msg, now)
        self._push(msg, "", now)

    def seen_before(self, msg_id: bytes) -> bool:
        """Whether this node already has the message ``msg_id``."""
        return msg_id in self.seen

    def on_gossip(self, sender: str, msg: Gossip, now: float) -> None:
        """A message on a link: deliver and pass it on, or Prune a duplicate's link."""
        if msg.msg_id in self.seen:
            if sender in self.eager:
                self.eager.discard(sender)
                self.lazy.add(sender)
                self.outbox.send(sender, Prune())
            return
        self._remember(msg, now)
        self.missing.pop(msg.msg_id, None)
        if sender in self.lazy:
            self.lazy.discard(sender)
            self.eager.add(sender)
        self.deliver(msg, sender, now)
        self._push(replace(msg, round=msg.round + 1), sender, now)

    def on_ihave(self, sender: str, msg: IHave, now: float) -> None:
        """Ids announced by a lazy link: wait for the tree's copy, then Graft."""
        if sender not in self.eager and sender not in self.lazy:
            return
        for msg_id, _round in msg.items:
            if msg_id in self.seen:
                continue
            miss = self.missing.get(msg_id)
            if miss is None:
                miss = self.missing[msg_id] = Missing()
                heapq.heappush(self._timers, (now + self.config.graft_timeout, msg_id))
            if sender not in miss.announcers:
                miss.announcers.append(sender)

    def on_graft(self, sender: str, msg: Graft, now: float) -> None:
        """Make the link eager and send what it asks for."""
        if sender not in self.eager and sender not in self.lazy:
            return
        self.lazy.discard(sender)
        self.eager.add(sender)
        for msg_id in msg.ids:
            cached = self.cache.get(msg_id)
            if cached is not None and self.outbox.send(sender, cached[0]):
                self.copies_sent += 1

    def on_prune(self, sender: str) -> None:
        """The neighbour had our copy already: our link to it turns lazy."""
        if sender in self.eager:
            self.eager.discard(sender)
            self.lazy.add(sender)

    # -- timers ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Send due IHaves, Graft for messages still missing, forget old ones."""
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_at = None
            queue, self._lazy_queue = self._lazy_queue, {}
            for uuid, items in queue.items():
                for i in range(0, len(items), MAX_IDS):
                    self.outbox.send(uuid, IHave(tuple(items[i : i + MAX_IDS])))
        while self._timers and self._timers[0][0] <= now:
            _, msg_id = heapq.heappop(self._timers)
            miss = self.missing.get(msg_id)
            if miss is None or msg_id in self.seen:
                continue
            if not miss.announcers:
                del self.missing[msg_id]
                continue
            peer = miss.announcers.pop(0)
            self.lazy.discard(peer)
            self.eager.add(peer)
            self.outbox.send(peer, Graft((msg_id,)))
            heapq.heappush(self._timers, (now + self.config.graft_retry, msg_id))
        self._expire(now)

    def next_deadline(self) -> float | None:
        """The earliest of: the IHave flush, a Graft timer, forgetting an old message."""
        t = self._flush_at
        if self._timers and (t is None or self._timers[0][0] < t):
            t = self._timers[0][0]
        if self.seen:
            until = next(iter(self.seen.values()))
            t = until if t is None else min(t, until)
        if self.cache:
            until = next(iter(self.cache.values()))[1]
            t = until if t is None else min(t, until)
        return t

    # -- internals -------------------------------------------------------------------

    def _push(self, msg: Gossip, sender: str, now: float) -> None:
        for uuid in sorted(self.eager):
            if uuid != sender and self.outbox.send(uuid, msg):
                self.copies_sent += 1
        lazy = [u for u in sorted(self.lazy) if u != sender]
        for uuid in lazy:
            self._lazy_queue.setdefault(uuid, []).append((msg.msg_id, msg.round))
        if lazy and self._flush_at is None:
            self._flush_at = now + self.config.lazy_interval

    def _remember(self, msg: Gossip, now: float) -> None:
        self.seen[msg.msg_id] = now + self.config.seen_ttl
        self.cache[msg.msg_id] = (msg, now + self.config.cache_ttl)
        self.cache_bytes += _size(msg)

    def _expire(self, now: float) -> None:
        while self.seen:
            msg_id, until = next(iter(self.seen.items()))
            if until > now:
                break
            del self.seen[msg_id]
        while self.cache:
            msg_id, (msg, until) = next(iter(self.cache.items()))
            if until > now and self.cache_bytes <= self.config.cache_max_bytes:
                break
            del self.cache[msg_id]
            self.cache_bytes -= _size(msg)
