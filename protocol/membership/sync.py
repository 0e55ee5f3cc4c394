"""Anti-entropy of the member list with one neighbour at a time.

Design.  Every ``sync_interval`` (randomised by +-50 %) a node sends one random
active neighbour its bucket hashes (``sync_buckets`` x 8 bytes); also to every
new neighbour at once.  At rest all lists are equal and that is the only
message.  Otherwise:

    A --SyncHash(hashes)-------------------> B   B finds the buckets that differ
    A <--SyncEntries(B's entries, reply)---- B   A merges them, then sends back
    A --SyncEntries(A's newer ones)--------> B   what B lacks or has older

Entries learnt this way are not broadcast again (during a join or a storm of
changes nearly all of them are in flight on the tree anyway, and re-flooding
them multiplied the traffic); instead a round that brought news makes the
next round come after ``sync_soon``, with another random neighbour, so news
the broadcast missed spreads from neighbour to neighbour in rounds of
``sync_soon``, and stops where the lists agree.  A round in which either
side learnt members it had never heard of makes the next round go to every
active neighbour at once: that is what merges two islands (nodes started at
once that linked among themselves before any of them reached the farm, so
their own announcements went round their island only) once one link joins
them.  Spread along one chain, the last node of 16 heard of the other island
20 s after the link in the simulator, and 36 s on the 16-host bed.  Two kinds of update do go out
as broadcasts: this node's own refutation, and the suspicions it starts when
a sync says a member it holds ALIVE is DEAD (members.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .effects import Config, Outbox
from .entries import Member
from .members import MemberTable
from .messages import SyncEntries, SyncHash


class AntiEntropy:
    """Periodic digest exchange of the member list."""

    def __init__(self, config: Config, outbox: Outbox, table: MemberTable,
                 rng: random.Random, neighbours: Callable[[], list[str]]) -> None:
        self.config = config
        self.outbox = outbox
        self.table = table
        self.rng = rng
        self.neighbours = neighbours
        self.next_sync = 0.0
        self.exchanges = 0  #: SyncEntries received (a measure of disagreement)
        self._wide = False  #: the next round goes to every neighbour (members were new to one side)

    def start(self, now: float) -> None:
        """Set the first round."""
        self.next_sync = now + self.config.sync_interval * self.rng.uniform(0.5, 1.5)

    def begin(self, uuid: str) -> None:
        """Send our hashes to ``uuid`` (a new neighbour, or the round's pick)."""
        self.outbox.send(uuid, SyncHash(self.table.bucket_hashes()))

    def tick(self, now: float) -> None:
        """Start a round with one random neighbour when due (with every one after a
        round that brought members new to one side)."""
        if now < self.next_sync:
            return
        self.next_sync = now + self.config.sync_interval * self.rng.uniform(0.5, 1.5)
        neighbours = self.neighbours()
        if self._wide:
            self._wide = False
            for uuid in neighbours:
                self.begin(uuid)
        elif neighbours:
            self.begin(self.rng.choice(neighbours))

    def next_deadline(self) -> float:
        """When the next round is due."""
        return self.next_sync

    def on_hash(self, sender: str, msg: SyncHash, now: float) -> None:
        """Answer with our entries of every bucket whose hash differs."""
        differ = self.table.differing(msg.buckets)
        if differ:
            self._send(sender, differ, self.table.in_buckets(differ), reply=True)

    def on_entries(self, sender: str, msg: SyncEntries, now: float) -> None:
        """Merge their entries; if asked, send back ours that are newer or missing."""
        self.exchanges += 1
        news = False
        for entry in msg.entries:
            unheard = self.table.get(entry.uuid) is None
            if self.table.apply(entry, now, via="sync"):
                news = True
                self._wide = self._wide or unheard
        if news:
            self.next_sync = min(self.next_sync, now + self.config.sync_soon)
        if not msg.reply:
            return
        theirs = {e.uuid: e for e in msg.entries}
        newer = [e for e in self.table.in_buckets(msg.buckets) if e.newer_than(theirs.get(e.uuid))]
        if newer:
            self._send(sender, list(msg.buckets), newer, reply=False)
            if any(e.uuid not in theirs for e in newer):  # members it never heard of: others may lack them too
                self._wide = True
                self.next_sync = min(self.next_sync, now + self.config.sync_soon)

    def _send(self, to: str, buckets: list[int], entries: list[Member], *, reply: bool) -> None:
        """``entries`` in chunks of whole buckets, each chunk naming its buckets."""
        by_bucket: dict[int, list[Member]] = {b: [] for b in buckets}
        index = {b: i for i, b in enumerate(buckets)}
        for e in entries:
            b = self.table.bucket_of(e.uuid)
            if b in index:
                by_bucket[b].append(e)
        chunk: list[Member] = []
        names: list[int] = []
        for b in buckets:
            if chunk and len(chunk) + len(by_bucket[b]) > self.config.sync_chunk:
                self.outbox.send(to, SyncEntries(tuple(chunk), tuple(names), reply))
                chunk, names = [], []
            chunk.extend(by_bucket[b])
            names.append(b)
        if chunk or (names and reply):
            self.outbox.send(to, SyncEntries(tuple(chunk), tuple(names), reply))
