"""``rendernode demo``: a farm of N daemons on loopback renders an example
animation with the built-in renderer, then stops.

Each daemon is a separate process with its own state dir under a temporary
folder, a fresh token, static peers (no mDNS, so other farms on the machine
are left alone).  Frames and a contact sheet land in ./rendernode-demo/.
"""

from __future__ import annotations

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

import click

from node.client import Client
from node.errors import DaemonNotRunning, NodeError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spheres.json"
READY_TIMEOUT = 60.0


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_mesh(sockets: list[str], procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    n = len(sockets)
    while time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                log = (logs / f"node{i + 1}.log").read_text(errors="replace")[-2000:]
                raise NodeError(f"demo node {i + 1} exited with status {p.returncode}:\n{log}")
        try:
            ready = 0
            for path in sockets:
                with Client(path, timeout=5) as c:
                    rows = c.get_machines_list(bits=0)
                    if sum(1 for r in rows if "VERIFIED" in r["bits"] and "ONLINE" in r["bits"]) == n:
                        if c.status().get("server"):
                            ready += 1
            if ready == n:
                return
        except DaemonNotRunning:
            pass
        time.sleep(0.1)
    raise NodeError(f"the demo farm did not form within {READY_TIMEOUT:.0f} s; logs in {logs}")


def run_demo(nodes: int, frames: int, out_dir: Path, keep: bool) -> None:
    """Start the farm, render, write frames and a contact sheet, stop the farm."""
    from node.cli.jobs import wait_for
    from node.image import contact_sheet

    if not EXAMPLE.exists():
        raise NodeError(f"the example scene {EXAMPLE} is missing from this installation")
    tmp = Path(tempfile.mkdtemp(prefix="rendernode-demo-"))
    logs = tmp / "logs"
    logs.mkdir()
    ports = _free_ports(nodes)
    sockets = [str(tmp / f"node{i + 1}" / "control.sock") for i in range(nodes)]
    env = {**os.environ, "RENDERNODE_TOKEN": secrets.token_urlsafe(32),
           "RENDERNODE_ELECTION_GRACE": "0.5", "RENDERNODE_FARM": f"demo-{secrets.token_hex(4)}"}
    env.pop("RENDERNODE_SOCKET", None)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(nodes):
            peers = [a for j, p in enumerate(ports) if j != i for a in ("--peer", f"127.0.0.1:{p}")]
            argv = [sys.executable, "-m", "node", "--socket", sockets[i], "daemon",
                    "--state-dir", str(tmp / f"node{i + 1}"), "--listen", f"127.0.0.1:{ports[i]}",
                    "--no-mdns", "--name", f"demo-{i + 1}", "--log-level", "warning", *peers]
            with open(logs / f"node{i + 1}.log", "wb") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        click.echo(f"starting a farm of {nodes} nodes on loopback (state in {tmp})")
        _wait_mesh(sockets, procs, logs)
        click.echo(f"farm ready: {nodes} nodes verified each other and elected a server")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("frame_*.png"):
            old.unlink()
        with Client(sockets[0]) as c:
            result = c.create_render_job(str(EXAMPLE), frames=f"1-{frames}", renderer="builtin",
                                         output=str(out_dir.resolve() / "frame_####.png"),
                                         name="demo: spheres")
            job = wait_for(c, result["uuid"])
            tasks = c.copy_render_task_from(result["uuid"])
            names = {r["uuid"]: r["name"] for r in c.get_machines_list()}
        if job["state"] != "done":
            raise NodeError(f"the demo job ended {job['state']}; logs in {logs}")
        paths = sorted(str(p) for p in out_dir.glob("frame_*.png"))
        sheet = out_dir / "contact_sheet.png"
        contact_sheet(paths, str(sheet))
        per_machine = Counter(names.get(t["machines"][-1], "?") for t in tasks if t["machines"])
        click.echo(f"{len(paths)} frames written to {out_dir}/, contact sheet {sheet}")
        for name, count in sorted(per_machine.items()):
            click.echo(f"  {name}: {count} frames")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        click.echo("farm stopped")
