"""One connection's handshake: Noise, both Hellos, verification (build, arch,
the key pinned to the peer's UUID) and both Verdicts, under
``handshake_timeout``.  A peer that fails verification gets our Verdict and a
Goodbye and nothing else; the machine table's row and bits record the
outcome (a UUID only an unauthenticated hint named gets no row).

A starved node stretches the timeout by its health factor
(node/membership/health.py), as it stretches its other timeouts: the
handshake is five messages between two loops that may each wake seconds
late.  On the 100-host bed, 5,392 handshakes timed out during one job
(each one wasted work on both sides and counted as evidence against the
peer).  The side that accepted the connection stretches it only once the
dialer proved it holds the token (the Noise handshake's third message), so a
stranger holding a connection open is dropped after ``handshake_timeout``
however busy the node is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import trio

from node.membership.peerstate import (
    DialOutcome,
    PeersState,
    Target,
    log,
)
from node.membership.session import Session, SessionLost
from protocol import (
    HandshakeComplete,
    HandshakeFailed,
    MessageReceived,
    PeerConnection,
    PeerRejected,
    ProtocolError,
    RejectCode,
)
from protocol.messages import Hello, Verdict
from protocol.noise import WrongPsk
from protocol.verification import (
    HandshakeOutcome,
    PeerFacts,
    verify,
)
from protocol.verification import Verdict as VerifyResult


class Handshakes(PeersState):
    """Handshake, verification and machine bits (a part of ``Peers``)."""

    async def _serve_stream(self, stream: trio.SocketStream, *, initiator: bool,
                            target: Target | None,
                            handshake_over: Callable[[], None] | None = None) -> DialOutcome:
        """Handshake, then run the session until it ends; ``handshake_over`` is
        called once the handshake has ended either way (the accept side's
        per-address count covers handshakes, not sessions)."""
        try:
            remote_ip = str(stream.socket.getpeername()[0])
        except OSError:
            await stream.aclose()
            return DialOutcome.UNREACHABLE
        conn = PeerConnection(
            initiator=initiator, static_key=self.ident.key, psk=self.psk, farm_id=self.prefs.farm,
            hint={"uuid": self.ident.uuid, "name": self.prefs.name}, cipher=self._cipher,
        )
        session = Session(stream, conn, initiator=initiator, remote_ip=remote_ip)
        try:
            try:
                async with self._handshakes:
                    outcome = await self._establish(session, target)
            finally:
                if handshake_over is not None:
                    handshake_over()
            if outcome is not DialOutcome.OK:
                return outcome
            await self._run_session(session)
            return DialOutcome.OK
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()

    async def _establish(self, s: Session, target: Target | None) -> DialOutcome:
        conn = s.conn
        row_hint = target.row_id if target else ""
        began = trio.current_time()
        stretched = self.prefs.handshake_timeout * self.health.factor(began)
        try:
            with trio.fail_after(stretched if s.initiator else self.prefs.handshake_timeout) as scope:
                if s.initiator:
                    conn.start()
                    await s.flush()
                event = await s.next_event()
                if not isinstance(event, HandshakeComplete):
                    raise HandshakeFailed("handshake did not complete")
                scope.deadline = max(scope.deadline, began + stretched)  # it holds the token
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
                    return DialOutcome.SELF
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
            return DialOutcome.REFUSED
        except (ProtocolError, trio.TooSlowError) as exc:
            reason = getattr(exc, "reason", "handshake timed out")
            if not s.initiator and conn.remote_static is None and not conn.remote_hint:
                log.debug("connection from %s ended before a handshake: %s", s.remote_ip, reason)
                return DialOutcome.REFUSED
            log.info("handshake with %s failed: %s", s.remote_ip, reason)
            if row_hint or conn.remote_hint.get("uuid"):
                row = self._row_for_key((conn.remote_static or b"").hex(), conn.remote_hint, row_hint)
                self._record_failure(row, HandshakeOutcome.FAILED, str(reason))
            return DialOutcome.REFUSED
        except SessionLost as exc:
            log.debug("connection with %s lost during handshake: %s", s.remote_ip, exc.reason)
            return DialOutcome.UNREACHABLE
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
            return DialOutcome.REFUSED
        s.begin()  # sends are queued from here on: the services may send before run() starts
        return DialOutcome.OK if self._register(s, facts) else DialOutcome.DUPLICATE

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
        # a dial of ours that failed says only that this node cannot reach it now, not
        # that the farm lost it (its checks decide that, and a member they find alive
        # would otherwise stay OFFLINE here, as nothing about it changes again)
        facts = PeerFacts(outcome=outcome, online=self._counts_online(row_id),
                          was_verified=bool(row and row.was_verified))
        previous = self.facts.get(row_id)
        self.facts[row_id] = facts
        self._set_bits(row_id, reason=reason)
        if previous is None or previous.outcome is not outcome:
            self.table.log(row_id, f"{outcome.value}: {reason}")
