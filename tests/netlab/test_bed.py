"""Self-tests of the netlab bed with real namespaces, processes and traffic.

Every check uses the stdlib probes in netlab/probe.py between bed hosts only;
rate checks are coarse bounds (a cap must hold, not be precise).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.waiting import poll_until
from tests.netlab import (
    BRIDGE,
    CHECKOUT_ROOT,
    Bed,
    Host,
    NetlabError,
    Proc,
    probe,
    python_env,
    skip_unless_netns,
)

skip_unless_netns()
pytestmark = pytest.mark.system

ECHO_PORT = 7
LOOK = 0.02  #: seconds between two looks of a wait (each waits 5 s at most)
MBIT = 1_000_000


# -- helpers -------------------------------------------------------------------------


def start(host: Host, *args: str | int | float) -> Proc:
    """Spawn a probe server on ``host`` and wait until it listens."""
    proc = host.spawn(probe.command(*args))
    proc.wait_for_log("ready", timeout=10)
    return proc


def finish(proc: Proc, timeout: float = 10.0) -> dict[str, Any]:
    """Wait for a probe to exit and return its JSON result."""
    proc.wait(timeout)
    return dict(probe.result(proc.read_log()))


def echo_on(*hosts: Host) -> list[Proc]:
    """A UDP echo server on each host."""
    return [start(h, "udp-echo", "--port", ECHO_PORT, "--lifetime", 30) for h in hosts]


def pings(src: Host, dst: Host, count: int = 3, timeout: float = 0.3) -> int:
    """How many of ``count`` UDP pings from ``src`` to ``dst``'s echo came back."""
    out = src.run(
        probe.command(
            "udp-ping",
            "--to",
            dst.addr,
            "--port",
            ECHO_PORT,
            "--count",
            count,
            "--timeout",
            timeout,
        )
    ).stdout
    return int(probe.result(out)["received"])


def tcp_rate(src: Host, dst: Host, nbytes: int, port: int = 5001) -> float:
    """Send ``nbytes`` over TCP from src to dst; the receiver's rate in bit/s."""
    sink = start(dst, "tcp-sink", "--port", port)
    src.run(probe.command("tcp-source", "--to", dst.addr, "--port", port, "--bytes", nbytes))
    res = finish(sink)
    assert res["bytes"] == nbytes
    return float(res["bits_per_s"])


def udp_received(src: Host, dst: Host, count: int, port: int = 6000) -> int:
    """Blast ``count`` datagrams from src to dst; how many dst received."""
    sink = start(dst, "udp-sink", "--port", port, "--idle", 0.5)
    src.run(
        probe.command(
            "udp-blast", "--to", dst.addr, "--port", port, "--count", count, "--interval", 0.0005
        )
    )
    return int(finish(sink)["received"])


def log_lines(proc: Proc) -> int:
    return len(proc.read_log().splitlines())


# -- topology -------------------------------------------------------------------------


def test_hosts_are_namespaces_on_one_subnet(bed: Bed) -> None:
    assert [h.addr for h in bed.hosts] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    h0 = bed.hosts[0]
    assert "10.77.0.1/24" in h0.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    assert "224.0.0.0/4 dev eth0" in h0.run(["ip", "route", "show"]).stdout
    assert "state UNKNOWN" in h0.run(["ip", "link", "show", "lo"]).stdout  # lo is up
    proc = h0.spawn(["sleep", "30"])
    poll_until(lambda: proc.state() != "gone", 5, "the process runs", every=LOOK, ignore=())
    ns = {k: os.stat(f"/proc/{proc.pid}/ns/{k}").st_ino for k in ("net", "pid")}
    assert ns["pid"] == bed.ns_inodes["pid"]
    assert ns["net"] not in (bed.ns_inodes["net"], os.stat("/proc/self/ns/net").st_ino)
    root_links = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert BRIDGE not in root_links


def test_hosts_reach_each_other(bed: Bed) -> None:
    echo_on(*bed.hosts)
    for src in bed.hosts:
        for dst in bed.hosts:
            if src is not dst:
                assert pings(src, dst) == 3, (src, dst)


def test_multicast_reaches_other_hosts(bed: Bed) -> None:
    h0, h1, h2 = bed.hosts
    listeners = [start(h, "mcast-listen", "--iface", h.addr, "--timeout", 5) for h in (h1, h2)]
    h0.run(probe.command("mcast-send", "--iface", h0.addr, "--count", 10, "--interval", 0.05))
    for proc in listeners:
        assert finish(proc) == {"from": h0.addr, "data": "netlab"}


def test_two_beds_do_not_collide(bed: Bed, bed_factory: Callable[..., Bed]) -> None:
    other = bed_factory(2)  # same default subnet and host names as `bed`
    echo_on(bed.hosts[1])
    assert pings(bed.hosts[0], bed.hosts[1]) == 3
    assert pings(other.hosts[0], other.hosts[1], count=1) == 0  # no echo in the other bed
    echo_on(other.hosts[1])
    assert pings(other.hosts[0], other.hosts[1]) == 3


# -- impairments ------------------------------------------------------------------------


def test_cap_limits_tcp_rate_both_directions(bed: Bed) -> None:
    h0, h1, _ = bed.hosts
    free = tcp_rate(h0, h1, 4_000_000)
    h0.cap("10mbit")  # h0's egress
    egress = tcp_rate(h0, h1, 2_000_000)
    assert 2 * MBIT < egress < 15 * MBIT
    assert free > 3 * egress
    h0.uncap()
    h1.cap("20mbit")  # h1's ingress (bridge-side veth)
    ingress = tcp_rate(h0, h1, 2_000_000)
    assert 4 * MBIT < ingress < 30 * MBIT
    h1.uncap()
    assert tcp_rate(h0, h1, 4_000_000) > 3 * egress


def test_cap_per_peer_gives_each_peer_a_class(bed: Bed) -> None:
    h0, h1, h2 = bed.hosts
    h2.cap("20mbit", per_peer=True)
    classes = h2.run(["tc", "class", "show", "dev", "eth0"]).stdout
    assert "1:10" in classes and "1:11" in classes
    sinks = [start(h2, "tcp-sink", "--port", port) for port in (5001, 5002)]
    t0 = time.monotonic()
    senders = [
        src.spawn(
            probe.command("tcp-source", "--to", h2.addr, "--port", port, "--bytes", 1_500_000)
        )
        for src, port in ((h0, 5001), (h1, 5002))
    ]
    for s in senders:
        assert s.wait(20) == 0
    elapsed = time.monotonic() - t0
    rates = [float(finish(s)["bits_per_s"]) for s in sinks]
    assert 3_000_000 * 8 / elapsed < 30 * MBIT  # the aggregate stays capped
    assert min(rates) > 4 * MBIT  # and both peers get through


def test_loss_drops_a_share_of_datagrams(bed: Bed) -> None:
    h0, h1, _ = bed.hosts
    assert udp_received(h0, h1, 400) >= 390
    h0.loss(50)  # on the sender's egress
    assert 120 <= udp_received(h0, h1, 400) <= 280
    h0.loss(0)
    h1.loss(50)  # on the receiver's ingress
    assert 120 <= udp_received(h0, h1, 400) <= 280
    bed.reset()
    assert udp_received(h0, h1, 400) >= 390


def test_cut_and_uncut(bed: Bed) -> None:
    h0, h1, h2 = bed.hosts
    echo_on(h1, h2)
    assert pings(h0, h1) == 3
    h1.cut()
    assert pings(h0, h1, count=2) == 0
    assert pings(h0, h2) == 3
    h1.uncut()
    assert pings(h0, h1) == 3
    h1.cut(link=True)
    assert pings(h0, h1, count=2) == 0
    h1.uncut()
    poll_until(lambda: pings(h0, h1, count=1) == 1, 5, "h0 reaches h1 again", every=LOOK, ignore=())


def test_partition_and_heal(bed: Bed) -> None:
    h0, h1, h2 = bed.hosts
    echo_on(*bed.hosts)
    bed.partition([h0], [h1])
    assert pings(h0, h1, count=2) == 0
    assert pings(h1, h0, count=2) == 0
    assert pings(h0, h2) == 3 and pings(h1, h2) == 3 and pings(h2, h0) == 3
    bed.heal()
    assert pings(h0, h1) == 3 and pings(h1, h0) == 3


# -- processes --------------------------------------------------------------------------

COUNTER = (
    "import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.02)\n"
)


def test_freeze_thaw_kill(bed: Bed) -> None:
    proc = bed.hosts[0].spawn([sys.executable, "-c", COUNTER])
    proc.wait_for_log("3\n")
    proc.freeze()
    poll_until(lambda: proc.state() == "T", 5, "the process stopped", every=LOOK, ignore=())
    frozen_at = log_lines(proc)
    time.sleep(0.3)
    assert log_lines(proc) == frozen_at
    proc.thaw()
    poll_until(lambda: log_lines(proc) > frozen_at + 3, 5, "the process counts on", every=LOOK, ignore=())
    assert proc.alive()
    proc.kill()
    assert proc.wait(5) == -signal.SIGKILL
    assert proc.state() == "gone"


def test_terminate_and_exit_codes(bed: Bed) -> None:
    h0 = bed.hosts[0]
    sleeper = h0.spawn(["sleep", "30"])
    sleeper.freeze()
    sleeper.terminate()  # also thaws, so the stopped process gets the SIGTERM
    assert sleeper.wait(5) == -signal.SIGTERM
    assert h0.spawn(["sh", "-c", "exit 3"]).wait(5) == 3
    assert h0.run(["sh", "-c", "exit 4"], check=False).returncode == 4
    with pytest.raises(NetlabError):
        h0.run(["sh", "-c", "exit 4"])
    with pytest.raises(NetlabError, match="timed out"):
        h0.run(["sleep", "5"], timeout=0.3)
    assert h0.run(["sh", "-c", "echo $NETLAB_X"], env={"NETLAB_X": "y"}).stdout == "y\n"


def test_daemon_command_line_is_built_from_the_host(bed: Bed) -> None:
    h1 = bed.hosts[1]
    argv = h1.daemon_argv(["--x"])
    assert argv[:6] == [sys.executable, "-m", "node", "--socket", str(h1.socket_path), "daemon"]
    assert argv[argv.index("--listen") + 1] == "10.77.0.2:5401"
    assert h1.socket_path == h1.state_dir / "control.sock"
    assert argv[argv.index("--mdns-interface") + 1] == "10.77.0.2" and argv[-1] == "--x"
    assert (CHECKOUT_ROOT / "tests" / "netlab" / "test_bed.py").exists()
    assert python_env({"A": "b"})["PYTHONPATH"].split(os.pathsep)[0] == str(CHECKOUT_ROOT)


# -- teardown -------------------------------------------------------------------------------


def test_killed_supervisor_takes_everything_with_it(bed_factory: Callable[..., Bed]) -> None:
    bed = bed_factory(2)
    procs = [h.spawn(["sleep", "30"]) for h in bed.hosts]
    os.kill(bed.supervisor_pid, signal.SIGKILL)
    for p in procs:
        assert p.wait(5) == -signal.SIGKILL
    poll_until(lambda: not bed.alive(), 5, "the bed is gone", every=LOOK, ignore=())
    with pytest.raises(NetlabError):
        bed.hosts[0].run(["true"])


CRASHER = """
import json, time
from tests.netlab import Bed
bed = Bed(2, base_dir={base!r})
procs = [h.spawn(["sleep", "60"]) for h in bed.hosts]
print(json.dumps({{"pids": [bed.supervisor_pid, bed._sup.pid] + [p.pid for p in procs],
                  "launchers": [p._popen.pid for p in procs], "ns": bed.ns_inodes,
                  "host_net": [__import__("os").stat(f"/proc/{{p.pid}}/ns/net").st_ino for p in procs]}}),
      flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead, awaiting its reaper


def _ns_in_use(inodes: set[int]) -> list[str]:
    users = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            for kind in ("net", "pid", "mnt"):
                try:
                    if os.stat(f"/proc/{entry.name}/ns/{kind}").st_ino in inodes:
                        users.append(f"{entry.name}:{kind}")
                except OSError:  # process vanished or is a zombie
                    pass
    return users


def test_sigkilled_owner_leaves_nothing_behind(tmp_path: Path) -> None:
    netns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    script = CRASHER.format(base=str(tmp_path / "bed"))
    owner = subprocess.Popen(  # the checkout root on PYTHONPATH: tests.netlab imports
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True,
        env=python_env(),
    )
    assert owner.stdout is not None
    info = json.loads(owner.stdout.readline())
    inodes = set(info["ns"].values()) | set(info["host_net"])
    assert len(_ns_in_use(inodes)) >= 4
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    pids = info["pids"] + info["launchers"]
    poll_until(lambda: all(map(_gone, pids)), 5, "every process gone",
               lambda: [p for p in pids if not _gone(p)], every=LOOK, ignore=())
    poll_until(lambda: not _ns_in_use(inodes), 5, "no namespace in use", lambda: _ns_in_use(inodes),
               every=LOOK, ignore=())
    assert (
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        == netns_before
    )
    root_links = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert BRIDGE not in root_links and " vh0" not in root_links
