"""The waits of tests/harness/waiting.py: they return once the state holds and
fail naming what did not happen."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from node.errors import DaemonNotRunning
from tests.harness.waiting import poll_until, wait_until


async def test_wait_until_returns_the_seconds_it_took(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    took = await wait_until(lambda: trio.current_time() - start >= 3, 10, "three seconds")
    assert 3 <= took < 3.1


async def test_wait_until_awaits_an_async_predicate(autojump_clock: trio.testing.MockClock) -> None:
    looks: list[float] = []

    async def later() -> bool:
        looks.append(trio.current_time())
        return len(looks) == 3

    await wait_until(later, 1, "the third look")
    assert len(looks) == 3


async def test_wait_until_fails_naming_what_and_the_detail(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(AssertionError, match=r"not within 2 s: the sky falls; still up"):
        await wait_until(lambda: False, 2, "the sky falls", lambda: "still up")


async def test_an_outer_bound_cancels_and_the_wait_says_what_it_waited_for(
        autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(trio.TooSlowError), trio.fail_after(1):
        await wait_until(lambda: False, math.inf, "the sky falls", lambda: "still up")
    assert "gave up waiting for the sky falls: still up" in capsys.readouterr().out


def test_poll_until_takes_a_detail_with_the_answer() -> None:
    looks = iter([(False, "one"), (True, "two")])
    assert poll_until(lambda: next(looks), 1, "two looks", every=0.001) < 1
    with pytest.raises(AssertionError, match=r"^never: not so after .* s; last seen: nope$"):
        poll_until(lambda: (False, "nope"), 0.05, "never", every=0.01)


def test_poll_until_takes_a_plain_check_and_counts_a_silent_daemon_as_not_done() -> None:
    def silent() -> bool:
        raise DaemonNotRunning("no daemon")

    with pytest.raises(AssertionError, match="last seen: control socket error: no daemon"):
        poll_until(silent, 0.05, "an answer", every=0.01)
    with pytest.raises(AssertionError, match="last seen: 42"):
        poll_until(lambda: False, 0.05, "never", lambda: 42, every=0.01)
    with pytest.raises(DaemonNotRunning):
        poll_until(silent, 0.05, "an answer", every=0.01, ignore=())
