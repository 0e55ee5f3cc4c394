"""System tests on one 16-host bed: a host killed, frozen and cut is seen OFFLINE
by all the others within the failure goals of issue 18, and comes back.

Sixteen hosts are more than the overlay's active view (6 neighbours), so no
host has a session with every other: a host learns of a failure it cannot see
itself from the membership's gossip (docs/membership.md).  The daemons find
each other only by multicast mDNS on the bed's bridge and run with the default
timings (keepalive 0.75 s, liveness window 1.5 s, suspicion 5 s shrinking to
1 s).  Each test starts from one farm: every host lists every other ONLINE
(verified or not: hosts verify only the peers they have had a session with)
and all agree on one server.  Victims are workers, one per test.

Goals: SIGKILL of the server must give a first new assignment within 2 s, so a
killed host must be OFFLINE everywhere within ``KILLED_OFFLINE_S``; a host
that goes silent (frozen, cable cut) within ``SILENT_OFFLINE_S``.  Coming back
has no goal of its own; ``BACK_S`` only bounds the wait.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.systemfarm import Farm, new_token, offline, online, report
from tests.harness.waiting import poll_until
from tests.netlab import Host

pytestmark = pytest.mark.system

N_HOSTS = 16
KILLED_OFFLINE_S = 2.0
SILENT_OFFLINE_S = 3.0
BACK_S = 15.0


@pytest.fixture(scope="module")
def farm(module_bed_factory: Any) -> Iterator[Farm]:
    """Sixteen daemons, one per host, one token, started once for the module."""
    bed = module_bed_factory(N_HOSTS)
    farm = Farm(bed)
    farm.start(bed.hosts, new_token())
    farm.wait_answering(bed.hosts, timeout=60.0)
    yield farm
    farm.close()


@pytest.fixture
def one_farm(farm: Farm) -> Farm:
    """The farm once every host lists every other ONLINE and all agree on the server."""
    first = farm.first_mesh_s is None
    took = farm.wait_online(farm.bed.hosts, 60.0, "one farm before the test", since=farm.answering_at)
    if first:
        farm.first_mesh_s = took
        report(f"{N_HOSTS} hosts: all ONLINE on all {took:.2f} s after the last daemon answered")
    farm.wait_election(farm.bed.hosts, 30.0, what="agreed server before the test")
    return farm


def worker(farm: Farm, nth: int) -> Host:
    """The ``nth`` host from the end that is not the server."""
    _, _, statuses = farm.election(farm.bed.hosts)
    workers = [h for h in farm.bed.hosts if statuses[h.name]["role"] != "server"]
    return workers[-1 - nth]


def fmt(first: dict[str, float]) -> str:
    values = sorted(first.values())
    return f"first {values[0]:.2f} s, last {values[-1]:.2f} s" if values else "none"


def test_killed_host_offline_on_all_then_back(one_farm: Farm) -> None:
    farm = one_farm
    victim = worker(farm, 0)
    others = [h for h in farm.bed.hosts if h is not victim]
    uuid = farm.uuid[victim.name]
    proc = victim.daemon
    assert proc is not None
    farm.forget_client(victim)
    t_kill = time.monotonic()
    proc.kill()
    assert proc.wait(5) == -9, f"{victim.name}'s daemon exited {proc.returncode}, not by SIGKILL"
    down, down_each = farm.watch_peer(others, victim, offline, 10.0,
                                      f"{victim.name} OFFLINE on the others after SIGKILL", t_kill)
    t_restart = time.monotonic()
    victim.restart_daemon()  # same token, arguments and state dir
    farm.wait_answering([victim])
    assert farm.uuid[victim.name] == uuid, f"{victim.name} came back as {farm.uuid[victim.name]}"
    up, up_each = farm.watch_peer(others, victim, online, BACK_S,
                                  f"restarted {victim.name} ONLINE on the others", t_restart)
    report(f"SIGKILL {victim.name}: OFFLINE on all {N_HOSTS - 1} others {down:.2f} s after the kill "
           f"({fmt(down_each)}); restarted with the same UUID, ONLINE on all others {up:.2f} s "
           f"after the restart ({fmt(up_each)})")
    assert down <= KILLED_OFFLINE_S, f"{victim.name} took {down:.2f} s to go OFFLINE (each: {down_each})"


def test_frozen_host_offline_on_all_then_back(one_farm: Farm) -> None:
    farm = one_farm
    victim = worker(farm, 1)
    others = [h for h in farm.bed.hosts if h is not victim]
    proc = victim.daemon
    assert proc is not None
    farm.forget_client(victim)  # never wait on a frozen daemon's socket
    t_freeze = time.monotonic()
    proc.freeze()
    try:
        poll_until(lambda: (proc.state() == "T", f"state {proc.state()!r}"), 2.0,
                   f"{victim.name}'s daemon stopped by SIGSTOP")
        down, down_each = farm.watch_peer(others, victim, offline, 10.0,
                                          f"{victim.name} OFFLINE on the others after SIGSTOP",
                                          t_freeze)
    finally:
        t_thaw = time.monotonic()
        proc.thaw()
    up, up_each = farm.watch_peer(others, victim, online, BACK_S,
                                  f"thawed {victim.name} ONLINE on the others", t_thaw)
    report(f"SIGSTOP {victim.name}: OFFLINE on all others {down:.2f} s after the freeze "
           f"({fmt(down_each)}); ONLINE on all others {up:.2f} s after the thaw ({fmt(up_each)})")
    assert down <= SILENT_OFFLINE_S, f"{victim.name} took {down:.2f} s to go OFFLINE (each: {down_each})"


def test_cut_host_offline_on_all_then_back(one_farm: Farm) -> None:
    farm = one_farm
    victim = worker(farm, 2)
    others = [h for h in farm.bed.hosts if h is not victim]
    t_cut = time.monotonic()
    victim.cut(link=True)
    try:
        down, down_each = farm.watch_peer(others, victim, offline, 10.0,
                                          f"{victim.name} OFFLINE on the others after the cut", t_cut)

        def alone() -> tuple[bool, str]:
            rows = farm.rows(victim)
            still = [o.name for o in others if not offline(rows.get(farm.uuid[o.name]))]
            return not still, f"{victim.name} still lists online: {still}"

        lonely = poll_until(alone, 10.0, f"{victim.name} lists the others OFFLINE while cut", since=t_cut)
    finally:
        t_uncut = time.monotonic()
        victim.uncut()
    up, up_each = farm.watch_peer(others, victim, online, BACK_S,
                                  f"{victim.name} ONLINE on the others after the uncut", t_uncut)
    whole = farm.wait_online(farm.bed.hosts, BACK_S, "one farm after the uncut", since=t_uncut)
    report(f"cut {victim.name} (links down): OFFLINE on all others {down:.2f} s after the cut "
           f"({fmt(down_each)}), it saw all others OFFLINE after {lonely:.2f} s; ONLINE on all "
           f"others {up:.2f} s after the uncut ({fmt(up_each)}), one farm again after {whole:.2f} s")
    assert down <= SILENT_OFFLINE_S, f"{victim.name} took {down:.2f} s to go OFFLINE (each: {down_each})"
