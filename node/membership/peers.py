"""Membership: accept and dial peers, verify them, keep one session per pair,
and watch them with heartbeats.

Targets to dial come from mDNS (``hint``) and static peers (``add_static``);
each target has one dial loop with capped backoff.  Incoming connections are
limited to ``max_handshakes`` in handshake at once, each under
``handshake_timeout``.  A session is registered only after both Hellos and
both Verdicts; a peer that fails verification gets our Verdict and a Goodbye
and nothing else.

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
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from node.config import Preferences, parse_hostport
from node.errors import ConfigError
from node.membership.identity import Identity
from node.membership.machines import MachineTable
from node.membership.session import Session, SessionLost
from node.nursery import service_nursery

if TYPE_CHECKING:
    from node.membership.overlay import Overlay
    from protocol.membership.entries import Member
from protocol import (
    HandshakeComplete,
    HandshakeFailed,
    MessageReceived,
    PeerConnection,
    PeerRejected,
    ProtocolError,
    RejectCode,
)
from protocol.codec import Message
from protocol.messages import DialBack, DialBackResult, Goodbye, Heartbeat, Hello, Verdict
from protocol.messages import Overlay as OverlayMessage
from protocol.noise import Cipher, WrongPsk
from protocol.verification import (
    HandshakeOutcome,
    LocalFacts,
    PeerFacts,
    VerificationBits,
    verify,
)
from protocol.verification import Verdict as VerifyResult

log = logging.getLogger("rendernode.peers")
V = VerificationBits
CONNECT_TIMEOUT = 1.0
DIALBACK_TIMEOUT = 2.0
FAILED_VERIFY_BACKOFF = 30.0  #: a peer that failed verification is retried this rarely (it redials us once fixed)
IDLE_CLOSE = 15.0  #: a session nobody holds is closed after this long (with an overlay)
SESSION_WAIT = 3.0  #: how long ``session()`` waits for a dial it started
RELAY_ONLY = 30.0  #: seconds a member no dial reached is sent to by relay only
REFUSED_LOG_EVERY = 10.0  #: seconds between two warnings about refused connections
POLITE_DELAY = 0.3  #: the larger UUID of a pair waits this long before its first dial, so usually one side dials
Handler = Callable[[Session, Message, int], Awaitable[None]]
InlineHandler = Callable[[Session, Message, int], None]
DeliveryHandler = Callable[[str, Message], None]


@dataclass
class Target:
    """Something to dial: an mDNS instance or a static address."""

    key: str
    addresses: list[tuple[str, int]]
    via: str
    uuid: str = ""
    replace: str = ""  #: uuidOfMachineToOverwrite, for static adds
    removed: bool = False
    wake: trio.Event = field(default_factory=trio.Event)

    @property
    def row_id(self) -> str:
        """The machine-table key: the UUID once known, else ``static:HOST:PORT``."""
        if self.uuid:
            return self.uuid
        host, port = self.addresses[0]
        return f"static:{host}:{port}"


class Peers:
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
        self.bulk_handler: Callable[[Session, int, bytes], None] | None = None  #: called by the reader
        self.overlay: Overlay | None = None  #: the farm's membership, once attached
        self.blocked: set[str] = set()  #: machines removed here: not members for this node
        self.sent_before = 0  #: records written on sessions that have ended (see ``traffic``)
        self.sessions_opened = 0
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

    def hint(self, uuid: str, addresses: list[tuple[str, int]], name: str = "") -> None:
        """mDNS saw ``uuid`` at ``addresses``: dial it unless it is us."""
        if uuid == self.ident.uuid or not addresses or uuid in self.blocked:
            return
        row = self.table.get(uuid)
        if row is None or "mdns" not in row.via:
            self.table.update(uuid, via="mdns", name=name or (row.name if row else ""))
        if self.overlay is not None:
            self.overlay.discovered(uuid, addresses)
            return
        self._add_target(Target(key=uuid, addresses=addresses, via="mdns", uuid=uuid))

    def add_static(self, address: str, replace: str = "") -> Target:
        """AddMachine: dial ``HOST[:PORT]`` like any peer; ``replace`` names the UUID it supersedes."""
        host, port = parse_hostport(address)
        key = f"static:{host}:{port}"
        target = Target(key=key, addresses=[(host, port)], via="static", replace=replace)
        self._add_target(target)
        target = self.targets[key]
        if not target.uuid and self.table.get(target.row_id) is None:
            self.table.update(target.row_id, name=f"{host}:{port}", via="static",
                              addresses=[f"{host}:{port}"])
        return target

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

    @asynccontextmanager
    async def using(self, uuid: str, reason: str) -> AsyncIterator[Session]:
        """The session to ``uuid`` (dialed if need be), held for ``reason`` while
        the block runs; ``SessionLost`` if it cannot be had."""
        try:
            yield await self.session(uuid, hold=reason)
        finally:
            self.release(uuid, reason)

    def known_addresses(self, uuid: str) -> list[tuple[str, int]]:
        """Where ``uuid`` accepts sessions: the membership's word, else the machine table's."""
        if self.overlay is not None:
            found = self.overlay.addresses(uuid)
            if found:
                return found
        row = self.table.get(uuid)
        out = []
        for text in row.addresses if row is not None else []:
            try:
                out.append(parse_hostport(text))
            except ConfigError:
                continue
        return out

    def connect(self, uuid: str, addresses: list[tuple[str, int]] | None = None,
                on_failure: Callable[[str, bool], None] | None = None) -> None:
        """Dial ``uuid`` in the background unless a session to it is up or being
        made; ``on_failure(uuid)`` if the dial gives no session."""
        if uuid == self.ident.uuid or uuid in self.sessions:
            return
        if uuid in self._dialing:  # one dial at a time; its failure is told to every asker
            if on_failure is not None:
                self._on_dial_failure.setdefault(uuid, []).append(on_failure)
            return
        addresses = addresses or self.known_addresses(uuid)
        if uuid in self.blocked:
            addresses = []
        if not addresses or self._nursery is None:
            if on_failure is not None:
                on_failure(uuid, False)
            return
        self._dialing[uuid] = trio.Event()
        self._on_dial_failure[uuid] = [on_failure] if on_failure is not None else []
        self._nursery.start_soon(self._dial_member, uuid, addresses)

    async def _dial_member(self, uuid: str, addresses: list[tuple[str, int]]) -> None:
        outcome = "unreachable"
        try:
            target = Target(key=uuid, addresses=addresses, via="overlay", uuid=uuid)
            outcome = await self._dial_once(target)  # returns once the session (if any) ended
        finally:
            done = self._dialing.pop(uuid, None)
            if done is not None:
                done.set()
            callbacks = self._on_dial_failure.pop(uuid, [])
        if outcome not in ("ok", "duplicate", "self"):
            for callback in callbacks:
                callback(uuid, outcome == "nobody")

    async def session(self, uuid: str, hold: str = "") -> Session:
        """The session to ``uuid``, dialed if need be (``SessionLost`` if it cannot
        be had within ``SESSION_WAIT`` s); ``hold`` it for that reason if given."""
        if hold:
            self.hold(uuid, hold)
        existing = self.sessions.get(uuid)
        if existing is not None:
            return existing
        self.connect(uuid)
        dialing = self._dialing.get(uuid)
        if dialing is not None:
            with trio.move_on_after(SESSION_WAIT):
                await dialing.wait()
        existing = self.sessions.get(uuid)
        if existing is None:
            raise SessionLost(f"cannot reach {uuid}")
        return existing

    async def deliver_to(self, uuid: str, message: Message, hold: str = "") -> str:
        """Send ``message`` to ``uuid``: on a session (dialed if need be), or, where
        none can be had, relayed through the overlay by the nodes between (the
        receiver's ``register_delivery`` handler gets it).  "direct" or "relayed";
        ``SessionLost`` if neither is possible.  A member that could not be dialed
        is reached by relay alone for ``RELAY_ONLY`` s, so each message does not
        wait out a dial first."""
        now = trio.current_time()
        if uuid in self.sessions or now - self._relay_only.get(uuid, -RELAY_ONLY) >= RELAY_ONLY:
            try:
                session = await self.session(uuid, hold=hold)
                await session.send(message)
                self._relay_only.pop(uuid, None)
                return "direct"
            except SessionLost:
                self._relay_only[uuid] = trio.current_time()
        if self.overlay is None or not self.overlay.is_online(uuid) or uuid in self.blocked:
            raise SessionLost(f"cannot reach {uuid}")
        self.overlay.send_to(uuid, message)
        return "relayed"

    def member_changed(self, member: Member) -> None:
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
        online = uuid in self.sessions or (self.overlay is not None and self.overlay.is_online(uuid))
        if facts is not None:
            self.facts[uuid] = dataclasses.replace(facts, online=online)
            self._set_bits(uuid)
        else:
            self.table.update(uuid, online=online,
                              bits=int(V.VERIFICATIONBIT_ONLINE if online else V.VERIFICATIONBIT_NONE))
        if online != was_online:
            self.table.log(uuid, "online" if online else f"offline: {member.state.name.lower()} in the farm")
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

    def _add_target(self, target: Target) -> None:
        existing = self.targets.get(target.key)
        if existing is not None:
            if target.addresses != existing.addresses:
                existing.addresses = target.addresses
                existing.wake.set()
            if target.replace:
                existing.replace = target.replace
            return
        self.targets[target.key] = target
        if self._nursery is not None:
            self._nursery.start_soon(self._dial_loop, target)

    async def _dial_loop(self, target: Target) -> None:
        backoff = 0.05
        if target.uuid and target.uuid < self.ident.uuid:
            with trio.move_on_after(POLITE_DELAY):  # the peer dials us first; skip if it did
                await target.wake.wait()
        while not target.removed:
            if self.overlay is not None and target.uuid:
                # a contact: the overlay decides from here on whom to keep sessions with
                self.overlay.discovered(target.uuid, target.addresses)
                return
            session = self.sessions.get(target.uuid) if target.uuid else None
            if session is not None:
                await _first_of(session.closed, self._attached)
                backoff = 0.05
                continue
            outcome = await self._dial_once(target)
            if target.removed:
                return
            if outcome == "self":
                self.targets.pop(target.key, None)
                return
            if outcome == "ok":
                backoff = 0.05
                continue
            cap = FAILED_VERIFY_BACKOFF if outcome == "refused" else self.prefs.reconnect_max
            with trio.move_on_after(backoff):
                await target.wake.wait()
            target.wake = trio.Event()
            backoff = min(backoff * 2, cap)

    async def _dial_once(self, target: Target) -> str:
        """Dial ``target`` and serve the session until it ends: "ok", "duplicate",
        "self", "refused" (its handshake or verification failed), "unreachable", or
        "nobody" (every address refused the connection: no process listens)."""
        refusals = 0
        for host, port in list(target.addresses):
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                log.debug("dial %s:%d failed: %s", host, port, exc)
                refusals += _refused_connection(exc)
                continue
            return await self._serve_stream(stream, initiator=True, target=target)
        self._record_failure(target.row_id, HandshakeOutcome.UNREACHABLE,
                             "cannot connect to " + ", ".join(f"{h}:{p}" for h, p in target.addresses))
        return "nobody" if refusals == len(target.addresses) else "unreachable"

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            ip = str(stream.socket.getpeername()[0])
        except OSError:
            await stream.aclose()
            return
        per_address = max(1, self.prefs.max_handshakes // 4)
        if self._handshakes.value == 0 or self._accepting[ip] >= per_address:
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= REFUSED_LOG_EVERY:  # an attacker sets the rate, not the log
                log.warning("refused %d connections (from %s last): %d handshakes in flight, at most %d "
                            "from one address", self._refused, ip, self.prefs.max_handshakes - self._handshakes.value,
                            per_address)
                self._refused, self._refused_logged = 0, now
            await stream.aclose()
            return
        self._accepting[ip] += 1
        try:
            await self._serve_stream(stream, initiator=False, target=None)
        finally:
            self._accepting[ip] -= 1
            if self._accepting[ip] <= 0:
                del self._accepting[ip]

    async def _serve_stream(self, stream: trio.SocketStream, *, initiator: bool,
                            target: Target | None) -> str:
        try:
            remote_ip = str(stream.socket.getpeername()[0])
        except OSError:
            await stream.aclose()
            return "unreachable"
        conn = PeerConnection(
            initiator=initiator, static_key=self.ident.key, psk=self.psk, farm_id=self.prefs.farm,
            hint={"uuid": self.ident.uuid, "name": self.prefs.name}, cipher=self._cipher,
        )
        session = Session(stream, conn, initiator=initiator, remote_ip=remote_ip)
        try:
            async with self._handshakes:
                outcome = await self._establish(session, target)
            if outcome != "ok":
                return outcome
            await self._run_session(session)
            return "ok"
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()

    async def _establish(self, s: Session, target: Target | None) -> str:
        conn = s.conn
        row_hint = target.row_id if target else ""
        try:
            with trio.fail_after(self.prefs.handshake_timeout):
                if s.initiator:
                    conn.start()
                    await s.flush()
                event = await s.next_event()
                if not isinstance(event, HandshakeComplete):
                    raise HandshakeFailed("handshake did not complete")
                row_hint = self._row_for_key(event.remote_static.hex(), event.hint, row_hint)
                hello_out = self.hello()
                if target is not None and target.via == "static":
                    s.added = True
                    hello_out = dataclasses.replace(hello_out, added=True)
                await s.send(hello_out)
                event = await s.next_event()
                if not isinstance(event, MessageReceived) or not isinstance(event.message, Hello):
                    raise HandshakeFailed("peer sent no Hello")
                hello = event.message
                if hello.uuid == self.ident.uuid:
                    return "self"
                facts, ours = self._verify_hello(hello, event_static=conn.remote_static or b"")
                await s.send(Verdict(ours.verified, int(ours.bits), ours.reason))
                event = await s.next_event()
                if not isinstance(event, MessageReceived) or not isinstance(event.message, Verdict):
                    raise HandshakeFailed("peer sent no Verdict")
                theirs = event.message
        except (WrongPsk, PeerRejected) as exc:
            key = (exc.remote_static if isinstance(exc, PeerRejected) else conn.remote_static) or b""
            row = self._row_for_key(key.hex(), conn.remote_hint, row_hint)
            if isinstance(exc, PeerRejected) and exc.code is not RejectCode.WRONG_TOKEN:
                self._record_failure(row, HandshakeOutcome.FAILED, exc.reason)
            else:
                self._record_failure(row, HandshakeOutcome.WRONG_TOKEN, exc.reason)
            return "refused"
        except (ProtocolError, trio.TooSlowError) as exc:
            reason = getattr(exc, "reason", "handshake timed out")
            if not s.initiator and conn.remote_static is None and not conn.remote_hint:
                log.debug("connection from %s ended before a handshake: %s", s.remote_ip, reason)
                return "refused"
            log.info("handshake with %s failed: %s", s.remote_ip, reason)
            if row_hint or conn.remote_hint.get("uuid"):
                row = self._row_for_key((conn.remote_static or b"").hex(), conn.remote_hint, row_hint)
                self._record_failure(row, HandshakeOutcome.FAILED, str(reason))
            return "refused"
        except SessionLost as exc:
            log.debug("connection with %s lost during handshake: %s", s.remote_ip, exc.reason)
            return "unreachable"
        s.hello, s.uuid = hello, hello.uuid
        self._adopt(hello, s, target)
        facts = dataclasses.replace(facts, peer_verified_us=theirs.ok)
        if not ours.verified or not theirs.ok:
            reason = ours.reason if not ours.verified else f"it refused us: {theirs.reason}"
            # no session follows this one: ONLINE only if another, verified one is up
            self.facts[hello.uuid] = dataclasses.replace(facts, online=hello.uuid in self.sessions)
            self._set_bits(hello.uuid, reason=reason)
            self.table.log(hello.uuid, f"verification failed: {reason}")
            await self._goodbye(s, "verification failed")
            return "refused"
        s.begin()  # sends are queued from here on: the services may send before run() starts
        return "ok" if self._register(s, facts) else "duplicate"

    def _row_for_key(self, key_hex: str, hint: dict[str, Any], fallback: str) -> str:
        row = self.table.by_key(key_hex) if key_hex else None
        if row is not None:
            return row.uuid
        uuid = hint.get("uuid")
        if isinstance(uuid, str) and 0 < len(uuid) <= 64 and uuid != self.ident.uuid:
            return fallback if fallback.startswith("static:") and not self.table.get(uuid) else uuid
        return fallback

    def _verify_hello(self, hello: Hello, event_static: bytes) -> tuple[PeerFacts, VerifyResult]:
        """The facts this handshake showed, and the verdict on them (stored by the
        caller once the handshake ends: a second handshake with a peer whose
        session is up must not overwrite that session's facts)."""
        row = self.table.get(hello.uuid)
        pinned = bytes.fromhex(row.pinned_key) if row and row.pinned_key else None
        facts = PeerFacts(
            outcome=HandshakeOutcome.OK, online=True, build_id=hello.build_id, arch=hello.arch,
            capabilities=tuple(hello.capabilities), sharing=hello.sharing,
            remote_static=event_static, pinned_static=pinned,
            was_verified=bool(row and row.was_verified),
        )
        return facts, verify(self.local, facts)

    def _adopt(self, hello: Hello, s: Session, target: Target | None) -> None:
        """Record what the Hello says in the machine table."""
        addresses = [a.replace("0.0.0.0", s.remote_ip) for a in hello.listen] or [s.remote_ip]
        changes: dict[str, Any] = dict(
            name=hello.name, addresses=addresses, build_id=hello.build_id, arch=hello.arch,
            capabilities=dict(hello.capabilities), server_priority=hello.server_priority,
            term=hello.term, mac=hello.mac,
        )
        row = self.table.get(hello.uuid)
        if row is None or not row.pinned_key:
            changes["pinned_key"] = (s.conn.remote_static or b"").hex()
        via = target.via if target is not None and target.via != "overlay" else None
        self.table.update(hello.uuid, via=via, **changes)
        if target is not None and not target.uuid:
            synthetic = target.row_id
            target.uuid = hello.uuid
            if synthetic != hello.uuid:
                self.table.remove(synthetic)
            if target.replace and target.replace != hello.uuid:
                self.table.remove(target.replace)
                self.table.log(hello.uuid, f"replaces machine {target.replace}")

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
        self.table.log(uuid, f"online, verified ({s.remote_ip})" if self.overlay is None
                       else f"session up, verified ({s.remote_ip})")
        if self.overlay is not None:
            self.overlay.connected(s)
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

    def _set_bits(self, uuid: str, reason: str | None = None) -> None:
        facts = self.facts.get(uuid)
        if facts is None:
            return
        verdict = verify(self.local, facts)
        changes: dict[str, Any] = {"bits": int(verdict.bits), "online": facts.online}
        changes["reason"] = verdict.reason if reason is None else (reason or verdict.reason if not verdict.verified else "")
        self.table.update(uuid, **changes)

    def _record_failure(self, row_id: str, outcome: HandshakeOutcome, reason: str) -> None:
        if not row_id or row_id in self.sessions:
            return
        row = self.table.get(row_id)
        if row is None:
            # a UUID only the failed handshake's unauthenticated hint named: no row for it,
            # or any stranger could fill the machine table (rows of machines this node
            # dialed or heard of exist already)
            log.debug("handshake with unlisted %s failed: %s", row_id, reason)
            return
        facts = PeerFacts(outcome=outcome, was_verified=bool(row and row.was_verified))
        previous = self.facts.get(row_id)
        self.facts[row_id] = facts
        self._set_bits(row_id, reason=reason)
        if previous is None or previous.outcome is not outcome:
            self.table.log(row_id, f"{outcome.value}: {reason}")

    async def _goodbye(self, s: Session, reason: str) -> None:
        with trio.move_on_after(0.5):
            try:
                await s.send(Goodbye(reason))
                await s.drain()
            except SessionLost:
                pass
        await s.aclose()

    # -- a live session --------------------------------------------------------

    async def _run_session(self, s: Session) -> None:
        window = self.prefs.heartbeat_interval * self.prefs.heartbeat_misses
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, s, self._heartbeats(s))
                if s.initiator:  # a peer that dialed us has shown it can reach us
                    nursery.start_soon(self._guard, s, s.send(DialBack(addresses=self.advertised)))

                def inline(session: Session, msg: Message, req_id: int) -> bool:
                    return self._inline(session, msg, req_id, nursery)

                reason = await s.run(window=window, dispatch=self._dispatch, inline=inline,
                                     bulk=self.bulk_handler,
                                     silent=f"missed {self.prefs.heartbeat_misses} heartbeats")
                nursery.cancel_scope.cancel()
            if s.protocol_error:
                log.warning("session with %s (%s) failed: %s", s.uuid, s.remote_ip, reason)
        finally:
            s.closed.set()
            if self.sessions.get(s.uuid) is s:
                self.sent_before += s.records_sent
                self.received_before += s.messages_received
                del self.sessions[s.uuid]
                self._unheld_since.pop(s.uuid, None)
                overlay = self.overlay
                facts = self.facts.get(s.uuid)
                if facts is not None:
                    online = overlay is not None and overlay.is_online(s.uuid)
                    self.facts[s.uuid] = dataclasses.replace(facts, online=online)
                    self._set_bits(s.uuid)
                if overlay is None:
                    self.table.log(s.uuid, f"offline: {s.lost_reason or 'closed'}")
                else:
                    self.table.log(s.uuid, f"session closed: {s.lost_reason or 'closed'}")
                    overlay.disconnected(s)
                for callback in self.on_change:
                    callback()

    async def _guard(self, s: Session, work: Awaitable[None]) -> None:
        """Run a session's side task; if the session breaks, end the session."""
        try:
            await work
        except (SessionLost, ProtocolError) as exc:
            s.end(exc.reason, "closed")

    def _inline(self, s: Session, msg: Message, req_id: int, nursery: trio.Nursery) -> bool:
        """What the reader handles itself: dial-back and the inline handlers."""
        if isinstance(msg, DialBack):
            nursery.start_soon(self._guard, s, self._answer_dialback(s, msg, req_id))
            return True
        if isinstance(msg, DialBackResult):
            self._on_dialback_result(s, msg)
            return True
        handler = self._inline_handlers.get(type(msg))
        if handler is None:
            return False
        handler(s, msg, req_id)
        return True

    async def _dispatch(self, s: Session, msg: Message, req_id: int) -> None:
        handler = self._handlers.get(type(msg))
        if handler is not None:
            await handler(s, msg, req_id)

    async def _heartbeats(self, s: Session) -> None:
        interval = self.prefs.heartbeat_interval
        wall = _wall_offset()
        seq = 0
        while True:
            if trio.current_time() - s.last_write >= interval * 0.9:  # keepalive: only when idle
                info = self.heartbeat_info()
                await s.send(Heartbeat(seq=seq, term=int(info.get("term", 0)),
                                       server=str(info.get("server", "")), busy=bool(info.get("busy", False))))
                seq += 1
            if wall is None:
                await trio.sleep(interval)
            else:  # the next wall-clock multiple of the interval: a gap <= interval
                await trio.sleep_until(((trio.current_time() + wall) // interval + 1) * interval - wall)

    async def _answer_dialback(self, s: Session, msg: DialBack, req_id: int) -> None:
        result = DialBackResult(reachable=False, reason="no address accepted a connection")
        for text in msg.addresses[:8]:
            try:
                host, port = parse_hostport(text)
            except ConfigError:
                continue
            if host in ("0.0.0.0", "::"):
                host = s.remote_ip
            try:
                with trio.fail_after(DIALBACK_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
                await stream.aclose()
            except (OSError, trio.TooSlowError):
                continue
            result = DialBackResult(reachable=True, address=f"{host}:{port}")
            break
        await s.send(result, req_id)

    def _on_dialback_result(self, s: Session, msg: DialBackResult) -> None:
        facts = self.facts.get(s.uuid)
        if facts is None or facts.peer_cannot_dial_us == (not msg.reachable):
            return
        self.facts[s.uuid] = dataclasses.replace(facts, peer_cannot_dial_us=not msg.reachable)
        self._set_bits(s.uuid)
        if not msg.reachable:
            self.table.log(s.uuid, f"it cannot dial this node: {msg.reason}")


def _refused_connection(exc: BaseException) -> bool:
    """True if a connect failed because nothing listens there (every attempt refused)."""
    causes = getattr(exc.__cause__, "exceptions", None)
    if causes:
        return all(isinstance(c, ConnectionRefusedError) for c in causes)
    return isinstance(exc, ConnectionRefusedError)


async def _first_of(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


def _wall_offset() -> float | None:
    """``time.time() - trio.current_time()``, for heartbeats on a wall-clock grid.

    On the grid, the beats of all sessions (and, with synchronised clocks, of
    all peers) fall together, so one wake-up serves them all instead of one
    each: 32 idle nodes on one host use 1.0 % CPU each instead of 2.7 %
    (bench/discovery.py).  Under trio's MockClock (tests) beats keep the plain
    interval, since exact virtual time would make both ends of a session beat,
    and time out, at the same instant.
    """
    testing = sys.modules.get("trio.testing")  # no MockClock without it
    if testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock):
        return None
    return time.time() - trio.current_time()


def advertised_addresses(host: str, port: int, interfaces: list[str]) -> list[str]:
    """Concrete HOST:PORT strings peers can dial us on."""
    if host not in ("0.0.0.0", "*", "::", ""):
        return [f"{host}:{port}"]
    hosts = [i for i in interfaces if i]
    if not hosts:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    hosts.append(ip.ip)
    return [f"{h}:{port}" for h in (hosts or ["127.0.0.1"])]

