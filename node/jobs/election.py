"""Server election without a quorum, fenced by terms.

Rules (each node applies them to what it sees; all see the same once
heartbeats have gone round):

- A *claim* is a live node saying it is the server of term T (its heartbeat
  names itself as server).  Claims are ordered by (followed, term, priority,
  uuid), where *followed* means some other live node obeys it.  A machine
  that was cut off alone claimed the role for itself with a higher term; when
  it returns, the server the rest of the farm kept following still wins, so
  one machine's blip does not move the role (a departure from a pure "higher
  term wins", which would hand the farm to whichever machine blinked last).
- A node obeys the greatest claim it sees among live nodes (itself included).
  A server that sees a greater claim steps down at once.
- With no live claim, the live, verified, server-eligible node with the
  greatest (server_priority, uuid) claims the role with term = max seen + 1,
  persisted before it is announced.  A live server keeps the role even when a
  node with a higher priority joins.
- A node waits ``grace`` seconds after start before claiming, so a restarted
  node finds the farm's server before it would take the role itself, and
  past that while a live node follows a server it has no member entry of
  (the member list has not reached it yet).
- A claim's term is one above the highest this node ever heard of, from
  live members or not.
- A starved node (``Health.degraded``: its view of its peers is suspect) does
  not claim while a live node still follows another server: that server may
  be dead in its own view only.  It waits for the followers to see the death
  too (their claims change), or for the server to come back.  On the 100-host
  bed, where every daemon was starved and the farm held each member DEAD a
  few times a minute, two nodes each held the other dead, claimed the role in
  turn and served side by side for the whole job.

During a partition each side has a server; on heal the lower claim steps
down.  Terms only grow; every server command carries its term and a worker
ignores commands of a term lower than the highest it knows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.membership.peers import Peers
from node.membership.session import Session, SessionLost
from protocol.messages import Heartbeat

log = logging.getLogger("rendernode.election")
TERM_FILE = "term"
COALESCE = 0.02  #: seconds to gather membership changes before re-evaluating


class Election:
    """Tracks claims, decides the role, persists the highest term seen."""

    def __init__(self, peers: Peers, state_dir: str, priority: int, grace: float) -> None:
        self.peers = peers
        self.me = peers.ident.uuid
        self.priority = priority
        self.grace = grace
        self._path = Path(state_dir) / TERM_FILE
        self.max_term = self._load_term()
        self.term = 0  #: term of the server we obey (0: none)
        self.server: str | None = None
        self.claims: dict[str, tuple[int, str]] = {}  #: uuid -> (term, server it obeys)
        self._changed = trio.Event()
        self._started_at = 0.0
        self.on_role: list[Callable[[], None]] = []
        peers.heartbeat_info = self.heartbeat_info
        peers.hello_extra = lambda: {"term": self.term}
        peers.on_change.append(self.poke)
        peers.register_inline(Heartbeat, self._on_heartbeat)

    @property
    def role(self) -> str:
        """"server" or "worker"."""
        return "server" if self.server == self.me else "worker"

    def status(self) -> dict[str, Any]:
        """role, term, server for ``rendernode status``."""
        return {"role": self.role, "term": self.term, "server": self.server}

    def heartbeat_info(self) -> dict[str, Any]:
        """What our heartbeats say: the term and server we obey."""
        return {"term": self.term, "server": self.server or ""}

    def poke(self) -> None:
        """Re-evaluate soon (membership changed)."""
        self._changed.set()

    def _load_term(self) -> int:
        try:
            return int(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.warning("unreadable term file %s; starting from term 0", self._path)
            return 0

    def _save_term(self, term: int) -> None:
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(term))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def _on_heartbeat(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, Heartbeat)
        old = self.claims.get(session.uuid)
        new = (msg.term, msg.server)
        if old != new:
            self.claims[session.uuid] = new
            self.poke()

    def _priority_of(self, uuid: str) -> int:
        if uuid == self.me:
            return self.priority
        session = self.peers.sessions.get(uuid)
        if session is not None and session.hello is not None:
            return session.hello.server_priority
        overlay = self.peers.overlay
        entry = overlay.member(uuid) if overlay is not None else None
        return entry.meta.server_priority if entry is not None else 0

    def _gossiped_claims(self, live: set[str]) -> None:
        """Claims of live members the farm's membership carries (their metadata),
        where no heartbeat of a session of ours says fresher."""
        overlay = self.peers.overlay
        if overlay is None:
            return
        for uuid in live:
            if uuid == self.me or uuid in self.peers.sessions:
                continue
            entry = overlay.member(uuid)
            if entry is not None and entry.meta.name:
                self.claims[uuid] = (entry.meta.term, entry.meta.server)

    def meta_claim(self) -> tuple[int, str]:
        """What this node's membership metadata says: the term and server it obeys."""
        return self.term, self.server or ""

    def _heard_term(self) -> int:
        """The highest term any claim this node heard names, live or not: a member
        that claimed a term and then dropped out of view (dead here, or gone) still
        used it up.  On the 100-host bed three starved nodes claimed term 6 each,
        one after another, the earlier claimants being dead in the later ones' view."""
        heard = [t for t, _ in self.claims.values()]
        overlay = self.peers.overlay
        if overlay is not None:
            heard.extend(e.meta.term for e in overlay.members() if e.meta.name)
        return max(heard, default=0)

    def _unknown(self, servers: set[str]) -> bool:
        """Some of ``servers`` (followed by live members) have no entry here at all:
        this node has just started and not yet received the member list (on the
        100-host bed, starting nodes whose grace ran out first claimed the role
        for a moment, and used up a term each).  It learns of that server soon,
        or the member stops following it."""
        overlay = self.peers.overlay
        return overlay is not None and any(overlay.member(server) is None for server in servers)

    def evaluate(self) -> bool:
        """Apply the rules once; True if the role, term or server changed."""
        heard = self._heard_term()
        live = set(self.peers.online_uuids()) | {self.me}
        for uuid in list(self.claims):
            if uuid not in live:
                del self.claims[uuid]
        self._gossiped_claims(live)
        seen = max(self.max_term, heard)  # heard covers the live claims too
        followed: set[str] = {server for uuid, (_, server) in self.claims.items() if server != uuid}
        if self.server and self.server != self.me:
            followed.add(self.server)
        best: tuple[bool, int, int, str] | None = None
        for uuid, (term, server) in self.claims.items():
            if server == uuid and term > 0:
                claim = (uuid in followed, term, self._priority_of(uuid), uuid)
                best = claim if best is None or claim > best else best
        if self.server == self.me and self.term > 0:
            mine = (self.me in followed, self.term, self.priority, self.me)
            best = mine if best is None or mine > best else best
        before = (self.term, self.server)
        if best is not None:
            self.term, self.server = best[1], best[3]
        else:
            self.term, self.server = 0, None
            eligible = [(self._priority_of(u), u) for u in live if self._priority_of(u) > 0]
            now = trio.current_time()
            waited = now - self._started_at >= self.grace
            others = {server for uuid, (_, server) in self.claims.items() if server not in ("", uuid, self.me)}
            if eligible and max(eligible)[1] == self.me and waited and not self._unknown(others) \
                    and not (others and self.peers.health.degraded(now)):
                self.term, self.server = seen + 1, self.me
        if self.term > self.max_term:
            self.max_term = self.term
            self._save_term(self.term)
        elif seen > self.max_term:
            self.max_term = seen
            self._save_term(seen)
        if (self.term, self.server) != before:
            log.info("role %s, term %d, server %s", self.role, self.term, self.server)
            for callback in self.on_role:
                callback()
            return True
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-evaluate on every change, and once the start-up grace has passed."""
        self._started_at = trio.current_time()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._after_grace)
            while True:
                await self._changed.wait()
                await trio.sleep(COALESCE)  # a burst of membership changes: one evaluation
                self._changed = trio.Event()
                if self.evaluate():
                    info = self.heartbeat_info()
                    beat = Heartbeat(seq=0, term=info["term"], server=info["server"])
                    for session in list(self.peers.sessions.values()):  # those next to us, at once
                        try:
                            await session.send(beat)
                        except SessionLost:
                            pass
                    if self.peers.overlay is not None:  # the rest of the farm, by gossip
                        self.peers.overlay.update_meta()

    async def _after_grace(self) -> None:
        await trio.sleep(self.grace)
        self.poke()
