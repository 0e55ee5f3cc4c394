"""This node's own health: how late its event loop runs (Lifeguard's local
health multiplier, from the wake-ups the node makes anyway).

A node starved of CPU (a machine whose cores renders and a hundred other
processes share) wakes late: its keepalives leave late, what its peers sent
waits unread in the socket, and by the time it runs, every liveness window
has passed.  Acting on that would make the node suspect its healthy peers and,
worse, take the server role for itself.  So every timer that knows when it
should have woken (the sessions' keepalives and liveness watchdogs) reports
how late it woke (the scheduler's loop too), and:

- a stall (wakes ``LATE`` seconds or more behind; every timer of the node
  reports the same stall, so those within ``LATE`` of each other count once)
  raises the score by one, up to ``SCORE_MAX``; the score falls by one every
  ``DECAY`` seconds without one.  A single freeze (a pause, a SIGSTOP)
  changes nothing after the wake that found it; a node starved again and
  again (an overloaded machine) climbs to the full factor and stays there
  while it lasts;
- ``factor()`` (1 after one stall, one more for each stall after it)
  stretches this node's liveness windows, the timeouts of its checks of
  a lost neighbour and its suspicion timers, as Lifeguard stretches its
  probe timeouts (protocol/membership/members.py says why the suspicions
  too);
- while the score is 2 or more the node is ``degraded``: it does not act on a
  suspicion alone (a suspected member stays ONLINE here until the farm holds
  it DEAD), so an overloaded farm does not elect a new server every time one
  of its nodes falls behind;
- ``lag`` is how far behind the loop runs now (the latest wake of the last
  ``LAG_WINDOW`` seconds that came late the most): a report a worker sent
  that long ago may still wait unread in a socket, so the server lets a
  lease lapse only ``lag`` seconds after its deadline
  (``node/jobs/scheduler.py``).

A healthy node, or one that stalled once, is unchanged in everything:
factor 1, suspicions acted on at once, the failover times of the system
tests (a host thawed from SIGSTOP sees a host cut the next second go
OFFLINE as fast as the others do).
"""

from __future__ import annotations

import math
from collections import deque

import trio

LATE = 1.0  #: seconds behind that say this node's loop was starved (keepalives are 0.75 s apart)
SCORE_MAX = 9  #: the factor is at most SCORE_MAX
DECAY = 10.0  #: seconds without a stall for the score to fall by one
LAG_WINDOW = 10.0  #: seconds of late wakes that ``lag`` looks back on
STALL_CATCHUP = 0.2  #: seconds a timer that woke a stall late lets the sessions read before it acts
TICK = 0.25  #: seconds between the wakes of ``run``: where a stall began, to within this


class Health:
    """Lifeguard's local health score, fed with how late this node's timers woke."""

    def __init__(self) -> None:
        self.score = 0
        self.stalls = 0  #: stalls counted, for ``rendernode status``
        self.worst = 0.0  #: the latest wake seen behind, in seconds
        self._falls_at = math.inf
        self._stalled_at = -math.inf
        self._late: deque[tuple[float, float]] = deque()  #: (when, how late) of late wakes, lately

    def woke_for(self, due: float, began: float, now: float) -> float:
        """A timer that began waiting at ``began`` for ``due`` ran at ``now``: report
        (``woke``) and return how late it ran.  A deadline already past when it
        began is no stall: it is late only from when it began."""
        late = now - max(due, began)
        self.woke(late, now)
        return late

    def woke(self, late: float, now: float) -> None:
        """A timer meant for ``now - late`` ran at ``now``."""
        self._decay(now)
        if late > 0:
            late_wakes = self._late
            while late_wakes and late_wakes[-1][1] <= late:  # only the latest of the worst are kept
                late_wakes.pop()
            late_wakes.append((now, late))
        if late < LATE:
            return
        self.worst = max(self.worst, late)
        if now - self._stalled_at < LATE:  # the same stall, reported by another timer
            return
        self._stalled_at = now
        self.stalls += 1
        self.score = min(SCORE_MAX, self.score + 1)
        self._falls_at = now + DECAY

    def lag(self, now: float) -> float:
        """How far behind this node's loop runs: the most a wake of the last
        ``LAG_WINDOW`` seconds came late (0 when none did)."""
        late_wakes = self._late
        while late_wakes and late_wakes[0][0] < now - LAG_WINDOW:
            late_wakes.popleft()
        return late_wakes[0][1] if late_wakes else 0.0

    def factor(self, now: float) -> float:
        """How much to stretch liveness windows and check timeouts now (>= 1):
        1 after a single stall, one more for each stall after it."""
        self._decay(now)
        return 1.0 + max(0, self.score - 1)

    def degraded(self, now: float) -> bool:
        """True while this node stalls again and again (a score of 2 or more): its
        view of its peers is suspect."""
        self._decay(now)
        return self.score >= 2

    async def run(self) -> None:
        """Wake every ``TICK`` and report how late: with no other timer due (a busy
        session sends no keepalives), a stall would be timed from the next deadline
        after its start, and ``lag`` would miss the first part of it."""
        while True:
            began = trio.current_time()
            await trio.sleep(TICK)
            self.woke_for(began + TICK, began, trio.current_time())

    def status(self, now: float) -> dict[str, float | int]:
        """For ``rendernode status``: the factor, the stalls so far, the worst, and
        the lag now."""
        return {"factor": self.factor(now), "stalls": self.stalls, "worst_late": round(self.worst, 3),
                "lag": round(self.lag(now), 3)}

    def _decay(self, now: float) -> None:
        while self.score and now >= self._falls_at:
            self.score -= 1
            self._falls_at += DECAY
        if not self.score:
            self._falls_at = math.inf
