"""Fan-out benchmark: one asset from its origin to every other host, side by side.

``python bench/fanout.py --hosts 16 --size 64MiB --link 100mbit`` builds a
netlab bed (``tests/netlab``: one network namespace per host, one bridge),
caps every host's link at ``--link`` in both directions (``host.cap``), starts
one ``rendernode daemon`` per host (static peers; ``--discovery mdns`` for
multicast discovery instead), waits for the full mesh and an agreed server,
and then, in one run, distributes a file of ``--size`` random bytes from one
host (the origin: the first host that is not the server) to the others:

* swarm: a ``command`` job (rdata ``{"command": "true", "assets": [file]}``)
  submitted on the origin with NOREQUESTONDEMAND, so every worker fetches the
  assets when the job starts, from any peer that holds chunks;
* origin-only: the same with NOPEERTOPEERASSETDISTRIBUTION added, so workers
  fetch only from the origin and the server;
* libtorrent (if ``import libtorrent`` works): one libtorrent session per host
  (TCP only, uTP, DHT, LSD, UPnP and NAT-PMP off), every peer told every other
  peer's address, the origin seeding, on the same hosts and caps, after the
  rendernode daemons are stopped;
* plain TCP: every host sends size / (hosts - 1) bytes of zeros to every
  other host at once, one connection each (no protocol, crypto, disk, or
  choice of source): what the bed and this machine carry at best, so the
  swarm's figure can be read against it.

Each mode uses a file of its own (fresh random bytes: no chunk is already on a
worker).  The clock starts just before the submit (libtorrent: when the
torrent is added everywhere) and stops when every other host holds every
chunk: for rendernode, each host's GetRepository (the call behind
``rendernode repo --json``, made through the control socket) shows
``chunks_here == chunks`` for the job's manifest; for libtorrent, each
session reports it is seeding.  The submit runs in a thread (it is
acknowledged only once the job's replicas hold the asset), the manifest's id
is computed ahead, and the hosts are polled every ``--poll`` s from 0.8 x the
bound on (no host can be done sooner; polls cost the daemons CPU).  Printed:
the seconds of each mode (and the first / median / last host), the CPU the
processes and the whole machine spent meanwhile (on a small machine the
daemons' CPU, not the links, can be the limit), the bound (size / link rate:
every byte must cross each receiving host's capped link once), and as the
last line ``swarm/bound: R``.  ``--profile PY_SPY`` prints where the origin
and one worker spend their time.

Exit status: 0 when every mode that ran completed, 1 when one did not (or a
daemon died), 2 for a usage problem; with ``--check`` a missed target
(swarm/bound <= 1.3 and swarm no slower than libtorrent) also exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (ROOT, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from node.assets.jobassets import collect  # noqa: E402
from node.assets.store import ChunkStore  # noqa: E402
from node.client import Client  # noqa: E402
from node.errors import NodeError  # noqa: E402

discovery: Any = importlib.import_module("discovery")  # bench/discovery.py: launching and polling

TARGET_RATIO = 1.3
SUBMIT_TIMEOUT = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LT_PORT = 6881
TCP_PORT = 6882
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64MiB`` -> 67108864; ``64MB`` -> 64000000; a bare number is bytes."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 64MiB")
    number, prefix, binary = m.groups()
    power = "kmg".find(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary or not prefix else 1000) ** power)


def random_file(path: Path, size: int) -> None:
    """``size`` random bytes in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


# -- rendernode --------------------------------------------------------------------


def start_daemons(bed: Any, token: str, env: dict[str, str], log_level: str,
                  static: bool) -> list[Any]:
    """One daemon per host: static peers (all others) or mDNS."""
    extra = {k: v for k, v in env.items() if k.startswith("PYTHONPYCACHE")}
    for key in [k for k in os.environ if k.startswith("RENDERNODE_")]:
        del os.environ[key]
    daemons = []
    for host in bed.hosts:
        args = ["--log-level", log_level]
        if static:
            args.append("--no-mdns")
            for other in bed.hosts:
                if other is not host:
                    args += ["--peer", other.listen]
        proc = host.start_daemon(token, extra_args=args, env=extra)
        d = discovery.Daemon(host.name, str(host.socket_path), Path(proc.log_path), proc,
                             proc.terminate, proc.kill)
        d.state_dir = host.state_dir
        daemons.append(d)
    return daemons


def wait_server(daemons: Sequence[Any], deadline: float, poll: float) -> str:
    """Until every daemon obeys the same server; returns its UUID."""
    while True:
        discovery.check_alive(daemons)
        try:
            views = {(s["server"], s["term"]) for s in (d.call("status") for d in daemons)}
        except NodeError:
            views = set()
        if len(views) == 1:
            server, term = next(iter(views))
            if server and term:
                return str(server)
        if time.monotonic() > deadline:
            raise discovery.BenchError(f"no agreed server: {views}")
        time.sleep(poll)


def start_profilers(py_spy: str | None, daemons: Sequence[Any],
                    workdir: Path) -> list[tuple[subprocess.Popen[bytes], Path, str]]:
    """``py-spy record`` (collapsed stacks) of each daemon, if asked for."""
    spies = []
    for d in daemons if py_spy else []:
        out = workdir / f"profile-{d.name}.txt"
        proc = subprocess.Popen([str(py_spy), "record", "--pid", str(d.proc.pid), "--format", "raw",
                                 "--rate", "250", "--gil", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((proc, out, d.name))
    if spies:
        time.sleep(1.0)  # py-spy attaches
    return spies


def stop_profilers(spies: list[tuple[subprocess.Popen[bytes], Path, str]]) -> None:
    """Stop the profilers and print each daemon's top functions by own time."""
    for proc, out, name in spies:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        own: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines() if out.exists() else []:
            stack, _, count = line.rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            own[leaf] = own.get(leaf, 0) + int(count)
            total += int(count)
        print(f"  profile of {name} ({total} samples, {out}):")
        for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
            print(f"    {100 * n / max(total, 1):5.1f} %  {leaf}")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far ((0, 0) if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_of(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of all ``pids``."""
    both = [proc_cpu(p) for p in pids]
    return sum(u for u, _ in both), sum(s for _, s in both)


def cpu_line(what: str, before: tuple[float, float], after: tuple[float, float],
             busy: float, wall: float) -> str:
    """What the processes and the whole machine spent in ``wall`` seconds."""
    user, system = after[0] - before[0], after[1] - before[1]
    cores = os.cpu_count() or 1
    return (f"{what} CPU {user + system:.1f} s (user {user:.1f}, system {system:.1f}) in "
            f"{wall:.1f} s = {100 * (user + system) / wall / cores:.0f} % of {cores} cores; "
            f"the whole machine was {100 * busy / wall / cores:.0f} % busy")


def manifest_rows(d: Any) -> dict[str, dict[str, Any]]:
    """The asset rows of a daemon's repository, by manifest."""
    return {row["manifest"]: row for row in d.call("repo")["assets"]}


def run_rendernode_mode(name: str, flags: list[str], origin: Any, others: Sequence[Any],
                        workdir: Path, size: int, rate: int, timeout: float, poll: float,
                        profile: str | None = None) -> list[float]:
    """Submit a job naming a fresh file on ``origin``; seconds until each other host holds it."""
    asset = workdir / "asset.bin"
    random_file(asset, size)
    scene = workdir / "job.txt"
    scene.write_text(f"fan-out bench, mode {name}\n")
    # The manifest the submit will make (same files, same root: same id), found ahead
    # and not timed, so the hosts can be watched while the submit still runs.
    mid = collect(ChunkStore(workdir / "scratch"), str(scene), "command", [str(asset)]).manifest
    shutil.rmtree(workdir / "scratch")
    spies = start_profilers(profile, [origin, others[-1]], workdir)
    pids = [d.proc.pid for d in (origin, *others)]
    cpu0 = cpu_of(pids)
    busy0 = machine_busy()
    submitted: dict[str, Any] = {}

    def submit() -> None:  # acknowledged once the job's replicas hold the asset too
        try:
            with Client(origin.socket, timeout=SUBMIT_TIMEOUT) as client:
                submitted.update(client.call(
                    "submit", scene=str(scene), renderer="command", frames="1",
                    name=f"fanout-{name}", flags=flags,
                    rdata={"command": "true", "assets": [str(asset)]}))
        except NodeError as exc:
            submitted["error"] = str(exc)
        submitted["at"] = time.monotonic() - t0

    t0 = time.monotonic()
    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    done: dict[str, float] = {}
    pending = list(others)
    deadline = t0 + timeout
    time.sleep(max(0.0, t0 + 0.8 * size * 8 / rate - time.monotonic()))  # none can be done sooner
    while pending:
        discovery.check_alive([origin, *others])
        still = []
        for d in pending:
            try:
                row = manifest_rows(d).get(mid)
            except NodeError:
                row = None
            if row is not None and row["chunks_here"] == row["chunks"]:
                done[d.name] = time.monotonic() - t0
            else:
                still.append(d)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                detail = []
                for d in pending[:6]:
                    try:
                        row = manifest_rows(d).get(mid)
                    except NodeError as exc:
                        row = {"error": str(exc)}
                    detail.append(f"{d.name}: {row and (row.get('chunks_here'), row.get('chunks'))}")
                raise discovery.BenchError(f"{name}: {len(pending)} host(s) incomplete after "
                                           f"{timeout:.0f} s: {'; '.join(detail)}")
            time.sleep(poll)
    wall = time.monotonic() - t0
    cpu = cpu_of(pids)
    busy = machine_busy() - busy0
    stop_profilers(spies)
    submitter.join(SUBMIT_TIMEOUT)
    jobs = manifest_rows(origin).get(mid, {}).get("jobs", [])
    if submitted.get("result_name") == "OK":
        print(f"  {name}: submit acknowledged after {submitted['at']:.2f} s (the origin chunks "
              f"the file; {submitted.get('replicas')} replicas fetch it first)", flush=True)
    elif jobs:
        print(f"  {name}: the submit call ended after {submitted.get('at', 0):.1f} s without an "
              f"acknowledgement ({submitted.get('error') or submitted}); the job exists", flush=True)
    else:
        raise discovery.BenchError(f"submit failed: {submitted}")
    print("  " + cpu_line("daemons'", cpu0, cpu, busy, wall), flush=True)
    # Not timed: let every worker materialise the files before the job goes (and gc runs).
    marks = [Path(d.state_dir) / "assets" / mid / ".complete" for d in others]
    while not all(m.exists() for m in marks) and time.monotonic() < deadline:
        time.sleep(poll)
    for job in jobs:
        try:
            origin.call("delete", job=job, inform_clients=True)
        except NodeError:
            pass
    return sorted(done.values())


def gc_all(daemons: Sequence[Any]) -> None:
    """Drop every manifest no live job uses (between modes: memory, not timing)."""
    for d in daemons:
        try:
            d.call("repo_gc")
        except NodeError:
            pass


# -- libtorrent --------------------------------------------------------------------


def libtorrent_missing() -> str | None:
    """None if libtorrent imports, else why not."""
    try:
        import libtorrent  # noqa: F401
    except ImportError as exc:
        return (f"libtorrent does not import ({exc}); `pip install libtorrent` has no wheel "
                f"for this Python ({sys.version.split()[0]}) or failed")
    return None


def make_torrent(path: Path, out: Path) -> tuple[int, int]:
    """Write a .torrent of ``path``; (piece size, pieces)."""
    import libtorrent as lt

    if hasattr(lt, "list_files"):  # libtorrent >= 2.1
        t = lt.create_torrent(lt.list_files(str(path)))
    else:
        fs = lt.file_storage()
        lt.add_files(fs, str(path))
        t = lt.create_torrent(fs)
    lt.set_piece_hashes(t, str(path.parent))
    out.write_bytes(lt.bencode(t.generate()))
    info = lt.torrent_info(str(out))
    return info.piece_length(), info.num_pieces()


def lt_agent(args: argparse.Namespace) -> int:
    """One libtorrent peer in a host of the bed (run by the bench, not by hand).

    Writes ``ready`` to ``--status`` once listening, waits for ``--go`` to
    exist, adds the torrent (seeding, for the origin), tells it every peer
    address, writes ``done <seconds>`` when it holds every piece and goes on
    seeding until killed.
    """
    import libtorrent as lt

    report = _status_writer(args.status)
    ses = lt.session({
        "listen_interfaces": f"{args.addr}:{LT_PORT}",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "enable_outgoing_tcp": True, "enable_incoming_tcp": True,
        "alert_mask": 0,
    })
    info = lt.torrent_info(args.torrent)
    report("ready")
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.005)
    t0 = time.monotonic()
    atp = lt.add_torrent_params()
    atp.ti = info
    atp.save_path = args.save
    if args.seed:
        atp.flags |= lt.torrent_flags.seed_mode
    handle = ses.add_torrent(atp)
    for peer in args.peers.split(","):
        if peer and peer != args.addr:
            handle.connect_peer((peer, LT_PORT))
    while not handle.status().is_seeding:
        time.sleep(0.02)
    report(f"done {time.monotonic() - t0:.3f}")
    while True:
        time.sleep(3600)


def _status_writer(path: str) -> Callable[[str], None]:
    """A function that replaces the status file at ``path`` with a text, atomically."""
    status = Path(path)

    def report(text: str) -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, status)

    return report


def tcp_agent(args: argparse.Namespace) -> int:
    """One host of the plain-TCP ceiling (run by the bench, not by hand).

    Listens on ``TCP_PORT``, writes ``ready``, waits for ``--go``, then sends
    ``--bytes`` to every other host at once over one TCP connection each and
    writes ``done <seconds>`` once it has received as much from every other.
    """
    import socket

    report = _status_writer(args.status)
    peers = [p for p in args.peers.split(",") if p and p != args.addr]
    each = int(args.bytes)
    srv = socket.create_server((args.addr, TCP_PORT), backlog=len(peers) + 4)
    got = [0]
    lock = threading.Lock()

    def receive(conn: socket.socket) -> None:
        while data := conn.recv(1 << 18):
            with lock:
                got[0] += len(data)

    def accept() -> None:
        for _ in peers:
            conn, _ = srv.accept()
            threading.Thread(target=receive, args=(conn,), daemon=True).start()

    def send(peer: str) -> None:
        block = bytes(1 << 16)
        with socket.create_connection((peer, TCP_PORT)) as conn:
            left = each
            while left > 0:
                left -= conn.send(block[:min(left, len(block))])

    threading.Thread(target=accept, daemon=True).start()
    report("ready")
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.005)
    t0 = time.monotonic()
    for peer in peers:
        threading.Thread(target=send, args=(peer,), daemon=True).start()
    while got[0] < each * len(peers):
        time.sleep(0.01)
    report(f"done {time.monotonic() - t0:.3f}")
    while True:
        time.sleep(3600)


def run_agents(bed: Any, argvs: list[list[str]], statuses: list[Path], go: Path, waiting: set[int],
               label: str, timeout: float, poll: float) -> list[float]:
    """Start one agent per host, wait until all are ready, touch ``go``; seconds until
    each host of ``waiting`` reports done (the agents' CPU is printed)."""
    procs = [host.spawn(argv, log_path=host.dir / f"{label}.log") for host, argv in zip(bed.hosts, argvs, strict=True)]
    deadline = time.monotonic() + 30
    while not all(s.exists() for s in statuses):
        for p in procs:
            if not p.alive():
                raise discovery.BenchError(f"a {label} agent died:\n{p.read_log()[-2000:]}")
        if time.monotonic() > deadline:
            raise discovery.BenchError(f"{label} agents did not get ready")
        time.sleep(0.05)
    cpu0 = cpu_of([p.pid for p in procs])
    busy0 = machine_busy()
    t0 = time.monotonic()
    go.touch()
    done: list[float] = []
    while waiting:
        for i in sorted(waiting):
            text = statuses[i].read_text() if statuses[i].exists() else ""
            if text.startswith("done"):
                done.append(time.monotonic() - t0)
                waiting.discard(i)
        if waiting:
            if time.monotonic() - t0 > timeout:
                raise discovery.BenchError(f"{label}: {len(waiting)} host(s) incomplete after "
                                           f"{timeout:.0f} s")
            time.sleep(poll)
    wall = time.monotonic() - t0
    print("  " + cpu_line(f"{label} processes'", cpu0, cpu_of([p.pid for p in procs]),
                          machine_busy() - busy0, wall), flush=True)
    for p in procs:
        p.kill()
    return sorted(done)


def run_tcp(bed: Any, base: Path, size: int, timeout: float, poll: float) -> list[float]:
    """Plain TCP, every host to every other at once (``size`` / (hosts - 1) to each):
    what the bed carries with no protocol, crypto, disk or choice of source."""
    d = base / "tcp"
    d.mkdir(parents=True, exist_ok=True)
    addrs = ",".join(h.addr for h in bed.hosts)
    each = size // (len(bed.hosts) - 1)
    statuses = [d / f"{h.name}.status" for h in bed.hosts]
    argvs = [[sys.executable, str(Path(__file__).resolve()), "--tcp-agent", "--addr", h.addr,
              "--peers", addrs, "--bytes", str(each), "--go", str(d / "go"), "--status", str(st)]
             for h, st in zip(bed.hosts, statuses, strict=True)]
    return run_agents(bed, argvs, statuses, d / "go", set(range(len(bed.hosts))), "tcp", timeout, poll)


def run_libtorrent(bed: Any, origin_index: int, base: Path, size: int, timeout: float,
                   poll: float) -> tuple[list[float], str]:
    """A libtorrent session per host, the origin seeding; seconds until each other host seeds."""
    src = base / "lt" / "seed" / "asset.bin"
    random_file(src, size)
    torrent = base / "lt" / "asset.torrent"
    piece, pieces = make_torrent(src, torrent)
    go = base / "lt" / "go"
    addrs = ",".join(h.addr for h in bed.hosts)
    argvs = []
    statuses = []
    for i, host in enumerate(bed.hosts):
        save = src.parent if i == origin_index else base / "lt" / host.name
        save.mkdir(parents=True, exist_ok=True)
        status = base / "lt" / f"{host.name}.status"
        statuses.append(status)
        argvs.append([sys.executable, str(Path(__file__).resolve()), "--lt-agent", "--torrent",
                      str(torrent), "--save", str(save), "--addr", host.addr, "--peers", addrs,
                      "--go", str(go), "--status", str(status)] + (["--seed"] if i == origin_index else []))
    waiting = {i for i in range(len(bed.hosts)) if i != origin_index}
    done = run_agents(bed, argvs, statuses, go, waiting, "libtorrent", timeout, poll)
    return done, f"libtorrent {_lt_version()}, piece {piece >> 10} KiB x {pieces}"


def _lt_version() -> str:
    import libtorrent as lt

    return str(lt.__version__)


# -- the run -----------------------------------------------------------------------


def fmt_times(times: Sequence[float]) -> str:
    return (f"{times[-1]:.1f} s (hosts done: first {times[0]:.1f}, median "
            f"{statistics.median(times):.1f}, last {times[-1]:.1f})")


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    netlab, reason = discovery.load_netlab()
    if netlab is None:
        print(f"fanout bench: {reason}", file=sys.stderr)
        return 2
    rate = netlab.parse_rate(args.link)
    bound = size * 8 / rate
    token = secrets.token_urlsafe(32)
    base = Path(tempfile.mkdtemp(prefix="rnfanout-"))
    bed: Any = None
    daemons: list[Any] = []
    status = 0
    results: dict[str, float] = {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"hosts: {args.hosts}, asset: {size / (1 << 20):g} MiB, links capped at {args.link} "
          f"each way, discovery: {args.discovery}", flush=True)
    try:
        env = discovery.daemon_env(token, base / "pycache")
        discovery.warm_bytecode(env)
        try:
            bed = netlab.Bed(args.hosts, names=[f"f{i:02d}" for i in range(args.hosts)],
                             base_dir=base / "bed")
            discovery.pin_neighbours(bed)
            for host in bed.hosts:
                host.cap(args.link)
        except netlab.NetlabError as exc:
            raise discovery.BenchError(f"cannot build the netns bed: {exc}") from exc
        origin_index = 0
        if {"swarm", "origin"} & set(modes):
            daemons = start_daemons(bed, token, env, args.log_level, args.discovery == "static")
            t_start = time.monotonic()
            discovery.wait_sockets(daemons, t_start + 60, 0.05)
            discovery.wait_mesh(daemons, time.monotonic() + 60, 0.1)
            server = wait_server(daemons, time.monotonic() + 30, 0.1)
            origin_index = next(i for i, d in enumerate(daemons) if d.uuid != server)
            origin = daemons[origin_index]
            others = [d for d in daemons if d is not origin]
            server_name = next(d.name for d in daemons if d.uuid == server)
            print(f"mesh and server ready after {time.monotonic() - t_start:.1f} s; origin "
                  f"{origin.name}, server {server_name}", flush=True)
            for mode in ("swarm", "origin"):
                if mode not in modes:
                    continue
                flags = ["NOREQUESTONDEMAND"]
                if mode == "origin":
                    flags.append("NOPEERTOPEERASSETDISTRIBUTION")
                times = run_rendernode_mode(mode, flags, origin, others, base / "assets" / mode,
                                            size, rate, args.timeout, args.poll, args.profile)
                results[mode] = times[-1]
                label = "swarm" if mode == "swarm" else "origin-only (origin + server)"
                print(f"{label}: {fmt_times(times)}", flush=True)
                gc_all(daemons)
            discovery.stop_all(daemons, 10.0)
            daemons = []
        if "libtorrent" in modes:
            why = libtorrent_missing()
            if why is not None:
                print(f"libtorrent: not run: {why}", flush=True)
            else:
                times, what = run_libtorrent(bed, origin_index, base, size, args.timeout, args.poll)
                results["libtorrent"] = times[-1]
                print(f"libtorrent (TCP only, {what}): {fmt_times(times)}", flush=True)
        if "tcp" in modes:
            times = run_tcp(bed, base, size, args.timeout, args.poll)
            results["tcp"] = times[-1]
            print(f"plain TCP, every host to every other at once (the bed's ceiling here): "
                  f"{fmt_times(times)}", flush=True)
        print(f"bound (size / link rate = {size / (1 << 20):g} MiB * 8 / {rate / 1e6:g} Mbit): "
              f"{bound:.1f} s")
        if "tcp" in results:
            print(f"plain TCP/bound: {results['tcp'] / bound:.2f}")
        if "swarm" in results and "libtorrent" in results:
            print(f"swarm/libtorrent: {results['swarm'] / results['libtorrent']:.2f}")
        if "origin" in results and "swarm" in results:
            print(f"origin-only/swarm: {results['origin'] / results['swarm']:.2f}")
        if "swarm" in results:
            ratio = results["swarm"] / bound
            ok = ratio <= TARGET_RATIO and results["swarm"] <= results.get("libtorrent", 1e9)
            if args.check and not ok:
                status = 1
            print(f"swarm/bound: {ratio:.2f}", flush=True)
    except discovery.BenchError as exc:
        print(f"fanout bench: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("fanout bench: interrupted", file=sys.stderr)
        status = 130
    finally:
        if daemons:
            discovery.stop_all(daemons, 10.0)
        if bed is not None:
            bed.close()
        sys.stdout.flush()
        if args.keep or status != 0:
            print(f"logs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=16, help="hosts in the bed (default 16)")
    parser.add_argument("--size", default="64MiB", help="asset size (default 64MiB)")
    parser.add_argument("--link", default="100mbit", help="cap of every host's link (default 100mbit)")
    parser.add_argument("--modes", default="swarm,origin,libtorrent,tcp",
                        help="comma-separated: swarm, origin, libtorrent, tcp (default all)")
    parser.add_argument("--discovery", choices=["static", "mdns"], default="static",
                        help="how the daemons find each other (default static peers)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per mode")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--profile", metavar="PY_SPY",
                        help="path of py-spy: profile the origin and one worker during each "
                             "rendernode mode and print their top functions")
    agent = parser.add_argument_group("libtorrent agent (internal)")
    agent.add_argument("--lt-agent", action="store_true", help=argparse.SUPPRESS)
    agent.add_argument("--tcp-agent", action="store_true", help=argparse.SUPPRESS)
    agent.add_argument("--bytes", help=argparse.SUPPRESS)
    agent.add_argument("--torrent", help=argparse.SUPPRESS)
    agent.add_argument("--save", help=argparse.SUPPRESS)
    agent.add_argument("--addr", help=argparse.SUPPRESS)
    agent.add_argument("--peers", default="", help=argparse.SUPPRESS)
    agent.add_argument("--go", help=argparse.SUPPRESS)
    agent.add_argument("--status", help=argparse.SUPPRESS)
    agent.add_argument("--seed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lt_agent:
        return lt_agent(args)
    if args.tcp_agent:
        return tcp_agent(args)
    if not 2 <= args.hosts <= 250:
        parser.error("--hosts must be between 2 and 250")
    try:
        parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
