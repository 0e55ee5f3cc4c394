"""node/membership/health.py: how late this node's loop runs stretches its
liveness windows, and a starved node does not act on a suspicion alone.  The
sessions run over in-memory streams under trio's MockClock, and a starved loop
is a ``MockClock.jump`` taken by a task that does not yield (every timer of the
process then wakes late at once, as after a freeze or a starved CPU)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from node.membership.health import DECAY, LAG_WINDOW, LATE, SCORE_MAX, Health
from node.membership.overlay import Overlay
from node.membership.session import Session
from protocol.codec import Message
from protocol.membership.entries import Member, Meta, State
from protocol.messages import Heartbeat
from tests.node.test_session import sessions_over


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_stalls_again_and_again_raise_the_factor_and_it_falls_back_in_time() -> None:
    health = Health()
    health.woke(LATE * 0.9, 10.0)  # a little late: nothing
    assert (health.factor(10.0), health.degraded(10.0), health.stalls) == (1.0, False, 0)
    health.woke(LATE * 2.5, 11.0)  # a stall: one alone changes nothing
    health.woke(LATE * 2.4, 11.0 + LATE / 2)  # the same stall, another timer
    assert (health.factor(11.5), health.degraded(11.5), health.stalls) == (1.0, False, 1)
    health.woke(LATE, 12.0)  # starved again
    assert (health.factor(12.0), health.degraded(12.0), health.stalls) == (2.0, True, 2)
    health.woke(LATE, 13.0)
    assert health.factor(13.0) == 3.0
    assert health.factor(13.0 + DECAY - 0.01) == 3.0
    assert health.factor(13.0 + DECAY) == 2.0
    assert health.factor(13.0 + 2 * DECAY) == 1.0 and not health.degraded(13.0 + 2 * DECAY)
    for second in range(100, 120):  # an overloaded machine, a stall a second: capped
        health.woke(LATE * 3, float(second))
    assert health.factor(119.0) == SCORE_MAX
    assert health.status(119.0) == {"factor": SCORE_MAX, "stalls": 23, "worst_late": LATE * 3,
                                    "lag": LATE * 3}
    assert health.factor(119.0 + SCORE_MAX * DECAY) == 1.0


def test_lag_is_the_latest_wake_of_the_last_ten_seconds_that_came_late_the_most() -> None:
    health = Health()
    assert health.lag(0.0) == 0.0
    health.woke(0.5, 10.0)
    assert health.lag(10.0) == 0.5
    health.woke(2.0, 12.0)  # a stall
    health.woke(0.3, 15.0)  # behind a little since
    assert health.lag(15.0) == 2.0
    assert health.lag(12.0 + LAG_WINDOW - 0.01) == 2.0
    assert health.lag(12.0 + LAG_WINDOW + 0.5) == 0.3  # the stall is over ten seconds ago
    assert health.lag(15.0 + LAG_WINDOW + 0.5) == 0.0
    health.woke(0.0, 30.0)  # on time
    assert health.lag(30.0) == 0.0 and health.status(30.0)["lag"] == 0.0


def test_a_timer_whose_deadline_had_passed_before_it_waited_is_late_only_from_then() -> None:
    health = Health()
    assert health.woke_for(due=5.0, began=20.0, now=20.1) == pytest.approx(0.1)  # no stall
    assert health.stalls == 0
    assert health.woke_for(due=21.0, began=20.0, now=23.0) == pytest.approx(2.0)
    assert health.stalls == 1


async def memory_pair() -> tuple[Session, Session]:
    """Two sessions over an in-memory stream pair, handshake done."""
    return await sessions_over(*trio.testing.memory_stream_pair())


async def _ignore(session: Session, msg: Message, req_id: int) -> None:
    return None


def _no_inline(session: Session, msg: Message, req_id: int) -> bool:
    return False


async def test_a_silent_peer_ends_the_session_after_the_window_stretched_by_the_factor(
        mock_clock: trio.testing.MockClock) -> None:
    for stalls, ends_after in ((0, 1.0), (1, 1.0), (3, 3.0)):
        a, b = await memory_pair()  # b never runs: it reads and sends nothing
        health = Health()
        for n in range(stalls):
            health.woke(LATE, trio.current_time() + n * LATE)
        await trio.sleep(stalls * LATE)
        started = trio.current_time()
        reason = await a.run(window=1.0, dispatch=_ignore, inline=_no_inline, silent="silent", health=health)
        assert reason == "silent" and a.end_kind == "timeout"
        assert trio.current_time() - started == pytest.approx(ends_after, abs=0.01)
        await b.aclose()


async def test_a_freeze_longer_than_the_window_keeps_a_session_to_a_live_peer_only_with_health(
        mock_clock: trio.testing.MockClock) -> None:
    """Both ends beat every 0.3 s in a 1 s window; then the process freezes for
    2 s (every timer wakes 2 s late, in one batch).  A watchdog that woke late
    knows the silence was its own: with ``Health`` the session lives on; a
    session without it ends at once, before the reader has read a byte."""
    outcomes: dict[str, str] = {}
    for name, health in (("with health", Health()), ("without", None)):
        a, b = await memory_pair()

        async def beat(s: Session) -> None:
            seq = 0
            while True:
                await s.send(Heartbeat(seq=seq))
                seq += 1
                await trio.sleep(0.3)

        async def serve(s: Session, h: Health | None, key: str) -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(beat, s)
                outcomes[key] = await s.run(window=1.0, dispatch=_ignore, inline=_no_inline,
                                                         silent="silent", health=h)
                inner.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, a, health, f"{name} a")
            nursery.start_soon(serve, b, Health(), f"{name} b")
            await trio.sleep(1.05)
            mock_clock.jump(2.0)  # frozen: no task runs while the clock moves (1.15 s past a's deadline)
            await trio.sleep(3.0)
            outcomes.setdefault(f"{name} a", "alive")
            a.end("test over")
            b.end("test over")
    assert outcomes["with health a"] == "test over", outcomes
    assert outcomes["without a"] == "silent", outcomes


async def test_a_starved_node_counts_a_suspect_online_until_the_farm_holds_it_dead(tmp_path: Path) -> None:
    health = Health()
    peers = SimpleNamespace(ident=SimpleNamespace(uuid="me"), sessions={}, health=health)
    overlay = Overlay(peers, str(tmp_path), meta=Meta)  # type: ignore[arg-type]
    alive, suspect, dead = (Member(u, 1, s) for u, s in (("a", State.ALIVE), ("s", State.SUSPECT),
                                                           ("d", State.DEAD)))
    # healthy, no session at all (cut off): nobody counts; a suspect with no session does not either
    assert [overlay._counts(e) for e in (alive, suspect, dead)] == [False, False, False]
    peers.sessions["a"] = object()
    assert [overlay._counts(e) for e in (alive, suspect, dead)] == [True, False, False]
    health.woke(LATE, trio.current_time())  # one stall: nothing changes
    assert [overlay._counts(e) for e in (alive, suspect, dead)] == [True, False, False]
    health.woke(LATE, trio.current_time() + LATE)  # starved again: what it lost says more of it than of them
    assert [overlay._counts(e) for e in (alive, suspect, dead)] == [True, True, False]
    peers.sessions.clear()
    assert [overlay._counts(e) for e in (alive, suspect, dead)] == [True, True, False]

