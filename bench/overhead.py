"""Per-task overhead benchmark: a real farm rendering short frames.

``python bench/overhead.py`` starts ``--nodes`` daemons (``python -m node
daemon``, separate processes, static peers on loopback, no mDNS, each sharing
its machine), submits one job to the first of them: renderer ``command``,
rdata ``{"command": "sleep S"}``, frames 1-``--frames``, chunk 1, and measures
the wall time from the submit call until the daemon reports the job done.

With N workers and F frames of S seconds the ideal is ``F * S / N`` seconds;
everything above it is overhead: submit, assignment round trips, process
start-up, reports, replication, the tail.  The last line is
``wall/ideal: R``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from node.client import Client
from node.errors import DaemonNotRunning

READY_TIMEOUT = 60.0  #: seconds for the farm to form and elect a server
POLL = 0.01  #: seconds between job-state polls while it renders
RUN_SLACK = 60.0  #: seconds allowed beyond twice the ideal before giving up


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports nothing listens on (a moment ago)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds the daemons and their finished children (renderers) have used."""
    total = 0
    for p in procs:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def call(path: str, method: str, **args: Any) -> Any:
    """One control call."""
    with Client(path, timeout=30) as c:
        return c.call(method, **args)


def start_farm(tmp: Path, nodes: int, profile: str,
               extra_env: dict[str, str] | None = None) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Start the daemons (under cProfile, stats to ``profile/nodeN.prof``, if
    ``profile`` names a folder; with ``extra_env`` in their environment);
    returns them and their control sockets."""
    ports = free_ports(nodes)
    sockets = [str(tmp / f"node{i + 1}" / "control.sock") for i in range(nodes)]
    env = {**os.environ, "RENDERNODE_TOKEN": secrets.token_urlsafe(32),
           "RENDERNODE_ELECTION_GRACE": "0.5", "RENDERNODE_FARM": f"bench-{secrets.token_hex(4)}",
           **(extra_env or {})}
    env.pop("RENDERNODE_SOCKET", None)
    procs = []
    for i in range(nodes):
        peers = [a for j, p in enumerate(ports) if j != i for a in ("--peer", f"127.0.0.1:{p}")]
        runner = [sys.executable]
        if profile:
            runner += ["-m", "cProfile", "-o", os.path.join(profile, f"node{i + 1}.prof")]
        argv = [*runner, "-m", "node", "--socket", sockets[i], "daemon",
                "--state-dir", str(tmp / f"node{i + 1}"), "--listen", f"127.0.0.1:{ports[i]}",
                "--no-mdns", "--name", f"bench-{i + 1}", "--log-level", "warning", *peers]
        with open(tmp / f"node{i + 1}.log", "wb") as log:
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs, sockets


def wait_mesh(tmp: Path, procs: list[subprocess.Popen[bytes]], sockets: list[str]) -> None:
    """Return once every node sees every other verified and online and obeys one server."""
    deadline = time.monotonic() + READY_TIMEOUT
    n = len(sockets)
    while time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                log = (tmp / f"node{i + 1}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {i + 1} exited with status {p.returncode}:\n{log}")
        try:
            servers = set()
            for path in sockets:
                rows = call(path, "machines")
                if sum(1 for r in rows if "VERIFIED" in r["bits"] and "ONLINE" in r["bits"]) < n:
                    break
                servers.add(call(path, "status").get("server"))
            else:
                if len(servers) == 1 and None not in servers:
                    return
        except DaemonNotRunning:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the farm did not form within {READY_TIMEOUT:.0f} s; logs in {tmp}")


def stop_farm(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every daemon, SIGKILL the ones that linger."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def render(sockets: list[str], frames: int, seconds: float, ideal: float) -> tuple[float, dict[str, Any]]:
    """Submit the job to the first node and wait until it is done: (wall, job)."""
    path = sockets[0]
    started = time.perf_counter()
    with Client(path, timeout=30) as c:
        job = c.create_render_job("bench.scene", frames=f"1-{frames}", renderer="command",
                                  rdata={"command": f"sleep {seconds}"}, name="bench: overhead")
        give_up = started + 2 * ideal + RUN_SLACK
        while True:
            row = c.get_job(job["uuid"])
            if row["state"] in ("done", "failed"):
                break
            if time.perf_counter() > give_up:
                raise RuntimeError(f"the job is still {row['state']} after {time.perf_counter() - started:.0f} s")
            time.sleep(POLL)
        wall = time.perf_counter() - started
        if row["state"] != "done":
            raise RuntimeError(f"the job ended {row['state']}")
        tasks = c.copy_render_task_from(job["uuid"])
        row["per_machine"] = Counter(t["machines"][-1] for t in tasks if t["machines"])
        row["render_time"] = sum(t["render_time"] for t in tasks)
    return wall, row


def main() -> None:
    """Parse arguments, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.2, help="render time of one frame")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    parser.add_argument("--profile", default="", help="run the daemons under cProfile, stats into this folder")
    args = parser.parse_args()
    ideal = args.frames * args.seconds / args.nodes
    tmp = Path(tempfile.mkdtemp(prefix="rn-overhead-"))
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    try:
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
        procs, sockets = start_farm(tmp, args.nodes, os.path.abspath(args.profile) if args.profile else "")
        wait_mesh(tmp, procs, sockets)
        cpu_before = cpu(procs)
        wall, job = render(sockets, args.frames, args.seconds, ideal)
        cpu_used = cpu(procs) - cpu_before
        ok = True
    finally:
        stop_farm(procs)
        if args.keep or not ok:
            print(f"state and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"workers: {args.nodes}")
    print(f"frames: {args.frames} x {args.seconds} s")
    print("tasks per worker: " + " ".join(str(n) for n in sorted(job["per_machine"].values())))
    print(f"render time per task: {job['render_time'] / args.frames * 1000:.0f} ms (as the workers measured it)")
    print(f"farm cpu per task: {cpu_used / args.frames * 1000:.1f} ms")
    print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    print(f"wall: {wall:.2f} s")
    print(f"ideal: {ideal:.2f} s")
    print(f"wall/ideal: {wall / ideal:.3f}")


if __name__ == "__main__":
    main()
