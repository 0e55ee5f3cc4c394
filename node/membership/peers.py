"""The peers service: this node's verified sessions with other nodes.

``Peers`` is the registry and the services' interface (handlers, holds,
membership queries, broadcast); its other parts are ``Dialing`` (dialing.py),
``Handshakes`` (handshake.py) and ``Links`` (link.py), their shared state
declared in peerstate.py.  A session is registered only after both Hellos and
both Verdicts.

Which sessions: with the farm's overlay attached (node/membership/overlay.py,
docs/membership.md), only those to the overlay's active view and to peers a
service holds (the server's workers, a worker's server, fetches, deliveries);
a session nobody holds is closed after ``IDLE_CLOSE`` s.  ONLINE then comes
from the membership, not from sessions.  Without an overlay (tests of this
module) every found peer is dialed and kept, as a full mesh.

One session per pair: when two verified sessions to the same UUID exist, both
sides keep the one whose initiator has the smaller UUID (the same choice on
both sides), unless the peer restarted (new ``boot`` in Hello), in which case
the newer session wins.

Liveness: every record received pushes the session's deadline to
``heartbeat_interval * heartbeat_misses`` ahead (``Session.run``); missing it
closes the session and marks the peer OFFLINE.  mDNS is never used for
liveness.

Messages from peers reach the services through ``register_handler`` (run in
order by the session's dispatcher) or ``register_inline`` (run by its reader,
for heartbeats); ``node/membership/session.py`` says who owns the stream.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from node.config import Preferences, parse_hostport
from node.membership.dialing import Dialing, advertised_addresses
from node.membership.handshake import Handshakes
from node.membership.health import Health
from node.membership.identity import Identity
from node.membership.link import Links
from node.membership.machines import MachineTable
from node.membership.session import Session, SessionLost
from node.nursery import service_nursery

if TYPE_CHECKING:
    from node.membership.overlay import Overlay
    from protocol.membership.entries import Member
from node.membership.peerstate import (
    IDLE_CLOSE,
    REFUSED_LOG_EVERY,
    DeliveryHandler,
    Handler,
    InlineHandler,
    Target,
    V,
)
from protocol import (
    ProtocolError,
)
from protocol.codec import Message
from protocol.messages import Hello
from protocol.messages import Overlay as OverlayMessage
from protocol.noise import Cipher
from protocol.verification import (
    LocalFacts,
    PeerFacts,
)

__all__ = ["Peers", "Target", "advertised_addresses"]


class Peers(Dialing, Handshakes, Links):
    """The peers service: listener, dialers, sessions, heartbeats, machine bits."""

    def __init__(self, prefs: Preferences, ident: Identity, table: MachineTable, psk: bytes,
                 build_id: str, arch: str, capabilities: dict[str, str]) -> None:
        self.prefs = prefs
        self.ident = ident
        self.table = table
        self.psk = psk
        self.local = LocalFacts(build_id, arch, prefs.require_same_arch)
        self.capabilities = capabilities
        self.boot = secrets.token_hex(8)
        self.sessions: dict[str, Session] = {}
        self.targets: dict[str, Target] = {}
        self.facts: dict[str, PeerFacts] = {}
        self.listen_port = 0
        self.advertised: list[str] = []
        self._handlers: dict[type[Message], Handler] = {}
        self._inline_handlers: dict[type[Message], InlineHandler] = {}
        self._deliveries: dict[type[Message], DeliveryHandler] = {}
        self.heartbeat_info: Callable[[], dict[str, Any]] = lambda: {}
        self.hello_extra: Callable[[], dict[str, Any]] = lambda: {}
        self.local_mac = ""  #: this machine's MAC, for Wake-on-LAN (node.power.local_mac)
        self.on_change: list[Callable[[], None]] = []
        self.on_session: list[Callable[[Session], None]] = []  #: a session was registered
        #: a session became one of the overlay's neighbours (its active view)
        self.on_neighbour: list[Callable[[Session], None]] = []
        self.bulk_handler: Callable[[Session, int, bytes], None] | None = None  #: called by the reader
        self.overlay: Overlay | None = None  #: the farm's membership, once attached
        self.blocked: set[str] = set()  #: machines removed here: not members for this node
        self.sent_before = 0  #: records written on sessions that have ended (see ``traffic``)
        self.sessions_opened = 0
        self.health = Health()  #: how late this node's loop runs (node/membership/health.py)
        self.received_before = 0  #: messages read on sessions that have ended
        self._attached = trio.Event()
        self._holds: dict[str, Counter[str]] = {}  #: uuid -> why its session is kept (counted)
        self._unheld_since: dict[str, float] = {}  #: uuid -> when its session lost its last hold
        self._dialing: dict[str, trio.Event] = {}  #: uuid -> set once its dial ends
        self._relay_only: dict[str, float] = {}  #: uuid -> when a dial to it last failed
        #: told if that dial fails (with True when no process listened at its addresses)
        self._on_dial_failure: dict[str, list[Callable[[str, bool], None]]] = {}
        self._nursery: trio.Nursery | None = None
        self._handshakes = trio.Semaphore(prefs.max_handshakes)
        self._accepting: Counter[str] = Counter()  #: remote address -> its connections in handshake
        self._refused = 0  #: connections refused since the last warning about it
        self._refused_logged = -REFUSED_LOG_EVERY
        self._cipher = Cipher.AESGCM if prefs.cipher == "aesgcm" else Cipher.CHACHAPOLY

    # -- public API -----------------------------------------------------------

    def hello(self) -> Hello:
        """This node's Hello."""
        extra = self.hello_extra()
        return Hello(
            uuid=self.ident.uuid, name=self.prefs.name, build_id=self.local.build_id,
            arch=self.local.arch, proto_major=1, proto_minor=0,
            capabilities=self.capabilities, server_priority=self.prefs.server_priority,
            term=int(extra.get("term", 0)), listen=self.advertised, sharing=self.prefs.share,
            boot=self.boot, mac=self.local_mac,
        )

    def remove(self, uuid_or_address: str) -> bool:
        """Forget a machine: stop dialing it, close its session, drop its row.  With
        the overlay, this node also stops counting it as a member (whatever the
        others say) and refuses its automatic sessions, until a user adds one of the
        two to the other again (AddMachine)."""
        found = False
        if self.table.get(uuid_or_address) is not None or uuid_or_address in self.sessions:
            self.blocked.add(uuid_or_address)
        for key, target in list(self.targets.items()):
            if uuid_or_address in (target.uuid, key, key.removeprefix("static:")):
                target.removed = True
                target.wake.set()
                del self.targets[key]
                found = True
                uuid_or_address = target.row_id  # static:HOST:PORT until the peer answered
        session = self.sessions.get(uuid_or_address)
        if session is not None and self._nursery is not None:
            self._nursery.start_soon(self._goodbye, session, "removed from the machine table")
        self.facts.pop(uuid_or_address, None)
        if self.table.remove(uuid_or_address):
            found = True
        if found:
            for callback in self.on_change:
                callback()
        return found

    def replace_psk(self, psk: bytes) -> None:
        """The farm token changed: new sessions use ``psk``, sessions made with the
        old one end, and every dialer retries now instead of after its backoff."""
        if psk == self.psk:
            return
        self.psk = psk
        if self._nursery is not None:
            for session in list(self.sessions.values()):
                self._nursery.start_soon(self._goodbye, session, "farm token changed")
        for target in self.targets.values():
            target.wake.set()

    def register_handler(self, message_type: type[Message], handler: Handler) -> None:
        """Have ``handler(session, message, req_id)`` run for every ``message_type``
        a peer sends.  It runs in the session's dispatcher, one message at a time in
        the order they arrived, so it must be short: queue replies with
        ``session.send`` and start long work in a nursery of its own."""
        self._check_free(message_type)
        self._handlers[message_type] = handler

    def register_inline(self, message_type: type[Message], handler: InlineHandler) -> None:
        """Have the synchronous ``handler`` run in the session's reader itself, as
        each ``message_type`` arrives: for what must not wait behind other
        messages (heartbeats).  It must never block."""
        self._check_free(message_type)
        self._inline_handlers[message_type] = handler

    def register_delivery(self, message_type: type[Message], handler: DeliveryHandler) -> None:
        """Have ``handler(origin_uuid, message)`` run for every ``message_type`` that
        ``broadcast`` carried here through the overlay (once per node, on the trio
        thread; it must not block).  A message a peer sends on a session goes to
        ``register_handler``'s handler instead."""
        if message_type in self._deliveries:
            raise ValueError(f"a delivery handler for {message_type.__name__} is registered already")
        self._deliveries[message_type] = handler

    def deliver(self, origin: str, message: Message) -> None:
        """A broadcast from ``origin`` reached this node: hand it to its handler."""
        handler = self._deliveries.get(type(message))
        if handler is not None:
            handler(origin, message)

    def _check_free(self, message_type: type[Message]) -> None:
        if message_type in self._handlers or message_type in self._inline_handlers:
            raise ValueError(f"a handler for {message_type.__name__} is registered already")

    def is_online(self, uuid: str) -> bool:
        """True if this node counts ``uuid`` ONLINE (a session, or the membership)."""
        return uuid not in self.blocked and self._counts_online(uuid)

    def online_uuids(self) -> list[str]:
        """UUIDs of the other members online: ALIVE or SUSPECT in the farm's
        membership, or (with no overlay attached) those with a live session."""
        if self.overlay is not None:
            return sorted((set(self.overlay.online()) | set(self.sessions)) - self.blocked)
        return list(self.sessions)

    async def broadcast(self, message: Message) -> None:
        """Send ``message`` to every member: through the overlay's tree (each node
        gets it once, whatever the farm's size), or with no overlay attached to
        every live session, skipping ones that break."""
        if self.overlay is not None:
            self.overlay.broadcast(message)
            return
        for session in list(self.sessions.values()):
            try:
                await session.send(message)
            except (SessionLost, ProtocolError):
                pass

    def traffic(self) -> dict[str, int]:
        """Records written and control messages read on every session so far, and
        sessions opened: for ``rendernode status`` and the scale bench."""
        live = list(self.sessions.values())
        return {"records_sent": self.sent_before + sum(s.records_sent for s in live),
                "messages_received": self.received_before + sum(s.messages_received for s in live),
                "sessions_opened": self.sessions_opened}

    # -- sessions on demand ----------------------------------------------------

    def attach(self, overlay: Overlay) -> None:
        """Let ``overlay`` decide which sessions to keep: from now on sessions are
        opened on demand and closed when nobody holds them."""
        self.overlay = overlay
        self.register_handler(OverlayMessage, overlay.on_message)
        self._attached.set()
        for session in list(self.sessions.values()):
            overlay.connected(session)
            if not self._holds.get(session.uuid):
                self._unheld_since[session.uuid] = trio.current_time()
        for target in list(self.targets.values()):
            if target.uuid:
                overlay.discovered(target.uuid, target.addresses)
        if self._nursery is not None:
            self._nursery.start_soon(self._reap_idle)

    def hold(self, uuid: str, reason: str) -> None:
        """Keep the session to ``uuid`` (when there is one) for ``reason``; holds
        count, so each ``hold`` wants its own ``release``."""
        self._holds.setdefault(uuid, Counter())[reason] += 1
        self._unheld_since.pop(uuid, None)

    def release(self, uuid: str, reason: str) -> None:
        """One ``hold`` for ``reason`` is over; with no hold left the session to
        ``uuid`` is closed after ``IDLE_CLOSE`` s unless held again."""
        reasons = self._holds.get(uuid)
        if reasons is None or reasons[reason] <= 0:
            return
        reasons[reason] -= 1
        if reasons[reason] <= 0:
            del reasons[reason]
        if not reasons:
            del self._holds[uuid]
            if uuid in self.sessions:
                self._unheld_since[uuid] = trio.current_time()

    def held(self, uuid: str) -> set[str]:
        """Why the session to ``uuid`` is kept."""
        return set(self._holds.get(uuid, ()))

    def _members_recounted(self, why: str) -> None:
        """This node went from some sessions to none or back: a node with no
        session counts nobody ONLINE (``Overlay._counts``), so every member's row
        is counted again."""
        if self.overlay is None:
            return
        for member in self.overlay.members():
            if member.uuid != self.ident.uuid and member.uuid not in self.sessions:
                self.member_changed(member, why)

    def member_changed(self, member: Member, why: str = "") -> None:
        """The overlay's entry for ``member`` changed: the machine table follows."""
        uuid, meta = member.uuid, member.meta
        if uuid in self.blocked:
            return
        row = self.table.get(uuid)
        changes: dict[str, Any] = {"addresses": list(member.addresses)}
        if meta.name:
            changes.update(name=meta.name, build_id=meta.build_id, arch=meta.arch,
                           server_priority=meta.server_priority, term=meta.term)
        was_online = bool(row and row.online)
        self.table.update(uuid, **changes)
        facts = self.facts.get(uuid)
        online = self._counts_online(uuid)
        if facts is not None:
            self.facts[uuid] = dataclasses.replace(facts, online=online)
            self._set_bits(uuid)
        else:
            self.table.update(uuid, online=online,
                              bits=int(V.VERIFICATIONBIT_ONLINE if online else V.VERIFICATIONBIT_NONE))
        if online != was_online:
            self.table.log(uuid, ("online" if online else
                                  f"offline: {why or member.state.name.lower() + ' in the farm'}"))
        for callback in self.on_change:
            callback()

    async def _reap_idle(self) -> None:
        """Close sessions nobody has held for ``IDLE_CLOSE`` s."""
        while True:
            await trio.sleep(IDLE_CLOSE / 3)
            now = trio.current_time()
            for uuid, since in list(self._unheld_since.items()):
                session = self.sessions.get(uuid)
                if session is None:
                    del self._unheld_since[uuid]
                elif now - since >= IDLE_CLOSE and self._nursery is not None:
                    del self._unheld_since[uuid]
                    self._nursery.start_soon(self._goodbye, session, "idle")

    # -- service ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial static peers, and serve sessions until cancelled."""
        host, port = parse_hostport(self.prefs.listen)
        listeners = await trio.open_tcp_listeners(port, host=None if host in ("0.0.0.0", "*") else host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        self.advertised = advertised_addresses(host, self.listen_port, self.prefs.mdns_interfaces)
        async with service_nursery(self) as nursery:
            await nursery.start(trio.serve_listeners, self._accept, listeners)
            nursery.start_soon(self.health.run)
            for peer in self.prefs.peers:
                self.add_static(peer)
            for row in self.table.all():
                if row.uuid.startswith("static:"):
                    self.add_static(row.uuid.removeprefix("static:"))
                elif "static" in row.via and row.addresses:
                    self.add_static(row.addresses[0])
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                if self.overlay is not None:  # LEFT to the neighbours first, then the goodbyes
                    self.overlay.leave()
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    for session in list(self.sessions.values()):
                        await self._goodbye(session, "node shutting down")

    def _register(self, s: Session, facts: PeerFacts) -> bool:
        uuid = s.uuid
        if uuid in self.blocked:
            added_here = s.added  # we dialed it because a user added it here again
            added_there = not s.initiator and s.hello is not None and s.hello.added
            if not (added_here or added_there):
                if self._nursery is not None:
                    self._nursery.start_soon(self._goodbye, s, "removed from the machine table")
                return False
            self.blocked.discard(uuid)
        existing = self.sessions.get(uuid)
        if existing is not None and not existing.closed.is_set():
            if self._keep_existing(existing, s):
                if self._nursery is not None:
                    self._nursery.start_soon(self._goodbye, s, "duplicate session")
                return False
            if self._nursery is not None:
                self._nursery.start_soon(self._goodbye, existing, "duplicate session")
        alone = not self.sessions
        self.sessions[uuid] = s
        self.sessions_opened += 1
        self.facts[uuid] = facts
        dialing = self._dialing.pop(uuid, None)
        if dialing is not None:
            dialing.set()
        self._on_dial_failure.pop(uuid, None)
        if not self._holds.get(uuid) and self.overlay is not None:
            self._unheld_since[uuid] = trio.current_time()
        self.facts[uuid] = dataclasses.replace(self.facts[uuid], online=True)
        row = self.table.get(uuid)
        if row is not None and not row.was_verified:
            self.table.update(uuid, was_verified=True)
        self._set_bits(uuid, reason="")
        self.table.log(uuid, f"online, verified ({s.remote_ip})")
        if self.overlay is not None:
            self.overlay.connected(s)
        if alone:
            self._members_recounted("a session again")
        for callback in self.on_change:
            callback()
        for session_callback in self.on_session:
            session_callback(s)
        return True

    def _keep_existing(self, existing: Session, new: Session) -> bool:
        assert existing.hello is not None and new.hello is not None
        if existing.hello.boot != new.hello.boot:  # the peer restarted: the newer session wins
            return False
        def initiator(s: Session) -> str:
            return self.ident.uuid if s.initiator else s.uuid
        return initiator(existing) <= initiator(new)

    # -- a live session --------------------------------------------------------


