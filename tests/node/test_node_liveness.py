"""Two ``Peers`` services joined by an in-memory stream, on trio's MockClock
(``autojump_clock``):
heartbeat liveness and what a peer that fails verification may exchange, with
exact timing and no real sleeping."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node import capabilities
from node.db import Database
from node.membership.identity import load_or_create
from node.membership.machines import MachineTable
from node.membership.peers import Peers
from node.membership.peerstate import DialOutcome
from node.membership.session import Session
from protocol import ConnectionClosed, HandshakeComplete, derive_psk
from protocol.messages import DialBack, DialBackResult, Goodbye, Heartbeat, Hello, Verdict
from tests.harness.nodes import V, node_prefs

INTERVAL = 0.5
MISSES = 3
WINDOW = INTERVAL * MISSES


class _PeerName:
    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 5401)


class FreezableStream(trio.abc.Stream):
    """A memory stream that can be frozen like a SIGSTOPped process: while
    frozen its owner neither receives nor sends anything."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.socket = _PeerName()
        self._thawed = trio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._thawed.wait()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        await self._thawed.wait()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Side:
    peers: Peers
    db: Database
    outcome: DialOutcome | None = None

    @property
    def uuid(self) -> str:
        return self.peers.ident.uuid

    def bits(self, uuid: str) -> V:
        row = self.peers.table.get(uuid)
        return V(row.bits) if row is not None else V.VERIFICATIONBIT_NONE


@pytest.fixture
def make_side(tmp_path: Path) -> Iterator[Any]:
    dbs: list[Database] = []

    def make(name: str, token: bytes, build: str = "test-build", interval: float = INTERVAL,
             misses: int = MISSES) -> Side:
        prefs = node_prefs(tmp_path, name, heartbeat_interval=interval, heartbeat_misses=misses,
                           mdns=False)
        ident = load_or_create(prefs.state_dir)
        db = Database(prefs.state_dir)
        dbs.append(db)
        peers = Peers(prefs, ident, MachineTable(db), derive_psk(token, prefs.farm), build,
                      capabilities.arch(), {"builtin": "test"})
        return Side(peers, db)

    yield make
    for db in dbs:
        db.close()


async def serve(side: Side, stream: FreezableStream, initiator: bool) -> None:
    side.outcome = await side.peers._serve_stream(stream, initiator=initiator, target=None)  # type: ignore[arg-type]


def join(nursery: trio.Nursery, a: Side, b: Side) -> tuple[FreezableStream, FreezableStream]:
    """Connect ``a`` (initiator) and ``b`` over memory and run both sides."""
    left, right = trio.testing.memory_stream_pair()
    sa, sb = FreezableStream(left), FreezableStream(right)
    nursery.start_soon(serve, a, sa, True)
    nursery.start_soon(serve, b, sb, False)
    return sa, sb


async def until(predicate: Any) -> None:
    """Wait (in mock time) until the peers' state satisfies ``predicate``."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_heartbeats_keep_a_quiet_session_online_indefinitely(make_side: Any, autojump_clock: trio.testing.MockClock) -> None:
    token = secrets.token_urlsafe(32).encode()
    a, b = make_side("hbA", token), make_side("hbB", token)
    beats: list[int] = []

    def on_heartbeat(session: Session, msg: Any, req_id: int) -> None:
        beats.append(msg.seq)

    a.peers.register_inline(Heartbeat, on_heartbeat)
    async with trio.open_nursery() as nursery:
        join(nursery, a, b)
        await until(lambda: b.uuid in a.peers.sessions and a.uuid in b.peers.sessions)
        session = a.peers.sessions[b.uuid]
        start = trio.current_time()
        await trio.sleep(60)
        assert a.peers.sessions.get(b.uuid) is session
        assert a.bits(b.uuid) & (V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED) == (
            V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED)
        # one heartbeat per interval, give or take the one in flight
        assert abs(len(beats) - 60 / INTERVAL) <= 2, (len(beats), trio.current_time() - start)
        nursery.cancel_scope.cancel()


async def test_a_busy_session_is_never_quiet_longer_than_one_and_a_half_keepalive_intervals(
        make_side: Any, autojump_clock: trio.testing.MockClock) -> None:
    """Keepalives go out only on idle sessions; other traffic at any moment must
    still leave the peer half an interval of slack before its liveness window
    (the defaults: 0.75 s, 2 misses), or one late wake-up of a loaded machine
    ends a live session and the farm suspects a healthy node."""
    interval, misses = 0.75, 2
    token = secrets.token_urlsafe(32).encode()
    a = make_side("busyA", token, interval=interval, misses=misses)
    b = make_side("busyB", token, interval=interval, misses=misses)
    arrivals: list[float] = []

    def on_heartbeat(session: Session, msg: Any, req_id: int) -> None:
        arrivals.append(trio.current_time())

    b.peers.register_inline(Heartbeat, on_heartbeat)
    rng = random.Random(18)
    async with trio.open_nursery() as nursery:
        join(nursery, a, b)
        await until(lambda: b.uuid in a.peers.sessions and a.uuid in b.peers.sessions)
        session = a.peers.sessions[b.uuid]
        await trio.sleep(2 * interval)
        start = trio.current_time()
        while trio.current_time() - start < 60:  # other traffic, now and then, at any phase
            await session.send(Heartbeat(seq=1_000_000))
            await trio.sleep(rng.uniform(interval, 2 * interval))
        assert a.peers.sessions.get(b.uuid) is session
        gaps = [y - x for x, y in zip(arrivals, arrivals[1:], strict=False) if x >= start]
        assert max(gaps) <= 1.5 * interval + 0.01, max(gaps)
        nursery.cancel_scope.cancel()


async def test_a_peer_that_goes_silent_is_offline_within_the_heartbeat_window(
        make_side: Any, autojump_clock: trio.testing.MockClock) -> None:
    token = secrets.token_urlsafe(32).encode()
    a, b = make_side("quietA", token), make_side("quietB", token)
    async with trio.open_nursery() as nursery:
        _, sb = join(nursery, a, b)
        await until(lambda: b.uuid in a.peers.sessions)
        await trio.sleep(10 * INTERVAL)
        sb.freeze()  # b stops, like SIGSTOP: it neither reads nor writes
        frozen_at = trio.current_time()
        await until(lambda: b.uuid not in a.peers.sessions)
        took = trio.current_time() - frozen_at
        # a's deadline is WINDOW after the last message it got, which left b at
        # most one interval before the freeze
        assert WINDOW - INTERVAL <= took <= WINDOW + 0.05, took
        bits = a.bits(b.uuid)
        assert not bits & V.VERIFICATIONBIT_ONLINE
        assert bits & V.VERIFICATIONBIT_VERIFIED, "going quiet is not a verification failure"
        row = a.peers.table.get(b.uuid)
        assert row is not None and row.online is False
        assert any(f"missed {MISSES} heartbeats" in entry["line"]
                   for entry in a.peers.table.log_tail(b.uuid, 5))
        nursery.cancel_scope.cancel()


async def test_a_peer_failing_verification_gets_only_hello_verdict_and_goodbye(
        make_side: Any, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_urlsafe(32).encode()
    a = make_side("verA", token, build="build-1")
    b = make_side("verB", token, build="build-2")
    sent: list[type] = []
    received: list[type] = []
    real_send, real_next = Session.send, Session.next_event

    async def send(self: Session, message: Any, req_id: int = 0) -> None:
        sent.append(type(message))
        await real_send(self, message, req_id)

    async def next_event(self: Session) -> Any:
        event = await real_next(self)
        received.append(type(getattr(event, "message", event)))
        return event

    monkeypatch.setattr(Session, "send", send)
    monkeypatch.setattr(Session, "next_event", next_event)
    sessions_run: list[Peers] = []
    for side in (a, b):
        real_run = side.peers._run_session

        async def run_session(s: Session, _peers: Peers = side.peers, _real: Any = real_run) -> None:
            sessions_run.append(_peers)
            await _real(s)

        monkeypatch.setattr(side.peers, "_run_session", run_session)
    fired: list[Any] = []

    def on_heartbeat(session: Session, msg: Any, req_id: int) -> None:
        fired.append(msg)

    a.peers.register_inline(Heartbeat, on_heartbeat)
    b.peers.register_inline(Heartbeat, on_heartbeat)

    async with trio.open_nursery() as nursery:
        join(nursery, a, b)
    assert a.outcome is b.outcome is DialOutcome.REFUSED
    await trio.sleep(10)  # nothing is left running that could still send
    assert set(sent) <= {Hello, Verdict, Goodbye}, sent
    assert sent.count(Hello) == 2 and sent.count(Verdict) == 2
    # Goodbye arrives as ConnectionClosed
    assert set(received) <= {HandshakeComplete, Hello, Verdict, ConnectionClosed}, received
    assert not sessions_run and not fired
    assert not a.peers.sessions and not b.peers.sessions
    for x, y in ((a, b), (b, a)):
        bits = x.bits(y.uuid)
        assert bits & V.VERIFICATIONBIT_WRONGBUILDID
        assert not bits & (V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED)


async def test_a_verified_session_does_run_heartbeat_handlers(make_side: Any, autojump_clock: trio.testing.MockClock) -> None:
    """The positive control of the test above: the same spies do see heartbeats
    once both sides verify each other."""
    token = secrets.token_urlsafe(32).encode()
    a, b = make_side("ctlA", token), make_side("ctlB", token)
    fired: list[str] = []

    def on_heartbeat(session: Session, msg: Any, req_id: int) -> None:
        fired.append(session.uuid)

    b.peers.register_inline(Heartbeat, on_heartbeat)
    async with trio.open_nursery() as nursery:
        join(nursery, a, b)
        await until(lambda: len(fired) >= 3)
        assert set(fired) == {a.uuid}
        nursery.cancel_scope.cancel()


async def test_malformed_dialback_addresses_from_a_peer_do_not_break_the_session(
        make_side: Any, autojump_clock: trio.testing.MockClock) -> None:
    token = secrets.token_urlsafe(32).encode()
    a, b = make_side("dialA", token), make_side("dialB", token)
    results: list[DialBackResult] = []
    real = a.peers._on_dialback_result

    def on_result(s: Session, msg: DialBackResult) -> None:
        results.append(msg)
        real(s, msg)

    a.peers._on_dialback_result = on_result
    async with trio.open_nursery() as nursery:
        join(nursery, a, b)
        await until(lambda: b.uuid in a.peers.sessions and len(results) == 1)
        session = a.peers.sessions[b.uuid]
        await session.send(DialBack(addresses=["h:abc", "x" * 300 + ":1", "a..b:5", "h:\u00b2", "[::1"]))
        await until(lambda: len(results) == 2)
        assert results[1].reachable is False
        await trio.sleep(5 * INTERVAL)
        assert a.peers.sessions.get(b.uuid) is session and a.uuid in b.peers.sessions
        nursery.cancel_scope.cancel()
