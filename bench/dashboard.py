"""Dashboard benchmark: a node whose book holds 1,000 jobs and 100,000 tasks,
with 20 dashboards holding the event stream open.

``python bench/dashboard.py`` fills a fresh state dir (1,000 jobs: one of
1,000 frames, the rest of 99 or 100, a third of each job's frames done with
previews), runs a node on it in this process (dashboard on loopback, no
peers, not rendering), and opens 20 event streams from a second process.
It measures

- the queue view (``GET /api/queue``) and the 1,000-frame job view
  (``GET /api/job/J``), each ``--requests`` times, as a browser would fetch
  them (HTTP over loopback, from a thread); a job's queue row is computed
  once per change of the job (here: none while the views are timed);
- the time from a task state change in the book to its event at every one of
  the 20 clients (``--changes`` changes; the clients' process stamps arrival
  with the same monotonic clock);
- this process' CPU over ``--idle`` seconds with the 20 dashboards open and
  nothing changing (the node's own timers and the streams' keep-alives);
- the size of the page: its HTML, style sheet, script and icon.

Goals (issue 16): views median <= 100 ms, event p95 <= 100 ms, idle CPU
<= 2 % of a core, page <= 100 KB.  The lines it prints::

    queue view: median M ms, p95 P ms
    job view: median M ms, p95 P ms
    task change to 20 clients: p95 P ms, median M ms
    idle CPU with 20 dashboards: C % of a core
    page with its scripts: S KB
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import secrets
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from node import config, daemon
from node.db import Database
from node.jobs.book import JobBook
from node.jobs.operations import Jobs, JobSpec
from protocol.crdt import JobDoc, Phase, TaskState

CLIENTS = 20
MARK = 100_000.0  #: render times at or past this mark a benchmark's task change


def fill(state_dir: Path, node_uuid: str) -> str:
    """1,000 jobs, 100,000 tasks; returns the 1,000-frame job's uuid."""
    sizes = [1000] + [100] * 99 + [99] * 900
    assert len(sizes) == 1000 and sum(sizes) == 100_000

    async def work() -> str:
        db = Database(state_dir)
        book = JobBook(db, node_uuid)
        jobs = Jobs(book, node_uuid, ["root"])
        big = ""
        for i, n in enumerate(sizes):
            spec = JobSpec.from_args({"scene": f"/proj/shot{i:04d}.blend", "frames": f"1-{n}",
                                      "renderer": "blender", "name": f"shot {i:04d}"})
            doc = jobs.create(spec, ("ana", "ben", "cho")[i % 3])
            big = big or doc.uuid
            stamp = book.stamp()
            done = {tid: TaskState(done=1, phase=Phase.SUCCEEDED, stamp=stamp, machines=("w1",),
                                   render_time=12.5, previews=(secrets.token_hex(32),))
                    for tid in range(n // 3)}
            book.apply(JobDoc(doc.uuid, tasks=done))
        await book.flush()
        db.close()
        return big

    return trio.run(work)


def timed_get(base: str, path: str, cookie: str, n: int) -> list[float]:
    """Milliseconds each of ``n`` GETs of ``path`` took, body read whole."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    out = []
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        out.append((time.perf_counter() - start) * 1000)
        assert resp.status == 200 and body, resp.status
    conn.close()
    return out


def p95(values: list[float]) -> float:
    """The 95th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


# -- the clients' process -------------------------------------------------------------------


def clients(base: str, cookies: list[str]) -> None:
    """Hold one event stream per cookie open; print ``T seconds`` (monotonic) for every
    marked task change each stream receives, until stdin closes."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sel = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    for cookie in cookies:
        s = socket.create_connection((host, int(port)))
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n\r\n".encode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        buffers[s] = b""
    sel.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    return
                continue
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = s.recv(1 << 20)
            now = time.monotonic()
            if not data:
                sel.unregister(s)
                continue
            buf = buffers[s] + data
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if b"event: tasks" not in block:
                    continue
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        for task in json.loads(line[6:])["tasks"]:
                            if task["render_time"] >= MARK:
                                print(f"T {task['render_time']} {now}", flush=True)
            buffers[s] = buf


# -- the node's process -----------------------------------------------------------------------


async def measure(node: daemon.Node, big: str, args: argparse.Namespace) -> dict[str, Any]:
    """Views, event latency and idle CPU against the running ``node``."""
    dash = node.dashboard
    assert dash is not None
    cookies = []
    for _ in range(CLIENTS):
        grant = dash.sessions.issue_login("root")
        found = await dash.sessions.redeem(grant.token)
        assert found is not None
        cookies.append(f"{dash.app.cookie_name}={found[0]}")
    base = dash.base_url
    queue = await trio.to_thread.run_sync(timed_get, base, "/api/queue", cookies[0], args.requests)
    job = await trio.to_thread.run_sync(timed_get, base, f"/api/job/{big}", cookies[0], args.requests)

    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--clients", base, *cookies], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    lines = _Lines(proc.stdout)
    assert await lines.next() == "ready"
    with trio.fail_after(30):
        await _until(lambda: dash.app.streams >= CLIENTS)
    await trio.sleep(1.0)

    sent: dict[float, float] = {}
    latencies: list[float] = []
    targets = [d for d in node.book.live() if d.uuid != big][: args.changes]
    async with trio.open_nursery() as nursery:
        async def collect() -> None:
            while len(latencies) < args.changes * CLIENTS:
                parts = (await lines.next()).split()
                latencies.append((float(parts[2]) - sent[float(parts[1])]) * 1000)

        nursery.start_soon(collect)
        for i, doc in enumerate(targets):
            mark = MARK + i
            state = TaskState(gen=doc.gen, attempt=0, phase=Phase.RENDERING, stamp=node.book.stamp(),
                              worker="w1", machines=("w1",), render_time=mark)
            sent[mark] = time.monotonic()
            node.jobs.set_task(doc, 90, state)
            await trio.sleep(args.spacing)
        with trio.fail_after(30):
            await _until(lambda: len(latencies) >= args.changes * CLIENTS)
        nursery.cancel_scope.cancel()

    await trio.sleep(2.0)
    before = _cpu()
    wall = time.monotonic()
    await trio.sleep(args.idle)
    idle = (_cpu() - before) / (time.monotonic() - wall)
    streams = dash.app.streams
    proc.stdin.close()
    with trio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
    return {"queue": queue, "job": job, "latency": latencies, "idle": idle, "streams": streams}


async def _until(done: Any) -> None:
    """Poll ``done()`` (what is awaited lives in another process: no event to wait on)."""
    while True:
        if done():
            return
        await trio.sleep(0.05)


class _Lines:
    """Lines from a trio receive stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the clients' process ended")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_node(state_dir: Path, big: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start the node on the filled state dir, measure, stop."""
    prefs = config.load(None, env={}, overrides={
        "state_dir": str(state_dir), "socket": str(state_dir / "control.sock"), "listen": "127.0.0.1:0",
        "mdns": False, "share": False, "server_priority": 0, "name": "bench", "dashboard": True,
        "dashboard_listen": "127.0.0.1:0", "wake_on_lan": False, "log_level": "warning"})
    node = daemon.build(prefs, secrets.token_urlsafe(32).encode(), {})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run_node, node)
        result = await measure(node, big, args)
        nursery.cancel_scope.cancel()
    return result


def page_size() -> int:
    """Bytes of the page: every file it loads."""
    from importlib import resources

    folder = resources.files("node.dashboard").joinpath("static")
    return sum(len(f.read_bytes()) for f in folder.iterdir() if f.name.rsplit(".", 1)[-1] in ("html", "css", "js", "svg"))


def main() -> None:
    """Parse options, run, print the lines."""
    if len(sys.argv) > 1 and sys.argv[1] == "--clients":
        clients(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="GETs of each view")
    parser.add_argument("--changes", type=int, default=60, help="task state changes timed")
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between two changes")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rendernode-bench-dash-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        from node.membership.identity import load_or_create

        uuid = load_or_create(str(tmp)).uuid
        start = time.monotonic()
        big = fill(tmp, uuid)
        print(f"book: 1000 jobs, 100000 tasks (filled in {time.monotonic() - start:.1f} s); "
              f"{CLIENTS} dashboards hold the event stream open")
        r = trio.run(run_node, tmp, big, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q, j, lat = r["queue"], r["job"], r["latency"]
    print(f"(the first queue view after start: {q[0]:.0f} ms; rows are computed once per change of "
          "their job, the first time the farm summary or a view needs them)")
    print(f"queue view: median {statistics.median(q):.1f} ms, p95 {p95(q):.1f} ms")
    print(f"job view: median {statistics.median(j):.1f} ms, p95 {p95(j):.1f} ms")
    print(f"task change to {CLIENTS} clients: p95 {p95(lat):.1f} ms, median {statistics.median(lat):.1f} ms")
    print(f"idle CPU with {r['streams']} dashboards: {100 * r['idle']:.2f} % of a core")
    print(f"page with its scripts: {page_size() / 1000:.1f} KB")


if __name__ == "__main__":
    main()
