"""System test on a 3-host bed: a job rendered by daemons in separate network
namespaces, one of which is SIGKILLed while it renders a frame.

The hosts find each other by multicast mDNS.  The job is submitted on a host
that is not the server; the victim is the third host, killed (SIGKILL to the
daemon's process group) once a render process of the job runs under its state
dir.  Its session ends with the kernel closing its sockets, the server
re-queues what it held as a new attempt, and every frame still reaches the
submitting host's output folder.  (The render process itself runs in a session
of its own and outlives the daemon; the bed's close ends it.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.systemfarm import Farm, new_token, report
from tests.harness.waiting import poll_until

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 12
RDATA = {"width": 160, "height": 90, "samples": 2}  #: a frame takes long enough to be caught midway
ENV = {"RENDERNODE_ELECTION_GRACE": "0.5", "RENDERNODE_LEASE": "3"}


@pytest.fixture(scope="module")
def farm(module_bed_factory: Any) -> Iterator[Farm]:
    """Three daemons, one per host, one token."""
    bed = module_bed_factory(3)
    farm = Farm(bed)
    farm.start(bed.hosts, new_token(), env=ENV)
    farm.wait_answering(bed.hosts)
    yield farm
    farm.close()


def render_processes(text: str) -> list[int]:
    """PIDs (root namespace) of live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and stat.rsplit(b")", 1)[1].split()[0] != b"Z":
            found.append(int(entry))
    return found


def test_every_frame_arrives_though_a_worker_is_killed_mid_frame(farm: Farm) -> None:
    hosts = farm.bed.hosts
    farm.wait_mesh(hosts, 30.0)
    _, server_name, _ = farm.wait_election(hosts, 15.0)
    server = farm.bed.host(server_name)
    origin, victim = [h for h in hosts if h is not server]
    scene = origin.dir / "shot.json"
    scene.write_text((ROOT / "examples" / "spheres.json").read_text())
    out = origin.dir / "out"

    submitted = farm.call(origin, "submit", scene=str(scene), frames=f"1-{FRAMES}", renderer="builtin",
                          rdata=RDATA, output=str(out / "frame_####.png"))
    assert submitted["result_name"] == "OK", submitted
    uuid = submitted["uuid"]
    t_submit = time.monotonic()
    mine = f"{victim.state_dir}-work/tasks/{uuid}-"

    def mid_job() -> tuple[bool, str]:
        arrived = sorted(p.name for p in out.glob("frame_*.png"))
        return bool(arrived) and bool(render_processes(mine)), f"frames so far {arrived}"

    poll_until(mid_job, 30.0, f"frames arriving while {victim.name} renders one")
    assert victim.daemon is not None
    t_kill = time.monotonic()
    victim.daemon.kill()
    victim.daemon.wait(5)
    farm.forget_client(victim)
    survivors = [server, origin]

    def job_over() -> tuple[bool, str]:
        job = farm.call(origin, "job", job=uuid)
        return job["state"] in ("done", "failed"), f"{job['state']}, {job['frames_done']} frames done"

    took = poll_until(job_over, 45.0, "the job ends on the submitter", since=t_kill)
    job = farm.call(origin, "job", job=uuid)
    assert job["state"] == "done", json.dumps(job["log"], indent=1)
    frames = sorted(int(p.stem.split("_")[1]) for p in out.glob("frame_*.png"))
    assert frames == list(range(1, FRAMES + 1))
    rows = farm.call(origin, "tasks", job=uuid)
    victim_uuid = farm.uuid[victim.name]
    lost = [r for r in rows if victim_uuid in r["machines"] and r["machines"][-1] != victim_uuid]
    assert lost, f"no task moved from {victim.name} to another machine: {rows}"
    assert all(r["attempt"] >= 1 for r in lost), lost
    assert all(r["state"] == "done" and r["machines"][-1] in {farm.uuid[h.name] for h in survivors}
               for r in lost)
    lines = [e["line"] for e in job["log"]]
    assert any(victim_uuid in ln and "worker went offline; re-queued" in ln for ln in lines), lines
    report(f"render: {FRAMES} frames on 3 hosts, {victim.name} SIGKILLed mid-frame "
           f"{t_kill - t_submit:.2f} s after submit; job done {took:.2f} s after the kill")
