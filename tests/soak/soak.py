"""The chaos soak: jobs submitted all the time while faults hit the farm, then
every fault healed and the farm checked for anything lost.

Run by ``bench/chaos.py`` (8 hosts, 10 minutes) and by
``tests/system/test_system_chaos.py`` (6 hosts, 2 minutes).  The daemons run
with their default settings; the soak reads them only through their control
sockets (status, jobs, tasks) and their job books' SQLite files, so it holds
whatever the membership underneath.

Phases: reference frames rendered alone on this machine; the daemons started
and agreeing on a server; the soak (submitter threads; on this thread a fault
every 2-5 s, each healed when its time is up, and every 10 s a sample of each
daemon's RSS, fds and CPU and a ``status`` of each daemon no fault holds
down); the heal (every fault ended, killed daemons started); the settle (until
every job is DONE on every host and the books are identical, or a timeout);
the checks.  A daemon that exits without being killed, or a status a running
daemon leaves unanswered, is counted: both are bugs.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.client import Client
from node.errors import NodeError
from protocol.frames import parse_frames
from tests.harness.systemfarm import new_token
from tests.netlab import Bed, Host

from .faults import KINDS, Faults
from .probes import Ledger, book_digest, log_summary, machine_busy, read_book
from .workload import SUBMIT_TIMEOUT, Job, Submitter, Workload, render_reference, sha256_file

__all__ = ["Outcome", "Settings", "Soak"]

STATUS_TIMEOUT = 5.0  #: a running daemon that leaves a status unanswered this long counts as hung
START_TIMEOUT = 60.0
MB = 1 << 20
WINDOW = 3  #: samples at each end of the second half whose least is compared


@dataclass
class Settings:
    """How big and how long."""

    hosts: int = 8
    minutes: float = 10.0
    rate: float = 30.0  #: jobs submitted per minute, farm-wide
    seed: int = 0
    settle_timeout: float = 300.0  #: seconds after the last heal the farm has to settle
    fault_gap: tuple[float, float] = (2.0, 5.0)
    sample_every: float = 10.0
    submitters: int = 3  #: threads (a submit can wait on replicas for a while)
    spared: int = 2  #: hosts never killed (every other fault hits them): their growth is measured
    jobs_for: float | None = None  #: minutes jobs are submitted for (None: the whole soak)


@dataclass
class Outcome:
    """The checks' figures and the printed lines."""

    lines: list[str] = field(default_factory=list)
    lost: int = 0
    stuck: int = 0  #: jobs not acknowledged but in the books, not DONE everywhere
    frames: int = 0
    missing: int = 0
    mismatches: int = 0
    identical_after: float | None = None  #: seconds from the last heal to identical books
    rss_growth: dict[str, int] = field(default_factory=dict)  #: survivor host -> bytes over the second half
    fd_growth: dict[str, int] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)  #: daemons that exited on their own
    unanswered: list[str] = field(default_factory=list)  #: status calls a running daemon left unanswered


class Soak:
    """One soak on a fresh bed."""

    def __init__(self, bed: Bed, settings: Settings, say: Callable[[str], None] = print) -> None:
        self.bed = bed
        self.s = settings
        self.say = say
        self.rng = random.Random(settings.seed)
        self.ledger = Ledger()
        self.out = Outcome()
        self.uuid: dict[str, str] = {}
        self._clients: dict[str, Client] = {}
        self._up: dict[str, float] = {}  #: host -> when its daemon started; dropped once it answers
        self.spared = frozenset(h.name for h in self.rng.sample(bed.hosts, min(settings.spared, len(bed.hosts))))
        self.faults = Faults(bed, self.rng, self._server, self._killing, self._started, self.spared)

    # -- control calls from this thread ------------------------------------------------

    def call(self, host: Host, method: str, timeout: float = STATUS_TIMEOUT, **args: Any) -> Any:
        """A control call on ``host``'s daemon (NodeError if it does not answer)."""
        client = self._clients.get(host.name)
        if client is None or client.timeout != timeout:
            if client is not None:
                client.close()
            client = self._clients[host.name] = Client(str(host.socket_path), timeout=timeout)
        try:
            return client.call(method, **args)
        except NodeError:
            client.close()
            raise

    def _server(self) -> Host | None:
        up = [h for h in self.bed.hosts if not self.faults.down(h)]
        if not up:
            return None
        try:
            server = self.call(self.rng.choice(up), "status", timeout=2.0)["server"]
        except NodeError:
            return None
        return next((h for h in self.bed.hosts if self.uuid.get(h.name) == server), None)

    def _killing(self, host: Host) -> None:
        self.ledger.end(host.name)
        client = self._clients.pop(host.name, None)
        if client is not None:
            client.close()

    def _started(self, host: Host) -> None:
        assert host.daemon is not None
        self.ledger.start(host.name, host.daemon.pid)
        self._up[host.name] = time.monotonic()

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole soak; returns the figures and lines (also said as they come)."""
        s = self.s
        reference = render_reference(self.bed.dir / "reference")
        token = new_token()
        for host in self.bed.hosts:
            host.start_daemon(token)
            self._started(host)
        self._wait_started()
        self.workload = Workload(reference, random.Random(s.seed + 1))
        stop = threading.Event()
        interval = 60.0 / s.rate * s.submitters
        load0 = os.getloadavg()[0]
        busy0, total0 = machine_busy()
        self.t0 = t0 = time.monotonic()
        until = t0 + 60 * (s.jobs_for if s.jobs_for is not None else s.minutes)
        submitters = [Submitter(self.bed.hosts, self.workload, interval, s.seed + 2 + i, stop, until)
                      for i in range(s.submitters)]
        t_end = t0 + s.minutes * 60
        for sub in submitters:
            sub.start()
        next_fault = t0 + self.rng.uniform(*s.fault_gap)
        next_sample = t0
        load_mid = load0
        while (now := time.monotonic()) < t_end:
            self.faults.heal_due(now)
            if now >= next_fault:
                self.faults.inject()
                next_fault = time.monotonic() + self.rng.uniform(*s.fault_gap)
            if now >= next_sample:
                self._sample()
                next_sample += s.sample_every
                if now - t0 < s.minutes * 30:
                    load_mid = os.getloadavg()[0]
            self._check_exits()
            time.sleep(0.05)
        self.t_end = time.monotonic()
        stop.set()
        for host in self.bed.hosts:
            if not self.faults.down(host):
                self.ledger.sample(host.name)
        t_heal = self.faults.finish()
        for sub in submitters:
            sub.join(SUBMIT_TIMEOUT + 10)
        self._settle(t_heal)
        self._sample()
        busy1, total1 = machine_busy()
        self._check(t_heal, (load0, load_mid, os.getloadavg()[0]), (busy1 - busy0) / (total1 - total0))
        for client in self._clients.values():
            client.close()
        return self.out

    def _wait_started(self) -> None:
        """Until every daemon answers and all agree on one server."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                statuses = {h.name: self.call(h, "status") for h in self.bed.hosts}
            except NodeError:
                statuses = {}
            if statuses:
                self.uuid = {n: st["uuid"] for n, st in statuses.items()}
                views = {(st["server"], st["term"]) for st in statuses.values()}
                if len(views) == 1 and next(iter(views))[0]:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the farm did not agree on a server in {START_TIMEOUT:.0f} s: {statuses}")
            time.sleep(0.2)

    def _sample(self) -> None:
        for host in self.bed.hosts:
            self.ledger.sample(host.name)
            if self.faults.down(host):
                continue
            started = self._up.get(host.name)
            try:
                self.call(host, "status")
            except NodeError as exc:
                now = time.monotonic()
                starting = started is not None and now - started < START_TIMEOUT
                if host.daemon is not None and host.daemon.alive() and not starting:
                    self.out.unanswered.append(f"{host.name} at {now - self.t0:.0f} s: {exc.reason}")
            else:
                self._up.pop(host.name, None)

    def _check_exits(self) -> None:
        for host in self.bed.hosts:
            fault = self.faults.active.get(host.name)
            proc = host.daemon
            if proc is None or proc.alive() or (fault is not None and fault.kind == "kill"):
                continue
            tail = " | ".join(proc.read_log().splitlines()[-5:])
            self.out.exits.append(f"{host.name} exited {proc.returncode} at "
                                  f"{time.monotonic() - self.t0:.0f} s: {tail[-600:]}")
            self._killing(host)
            host.restart_daemon()
            self._started(host)

    def _settle(self, t_heal: float) -> None:
        """Until every job the books hold is DONE on every host and the books are identical."""
        deadline = t_heal + self.s.settle_timeout
        self.t_done: float | None = None
        self.pending: list[str] = []
        self.digests: dict[str, str] = {}
        jobs = {j.uuid: j for j in self.workload.jobs}
        while True:
            books = {h.name: read_book(h.state_dir) for h in self.bed.hosts}
            self.present = {u for b in books.values() for u in b if u in jobs}
            self.foreign = {u for b in books.values() for u in b if u not in jobs}
            self.digests = {name: book_digest(b) for name, b in books.items()}
            wanted = self.present | {u for u, j in jobs.items() if j.acknowledged}
            self.listing: dict[str, dict[str, dict[str, Any]]] = {}
            for h in self.bed.hosts:
                try:
                    self.listing[h.name] = {j["uuid"]: j for j in self.call(h, "jobs", timeout=30.0)}
                except NodeError:
                    self.listing[h.name] = {}
            self.pending = [f"{name}:{u[:8]}" for name, rows in self.listing.items() for u in wanted
                            if not _done(rows.get(u))]
            now = time.monotonic()
            if not self.pending and self.t_done is None:
                self.t_done = now - t_heal
            if not self.pending and len(set(self.digests.values())) == 1:
                self.out.identical_after = now - t_heal
                return
            if now > deadline:
                return
            time.sleep(1.0)

    def dump(self, path: Path) -> None:
        """Every sample, fault and job of the soak as JSON (for a closer look)."""
        t0 = self.t0
        data = {
            "lives": [{"host": life.host, "pid": life.pid, "started": life.started - t0,
                       "ended": None if life.ended is None else life.ended - t0, "cpu": life.cpu,
                       "child_cpu": life.child_cpu,
                       "samples": [[t - t0, rss, fds] for t, rss, fds in life.samples]}
                      for life in self.ledger.lives],
            "faults": [[t - t0, what] for t, what in self.faults.log],
            "jobs": [{"uuid": j.uuid, "name": j.name, "host": j.host, "frames": j.frames,
                      "submitted": j.submitted - t0, "answered": j.answered - t0 if j.answered else None,
                      "ack": j.ack, "error": j.error} for j in self.workload.jobs],
        }
        path.write_text(json.dumps(data, indent=1))

    # -- checks ----------------------------------------------------------------------------

    def _check(self, t_heal: float, loads: tuple[float, float, float], busy_share: float) -> None:
        out, s = self.out, self.s
        jobs = self.workload.jobs
        acked = [j for j in jobs if j.acknowledged]
        line = self._line
        counts = ", ".join(f"{k} {self.faults.counts[k]}" + (f" (the server {self.faults.server_kills})"
                                                              if k == "kill" else "") for k in KINDS)
        line(f"chaos soak: {s.hosts} hosts, {self.t_end - self.t0:.0f} s, seed {s.seed}, "
             f"{s.rate:.0f} jobs/min asked" + (f" for the first {s.jobs_for:g} min" if s.jobs_for is not None else "")
             + " (daemons with default timings)")
        line(f"faults injected: {sum(self.faults.counts.values())} ({counts})")
        short = sum(1 for j in acked if j.ack and j.ack.get("replicas", 0) < j.ack.get("wanted", 0))
        unanswered = [j for j in jobs if j.ack is None]
        down = sum(1 for j in unanswered if "no rendernode daemon" in j.error)
        slow = sum(1 for j in unanswered if "timed out" in j.error)
        refused = [j for j in jobs if j.ack is not None and not j.acknowledged]
        line(f"jobs submitted: {len(jobs)}, acknowledged: {len(acked)} (fewer replicas than wanted: {short}); "
             f"not acknowledged: {len(unanswered) + len(refused)} (daemon down {down}, killed during the submit "
             f"{len(unanswered) - down - slow}, no answer in {SUBMIT_TIMEOUT:.0f} s {slow}, refused "
             f"{len(refused)}); in the books: {len(self.present)}"
             + (f", unknown jobs in the books: {len(self.foreign)}" if self.foreign else ""))
        for j in [j for j in unanswered if "no rendernode daemon" not in j.error][:3] + refused[:3]:
            line(f"  {j.name} on {j.host}: {j.error[:200]}")
        lost = [j for j in acked if not all(_done(rows.get(j.uuid)) for rows in self.listing.values())]
        others = [j for j in jobs if j.uuid in self.present and not j.acknowledged]
        stuck = [j for j in others if not all(_done(rows.get(j.uuid)) for rows in self.listing.values())]
        out.lost, out.stuck = len(lost), len(stuck)
        line(f"acknowledged jobs DONE on every replica: {len(acked) - len(lost)} of {len(acked)} "
             f"(lost: {len(lost)}); jobs not acknowledged but in the books DONE everywhere: "
             f"{len(others) - len(stuck)} of {len(others)}")
        for j in (lost + stuck)[:6]:
            line("  not done: " + self._describe(j))
        self._frames([j for j in jobs if j.acknowledged or j.uuid in self.present])
        digests = set(self.digests.values())
        if out.identical_after is not None:
            line(f"books identical on all {s.hosts} hosts (digest {next(iter(digests))[:16]}): "
                 f"{out.identical_after:.1f} s after the last heal (every job DONE everywhere at "
                 f"{self.t_done:.1f} s)")
        else:
            line(f"books NOT identical {s.settle_timeout:.0f} s after the last heal: {len(digests)} digests "
                 f"among {s.hosts} hosts; DONE everywhere: "
                 + (f"at {self.t_done:.1f} s" if self.t_done is not None else
                    f"no ({len(self.pending)} host:job pairs pending, e.g. {self.pending[:6]})"))
        daemon_cpu, render_cpu = self.ledger.cpu()
        span = time.monotonic() - self.t0
        line(f"CPU: daemons {daemon_cpu:.0f} s + their renders {render_cpu:.0f} s over {span:.0f} s "
             f"({(daemon_cpu + render_cpu) / span:.2f} of the machine's {os.cpu_count()} cores); machine busy "
             f"{busy_share * 100:.0f} %, load average {loads[0]:.1f} at the start, {loads[1]:.1f} mid-soak, "
             f"{loads[2]:.1f} at the end")
        self._rerenders()
        self._growth()
        shapes, tracebacks = log_summary([h.dir / "daemon.log" for h in self.bed.hosts])
        line(f"daemon exits not caused by the soak: {len(out.exits)}; status left unanswered by a running "
             f"daemon: {len(out.unanswered)}; tracebacks in the logs: {tracebacks}; warnings and errors: "
             f"{sum(shapes.values())}")
        for text in (out.exits + out.unanswered)[:6]:
            line("  " + text)
        for shape, n in shapes.most_common(6):
            line(f"  {n} x {shape}")
        line(f"lost: {out.lost}")

    def _line(self, text: str) -> None:
        self.out.lines.append(text)
        self.say(text)

    def _describe(self, job: Job) -> str:
        states = {name: (f"{r['state']} {r['frames_done']}/{r['frames_total']}" if (r := rows.get(job.uuid))
                         else "missing") for name, rows in self.listing.items()}
        ack = job.ack or {}
        text = (f"{job.name} {job.uuid[:8]} from {job.host}, ack {ack.get('replicas')}/{ack.get('wanted')} "
                f"{job.error}; {states}")
        for host in self.bed.hosts:
            try:
                log = self.call(host, "job", job=job.uuid)["log"]
            except NodeError:
                continue
            return text + "; log: " + " | ".join(e["line"] for e in log[-8:])
        return text

    def _frames(self, jobs: list[Job]) -> None:
        out = self.out
        builtin = command = 0
        bad: list[str] = []
        for job in jobs:
            for frame, want in job.expect.items():
                got = sha256_file(job.frame_path(frame))
                if job.kind.startswith("builtin"):
                    builtin += 1
                else:
                    command += 1
                if got is None:
                    out.missing += 1
                    bad.append(f"{job.name} frame {frame} missing")
                elif got != want:
                    out.mismatches += 1
                    bad.append(f"{job.name} frame {frame} differs")
        out.frames = builtin + command
        self._line(f"frames checked: {out.frames} ({builtin} builtin, byte-compared with the same frames "
                   f"rendered alone; {command} command, by content), missing: {out.missing}, "
                   f"mismatches: {out.mismatches}")
        for text in bad[:6]:
            self._line("  " + text)

    def _rerenders(self) -> None:
        host = self.bed.hosts[0]
        tasks = again = machines = 0
        for uuid in sorted(self.present):
            try:
                rows = self.call(host, "tasks", job=uuid)
            except NodeError:
                continue
            for row in rows:
                n = len(parse_frames(row["frames"]))
                tasks += n
                if row["attempts"] > 1:
                    again += n
                if len(row["machines"]) > 1:
                    machines += n
        share = 100 * again / tasks if tasks else 0.0
        self._line(f"frames rendered more than once (allowed): {again} of {tasks} assigned more than once "
                   f"({share:.1f} %), {machines} worked on by two machines or more")

    def _growth(self) -> None:
        """RSS and fds of the daemons that lived through the soak: the least of the
        first WINDOW samples of the second half against the least of its last
        WINDOW (a lone sample catches a transfer or a render in flight; a leak
        lifts the floor); beside them the quiet farm's at the start and settled."""
        mid = self.t0 + (self.t_end - self.t0) / 2
        parts = []
        for life in sorted(self.ledger.survivors(self.t0), key=lambda life: life.host):
            half = [x for x in life.samples if mid <= x[0] <= self.t_end]
            if len(half) < 2 * WINDOW:
                continue
            first, last = half[:WINDOW], half[-WINDOW:]
            rss0, rss1 = min(x[1] for x in first), min(x[1] for x in last)
            fds0, fds1 = min(x[2] for x in first), min(x[2] for x in last)
            start, settled = life.samples[0], life.samples[-1]
            self.out.rss_growth[life.host] = rss1 - rss0
            self.out.fd_growth[life.host] = fds1 - fds0
            parts.append(f"{life.host} {rss0 / MB:.1f}->{rss1 / MB:.1f} MB ({(rss1 - rss0) / MB:+.1f}), "
                         f"{fds0}->{fds1} fds ({fds1 - fds0:+d}); at the start {start[1] / MB:.1f} MB "
                         f"{start[2]} fds, settled {settled[1] / MB:.1f} MB {settled[2]} fds")
        spared = ", ".join(sorted(self.spared)) or "none"
        if not parts:
            self._line(f"daemons that lived through the whole soak: none (spared from kills: {spared})")
            return
        rss = list(self.out.rss_growth.values())
        added = sum(1 for j in self.workload.jobs if j.uuid in self.present and mid <= j.submitted <= self.t_end)
        self._line(f"daemons that lived through the whole soak: {len(parts)} (spared from kills: {spared}); "
                   f"over the second half (least of {WINDOW} samples at each end) RSS grew "
                   f"{max(rss) / MB:+.1f} MB at most (median {statistics.median(rss) / MB:+.1f}) while every "
                   f"book gained {added} jobs, fds {max(self.out.fd_growth.values()):+d} at most "
                   f"(goal: under 5 MB and 0 fds)")
        for text in parts:
            self._line("  " + text)


def _done(row: dict[str, Any] | None) -> bool:
    return row is not None and row["state"] == "done" and row["frames_done"] == row["frames_total"]
