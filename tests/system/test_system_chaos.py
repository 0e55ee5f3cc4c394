"""System test: the chaos soak of ``bench/chaos.py`` on 6 hosts for 2 minutes.

Jobs are submitted all the time from random hosts (builtin frames, command
frames, some with ``--asset`` files) while a random fault hits the farm every
2-5 s: a daemon SIGKILLed (the server half the time; two hosts are spared
from kills) and started again 1-5 s later, a daemon frozen 3 s, a host cut off
5 s, the farm split in two halves 10 s, 5 % packet loss on a host 10 s.  Then every fault is healed and the farm
settles.  Nothing acknowledged may be lost, every frame must reach its
submitter intact (builtin frames byte-identical to a one-machine render), the
replicas' job books must be identical, no daemon may exit or hang on its own,
and the daemons that lived through the soak must not grow much.  The soak's
lines are reported (see ``tests/soak``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness.systemfarm import report
from tests.soak import Settings, Soak

pytestmark = pytest.mark.system

HOSTS = 6
MINUTES = 2.0
SETTLE_S = 150.0  #: the farm settles in seconds when nothing is wrong; this is for a loaded machine
SAMPLE_S = 5.0  #: RSS and fds every 5 s: a minute's second half needs 2 x soak.WINDOW samples even when one is late
RSS_GROWTH_MB = 20.0  #: over the second half of a short soak (the 10-minute bench aims at 5 MB)


def test_chaos_soak_loses_nothing(module_bed_factory: Any) -> None:
    bed = module_bed_factory(HOSTS)
    soak = Soak(bed, Settings(hosts=HOSTS, minutes=MINUTES, seed=int(time.time()), settle_timeout=SETTLE_S,
                                sample_every=SAMPLE_S),
                say=report)
    outcome = soak.run()
    assert outcome.lost == 0, "acknowledged jobs lost:\n" + "\n".join(outcome.lines)
    assert outcome.stuck == 0, "jobs in the books that never finished:\n" + "\n".join(outcome.lines)
    assert outcome.frames > 0 and outcome.missing == 0 and outcome.mismatches == 0, "\n".join(outcome.lines)
    assert outcome.identical_after is not None, "the books never became identical:\n" + "\n".join(outcome.lines)
    assert not outcome.exits and not outcome.unanswered, "\n".join(outcome.lines)
    assert outcome.rss_growth, "no daemon lived through the whole soak"
    worst = max(outcome.rss_growth.values()) / (1 << 20)
    assert worst < RSS_GROWTH_MB, f"a daemon grew {worst:.1f} MB over the second half:\n" + "\n".join(outcome.lines)
