"""Discovery benchmark: how fast N daemons find and verify each other, and what they cost idle.

``python bench/discovery.py --nodes 32`` starts N ``rendernode daemon``
processes on loopback (mDNS on 127.0.0.1, peers on 127.0.0.1:0, one fresh farm
token, temporary state directories), then measures:

* startup: from the first process start until every control socket answers
  ``status`` (interpreter + imports + the node's build; on a small machine N
  interpreters starting at once compete for the CPU).  Fresh state dirs mean a
  node's first start, which asks external renderers (blender, povray) their
  versions; ``--warm-renderers`` seeds their cache, as on a restart;
* mesh: from the moment the *last* control socket answered until every node
  lists every other node ONLINE and VERIFIED (``get_machines_list``);
* idle cost: a few seconds after the mesh is complete, each daemon's VmRSS
  (median, min, max) and its CPU use over that quiet window (heartbeats and
  mDNS upkeep only).

Then it stops every daemon (SIGTERM, SIGKILL after ``--stop-timeout``) and
removes the temporary directories.  Exit status: 0 when the mesh completed,
1 when it did not (or a daemon died), 2 for a usage problem; with ``--check``
a missed target (mesh < 3 s, idle RSS <= 50 MB) also exits 1.

``--netns`` runs each daemon in its own network namespace host of the netlab
test bed (``tests/netlab``), one bridge between them, instead of on loopback:
real multicast mDNS on each host's own interface, one daemon per host (up to
250 hosts).  The bed lives in the bench's temporary directory, so ``--keep``
keeps the daemons' logs (``bed/bNN/daemon.log``).

The bench polls the daemons from one Python process; on a 2-core machine the
poller competes with the daemons too, so it only polls nodes not yet complete
and sleeps ``--poll`` seconds between rounds.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]

from node.client import Client  # noqa: E402
from node.errors import NodeError  # noqa: E402

MESH_TARGET_S = 3.0
RSS_TARGET_MB = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Process(Protocol):
    """What the bench needs of a daemon process (subprocess.Popen or netlab.Proc)."""

    pid: int

    def poll(self) -> int | None: ...


@dataclass
class Daemon:
    """One daemon under test."""

    name: str
    socket: str
    log_path: Path
    proc: Process
    terminate: Callable[[], None]
    kill: Callable[[], None]
    uuid: str = ""
    client: Client | None = None
    complete_at: float | None = None
    cpu_marks: dict[str, float] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, method: str, **args: Any) -> Any:
        if self.client is None:
            self.client = Client(self.socket, timeout=5.0)
        try:
            return self.client.call(method, **args)
        except NodeError:
            self.close()
            raise

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class BenchError(RuntimeError):
    """The run cannot go on (a daemon died, a phase timed out)."""


# -- reading /proc ---------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB (MiB), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def smaps_mb(pid: int) -> tuple[float, float] | None:
    """(PSS, USS) of ``pid`` in MB: its fair share of shared pages, and its private pages."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kb[parts[0][:-1]] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return kb.get("Pss", 0) / 1024, uss / 1024


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid: int) -> int | None:
    """Voluntary context switches of the main (trio) thread of ``pid``: its wake-ups."""
    try:
        for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def mark_cpu(daemons: Sequence[Daemon], label: str) -> None:
    for d in daemons:
        cpu = cpu_seconds(d.proc.pid)
        if cpu is not None:
            d.cpu_marks[label] = cpu
        woke = wakeups(d.proc.pid)
        if woke is not None:
            d.cpu_marks[label + ":wakeups"] = woke


# -- launching -----------------------------------------------------------------------


def daemon_env(token: str, pycache: Path | None) -> dict[str, str]:
    """The environment without any RENDERNODE_* of the caller, plus the farm token.

    With ``pycache``, bytecode is cached there (PYTHONPYCACHEPREFIX) even if the
    caller set PYTHONDONTWRITEBYTECODE, as on an installed node, whose .pyc
    files exist: otherwise every daemon compiles rendernode's sources again.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERNODE_")}
    env["RENDERNODE_TOKEN"] = token
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


#: Imported once before the clock starts so that the bytecode cache is warm.
WARM_IMPORTS = "import node.cli, node.daemon, node.membership.discovery, zeroconf.asyncio, trio"


def warm_bytecode(env: dict[str, str]) -> float:
    """Fill the bytecode cache of ``env`` with the daemon's modules; seconds taken."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], env=env, cwd=ROOT, check=True)
    return time.monotonic() - start


def daemon_argv(socket: str, state_dir: str, name: str, log_level: str,
                listen: str = "127.0.0.1:0", mdns_interface: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "node", "--socket", socket, "daemon",
        "--state-dir", state_dir, "--listen", listen, "--mdns-interface", mdns_interface,
        "--name", name, "--log-level", log_level,
    ]


#: Where the daemon caches the versions of external renderers (node/daemon.py).
RENDERER_CACHE = "renderers.json"
WARM_RENDERERS = "import sys; from node import renderers; renderers.load(sys.argv[1])"


def warm_renderers(env: dict[str, str], base: Path) -> Path | None:
    """Ask the external renderers (blender, povray) their versions once, as a node's
    first start does, and return the cache file to give every daemon (None if the
    daemon has no such cache)."""
    cache = base / RENDERER_CACHE
    done = subprocess.run([sys.executable, "-c", WARM_RENDERERS, str(cache)], env=env, cwd=ROOT,
                          capture_output=True)
    return cache if done.returncode == 0 and cache.exists() else None


def seed_state(state_dir: Path, renderer_cache: Path | None) -> None:
    """Give a daemon's (new) state dir the warmed renderer version cache."""
    if renderer_cache is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(renderer_cache, state_dir / RENDERER_CACHE)


def start_loopback(n: int, base: Path, env: dict[str, str], log_level: str,
                   renderer_cache: Path | None = None) -> list[Daemon]:
    """Start ``n`` daemons on loopback, as fast as possible one after the other."""
    daemons = []
    for i in range(n):
        name = f"bench{i:02d}"
        d = base / name
        d.mkdir()
        seed_state(d / "state", renderer_cache)
        sock = str(d / "control.sock")
        log_path = d / "daemon.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                daemon_argv(sock, str(d / "state"), name, log_level), env=env, cwd=d,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C of the bench reaches only the bench
            )
        daemons.append(Daemon(name, sock, log_path, proc, proc.terminate, proc.kill))
    return daemons


def load_netlab() -> tuple[Any, str | None]:
    """(netlab module, None) or (None, why the bed cannot be used)."""
    tests = ROOT / "tests"
    if not (tests / "netlab" / "__init__.py").exists():
        return None, f"the netlab test bed ({tests / 'netlab'}) is not in this checkout"
    if str(ROOT) not in sys.path:  # the tests package: not installed
        sys.path.insert(0, str(ROOT))
    try:
        netlab = importlib.import_module("tests.netlab")
    except ImportError as exc:
        return None, f"the netlab test bed does not import: {exc}"
    if not hasattr(netlab, "Bed"):
        return None, "the netlab test bed has no Bed class yet"
    reason = netlab.netns_unavailable_reason()
    if reason is not None:
        return None, f"the netlab test bed cannot run here: {reason}"
    return netlab, None


def pin_neighbours(bed: Any) -> None:
    """Give every host of the bed a permanent ARP entry for every other host.

    The kernel's ARP table is shared by all network namespaces and capped by
    net.ipv4.neigh.default.gc_thresh3 (1024 by default); a full mesh of N hosts
    needs N * (N - 1) entries (32 hosts: 992).  Past the cap every new entry
    fails ("neighbor table overflow"), sends fail with ENOBUFS and the later
    hosts' mDNS goes silent.  Permanent entries do not count against the cap
    (Linux >= 4.20), so this works without changing any sysctl of the machine,
    and the entries vanish with the bed.
    """
    query = "".join(
        f"echo {h.name} $(ip -n {h.netns} -o link show eth0 | "
        f"sed -n 's/.*link\\/ether \\([0-9a-f:]*\\).*/\\1/p')\n"
        for h in bed.hosts
    )
    macs = dict(line.split() for line in bed.sh(query, timeout=120).stdout.splitlines())
    script = []
    for h in bed.hosts:
        lines = "".join(f"neigh replace {o.addr} lladdr {macs[o.name]} dev eth0 nud permanent\n"
                        for o in bed.hosts if o is not h)
        script.append(f"ip -n {h.netns} -batch - <<'NEIGH'\n{lines}NEIGH\n")
    bed.run_in(None, ["sh", "-e"], input="".join(script), timeout=120)  # too long for an argv


def start_host(host: Any, env: dict[str, str], log_level: str,
               renderer_cache: Path | None = None) -> Daemon:
    """Start a daemon in one host of the bed (returns at once)."""
    extra = {k: v for k, v in env.items() if k.startswith("PYTHONPYCACHE")}
    # Host.start_daemon layers ``extra`` over os.environ: drop the caller's
    # RENDERNODE_* there, as daemon_env does for loopback daemons.
    for key in [k for k in os.environ if k.startswith("RENDERNODE_")]:
        del os.environ[key]
    seed_state(Path(host.state_dir), renderer_cache)
    proc = host.start_daemon(env["RENDERNODE_TOKEN"], extra_args=["--log-level", log_level],
                             env=extra)
    return Daemon(host.name, str(host.socket_path), Path(proc.log_path), proc,
                  proc.terminate, proc.kill)


def start_netns(bed: Any, env: dict[str, str], log_level: str,
                renderer_cache: Path | None = None) -> list[Daemon]:
    """Start one daemon in each host of the bed."""
    return [start_host(host, env, log_level, renderer_cache) for host in bed.hosts]


# -- measuring -------------------------------------------------------------------------


def check_alive(daemons: Sequence[Daemon]) -> None:
    for d in daemons:
        if not d.alive():
            raise BenchError(f"{d.name} exited with status {d.proc.poll()}; its log:\n{d.log_tail()}")


def wait_sockets(daemons: Sequence[Daemon], deadline: float, poll: float) -> None:
    """Until every control socket answers ``status``; records each node's UUID."""
    pending = list(daemons)
    while pending:
        check_alive(pending)
        still = []
        for d in pending:
            try:
                d.uuid = str(d.call("status")["uuid"])
            except NodeError:
                still.append(d)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                names = ", ".join(d.name for d in pending)
                raise BenchError(f"control sockets still silent: {names}; first log:\n{pending[0].log_tail()}")
            time.sleep(poll)


def missing_peers(d: Daemon, others: set[str]) -> set[str]:
    """UUIDs of the other nodes that ``d`` does not list ONLINE and VERIFIED."""
    rows = d.call("machines")
    good = {r["uuid"] for r in rows
            if not r.get("local") and "ONLINE" in r["bits"] and "VERIFIED" in r["bits"]}
    return others - good


def wait_mesh(daemons: Sequence[Daemon], deadline: float, poll: float) -> float:
    """Until every node lists all others ONLINE+VERIFIED at once; returns when that was seen."""
    everyone = {d.uuid for d in daemons}
    pending = list(daemons)
    while True:
        check_alive(daemons)
        still = []
        for d in pending:
            try:
                missing = missing_peers(d, everyone - {d.uuid})
            except NodeError:
                missing = {"?"}
            if missing:
                still.append(d)
            elif d.complete_at is None:
                d.complete_at = time.monotonic()
        pending = still
        if not pending:
            done = max(d.complete_at or 0.0 for d in daemons)
            # Nodes seen complete earlier may have lost a session since: check all at once.
            dropped = []
            for d in daemons:
                try:
                    if missing_peers(d, everyone - {d.uuid}):
                        dropped.append(d)
                except NodeError:
                    dropped.append(d)
            if not dropped:
                return done
            for d in dropped:
                d.complete_at = None
            pending = dropped
        if time.monotonic() > deadline:
            worst = pending[0]
            try:
                detail = sorted(missing_peers(worst, everyone - {worst.uuid}))
                rows = {r["uuid"]: (r["name"], r["bits"], r.get("reason", "")) for r in worst.call("machines")}
                detail_text = "\n".join(f"  {rows.get(u, (u, [], 'not listed'))}" for u in detail[:8])
            except NodeError as exc:
                detail_text = f"  (cannot ask it: {exc})"
            raise BenchError(f"mesh incomplete: {len(pending)} node(s) still miss peers; "
                             f"{worst.name} misses:\n{detail_text}")
        time.sleep(poll)


def stop_all(daemons: Sequence[Daemon], timeout: float) -> tuple[float, int]:
    """SIGTERM every daemon, SIGKILL the ones left after ``timeout``; (seconds, killed)."""
    for d in daemons:
        d.close()
    start = time.monotonic()
    for d in daemons:
        if d.alive():
            try:
                d.terminate()
            except ProcessLookupError:
                pass
    deadline = start + timeout
    while any(d.alive() for d in daemons) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = 0
    for d in daemons:
        if d.alive():
            killed += 1
            try:
                d.kill()
            except ProcessLookupError:
                pass
    for d in daemons:
        wait = getattr(d.proc, "wait", None)
        if wait is not None:
            try:
                wait(timeout)
            except subprocess.TimeoutExpired:
                pass
    return time.monotonic() - start, killed


def fmt_stats(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):.1f}, min {min(values):.1f}, max {max(values):.1f}"


# -- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    token = secrets.token_urlsafe(32)
    bed: Any = None
    base = Path(tempfile.mkdtemp(prefix="rnbench-"))
    daemons: list[Daemon] = []
    status = 0
    print(f"nodes: {args.nodes}" + (" (netns bed)" if args.netns else " (loopback)"), flush=True)
    try:
        env = daemon_env(token, None if args.cold_bytecode else base / "pycache")
        if not args.cold_bytecode:
            took = warm_bytecode(env)
            print(f"bytecode cache warmed (not timed): {took:.1f} s", flush=True)
        renderer_cache = None
        if args.warm_renderers:
            t_warm = time.monotonic()
            renderer_cache = warm_renderers(env, base)
            print(f"renderer version cache warmed (not timed): {time.monotonic() - t_warm:.1f} s"
                  if renderer_cache else "renderer version cache: this daemon has none", flush=True)
        else:
            print("renderer version cache: cold (each daemon asks blender/povray, as on a "
                  "node's first start; --warm-renderers for a restart)", flush=True)
        if args.netns:
            netlab, reason = load_netlab()
            if netlab is None:
                print(f"discovery bench: --netns unavailable: {reason}", file=sys.stderr)
                return 2
            t_bed = time.monotonic()
            try:  # in the bench's directory, so --keep (or a failure) keeps the daemon logs
                bed = netlab.Bed(args.nodes, names=[f"b{i:02d}" for i in range(args.nodes)],
                                 base_dir=base / "bed")
                pin_neighbours(bed)
            except netlab.NetlabError as exc:
                raise BenchError(f"cannot build the netns bed: {exc}") from exc
            print(f"bed setup ({args.nodes} namespaces, ARP entries pinned): "
                  f"{time.monotonic() - t_bed:.1f} s", flush=True)
            t_start = time.monotonic()
            daemons = start_netns(bed, env, args.log_level, renderer_cache)
        else:
            t_start = time.monotonic()
            daemons = start_loopback(args.nodes, base, env, args.log_level, renderer_cache)
        t_spawned = time.monotonic()
        wait_sockets(daemons, t_start + args.timeout, args.poll)
        t_sockets = time.monotonic()
        mark_cpu(daemons, "sockets")
        print(f"spawn ({args.nodes} processes): {t_spawned - t_start:.2f} s")
        print(f"startup (all sockets answering): {t_sockets - t_start:.1f} s", flush=True)
        t_mesh = wait_mesh(daemons, t_sockets + args.timeout, args.poll)
        mark_cpu(daemons, "mesh")
        mesh = t_mesh - t_sockets
        print(f"mesh (all ONLINE+VERIFIED after startup): {mesh:.1f} s")
        print(f"mesh (all ONLINE+VERIFIED from first start): {t_mesh - t_start:.1f} s")
        per_node = sorted((d.complete_at or t_mesh) - t_sockets for d in daemons)
        print(f"  per node after startup: first {per_node[0]:.1f} s, "
              f"median {statistics.median(per_node):.1f} s, last {per_node[-1]:.1f} s")
        cpu_start = [d.cpu_marks["sockets"] for d in daemons if "sockets" in d.cpu_marks]
        cpu_mesh = [d.cpu_marks["mesh"] - d.cpu_marks["sockets"] for d in daemons
                    if "mesh" in d.cpu_marks and "sockets" in d.cpu_marks]
        if cpu_start and cpu_mesh:
            print(f"  CPU s per daemon: startup {fmt_stats(cpu_start)}; "
                  f"meshing {fmt_stats(cpu_mesh)}", flush=True)
        time.sleep(args.settle)
        check_alive(daemons)
        mark_cpu(daemons, "idle0")
        t_idle = time.monotonic()
        time.sleep(args.idle_window)
        mark_cpu(daemons, "idle1")
        idle_s = time.monotonic() - t_idle
        rss = [r for r in (rss_mb(d.proc.pid) for d in daemons) if r is not None]
        if len(rss) != len(daemons):
            check_alive(daemons)
        idle_cpu = [100 * (d.cpu_marks["idle1"] - d.cpu_marks["idle0"]) / idle_s for d in daemons
                    if "idle1" in d.cpu_marks and "idle0" in d.cpu_marks]
        rss_median = statistics.median(rss)
        print(f"idle RSS median: {rss_median:.1f} MB (min {min(rss):.1f}, max {max(rss):.1f})")
        smaps = [m for m in (smaps_mb(d.proc.pid) for d in daemons) if m is not None]
        if smaps:
            print(f"  idle PSS median: {statistics.median(m[0] for m in smaps):.1f} MB, "
                  f"private (USS) median: {statistics.median(m[1] for m in smaps):.1f} MB")
        if idle_cpu:
            print(f"idle CPU per daemon over {idle_s:.1f} s: {fmt_stats(idle_cpu)} % "
                  f"(all daemons: {sum(idle_cpu):.0f} % of one core)")
        idle_woke = [(d.cpu_marks["idle1:wakeups"] - d.cpu_marks["idle0:wakeups"]) / idle_s
                     for d in daemons if "idle1:wakeups" in d.cpu_marks and "idle0:wakeups" in d.cpu_marks]
        if idle_woke:
            print(f"  idle wake-ups of each daemon's trio thread: median "
                  f"{statistics.median(idle_woke):.0f}/s ({args.nodes - 1} peers)")
        ok_mesh = mesh < MESH_TARGET_S
        ok_rss = rss_median <= RSS_TARGET_MB
        print(f"targets: mesh < {MESH_TARGET_S:g} s {'met' if ok_mesh else 'MISSED'}; "
              f"idle RSS <= {RSS_TARGET_MB:g} MB {'met' if ok_rss else 'MISSED'}")
        if args.check and not (ok_mesh and ok_rss):
            status = 1
        if args.hold:
            pids = " ".join(str(d.proc.pid) for d in daemons)
            print(f"holding the mesh for {args.hold:g} s; daemon PIDs: {pids}", flush=True)
            time.sleep(args.hold)
    except BenchError as exc:
        print(f"discovery bench: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("discovery bench: interrupted", file=sys.stderr)
        status = 130
    finally:
        if daemons:
            took, killed = stop_all(daemons, args.stop_timeout)
            print(f"stop: {took:.1f} s" + (f" ({killed} needed SIGKILL)" if killed else ""))
        if bed is not None:
            bed.close()
        sys.stdout.flush()
        if args.keep or status != 0:
            print(f"logs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=32, help="daemons to start (default 32)")
    parser.add_argument("--netns", action="store_true",
                        help="one daemon per network-namespace host of the netlab bed")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed for startup, and again for the mesh (default 60)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the mesh before measuring idle cost (default 3)")
    parser.add_argument("--idle-window", type=float, default=5.0,
                        help="seconds over which idle CPU is measured (default 5; CPU time "
                             "is counted in 10 ms ticks)")
    parser.add_argument("--poll", type=float, default=0.05,
                        help="seconds between polling rounds (default 0.05)")
    parser.add_argument("--stop-timeout", type=float, default=10.0,
                        help="seconds after SIGTERM before SIGKILL (default 10)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--cold-bytecode", action="store_true",
                        help="no bytecode cache warm-up; the daemons inherit PYTHONDONTWRITEBYTECODE")
    parser.add_argument("--warm-renderers", action="store_true",
                        help="give every daemon the renderer version cache (as after a node's "
                             "first start), so no daemon runs blender/povray --version")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="keep the mesh up this many seconds after measuring (to attach a profiler)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 250:
        parser.error("--nodes must be between 2 and 250")
    # SIGTERM of the bench itself: clean up like ^C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
