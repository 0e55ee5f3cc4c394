"""Dispatch benchmark: how fast one server hands out tasks.

``python bench/dispatch.py`` starts one real daemon (``python -m node daemon``,
its own process, SQLite job book, ``share = false`` so it renders nothing
itself) and connects ``--workers`` fake workers to it from this process.  Each
fake worker is a real peer: loopback TCP, Noise XXpsk3 handshake through
``protocol.PeerConnection``, Hello (capabilities ``{"command": "1"}``,
sharing), Verdict, Heartbeats.  On every Assign it answers at once, in one
write, with ``TaskUpdate(finished, RENDERRESULT_OK)`` and a ``JobDelta`` that
marks the task SUCCEEDED (what ``node.render.worker`` does for a job whose frames
leave no file), then waits for its next Assign.

The job: renderer ``command``, rdata ``{"command": "true"}``, frames
1-``--frames``, chunk 1, submitted unstarted through the control socket
before the fake workers connect (so none of them has to decode the whole job:
32 of them in one process would take seconds), then started (``start`` on the
control socket) once all of them are online, and the clock runs.  The daemon
still pushes every task state it writes to every worker, as it would to
real ones.

Before the job starts, the daemon's CPU is measured for ``--idle`` seconds with
every fake worker connected and idle (keepalives both ways, liveness): the
server's cost per worker session, printed per 1,000 workers.

Printed: the worker count, the task count, the submit time, tasks/s (tasks
over the time from the first Assign to the last task finished), and the
idle-to-assigned latency (from a worker sending its finished report to its
next Assign arriving) as median and p90.  ``--profile FILE`` runs the daemon
under cProfile and writes its stats to FILE when the run ends.

The fake workers share this process's one trio thread, so their cost is
measured here and not charged to the server, which has its own process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node import capabilities
from node.client import Client
from node.errors import DaemonNotRunning
from protocol import (
    NEED_DATA,
    ConnectionClosed,
    HandshakeComplete,
    MessageReceived,
    PeerConnection,
    ProtocolError,
)
from protocol.crdt import JobDoc, Phase, TaskState, job_to_wire
from protocol.enums import RenderResult
from protocol.messages import Assign, Heartbeat, Hello, JobDelta, Reply, TaskUpdate, Verdict
from protocol.verification import VerificationBits
from protocol.version import build_id

FARM = "bench-dispatch"
RECV_SIZE = 256 * 1024
HEARTBEAT = 0.75  #: seconds between a fake worker's keepalives (the daemon's heartbeat_interval; an idle
#: session sends one a interval, a busy one none)
HANDSHAKES = trio.CapacityLimiter(8)  #: fake workers in handshake at once
READY_TIMEOUT = 30.0  #: seconds the daemon may take to start and claim the server role
CONNECT_TIMEOUT = 10.0  #: seconds a fake worker's handshake may take
RUN_TIMEOUT = 600.0  #: seconds the whole dispatch may take
DONE_TIMEOUT = 30.0  #: seconds for the daemon to call the job done after the last task
VERIFIED = int(VerificationBits.VERIFICATIONBIT_VERIFIED | VerificationBits.VERIFICATIONBIT_ONLINE)


class SessionGone(Exception):
    """A fake worker's session ended under it."""


@dataclass
class Stats:
    """What the fake workers saw, shared by all of them."""

    total: int
    finished: set[tuple[str, int]] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    assigns: int = 0
    first_assign: float = 0.0
    cpu_at_start: float = 0.0
    idle_cpu: float = 0.0  #: the daemon's CPU seconds over the idle window, every fake worker connected
    last_finish: float = 0.0
    all_done: trio.Event = field(default_factory=trio.Event)


class FakeWorker:
    """A peer that renders every task it is given in no time."""

    def __init__(self, index: int, psk: bytes, build: str, stats: Stats) -> None:
        self.uuid = str(uuidlib.uuid4())
        self.name = f"fake-{index:02d}"
        self.key = X25519PrivateKey.generate()
        self.psk = psk
        self.build = build
        self.stats = stats
        self.conn: PeerConnection | None = None
        self.stream: trio.SocketStream | None = None
        self.lock = trio.Lock()  #: one writer at a time: records must go out in nonce order
        self.idle_since: float | None = None  #: when it last became idle (None before its first task)
        self.counter = 0

    async def connect(self, port: int) -> None:
        """Dial the daemon and run the handshake, Hellos and Verdicts, a few
        at a time: the daemon takes at most max_handshakes / 4 at once from
        one address, and every fake worker comes from 127.0.0.1."""
        async with HANDSHAKES:
            await self._connect(port)

    async def _connect(self, port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = PeerConnection(initiator=True, static_key=self.key, psk=self.psk, farm_id=FARM,
                              hint={"uuid": self.uuid, "name": self.name})
        hello = Hello(uuid=self.uuid, name=self.name, build_id=self.build, arch=capabilities.arch(),
                      proto_major=1, proto_minor=0, capabilities={"command": "1"},
                      server_priority=0, sharing=True, boot=secrets.token_hex(8))
        conn.start()
        with trio.fail_after(CONNECT_TIMEOUT):
            while True:
                event = conn.next_event()
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                if event is NEED_DATA:
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        raise RuntimeError(f"{self.name}: the daemon closed during the handshake")
                    conn.receive_data(data)
                elif isinstance(event, HandshakeComplete):
                    await stream.send_all(conn.send(hello))
                elif isinstance(event, MessageReceived) and isinstance(event.message, Hello):
                    await stream.send_all(conn.send(Verdict(True, VERIFIED)))
                elif isinstance(event, MessageReceived) and isinstance(event.message, Verdict):
                    if not event.message.ok:
                        raise RuntimeError(f"{self.name} refused by the daemon: {event.message.reason}")
                    break
                elif isinstance(event, ConnectionClosed):
                    raise RuntimeError(f"{self.name}: the daemon closed the session: {event.reason}")
        self.conn, self.stream = conn, stream

    async def run(self, port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then heartbeat and answer assignments until cancelled; a lost
        session fails the run."""
        await self.connect(port)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, ProtocolError) as group:
            raise SessionGone(f"{self.name} lost its session: {group.exceptions[0]}") from None
        raise SessionGone(f"{self.name}: the daemon closed the session")

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            await self._write([Heartbeat(seq=seq)])
            seq += 1
            await trio.sleep(HEARTBEAT)

    async def _write(self, messages: list[tuple[Any, int] | Any]) -> None:
        conn, stream = self.conn, self.stream
        assert conn is not None and stream is not None
        async with self.lock:
            out = b"".join(conn.send(*m) if isinstance(m, tuple) else conn.send(m) for m in messages)
            await stream.send_all(out)

    def _answer(self, msg: Assign) -> list[Any]:
        stats = self.stats
        now = time.perf_counter()
        if self.idle_since is not None:
            stats.latencies.append(now - self.idle_since)
        stats.assigns += 1
        if not stats.first_assign:
            stats.first_assign = now
        self.counter += 1
        stamp = (int(time.time() * 1000), self.counter, self.uuid)
        state = TaskState(gen=msg.gen, done=1, attempt=msg.attempt, phase=Phase.SUCCEEDED, stamp=stamp,
                          worker=self.uuid, machines=(self.uuid,), term=msg.term)
        delta = JobDoc(msg.job, tasks={msg.task: state})
        return [TaskUpdate(job=msg.job, task=msg.task, gen=msg.gen, attempt=msg.attempt, progress=1.0,
                           finished=True, result=int(RenderResult.RENDERRESULT_OK)),
                JobDelta([job_to_wire(delta)])]

    async def _read_loop(self) -> None:
        conn, stream = self.conn, self.stream
        assert conn is not None and stream is not None
        stats = self.stats
        while True:
            out: list[Any] = []
            finished: list[tuple[str, int]] = []
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    return
                if not isinstance(event, MessageReceived):
                    continue
                msg = event.message
                if isinstance(msg, Assign):
                    out += self._answer(msg)
                    finished.append((msg.job, msg.task))
                elif isinstance(msg, JobDelta) and event.req_id:
                    out.append((Reply(True), event.req_id))  # a replica's ack
            if out:
                await self._write(out)
                self.idle_since = now = time.perf_counter()
                stats.finished.update(finished)
                if finished:
                    stats.last_finish = now
                if len(stats.finished) >= stats.total:
                    stats.all_done.set()
            data = await stream.receive_some(RECV_SIZE)
            if not data:
                return
            conn.receive_data(data)


# -- the daemon ----------------------------------------------------------------

def free_port() -> int:
    """A loopback port nothing listens on (a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Daemon:
    """The server daemon under test."""

    proc: subprocess.Popen[bytes]
    socket: str
    port: int
    log: Path

    def cpu(self) -> float:
        """CPU seconds (user + system) the daemon has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, **args: Any) -> Any:
        """One control call."""
        with Client(self.socket, timeout=60) as c:
            return c.call(method, **args)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_daemon(tmp: Path, token: str, profile: str, log_level: str) -> Daemon:
    """Start the daemon and wait until it holds the server role."""
    port = free_port()
    sock = str(tmp / "server" / "control.sock")
    log = tmp / "server.log"
    env = {**os.environ, "RENDERNODE_TOKEN": token, "RENDERNODE_FARM": FARM, "RENDERNODE_SHARE": "false",
           "RENDERNODE_ELECTION_GRACE": "0.2"}
    env.pop("RENDERNODE_SOCKET", None)
    runner = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
    argv = [*runner, "-m", "node", "--socket", sock, "daemon", "--state-dir", str(tmp / "server"),
            "--listen", f"127.0.0.1:{port}", "--no-mdns", "--name", "bench-server", "--log-level", log_level]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    daemon = Daemon(proc, sock, port, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if daemon.call("status").get("role") == "server":
                return daemon
        except DaemonNotRunning:
            pass
        time.sleep(0.05)
    daemon.stop()
    raise RuntimeError(f"the daemon did not become the server within {READY_TIMEOUT:.0f} s")


# -- the run ---------------------------------------------------------------------

async def report_progress(stats: Stats, daemon: Daemon) -> None:
    """Every second, how many tasks are done and the CPU the daemon and this
    process used (``--verbose``)."""
    start = last = time.perf_counter()
    cpu, own = daemon.cpu(), time.process_time()
    while True:
        await trio.sleep(1)
        now, cpu_now, own_now = time.perf_counter(), daemon.cpu(), time.process_time()
        print(f"  {now - start:5.1f} s: {len(stats.finished)} tasks, {stats.assigns} assignments; "
              f"cpu: daemon {(cpu_now - cpu) / (now - last):4.0%}, workers {(own_now - own) / (now - last):4.0%}; "
              f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        last, cpu, own = now, cpu_now, own_now


async def dispatch(daemon: Daemon, token: str, workers: int, frames: int,
                   verbose: bool, idle: float) -> tuple[Stats, float, float, float]:
    """Connect the fake workers, submit the job, start it, wait until every task
    finished.  Returns the stats, the submit time, the seconds until the daemon
    called the job done, and the daemon's CPU seconds from the start to the last task."""
    from protocol.connection import derive_psk

    psk = derive_psk(token.encode(), FARM)
    build = build_id(capabilities.version(), os.environ)
    stats = Stats(total=frames)
    fakes = [FakeWorker(i, psk, build, stats) for i in range(workers)]
    t0 = time.perf_counter()
    job = await trio.to_thread.run_sync(lambda: daemon.call(
        "submit", scene="bench.scene", renderer="command", frames=f"1-{frames}", chunk=1,
        rdata={"command": "true"}, name="bench: dispatch", start=False))
    submit = time.perf_counter() - t0
    async with trio.open_nursery() as nursery:
        if verbose:
            nursery.start_soon(report_progress, stats, daemon)
        async with trio.open_nursery() as connecting:
            for fake in fakes:
                connecting.start_soon(nursery.start, fake.run, daemon.port)

        def online() -> int:
            rows = daemon.call("machines", bits=VERIFIED)
            return sum(1 for r in rows if r["uuid"] in {f.uuid for f in fakes})

        with trio.fail_after(READY_TIMEOUT):
            while await trio.to_thread.run_sync(online) < workers:  # noqa: ASYNC110 (another process)
                await trio.sleep(0.05)
        if idle > 0:  # the server's cost of the sessions alone: keepalives and liveness
            idle_from = daemon.cpu()
            await trio.sleep(idle)
            stats.idle_cpu = daemon.cpu() - idle_from
        stats.cpu_at_start = daemon.cpu()
        await trio.to_thread.run_sync(lambda: daemon.call("start", job=job["uuid"]))
        with trio.fail_after(RUN_TIMEOUT):
            await stats.all_done.wait()
        t1 = time.perf_counter()
        cpu = daemon.cpu() - stats.cpu_at_start
        with trio.fail_after(DONE_TIMEOUT):
            while (await trio.to_thread.run_sync(  # noqa: ASYNC110 (state of another process)
                    lambda: daemon.call("job", job=job["uuid"])))["state"] != "done":
                await trio.sleep(0.05)
        done_after = time.perf_counter() - t1
        nursery.cancel_scope.cancel()
    return stats, submit, done_after, cpu


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    """Parse arguments, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds the server's idle CPU is measured with every worker connected, before the job")
    parser.add_argument("--profile", default="", help="run the daemon under cProfile, stats to this file")
    parser.add_argument("--keep", action="store_true", help="keep the daemon's state dir and log")
    parser.add_argument("--log-level", default="warning", help="the daemon's log level")
    parser.add_argument("--verbose", action="store_true", help="print progress every second")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rn-dispatch-"))
    token = secrets.token_urlsafe(32)
    daemon = start_daemon(tmp, token, os.path.abspath(args.profile) if args.profile else "",
                          args.log_level)
    ok = False
    try:
        stats, submit, done_after, cpu = trio.run(dispatch, daemon, token, args.workers, args.frames,
                                                  args.verbose, args.idle)
        ok = True
    except* SessionGone as group:
        lost = [str(e) for e in _leaves(group)]
        sys.exit(f"{len(lost)} fake workers lost their session, e.g. {lost[0]}; the daemon's machine log "
                 f"(in {tmp}/server/rendernode.db) says why")
    finally:
        daemon.stop()
        if args.keep or not ok:
            print(f"state and log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = stats.last_finish - stats.first_assign
    print(f"workers: {args.workers}")
    print(f"tasks: {len(stats.finished)}")
    print(f"assignments: {stats.assigns}")
    print(f"submit: {submit * 1000:.0f} ms")
    print(f"dispatch: {elapsed:.2f} s (job done on the daemon {done_after * 1000:.0f} ms after the last task)")
    if args.idle > 0:
        share = stats.idle_cpu / args.idle * 100
        print(f"server idle cpu: {share:.2f} % of a core with {args.workers} workers "
              f"({share / args.workers * 1000:.1f} % per 1,000 workers)")
    print(f"daemon cpu per task: {cpu / len(stats.finished) * 1e6:.0f} us")
    print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    print(f"tasks/s: {len(stats.finished) / elapsed:.0f}")
    print(f"idle-to-assigned median: {statistics.median(stats.latencies) * 1000:.1f} ms")
    print(f"idle-to-assigned p90: {percentile(stats.latencies, 90) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
