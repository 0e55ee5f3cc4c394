"""soak: the chaos soak of a rendernode farm on a netlab bed.

Jobs are submitted all the time from random hosts while a random fault hits
the farm every few seconds (kills, freezes, cuts, partitions, packet loss);
then every fault is healed, the farm settles, and the soak checks that no
acknowledged job was lost, that every frame reached its submitter intact and
that the replicas' job books are identical.  ``bench/chaos.py`` runs it at
full size, ``tests/system/test_system_chaos.py`` in two minutes::

    from tests.netlab import Bed
    from tests.soak import Settings, Soak

    with Bed(6) as bed:
        outcome = Soak(bed, Settings(hosts=6, minutes=2)).run()
        assert outcome.lost == 0
"""

from __future__ import annotations

from .soak import Outcome, Settings, Soak

__all__ = ["Outcome", "Settings", "Soak"]
