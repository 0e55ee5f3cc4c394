"""Dialing: the targets mDNS (``hint``) and static peers (``add_static``) name,
each with one dial loop with capped backoff until the farm's overlay takes
over (it then only needs to have met a member once); sessions on demand
(``connect``, ``session``, ``using``) that the overlay, the scheduler, the
worker, the swarm and the results ask for; ``deliver_to``, which falls back
to the overlay's relay where no session can be had; and the listener's
accept, with at most ``max_handshakes`` in handshake at once and a quarter of
them from one address.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from node.config import parse_hostport
from node.errors import ConfigError
from node.membership.peerstate import (
    CONNECT_TIMEOUT,
    FAILED_VERIFY_BACKOFF,
    POLITE_DELAY,
    REFUSED_LOG_EVERY,
    RELAY_ONLY,
    SESSION_WAIT,
    DialOutcome,
    PeersState,
    Target,
    log,
)
from node.membership.session import Session, SessionLost
from protocol.codec import Message
from protocol.verification import HandshakeOutcome


class Dialing(PeersState):
    """Targets, dials and sessions on demand (a part of ``Peers``)."""

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
        outcome = DialOutcome.UNREACHABLE
        try:
            target = Target(key=uuid, addresses=addresses, via="overlay", uuid=uuid)
            outcome = await self._dial_once(target)  # returns once the session (if any) ended
        finally:
            done = self._dialing.pop(uuid, None)
            if done is not None:
                done.set()
            callbacks = self._on_dial_failure.pop(uuid, [])
        if outcome not in (DialOutcome.OK, DialOutcome.DUPLICATE, DialOutcome.SELF):
            for callback in callbacks:
                callback(uuid, outcome is DialOutcome.NOBODY)

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

    @asynccontextmanager
    async def using(self, uuid: str, reason: str) -> AsyncIterator[Session]:
        """The session to ``uuid`` (dialed if need be), held for ``reason`` while
        the block runs; ``SessionLost`` if it cannot be had."""
        try:
            yield await self.session(uuid, hold=reason)
        finally:
            self.release(uuid, reason)

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
            if outcome is DialOutcome.SELF:
                self.targets.pop(target.key, None)
                return
            if outcome is DialOutcome.OK:
                backoff = 0.05
                continue
            cap = FAILED_VERIFY_BACKOFF if outcome is DialOutcome.REFUSED else self.prefs.reconnect_max
            with trio.move_on_after(backoff):
                await target.wake.wait()
            target.wake = trio.Event()
            backoff = min(backoff * 2, cap)

    async def _dial_once(self, target: Target) -> DialOutcome:
        """Dial ``target`` and serve the session until it ends; how it ended."""
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
        return DialOutcome.NOBODY if refusals == len(target.addresses) else DialOutcome.UNREACHABLE

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
        counted = True

        def handshake_over() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._accepting[ip] -= 1
                if self._accepting[ip] <= 0:
                    del self._accepting[ip]

        try:
            await self._serve_stream(stream, initiator=False, target=None, handshake_over=handshake_over)
        finally:
            handshake_over()


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
