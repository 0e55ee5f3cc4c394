"""``bench/scale.py --netns``: real daemons on the netlab bed, one per host.

For each size of ``--hosts`` in turn, on a bed of its own: start the daemons
(at most ``--starting`` of them starting at once: on a 2-core machine a
hundred interpreters importing at once only slow each other down), wait until
the farm is one (every daemon counts every other ONLINE, ``online_peers ==
n - 1``, and all name the same server), let it settle, then measure a quiet
window: each daemon's CPU (``/proc/PID/stat``), records sent and messages
received per second (the difference of ``status``'s ``traffic``), sessions
open and opened, RSS.  The server holds a session to every worker, so its row
is printed apart from the median and the max of the others.

With ``--frames N`` (by default 500 when ``--hosts`` names one size) a
command job of N frames (the command ``true``) is then submitted on the first
host and waited for: the seconds, the machines that rendered frames and the
frames lost (not done).  A second quiet window follows it: an idle server
keeps sessions only to the workers it has assigned to, so this one shows the
server's cost per worker.  Every daemon is stopped before the next size
starts.

The helpers of ``bench/discovery.py`` (the bed, starting daemons, /proc,
stopping) are reused, not copied.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discovery
from discovery import BenchError, Daemon

from node.client import Client
from node.errors import NodeError

ONE_FARM_TARGET_S = 20.0
IDLE_RATIO_TARGET = 1.5
AFTER_JOB_SETTLE_S = 5.0
SUBMIT_TIMEOUT_S = 60.0


@dataclass
class Sample:
    """One daemon at one instant: CPU seconds and cumulative traffic."""

    cpu: float
    sent: int
    received: int
    opened: int


@dataclass
class Row:
    """One daemon over the quiet window."""

    name: str
    server: bool
    cpu: float  #: % of one core
    sent: float  #: records per second
    received: float  #: messages per second
    sessions: int
    opened: int  #: sessions opened during the window
    rss: float  #: MB


@dataclass
class SizeResult:
    """What one size measured."""

    n: int
    rows: list[Row] = field(default_factory=list)

    @property
    def median_cpu(self) -> float:
        return statistics.median(r.cpu for r in self.rows)


def farm_cpu(daemons: Sequence[Daemon]) -> float:
    """CPU seconds used so far by the daemons still running."""
    return sum(c for c in (discovery.cpu_seconds(d.proc.pid) for d in daemons) if c is not None)


def start_staggered(hosts: Sequence[Any], env: dict[str, str], args: argparse.Namespace,
                    cache: Path | None, deadline: float) -> list[Daemon]:
    """Start a daemon on each host, at most ``args.starting`` not yet answering at once;
    returns once every control socket answers ``status`` (UUIDs recorded)."""
    daemons: list[Daemon] = []
    starting: list[Daemon] = []
    todo = list(hosts)
    while todo or starting:
        while todo and len(starting) < args.starting:
            d = discovery.start_host(todo.pop(0), env, args.log_level, cache)
            daemons.append(d)
            starting.append(d)
        discovery.check_alive(starting)
        still = []
        for d in starting:
            try:
                d.uuid = str(d.call("status")["uuid"])
            except NodeError:
                still.append(d)
        starting = still
        if time.monotonic() > deadline:
            raise BenchError(f"{len(todo)} daemons not started and {len(starting)} silent at the "
                             f"deadline; first log:\n{(starting or daemons)[0].log_tail()}")
        if starting:
            time.sleep(args.poll)
    return daemons


def farm_state(d: Daemon, n: int) -> tuple[bool, str, str]:
    """(counts every other ONLINE, the server it names, a short description)."""
    s = d.call("status")
    server = str(s.get("server") or "")
    return int(s["online_peers"]) == n - 1 and bool(server), server, \
        f"{d.name}: {s['online_peers']} online, {s['sessions']} sessions, server {server[:8] or '-'}"


def wait_one_farm(daemons: Sequence[Daemon], deadline: float, poll: float) -> float:
    """Until every daemon counts all others ONLINE and all name one server, seen in
    one round; returns the time of that round's start."""
    n = len(daemons)
    pending = list(daemons)
    detail: dict[str, str] = {}
    while True:
        discovery.check_alive(daemons)
        round_start = time.monotonic()
        still = []
        for d in pending:
            try:
                ok, _, detail[d.name] = farm_state(d, n)
            except NodeError as exc:
                ok, detail[d.name] = False, f"{d.name}: {exc}"
            if not ok:
                still.append(d)
        pending = still
        if not pending:  # all were complete once: check them all in one round
            round_start = time.monotonic()
            servers = set()
            for d in daemons:
                try:
                    ok, server, detail[d.name] = farm_state(d, n)
                except NodeError as exc:
                    ok, server, detail[d.name] = False, "", f"{d.name}: {exc}"
                servers.add(server)
                if not ok:
                    pending.append(d)
            if not pending and len(servers) == 1:
                return round_start
            if not pending:  # complete, but not one server yet
                pending = list(daemons)
        if time.monotonic() > deadline:
            lines = "\n".join(f"  {detail.get(d.name, d.name)}" for d in pending[:10])
            raise BenchError(f"not one farm: {len(pending)} daemon(s) pending, e.g.\n{lines}")
        time.sleep(poll)


def sample(d: Daemon, attempts: int = 3) -> tuple[Sample, dict[str, Any]]:
    """The daemon's counters; a daemon starved of CPU may miss a status call's 5 s,
    so it is asked ``attempts`` times (each on a new connection) before the bench gives up."""
    for attempt in range(attempts):
        try:
            status = d.call("status")
            break
        except NodeError as exc:
            if attempt == attempts - 1:
                raise BenchError(f"{d.name} does not answer: {exc}") from exc
    traffic = status["traffic"]
    cpu = discovery.cpu_seconds(d.proc.pid)
    if cpu is None:
        raise BenchError(f"{d.name} is gone")
    return Sample(cpu, int(traffic["records_sent"]), int(traffic["messages_received"]),
                  int(traffic["sessions_opened"])), status


def measure_idle(daemons: Sequence[Daemon], window: float) -> list[Row]:
    """Each daemon's cost over ``window`` quiet seconds."""
    before = {}
    t0 = time.monotonic()
    for d in daemons:
        before[d.name] = sample(d)[0]
    time.sleep(window)
    rows = []
    for d in daemons:
        after, status = sample(d)
        dt = time.monotonic() - t0
        b = before[d.name]
        rows.append(Row(d.name, status.get("role") == "server", 100 * (after.cpu - b.cpu) / dt,
                        (after.sent - b.sent) / dt, (after.received - b.received) / dt,
                        int(status["sessions"]), after.opened - b.opened,
                        discovery.rss_mb(d.proc.pid) or 0.0))
    return rows


def print_table(n: int, rows: Sequence[Row], window: float, when: str = "idle") -> None:
    workers = [r for r in rows if not r.server] or list(rows)
    server = [r for r in rows if r.server]

    def line(label: str, cpu: float, sent: float, received: float, sessions: float,
             opened: float, rss: float) -> str:
        return (f"  {label:<15}{cpu:>7.2f}{sent:>9.1f}{received:>9.1f}{sessions:>9.0f}"
                f"{opened:>8.0f}{rss:>8.1f}")

    print(f"{when}, {n} hosts, {window:.0f} s window:")
    print(f"  {'':<15}{'CPU %':>7}{'sent/s':>9}{'recv/s':>9}{'sessions':>9}{'opened':>8}{'RSS MB':>8}")
    med = statistics.median
    print(line("median (all)", med(r.cpu for r in rows), med(r.sent for r in rows),
               med(r.received for r in rows), med(r.sessions for r in rows),
               med(r.opened for r in rows), med(r.rss for r in rows)))
    print(line("max (workers)", max(r.cpu for r in workers), max(r.sent for r in workers),
               max(r.received for r in workers), max(r.sessions for r in workers),
               max(r.opened for r in workers), max(r.rss for r in workers)))
    for s in server:
        print(line(f"server {s.name}", s.cpu, s.sent, s.received, s.sessions, s.opened, s.rss))
    if len(server) != 1:
        print(f"  ({len(server)} daemons call themselves server)")
    print(f"  all daemons: {sum(r.cpu for r in rows):.1f} % of one core over the window")
    if len(server) == 1 and n > 1:
        s = server[0]
        print(f"  server per worker: {s.cpu / (n - 1):.3f} % CPU, "
              f"{s.sessions / (n - 1):.2f} sessions, {s.sent / (n - 1):.2f} sent/s")


def run_job(daemons: Sequence[Daemon], bed: Any, frames: int, timeout: float, poll: float) -> bool:
    """Submit a command job of ``frames`` frames on the first host and wait for it;
    True if it ended done."""
    scene = Path(bed.dir) / "scale-scene.txt"
    scene.write_text("a scene the command job never opens\n")
    origin = daemons[0]
    cpu0, t0 = farm_cpu(daemons), time.monotonic()
    try:  # a submit waits for its replicas: more than a status call may
        with Client(origin.socket, timeout=SUBMIT_TIMEOUT_S) as client:
            ack = client.create_render_job(str(scene), frames=f"1-{frames}", renderer="command",
                                           rdata={"command": "true"}, name="scale bench")
    except NodeError as exc:
        raise BenchError(f"submit on {origin.name} failed: {exc}") from exc
    if ack.get("result_name") != "OK":
        raise BenchError(f"submit refused: {ack}")
    job = ack["uuid"]
    t_ack = time.monotonic()
    state = "?"
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        discovery.check_alive(daemons)
        try:
            summary = origin.call("jobs", job=job, selected_only=True)[0]
            state = summary["state"]
        except (NodeError, IndexError):
            pass  # a busy daemon may miss a poll
        if state in ("done", "failed"):
            break
        time.sleep(poll)
    took = time.monotonic() - t0
    cpu = farm_cpu(daemons) - cpu0
    try:
        with Client(origin.socket, timeout=SUBMIT_TIMEOUT_S) as client:
            tasks = client.copy_render_task_from(job)
    except NodeError as exc:
        raise BenchError(f"cannot read the job's tasks on {origin.name}: {exc}") from exc
    machines = {m for t in tasks for m in t["machines"]}
    lost = sum(1 for t in tasks if t["state"] != "done")
    again = sum(1 for t in tasks if t["attempts"] > 1)
    print(f"job of {frames} frames (command `true`): {state} after {took:.1f} s "
          f"(acknowledged after {t_ack - t0:.2f} s; daemons' CPU {cpu:.0f} s)")
    print(f"machines that rendered frames: {len(machines)} of {len(daemons)}; "
          f"frames rendered more than once: {again}")
    errors = Counter(f"{t['state']}: {(t['error'] or '')[:70]}" for t in tasks if t["state"] != "done")
    for text, count in errors.most_common(4):
        print(f"  {count} frames {text}")
    print(f"frames lost: {lost}")
    return state == "done"


def run_size(netlab: Any, n: int, env: dict[str, str], cache: Path | None, base: Path,
             args: argparse.Namespace) -> SizeResult:
    """One bed of ``n`` hosts: start, one farm, settle, measure, (job), stop."""
    bed: Any = None
    daemons: list[Daemon] = []
    result = SizeResult(n)
    try:
        try:
            bed = netlab.Bed(n, names=[f"s{i:03d}" for i in range(n)], base_dir=base / f"bed{n}")
            discovery.pin_neighbours(bed)
        except netlab.NetlabError as exc:
            raise BenchError(f"cannot build the netns bed: {exc}") from exc
        print(f"== {n} hosts", flush=True)
        t0 = time.monotonic()
        daemons = start_staggered(bed.hosts, env, args, cache, t0 + args.timeout)
        t_answer = time.monotonic()
        cpu_start = farm_cpu(daemons)
        print(f"all {n} daemons answering after {t_answer - t0:.1f} s (at most {args.starting} "
              f"starting at once; daemons' CPU {cpu_start:.0f} s)", flush=True)
        t_farm = wait_one_farm(daemons, t_answer + args.timeout, args.poll)
        cpu_farm = farm_cpu(daemons)
        one = max(0.0, t_farm - t_answer)
        print(f"one farm after: {one:.1f} s")
        print(f"  (from the last daemon answering; goal <= {ONE_FARM_TARGET_S:g} s "
              f"{'met' if one <= ONE_FARM_TARGET_S else 'MISSED'}; daemons' CPU meanwhile "
              f"{cpu_farm - cpu_start:.0f} s)", flush=True)
        time.sleep(15.0 if args.settle is None else args.settle)
        discovery.check_alive(daemons)
        result.rows = measure_idle(daemons, args.idle_window)
        print_table(n, result.rows, args.idle_window)
        print(f"  daemons' CPU from the first start: {farm_cpu(daemons):.0f} s over "
              f"{time.monotonic() - t0:.0f} s wall", flush=True)
        if args.frames and run_job(daemons, bed, args.frames, args.job_timeout, args.poll):
            # the server now holds a session to every worker it assigned to
            time.sleep(AFTER_JOB_SETTLE_S)
            print_table(n, measure_idle(daemons, args.idle_window), args.idle_window,
                        "idle after the job (the server holds its workers' sessions)")
    finally:
        if daemons:
            took, killed = discovery.stop_all(daemons, args.stop_timeout)
            print(f"stop: {took:.1f} s" + (f" ({killed} needed SIGKILL)" if killed else ""), flush=True)
        if bed is not None:
            bed.close()
    return result


def run_netns(args: argparse.Namespace) -> int:
    """``--netns``: every size of ``--hosts`` in turn; see the module docstring."""
    sizes = args.hosts
    if args.frames is None:
        args.frames = 500 if len(sizes) == 1 else 0
    netlab, reason = discovery.load_netlab()
    if netlab is None:
        print(f"scale bench: --netns unavailable: {reason}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="rnscale-"))
    wall0 = time.monotonic()
    status = 0
    results: list[SizeResult] = []
    try:
        env = discovery.daemon_env(secrets.token_urlsafe(32), base / "pycache")
        discovery.warm_bytecode(env)
        cache = discovery.warm_renderers(env, base)
        for n in sizes:
            results.append(run_size(netlab, n, env, cache, base, args))
    except BenchError as exc:
        print(f"scale bench: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("scale bench: interrupted", file=sys.stderr)
        status = 130
    finally:
        if args.keep or status != 0:
            print(f"logs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"wall: {time.monotonic() - wall0:.0f} s")
    if len(results) >= 2:
        low, high = results[0], results[-1]
        ratio = high.median_cpu / low.median_cpu if low.median_cpu else float("inf")
        print(f"goal: idle cost <= {IDLE_RATIO_TARGET:g} "
              f"{'met' if ratio <= IDLE_RATIO_TARGET else 'MISSED'} (median CPU per daemon: "
              + ", ".join(f"{r.n} hosts {r.median_cpu:.2f} %" for r in results) + ")")
        print(f"idle cost {high.n}/{low.n}: {ratio:.2f}")
    return status
