"""System tests on a 4-host bed: one job's 8 MiB asset reaches every worker
through the swarm, and a worker cut off in the middle of its transfer, or whose
daemon is SIGKILLed and restarted there, picks it up where it stopped.

The hosts find each other by multicast mDNS; every link is capped at
``LINK`` so the transfer lasts long enough to be cut half way.  The job
(renderer ``command``, rdata ``assets``) is submitted with NOREQUESTONDEMAND on
a host that is not the server, so every worker fetches the asset as the job
starts.  The victim is a worker that is neither the origin nor the server.
Once its repository shows some but not all of the chunks it is either cut (a
black hole at its bridge port), stays cut past the liveness window (its
sessions end) and is uncut; or its daemon is SIGKILLed and started again on
the same state dir (the fetch resumes as the node starts).  Its count of chunks never goes down (nothing it held is thrown
away or fetched again), and every worker ends with the same verified bytes:
each one's repository holds every chunk and its materialised copy hashes like
the original.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.client import Client
from tests.harness.systemfarm import Farm, new_token, report
from tests.harness.waiting import poll_until
from tests.netlab import Host

pytestmark = pytest.mark.system

N_HOSTS = 4
SIZE = 8 << 20
LINK = "20mbit"  #: 8 MiB takes 3.4 s over one such link
ENV = {"RENDERNODE_ELECTION_GRACE": "0.5"}
CUT_FOR_S = 2.5  #: longer than the 1.5 s liveness window: every session of the victim ends


@pytest.fixture
def farm(bed_factory: Any) -> Iterator[Farm]:
    """Four daemons, one per capped host, one token, meshed with an agreed server."""
    bed = bed_factory(N_HOSTS)
    for host in bed.hosts:
        host.cap(LINK)
    farm = Farm(bed)
    farm.start(bed.hosts, new_token(), env=ENV)
    farm.wait_answering(bed.hosts)
    farm.wait_mesh(bed.hosts, 30.0)
    farm.wait_election(bed.hosts, 30.0)
    yield farm
    farm.close()


def asset_row(farm: Farm, host: Host, manifest: str) -> dict[str, Any] | None:
    """``host``'s repository row of ``manifest`` (None if it has not got the manifest)."""
    for row in farm.call(host, "repo")["assets"]:
        if row["manifest"] == manifest:
            return dict(row)
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("interrupt", ["cut", "kill"])
def test_every_worker_gets_the_asset_and_an_interrupted_worker_resumes(
        farm: Farm, tmp_path: Path, interrupt: str) -> None:
    hosts = farm.bed.hosts
    _, _, statuses = farm.election(hosts)
    server_name = next(n for n, s in statuses.items() if s["role"] == "server")
    origin = next(h for h in hosts if h.name != server_name)
    workers = [h for h in hosts if h is not origin]
    victim = next(h for h in workers if h.name != server_name)
    project = tmp_path / "project"
    project.mkdir()
    asset = project / "cache.bin"
    asset.write_bytes(os.urandom(SIZE))
    (project / "job.txt").write_text("assets system test\n")
    submitted: dict[str, Any] = {}

    def submit() -> None:  # acknowledged once two replicas hold the asset: not instant
        with Client(str(origin.socket_path), timeout=60) as client:
            submitted.update(client.call(
                "submit", scene=str(project / "job.txt"), renderer="command", frames="1",
                flags=["NOREQUESTONDEMAND"], rdata={"command": "true", "assets": [str(asset)]}))

    t0 = time.monotonic()
    submitter = threading.Thread(target=submit)
    submitter.start()
    found: list[str] = []

    def origin_lists_it() -> tuple[bool, str]:
        rows = farm.call(origin, "repo")["assets"]
        found[:] = [r["manifest"] for r in rows if r["jobs"]]
        return bool(found), f"origin rows {rows}"

    poll_until(origin_lists_it, 15, "the origin holds the job's manifest")
    manifest = found[0]
    seen: list[int] = []

    def victim_half_way() -> tuple[bool, str]:
        row = asset_row(farm, victim, manifest)
        here = row["chunks_here"] if row else 0
        seen.append(here)
        total = row["chunks"] if row else 0
        return 0 < here < total, f"{victim.name} holds {here} of {total or '?'} chunks"

    poll_until(victim_half_way, 30, f"{victim.name} is half way")
    if interrupt == "cut":
        victim.cut()
        cut_at = time.monotonic()
        held_at_cut = seen[-1]
        report(f"assets: {victim.name} cut holding {held_at_cut} chunks, "
               f"{cut_at - t0:.1f} s after the submit")
        time.sleep(CUT_FOR_S)
        row = asset_row(farm, victim, manifest)
        assert row is not None and row["chunks_here"] >= held_at_cut
        held_while_cut = row["chunks_here"]
        victim.uncut()
    else:
        proc = victim.daemon
        assert proc is not None
        farm.forget_client(victim)
        proc.kill()
        assert proc.wait(5) == -9, f"{victim.name}'s daemon exited {proc.returncode}, not by SIGKILL"
        held_at_cut = seen[-1]
        report(f"assets: {victim.name} SIGKILLed holding at least {held_at_cut} chunks, "
               f"{time.monotonic() - t0:.1f} s after the submit")
        victim.restart_daemon()  # same token, arguments and state dir
        farm.wait_answering([victim])
        row = asset_row(farm, victim, manifest)
        assert row is not None and row["chunks_here"] >= held_at_cut, (
            f"{victim.name} restarted holding {row and row['chunks_here']} chunks, not >= {held_at_cut}")
        held_while_cut = row["chunks_here"]
    uncut_at = time.monotonic()
    counts: list[int] = []

    def victim_done() -> tuple[bool, str]:
        r = asset_row(farm, victim, manifest)
        assert r is not None
        counts.append(r["chunks_here"])
        return r["chunks_here"] == r["chunks"], f"{victim.name} holds {r['chunks_here']} of {r['chunks']}"

    again = "uncut" if interrupt == "cut" else "restarted"
    took = poll_until(victim_done, 30, f"{victim.name} completes once {again}", since=uncut_at)
    report(f"assets: {victim.name} held {held_while_cut} chunks when {again} and had all "
           f"{took:.1f} s later")
    assert counts == sorted(counts), "no chunk it held was lost or fetched again"

    def all_workers_done() -> tuple[bool, str]:
        rows = {h.name: asset_row(farm, h, manifest) for h in workers}
        short = {n: (r["chunks_here"], r["chunks"]) if r else None for n, r in rows.items()
                 if not r or r["chunks_here"] != r["chunks"]}
        return not short, f"incomplete: {short}"

    poll_until(all_workers_done, 30, "every worker holds every chunk")
    how = f"cut for {CUT_FOR_S} s" if interrupt == "cut" else "SIGKILLed and restarted"
    report(f"assets: every worker held the {SIZE >> 20} MiB asset {time.monotonic() - t0:.1f} s "
           f"after the submit (one of them {how})")
    submitter.join(60)
    assert submitted.get("result_name") == "OK", submitted
    want = sha256_file(asset)
    for h in workers:
        copy = h.state_dir.parent / f"{h.state_dir.name}-work" / "assets" / manifest / "cache.bin"
        poll_until(lambda copy=copy: (copy.parent.joinpath(".complete").exists(), str(copy)), 15,
                   f"{h.name} materialised the asset")
        assert sha256_file(copy) == want, f"{h.name} has other bytes"
