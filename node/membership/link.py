"""A live session: ``Session.run`` (node/membership/session.py, which says who
owns the stream) with this node's keepalives (a heartbeat only on a session
quiet for ``heartbeat_interval``; the liveness window is
``heartbeat_interval * heartbeat_misses``), the answer to a peer's dial-back,
and the dispatch of messages to the handlers the services registered.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Awaitable

import trio

from node.config import parse_hostport
from node.errors import ConfigError
from node.membership.peerstate import (
    DIALBACK_TIMEOUT,
    PeersState,
    log,
)
from node.membership.session import Session, SessionLost
from protocol import (
    ProtocolError,
)
from protocol.codec import Message
from protocol.messages import DialBack, DialBackResult, Goodbye, Heartbeat


class Links(PeersState):
    """Serving live sessions (a part of ``Peers``)."""

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
                                     bulk=self.bulk_handler, health=self.health,
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
                    self.facts[s.uuid] = dataclasses.replace(facts, online=self._counts_online(s.uuid))
                    self._set_bits(s.uuid)
                if overlay is None:
                    self.table.log(s.uuid, f"offline: {s.lost_reason or 'closed'}")
                else:
                    self.table.log(s.uuid, f"session closed: {s.lost_reason or 'closed'}")
                    overlay.disconnected(s)
                    if not self.sessions:
                        self._members_recounted("this node has no session to any peer")
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
            # keepalive unless the session wrote in the last half interval: the ticks are
            # an interval apart, so the peer never waits more than 1.5 intervals (a
            # window of 2 keeps half an interval for a late wake-up of a loaded machine)
            if trio.current_time() - s.last_write >= interval / 2:
                info = self.heartbeat_info()
                await s.send(Heartbeat(seq=seq, term=int(info.get("term", 0)),
                                       server=str(info.get("server", "")), busy=bool(info.get("busy", False))))
                seq += 1
            began = trio.current_time()
            if wall is None:
                due = began + interval
            else:  # the next wall-clock multiple of the interval: a gap <= interval
                due = ((began + wall) // interval + 1) * interval - wall
            await trio.sleep_until(due)
            self.health.woke_for(due, began, trio.current_time())

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

    async def _goodbye(self, s: Session, reason: str) -> None:
        with trio.move_on_after(0.5):
            try:
                await s.send(Goodbye(reason))
                await s.drain()
            except SessionLost:
                pass
        await s.aclose()


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
