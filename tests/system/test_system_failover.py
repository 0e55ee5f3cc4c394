"""System tests on one 6-host bed: the server killed mid-queue, the submitter
killed right after its acknowledgement, and the farm partitioned in two.

The daemons find each other by multicast mDNS and run with the default
timings (heartbeat 0.5 s, 3 misses, election grace 2 s, lease 5 s).  Jobs are
``command`` jobs (``sleep 0.3`` or ``true`` per frame) whose frames leave no
file, so a frame is done as soon as its worker says so and no result has to
travel back to a submitter that may be dead.  The scene is a file in the bed's
folder: submit chunks it into the submitting node's store, and the workers
never fetch it (the template does not name ``{scene}``).

Each test starts from the ``settled`` fixture: every daemon running (a daemon
an earlier test killed is restarted with the same state dir), a full mesh and
one agreed server.  Jobs of earlier tests stay in the book; they are done and
take part in the comparisons like any other job.

What "the same" means for replicas: the ``jobs`` list (``rendernode jobs
--json``, read through the control socket) of every host, sorted by job UUID,
compared as JSON; the last comparison is made with the CLI itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.systemfarm import Farm, new_token, report
from tests.harness.waiting import poll_until
from tests.netlab import Host

pytestmark = pytest.mark.system

N_HOSTS = 6
NEW_SERVER_WITHIN_S = 2.0  #: SIGKILL of the server -> every survivor's status names one new server
PARTITION_S = 20.0
THROUGH_HEAL_S = 2.5  #: jobs submitted this long before the heal are still rendering at the heal
SLEEP_FRAME = "sleep 0.3"
FAST_POLL = 0.02


@pytest.fixture(scope="module")
def farm(module_bed_factory: Any) -> Iterator[Farm]:
    """Six daemons, one per host, one token, started once for the module."""
    bed = module_bed_factory(N_HOSTS)
    farm = Farm(bed)
    farm.start(bed.hosts, new_token())
    farm.wait_answering(bed.hosts)
    yield farm
    farm.close()


@pytest.fixture
def settled(farm: Farm) -> Farm:
    """The farm with every daemon running, fully meshed, agreeing on one server."""
    hosts = farm.bed.hosts
    dead = [h for h in hosts if h.daemon is None or not h.daemon.alive()]
    for h in dead:
        farm.forget_client(h)
        h.restart_daemon()
    if dead:
        farm.wait_answering(dead)
    farm.wait_mesh(hosts, 30.0, "full mesh before the test")
    farm.wait_election(hosts, 30.0, what="agreed server before the test")
    return farm


# -- helpers -----------------------------------------------------------------------------


def scene(farm: Farm) -> str:
    """A scene file every host can read (the bed's folder is on the shared filesystem)."""
    path = Path(farm.bed.dir) / "failover-scene.txt"
    if not path.exists():
        path.write_text("a scene the command jobs never open\n")
    return str(path)


def submit(farm: Farm, host: Host, frames: str, command: str, name: str) -> dict[str, Any]:
    """Submit a command job on ``host``; returns the acknowledgement (asserted OK)."""
    ack: dict[str, Any] = farm.call(host, "submit", scene=scene(farm), renderer="command",
                                    frames=frames, rdata={"command": command}, name=name)
    assert ack["result_name"] == "OK" and ack["uuid"], f"submit on {host.name} failed: {ack}"
    return ack


def jobs_of(farm: Farm, host: Host) -> dict[str, dict[str, Any]]:
    """``host``'s job list: UUID -> summary."""
    return {j["uuid"]: j for j in farm.call(host, "jobs")}


def canonical(rows: list[dict[str, Any]]) -> str:
    """A job list as comparable text: sorted by UUID, keys sorted."""
    return json.dumps(sorted(rows, key=lambda j: j["uuid"]), sort_keys=True)


def wait_done(farm: Farm, hosts: Sequence[Host], uuids: Sequence[str], timeout: float,
              what: str, since: float | None = None) -> float:
    """Until every host lists every job of ``uuids`` done with all its frames."""

    def check() -> tuple[bool, str]:
        pending: dict[str, list[str]] = {}
        for h in hosts:
            listed = jobs_of(farm, h)
            for u in uuids:
                j = listed.get(u)
                if j is not None and j["state"] == "failed":  # it cannot end done any more: say why
                    lines = [e["line"] for e in farm.call(h, "job", job=u)["log"]]
                    raise AssertionError(f"{what}: job {u[:8]} failed on {h.name}; its log:\n"
                                         + "\n".join(lines[-40:]))
                if j is None or j["state"] != "done" or j["frames_done"] != j["frames_total"]:
                    pending.setdefault(h.name, []).append(
                        f"{u[:8]} " + ("missing" if j is None
                                       else f"{j['state']} {j['frames_done']}/{j['frames_total']}"))
        return not pending, f"not done: {pending}"

    return poll_until(check, timeout, what, since=since)


def wait_converged(farm: Farm, hosts: Sequence[Host], uuids: Sequence[str], timeout: float,
                   since: float, what: str, busy: Sequence[str] = ()) -> float:
    """Until every host lists exactly the same jobs (all of ``uuids`` among them).

    Jobs of ``busy`` (still rendering, so their summaries change by the moment) must
    be listed everywhere but are left out of the comparison."""

    def check() -> tuple[bool, str]:
        lists = {h.name: farm.call(h, "jobs") for h in hosts}
        texts = {n: canonical([j for j in rows if j["uuid"] not in busy]) for n, rows in lists.items()}
        lacking = {n: [u[:8] for u in uuids if u not in {j["uuid"] for j in rows}]
                   for n, rows in lists.items()}
        lacking = {n: v for n, v in lacking.items() if v}
        same = len(set(texts.values())) == 1
        states = {n: sorted((j["uuid"][:8], j["state"], j["frames_done"]) for j in rows)
                  for n, rows in lists.items()}
        return same and not lacking, f"lacking {lacking}; lists: {states}"

    return poll_until(check, timeout, what, since=since)


def watch_new_server(farm: Farm, survivors: Sequence[Host], old_uuid: str, since: float,
                     timeout: float) -> tuple[float, str, int]:
    """Poll (every FAST_POLL s) until all survivors agree on one server other than
    ``old_uuid``: (seconds since ``since``, server host name, term)."""
    found: list[tuple[str, int]] = []

    def check() -> tuple[bool, str]:
        agreed, detail, statuses = farm.election(survivors)
        if agreed:
            s = next(iter(statuses.values()))
            if s["server"] != old_uuid:
                found[:] = [(farm.name_of(s["server"]), int(s["term"]))]
                return True, detail
        return False, detail

    took = poll_until(check, timeout, "a new server after the kill", since=since, every=FAST_POLL)
    return took, found[0][0], found[0][1]


def kill(farm: Farm, host: Host) -> float:
    """SIGKILL ``host``'s daemon (its whole process group); returns the moment before."""
    proc = host.daemon
    assert proc is not None and proc.alive(), f"{host.name} has no running daemon"
    farm.forget_client(host)
    t_kill = time.monotonic()
    proc.kill()
    assert proc.wait(5) == -9, f"{host.name}'s daemon exited {proc.returncode}, not by SIGKILL"
    return t_kill


def server_of(farm: Farm) -> tuple[Host, int]:
    """The agreed server's host and term."""
    agreed, detail, statuses = farm.election(farm.bed.hosts)
    assert agreed, detail
    s = next(iter(statuses.values()))
    return farm.bed.host(farm.name_of(s["server"])), int(s["term"])


# -- tests -------------------------------------------------------------------------------


def test_server_killed_mid_queue(settled: Farm) -> None:
    farm = settled
    hosts = farm.bed.hosts
    server, term = server_of(farm)
    workers = [h for h in hosts if h is not server]
    # four jobs of 12 frames of 0.3 s: one submitted on the server itself, three on workers
    acks = [submit(farm, h, "1-12", SLEEP_FRAME, f"failover-{i}")
            for i, h in enumerate([server, *workers[:3]])]
    uuids = [a["uuid"] for a in acks]
    assert all(a["replicas"] >= 1 for a in acks), acks

    def rendering() -> tuple[bool, str]:
        listed = jobs_of(farm, workers[0])
        done = sum(listed[u]["frames_done"] for u in uuids if u in listed)
        busy = any(listed[u]["state"] == "rendering" for u in uuids if u in listed)
        return done >= 1 and busy, f"frames done {done}"

    poll_until(rendering, 15.0, "the queue renders before the kill")
    before = jobs_of(farm, workers[0])
    left = sum(before[u]["frames_total"] - before[u]["frames_done"] for u in uuids)
    # a worker holds at most 2 tasks (one rendering, one waiting): with more frames left
    # than that, the new server must assign some of them for the queue to finish
    assert left > 2 * N_HOSTS, f"only {left} frames left when the server was killed"

    t_kill = kill(farm, server)
    took, new_server, new_term = watch_new_server(farm, workers, farm.uuid[server.name], t_kill, 10.0)
    assert new_term > term, f"new server {new_server} has term {new_term}, not above {term}"
    assert farm.bed.host(new_server) is not server

    missing = {h.name: [u[:8] for u in uuids if u not in jobs_of(farm, h)] for h in workers}
    missing = {n: v for n, v in missing.items() if v}
    assert not missing, f"acknowledged jobs lost on survivors: {missing}"
    finished = wait_done(farm, workers, uuids, 40.0, "the queue finishes under the new server")
    report(f"server {server.name} (term {term}) SIGKILLed with {left} of "
           f"{sum(before[u]['frames_total'] for u in uuids)} frames left: new server {new_server} "
           f"(term {new_term}) in every survivor's status {took:.2f} s after the kill; "
           f"all {len(uuids)} jobs done on all {len(workers)} survivors {finished:.2f} s later")
    assert took <= NEW_SERVER_WITHIN_S, f"a new server took {took:.2f} s (limit {NEW_SERVER_WITHIN_S} s)"


def test_submitter_killed_after_acknowledgement(settled: Farm) -> None:
    farm = settled
    hosts = farm.bed.hosts
    server, _ = server_of(farm)
    submitter = next(h for h in reversed(hosts) if h is not server)
    others = [h for h in hosts if h is not submitter]
    t_submit = time.monotonic()
    ack = submit(farm, submitter, "1-24", "true", "submitter-killed")
    acked = time.monotonic() - t_submit
    kill(farm, submitter)
    assert ack["replicas"] >= 1, f"acknowledged with no replica: {ack}"

    def listed_everywhere() -> tuple[bool, str]:
        lacking = [h.name for h in others if ack["uuid"] not in jobs_of(farm, h)]
        return not lacking, f"not listed on {lacking}"

    spread = poll_until(listed_everywhere, 15.0, "the job is listed on every survivor")
    rendered = wait_done(farm, others, [ack["uuid"]], 30.0, "the dead submitter's job renders")
    tasks = farm.call(others[0], "tasks", job=ack["uuid"])
    assert all(t["state"] == "done" for t in tasks), tasks
    report(f"submitter {submitter.name} SIGKILLed right after the acknowledgement "
           f"({acked * 1000:.0f} ms, replicas {ack['replicas']}/{ack['wanted']}): listed on all "
           f"{len(others)} survivors after {spread:.2f} s, its {len(tasks)} frames done {rendered:.2f} s later")


def test_partition_then_heal(settled: Farm) -> None:
    farm = settled
    hosts = farm.bed.hosts
    server, term = server_of(farm)
    side_a = [server, *[h for h in hosts if h is not server][:2]]
    side_b = [h for h in hosts if h not in side_a]
    old_uuids = list(jobs_of(farm, hosts[0]))
    t_split = time.monotonic()
    farm.bed.partition(side_a, side_b)
    try:
        took_a, server_a, term_a = farm.wait_election(side_a, 10.0, since=t_split,
                                                      what="side A keeps one server")
        took_b, server_b, term_b = farm.wait_election(side_b, 10.0, since=t_split,
                                                      what="side B elects its own server")
        assert server_a == server.name and term_a == term, (server_a, term_a, server.name, term)
        assert farm.bed.host(server_b) in side_b and term_b > term, (server_b, term_b)
        # each side takes jobs (acknowledged by its own replicas) and renders them alone
        t_submit = time.monotonic()
        jobs_a = [submit(farm, h, "1-6", SLEEP_FRAME, f"side-a-{i}") for i, h in enumerate(side_a[1:])]
        jobs_b = [submit(farm, h, "1-6", SLEEP_FRAME, f"side-b-{i}") for i, h in enumerate(side_b[:2])]
        assert all(a["replicas"] >= 1 for a in jobs_a + jobs_b), jobs_a + jobs_b
        uuids_a = [a["uuid"] for a in jobs_a]
        uuids_b = [a["uuid"] for a in jobs_b]
        done_a = wait_done(farm, side_a, uuids_a, 15.0, "side A renders its jobs", t_submit)
        done_b = wait_done(farm, side_b, uuids_b, 15.0, "side B renders its jobs", t_submit)
        for side, foreign in ((side_a, uuids_b), (side_b, uuids_a)):
            for h in side:
                seen = [u[:8] for u in foreign if u in jobs_of(farm, h)]
                assert not seen, f"{h.name} lists the other side's jobs {seen} during the partition"
        for side in (side_a, side_b):
            agreed, detail, _ = farm.election(side)
            assert agreed, f"a side lost its agreement during the partition: {detail}"
        # one job on each side that is still rendering when the partition heals: its
        # side's server assigned some of its tasks, and one of the two servers steps down
        time.sleep(max(0.0, PARTITION_S - THROUGH_HEAL_S - (time.monotonic() - t_split)))
        busy = [submit(farm, side[1], "1-60", SLEEP_FRAME, f"through-heal-{label}")["uuid"]
                for label, side in (("a", side_a), ("b", side_b))]
        time.sleep(max(0.0, PARTITION_S - (time.monotonic() - t_split)))
        at_heal = {u: jobs_of(farm, side[0])[u] for u, side in zip(busy, (side_a, side_b), strict=True)}
    finally:
        t_heal = time.monotonic()
        farm.bed.heal()
    # the greater claim wins: (followed, term, priority, uuid); both are followed here
    expect = max((term_a, farm.uuid[server_a]), (term_b, farm.uuid[server_b]))
    one, winner, final_term = farm.wait_election(hosts, 15.0, since=t_heal,
                                                 what="one server again after the heal")
    assert (final_term, farm.uuid[winner]) == expect, \
        f"{winner} won with term {final_term}, not {expect}:\n{farm.election_log(hosts)}"
    loser = server_a if winner == server_b else server_b
    assert farm.status(farm.bed.host(loser))["role"] == "worker"
    assert all(j["state"] == "rendering" and j["frames_done"] < j["frames_total"]
               for j in at_heal.values()), f"not rendering at the heal: {at_heal}"
    every = old_uuids + uuids_a + uuids_b + busy
    converged = wait_converged(farm, hosts, every, 30.0, t_heal, "replicas converge after the heal",
                               busy=busy)
    finished = wait_done(farm, hosts, every, 40.0, "every job of both sides done everywhere", t_heal)
    identical = wait_converged(farm, hosts, every, 10.0, t_heal, "identical job lists once all are done")
    texts = {h.name: canonical(h.cli("jobs")) for h in hosts}  # the CLI's own `jobs --json`
    assert len(set(texts.values())) == 1, {n: len(t) for n, t in texts.items()}
    left = ", ".join(f"{j['frames_done']}/{j['frames_total']}" for j in at_heal.values())
    report(f"partition {[h.name for h in side_a]} | {[h.name for h in side_b]} for {PARTITION_S:.0f} s: "
           f"side A kept {server_a} (term {term_a}, agreed {took_a:.2f} s), side B elected {server_b} "
           f"(term {term_b}) {took_b:.2f} s after the split; side jobs done {done_a:.2f} s / "
           f"{done_b:.2f} s after submit; heal: {loser} stepped down, one server {winner} "
           f"(term {final_term}) {one:.2f} s after the heal; all {N_HOSTS} hosts list every job and "
           f"identical states of the {len(every) - len(busy)} settled ones {converged:.2f} s after the heal; "
           f"the 2 jobs rendering through the heal "
           f"({left} frames done at the heal) done everywhere {finished:.2f} s after the heal, "
           f"all lists identical {identical:.2f} s")
