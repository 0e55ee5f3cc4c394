"""Waiting for state a test does not own (a node's, another process's, the
kernel's): poll it, with a bound, and say what did not happen.

``wait_until`` is the one wait of the trio tests; ``poll_until`` is its
blocking twin for tests that drive daemons as processes (system tests, beds,
a browser).  Waits in a MockClock's virtual time poll with ``trio.sleep`` in
the test itself: they cost no real time and need no bound.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import trio

from node.errors import NodeError

__all__ = ["POLL", "SYNC_POLL", "poll_until", "wait_until"]

POLL = 0.02  #: seconds between two looks of ``wait_until``
SYNC_POLL = 0.1  #: seconds between two looks of ``poll_until`` (each look may be a control call)


def _say(detail: Callable[[], object] | None) -> object:
    return "" if detail is None else detail()


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], within: float, what: str,
                     detail: Callable[[], object] | None = None, *, every: float = POLL) -> float:
    """Poll ``predicate`` (plain or async) every ``every`` s until it holds and
    return the seconds that took.  After ``within`` seconds fail with an
    AssertionError naming ``what`` and ``detail()``.  (A predicate that costs
    something, a control call or a command run, is looked at less often.)

    ``within`` may be ``math.inf`` where an enclosing ``trio.fail_after`` bounds
    several steps at once; if that bound runs out first, ``what`` and
    ``detail()`` go to the test's output before the cancellation goes on.
    """
    start = trio.current_time()
    with trio.move_on_after(within) as bound:
        try:
            while True:
                held = predicate()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return trio.current_time() - start
                await trio.sleep(every)
        except trio.Cancelled:
            if not bound.cancel_called:
                print(f"gave up waiting for {what}: {_say(detail)}")
            raise
    raise AssertionError(f"not within {within} s: {what}; {_say(detail)}")


def poll_until(check: Callable[[], bool | tuple[bool, object]], within: float, what: str,
               detail: Callable[[], object] | None = None, *, since: float | None = None,
               every: float = SYNC_POLL,
               ignore: tuple[type[Exception], ...] = (NodeError,)) -> float:
    """Call ``check`` every ``every`` s until it holds; return the seconds since
    ``since`` (default: the call).  After ``within`` seconds fail with an
    AssertionError naming ``what`` and the last detail.

    ``check`` returns a bool (the detail is then ``detail()``) or a pair
    (done, detail) read in the same look.  An exception of a type in
    ``ignore`` (a daemon's control socket not answering yet) counts as not done.
    """
    start = time.monotonic() if since is None else since
    deadline = time.monotonic() + within
    seen: object = "never checked"
    while True:
        try:
            looked = check()
            if isinstance(looked, tuple):
                done, seen = looked
            else:
                done, seen = looked, None
        except ignore as exc:
            done = False
            seen = f"control socket error: {exc.reason}" if isinstance(exc, NodeError) else repr(exc)
        now = time.monotonic()
        if done:
            return now - start
        if now > deadline:
            last = _say(detail) if seen is None else seen
            raise AssertionError(f"{what}: not so after {now - start:.2f} s; last seen: {last}")
        time.sleep(every)

