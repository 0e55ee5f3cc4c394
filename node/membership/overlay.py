"""The farm's membership on this node: ``protocol.membership.Membership`` (the
sans-IO state machine: HyParView views, SWIM/Lifeguard failure detection,
Plumtree broadcast, anti-entropy, relay) driven by the peers service's
sessions and a timer.  docs/membership.md says why this design and what it
costs.

Inputs reach the machine from three places, always on the trio thread:

- the peers service: a verified session came up (``connected``) or ended
  (``disconnected``, with how: goodbye, closed, timeout, local), an
  ``Overlay`` message arrived on one, mDNS or a static peer found a member
  (``discovered``);
- the services above: a payload for every node (``broadcast``: job book
  changes, messages to users), this node's metadata changed (``update_meta``:
  the election's term and server);
- the timer: ``tick`` at the machine's next deadline.

After every input the effects are carried out at once: ``Send`` queues an
``Overlay`` message on the session to that member (each member's messages
leave in order, from a task of their own, so no input waits on a socket);
``Connect`` dials through the peers service; ``Disconnect`` lets go of the
overlay's hold on a session (the peers service closes it once nobody holds
it); ``MemberChanged`` updates the machine table (ONLINE comes from here) and
wakes the services that watch the membership; ``Deliver`` hands a broadcast
payload (a codec envelope) to the handler registered for its message type.

This node's incarnation survives restarts (``incarnation`` in the state dir,
and never below the wall clock's seconds), so a restarted node's ALIVE beats
whatever the farm remembers of its previous run.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from node.membership.health import LATE, STALL_CATCHUP
from node.nursery import service_nursery
from protocol import ProtocolError, codec
from protocol.codec import Message
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.membership import messages as mm
from protocol.membership.effects import Config, Connect, Deliver, Disconnect, MemberChanged, Send
from protocol.membership.entries import Member, Meta, State
from protocol.membership.machine import Membership
from protocol.messages import Overlay as OverlayMessage

if TYPE_CHECKING:
    from node.membership.peers import Peers
    from node.membership.session import Session

log = logging.getLogger("rendernode.overlay")
INCARNATION_FILE = "incarnation"
ACTIVE_MAX = 7  #: neighbours this node keeps sessions to: farms of 8 or fewer are a full mesh


class Overlay:
    """This node's membership of the farm (see the module docstring)."""

    def __init__(self, peers: Peers, state_dir: str, meta: Callable[[], Meta],
                 config: Config | None = None) -> None:
        self.peers = peers
        self.me = peers.ident.uuid
        self.config = config or Config(active_max=ACTIVE_MAX)
        self._meta = meta
        self._path = Path(state_dir) / INCARNATION_FILE
        self.machine: Membership | None = None
        self._wake = trio.Event()
        self._outboxes: dict[str, deque[mm.Message]] = {}
        self._nursery: trio.Nursery | None = None
        self._held: set[str] = set()  #: active neighbours whose sessions the overlay holds
        self._saved_incarnation = 0
        self.delivered = 0  #: application payloads handed to handlers (for tests and benches)

    # -- the services' side ----------------------------------------------------------

    def broadcast(self, message: Message) -> None:
        """Send ``message`` to every member (each gets it once, by the overlay's tree)."""
        data = codec.encode(message)
        self._input(lambda m, now: m.broadcast(data, now))

    def send_to(self, uuid: str, message: Message) -> None:
        """Send ``message`` to ``uuid`` through the overlay, relayed by other nodes
        when this one has no session to it (the receiver's delivery handler gets it)."""
        data = codec.encode(message)
        self._input(lambda m, now: m.send_to(uuid, data, now))

    def update_meta(self) -> None:
        """This node's metadata (``meta()``) changed: a new incarnation, gossiped."""
        if self.machine is not None and self._meta() != self.machine.me.meta:
            self._input(lambda m, now: m.update(now, meta=self._meta()))

    def members(self) -> list[Member]:
        """Every entry this node holds, itself included."""
        return self.machine.members() if self.machine is not None else []

    def online(self) -> list[str]:
        """Members this node counts as ONLINE (see ``counts_online``), itself left out."""
        if self.machine is None:
            return []
        return [e.uuid for e in self.machine.members() if e.uuid != self.me and self._counts(e)]

    def _counts(self, entry: Member) -> bool:
        """ONLINE here: ALIVE, or SUSPECT while a session to it is still up.  A
        suspect this node cannot talk to shows OFFLINE at once (as a lost session
        did before the overlay), though the farm waits out the suspicion before it
        holds it DEAD: a suspicion refuted brings it back ONLINE.  A node with no
        session at all (cut off: every neighbour lost) counts nobody ONLINE: what
        it last heard of the members it was not watching says nothing now, and
        finding each of them out by a dial and a suspicion takes seconds apiece.
        The entries stay ALIVE (no suspicion is gossiped), so the first session
        back brings them ONLINE again.

        Both shortcuts are taken only while this node is healthy: a node starved
        of CPU (``Health.degraded``) lost its sessions and heard suspicions
        because it was slow itself, so it counts a member ONLINE until the farm
        holds it DEAD."""
        sessions = self.peers.sessions
        if entry.uuid in sessions or self.peers.health.degraded(trio.current_time()):
            return entry.state in (State.ALIVE, State.SUSPECT)
        return entry.state == State.ALIVE and bool(sessions)

    def member(self, uuid: str) -> Member | None:
        """What this node knows of ``uuid``."""
        return self.machine.member(uuid) if self.machine is not None else None

    def is_online(self, uuid: str) -> bool:
        """True if this node counts ``uuid`` ONLINE (``online``)."""
        entry = self.member(uuid)
        return entry is not None and self._counts(entry)

    def addresses(self, uuid: str) -> list[tuple[str, int]]:
        """Where ``uuid`` accepts sessions, as the membership knows it."""
        from node.config import parse_hostport  # the overlay speaks "host:port" strings

        entry = self.member(uuid)
        out = []
        for text in entry.addresses if entry is not None else ():
            try:
                out.append(parse_hostport(text))
            except ValueError:
                continue
        return out

    # -- the peers service's side ----------------------------------------------------

    def connected(self, session: Session) -> None:
        """A verified session to ``session.uuid`` is up."""
        self._input(lambda m, now: m.connected(session.uuid, now))

    def disconnected(self, session: Session) -> None:
        """The session to ``session.uuid`` ended (and no other to it is up)."""
        kind = session.end_kind if session.end_kind in ("goodbye", "closed", "timeout") else "local"
        log.debug("session to %s ended (%s: %s)", session.uuid, kind, session.lost_reason)
        self._input(lambda m, now: m.disconnected(session.uuid, now, kind))

    def discovered(self, uuid: str, addresses: list[tuple[str, int]]) -> None:
        """mDNS or a static peer found ``uuid`` at ``addresses``."""
        if uuid == self.me or not addresses:
            return
        texts = [f"{h}:{p}" for h, p in addresses]
        self._input(lambda m, now: m.discovered(uuid, texts, now))

    def connect_failed(self, uuid: str, refused: bool = False) -> None:
        """A dial the overlay asked for did not give a session (``refused``: no
        process listens at its addresses)."""
        self._input(lambda m, now: m.connect_failed(uuid, now, refused=refused))

    async def on_message(self, session: Session, msg: Message, req_id: int) -> None:
        """An ``Overlay`` message from a neighbour (run by the session's dispatcher)."""
        assert isinstance(msg, OverlayMessage)
        try:
            inner = mm.unpack(msg.data)
        except RemoteProtocolError as exc:
            session.protocol_error = True
            session.end(f"bad overlay message: {exc.reason}", "closed")
            return
        try:
            self._input(lambda m, now: m.receive(session.uuid, inner, now), strict=True)
        except RemoteProtocolError as exc:
            session.protocol_error = True
            session.end(f"overlay message refused: {exc.reason}", "closed")

    # -- the machine -------------------------------------------------------------------

    def _input(self, feed: Callable[[Membership, float], object], strict: bool = False) -> None:
        machine = self.machine
        if machine is None:
            return
        now = trio.current_time()
        machine.slowness = self.peers.health.factor(now)
        try:
            feed(machine, now)
        except RemoteProtocolError:
            if strict:
                raise
            log.debug("overlay input refused", exc_info=True)
        except LocalProtocolError as exc:
            log.debug("overlay input out of order: %s", exc)
        self._carry_out()
        self._wake.set()

    def _carry_out(self) -> None:
        assert self.machine is not None
        for effect in self.machine.effects():
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s", self.me[:8], _describe(effect))
            if isinstance(effect, Send):
                self._send_soon(effect.to, effect.msg)
            elif isinstance(effect, Connect):
                self.peers.connect(effect.uuid, self._parse(effect.addresses), on_failure=self.connect_failed)
            elif isinstance(effect, Disconnect):
                if effect.uuid in self._held:
                    self._held.discard(effect.uuid)
                    self.peers.release(effect.uuid, "overlay")
            elif isinstance(effect, MemberChanged):
                self._member_changed(effect.member, effect.previous)
            elif isinstance(effect, Deliver):
                self._deliver(effect)
        active = set(self.machine.active_view())
        for uuid in active - self._held:
            self._held.add(uuid)
            self.peers.hold(uuid, "overlay")
            session = self.peers.sessions.get(uuid)
            if session is not None:
                for callback in self.peers.on_neighbour:
                    callback(session)
        for uuid in self._held - active:
            self._held.discard(uuid)
            self.peers.release(uuid, "overlay")
        inc = self.machine.me.incarnation
        if inc > self._saved_incarnation:
            self._save_incarnation(inc)

    @staticmethod
    def _parse(texts: tuple[str, ...]) -> list[tuple[str, int]]:
        from node.config import parse_hostport

        out = []
        for text in texts:
            try:
                out.append(parse_hostport(text))
            except ValueError:
                continue
        return out

    def _member_changed(self, member: Member, previous: State | None) -> None:
        if member.uuid == self.me:
            return
        if previous is None or member.state.online != previous.online:
            log.info("member %s (%s) %s", member.meta.name or member.uuid, member.uuid,
                     member.state.name.lower())
        self.peers.member_changed(member)

    def _deliver(self, effect: Deliver) -> None:
        try:
            message, _ = codec.decode(effect.payload)
        except ProtocolError as exc:
            log.warning("a broadcast from %s could not be read: %s", effect.origin, exc.reason)
            return
        self.delivered += 1
        try:
            self.peers.deliver(effect.origin, message)
        except ProtocolError as exc:
            log.warning("a %s broadcast from %s was refused: %s", type(message).__name__,
                        effect.origin, exc.reason)

    def _send_soon(self, to: str, msg: mm.Message) -> None:
        """Queue ``msg`` on the session to ``to``; one task per member keeps the order."""
        box = self._outboxes.get(to)
        if box is not None:
            box.append(msg)
            return
        if self._nursery is None:
            return
        self._outboxes[to] = deque([msg])
        self._nursery.start_soon(self._drain, to)

    async def _drain(self, to: str) -> None:
        from node.membership.session import SessionLost

        box = self._outboxes[to]
        try:
            while box:
                msg = box.popleft()
                session = self.peers.sessions.get(to)
                if session is None:
                    continue  # dropped, as the machine expects of a Send with no session
                try:
                    await session.send(OverlayMessage(mm.pack(msg)))
                except SessionLost:
                    continue
                except LocalProtocolError as exc:
                    log.warning("overlay message to %s too big: %s", to, exc.reason)
        finally:
            del self._outboxes[to]

    # -- the service ---------------------------------------------------------------------

    def _load_incarnation(self) -> int:
        try:
            return int(self._path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _save_incarnation(self, value: int) -> None:
        tmp = self._path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(str(value))
            os.replace(tmp, self._path)
            self._saved_incarnation = value
        except OSError as exc:
            log.warning("cannot keep the incarnation in %s: %s", self._path, exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the machine, then tick it at its deadlines until cancelled."""
        incarnation = max(self._load_incarnation() + 1, int(time.time()))
        self._save_incarnation(incarnation)
        self.machine = Membership(
            self.me, rng=random.Random(secrets.randbits(64)),
            addresses=list(self.peers.advertised), meta=self._meta(), incarnation=incarnation,
            config=self.config)
        try:
            async with service_nursery(self):
                self._input(lambda m, now: m.start(now))
                self.peers.attach(self)
                task_status.started()
                while True:
                    deadline = self.machine.next_deadline()
                    began = trio.current_time()
                    with trio.move_on_at(deadline if deadline is not None else float("inf")):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    now = trio.current_time()
                    if deadline is not None and now >= deadline:
                        if self.peers.health.woke_for(deadline, began, now) >= LATE:
                            # stalled: read what waits (refutations, acks) first
                            await trio.sleep(STALL_CATCHUP)
                        self._input(lambda m, now: m.tick(now))
        finally:
            self.leave()

    def leave(self) -> None:
        """Say LEFT to the neighbours on the way out (queued at once, no waiting:
        the peers service calls this before its goodbyes, so LEFT goes first)."""
        machine = self.machine
        if machine is None or not machine.started or machine.left:
            return
        machine.leave(trio.current_time())
        for effect in machine.effects():
            if isinstance(effect, Send):
                session = self.peers.sessions.get(effect.to)
                if session is not None:
                    session.send_nowait(OverlayMessage(mm.pack(effect.msg)))


def _describe(effect: object) -> str:
    """A short line for the debug log."""
    if isinstance(effect, Send):
        return f"send {type(effect.msg).__name__} to {effect.to[:8]}"
    if isinstance(effect, Deliver):
        return f"deliver {len(effect.payload)} bytes from {effect.origin[:8]}"
    return repr(effect)
