"""Power: the MAC a node announces, Wake-on-LAN (packet format, which machines,
rate limit, the service loop; magic packets caught on loopback with a
configurable target), and the sleep inhibitor held while the worker renders.

There is no logind in the test container: the inhibitor's lifecycle is tested
with a fake command (a process that records its pid and sleeps), and the real
``systemd-inhibit`` only for failing cleanly without logind."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from node.db import Database
from node.jobs.book import JobBook
from node.jobs.operations import Jobs, JobSpec
from node.membership.machines import Machine
from node.service import power
from tests.harness.nodes import call, node_prefs, start_node
from tests.harness.waiting import wait_until

MAC = "02:aa:bb:cc:dd:ee"


# -- MAC address -------------------------------------------------------------------

def test_a_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    packet = power.magic_packet("02:AA:bb:cc:dd:EE")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("02aabbccddee") * 16
    assert power.magic_packet("02-aa-bb-cc-dd-ee") == packet


@pytest.mark.parametrize("bad", ["", "02:aa:bb:cc:dd", "02:aa:bb:cc:dd:ee:ff", "zz:aa:bb:cc:dd:ee"])
def test_a_malformed_mac_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        power.parse_mac(bad)


@pytest.fixture
def fake_sys(tmp_path: Path) -> tuple[Path, Path]:
    """A /sys/class/net with lo, eth0, wlan0 and a /proc/net/route whose default is wlan0."""
    net = tmp_path / "net"
    for iface, mac in (("lo", "00:00:00:00:00:00"), ("eth0", "02:00:00:00:00:01"),
                       ("wlan0", "02:00:00:00:00:02")):
        (net / iface).mkdir(parents=True)
        (net / iface / "address").write_text(mac + "\n")
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t000A000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0100000A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n")
    return net, routes


def test_the_mac_of_the_default_route_interface(fake_sys: tuple[Path, Path]) -> None:
    net, routes = fake_sys
    assert power.default_route_interface(routes) == "wlan0"  # the lower metric
    assert power.local_mac("0.0.0.0:5401", net, routes) == "02:00:00:00:00:02"


def test_the_mac_of_the_interface_carrying_the_listen_address(
        fake_sys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    net, routes = fake_sys
    monkeypatch.setattr(power, "_interface_of", lambda address: "eth0" if address == "10.0.0.7" else "")
    assert power.local_mac("10.0.0.7:5401", net, routes) == "02:00:00:00:00:01"


def test_without_a_default_route_the_first_interface_with_a_mac(fake_sys: tuple[Path, Path]) -> None:
    net, routes = fake_sys
    routes.write_text("Iface\tDestination\n")
    assert power.local_mac("0.0.0.0:5401", net, routes) == "02:00:00:00:00:01"
    shutil.rmtree(net / "eth0")
    shutil.rmtree(net / "wlan0")
    assert power.local_mac("0.0.0.0:5401", net, routes) == ""  # lo has none


def test_this_machine_announces_its_mac_in_hello(tmp_path: Path, token: bytes) -> None:
    """The real /sys: a node's Hello carries the MAC local_mac finds (if any)."""
    from node import daemon

    prefs = node_prefs(tmp_path, "mac", mdns=False)
    node = daemon.build(prefs, token, {})
    try:
        assert node.peers.local_mac == power.local_mac(prefs.listen)
        assert node.peers.hello().mac == node.peers.local_mac
        if node.peers.local_mac:
            power.parse_mac(node.peers.local_mac)
    finally:
        node.db.close()
    prefs = node_prefs(tmp_path, "selfish", mdns=False, share=False)
    node = daemon.build(prefs, token, {})
    try:
        assert node.peers.hello().mac == ""  # it does not render for the farm: never woken
    finally:
        node.db.close()


# -- Wake-on-LAN ---------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    """A UDP socket on loopback standing in for the LAN's broadcast address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(200))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def row(uuid: str, mac: str = MAC, online: bool = False, verified: bool = True,
        via: str = "static") -> Machine:
    return Machine(uuid=uuid, name=uuid, mac=mac, online=online, was_verified=verified, via=[via])


def test_sleepers_are_offline_machines_verified_before_with_a_mac() -> None:
    rows = [row("asleep"), row("online", online=True), row("stranger", verified=False),
            row("no-mac", mac=""), row("me", via="local")]
    assert [s.uuid for s in power.sleepers(rows)] == ["asleep"]


async def test_each_sleeper_is_woken_at_most_once_per_interval(receiver: socket.socket) -> None:
    clock = Clock()
    target = receiver.getsockname()
    waker = power.Waker(targets=lambda: [target], clock=clock, every=300)
    a, b = power.Sleeper("a", "a", MAC), power.Sleeper("b", "b", "02:00:00:00:00:0b")
    assert await waker.wake([a]) == [a]
    assert received(receiver) == [power.magic_packet(MAC)]
    clock.now += 299
    assert await waker.wake([a, b]) == [b]
    assert received(receiver) == [power.magic_packet(b.mac)]
    clock.now += 1
    assert await waker.wake([a, b]) == [a]
    assert received(receiver) == [power.magic_packet(MAC)]


def test_broadcast_targets_are_subnet_broadcasts_and_the_limited_one() -> None:
    targets = power.broadcast_targets()
    assert targets[-1] == ("255.255.255.255", 9)
    assert all(port == 9 and not host.startswith("127.") for host, port in targets)


def job_book(tmp_path: Path) -> tuple[JobBook, Jobs]:
    book = JobBook(Database(tmp_path / "db"), "node-a")
    return book, Jobs(book, "node-a", ["root"])


def test_tasks_wait_while_a_started_job_has_queued_tasks(tmp_path: Path) -> None:
    book, jobs = job_book(tmp_path)
    assert not power.waiting_tasks(book.live())
    paused = jobs.create(JobSpec.from_args({"scene": "/s.json", "frames": "1-3", "start": False}), "u")
    assert not power.waiting_tasks(book.live())
    doc = book.get(paused.uuid)
    assert doc is not None
    jobs.start(doc, "u")
    assert power.waiting_tasks(book.live())
    doc = book.get(paused.uuid)
    assert doc is not None
    jobs.stop(doc, "u")
    assert not power.waiting_tasks(book.live())


async def test_the_service_wakes_sleepers_while_tasks_wait(tmp_path: Path, receiver: socket.socket) -> None:
    book, jobs = job_book(tmp_path)
    rows = [row("asleep")]
    active = [True]
    target = receiver.getsockname()
    service = power.Power(book.live, lambda: rows, lambda: active[0],
                          waker=power.Waker(targets=lambda: [target]), settle=0.01)
    book.listeners.append(lambda doc, delta: service.poke())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(0.1)
        assert received(receiver) == []  # nothing waits
        active[0] = False
        jobs.create(JobSpec.from_args({"scene": "/s.json", "frames": "1-3"}), "u")
        await trio.sleep(0.1)
        assert received(receiver) == []  # another node is the server: it wakes them
        active[0] = True
        service.poke()
        await wait_until(lambda: bool(service.waker.last), 5, "a magic packet was sent")
        assert received(receiver) == [power.magic_packet(MAC)]
        service.poke()
        await trio.sleep(0.1)
        assert received(receiver) == []  # rate-limited
        nursery.cancel_scope.cancel()


async def test_wake_on_lan_can_be_turned_off(tmp_path: Path, receiver: socket.socket) -> None:
    book, jobs = job_book(tmp_path)
    jobs.create(JobSpec.from_args({"scene": "/s.json", "frames": "1"}), "u")
    target = receiver.getsockname()
    service = power.Power(book.live, lambda: [row("asleep")], lambda: True, wake_on_lan=False,
                          waker=power.Waker(targets=lambda: [target]))
    assert not await service.check()
    assert received(receiver) == []


# -- sleep inhibitor ------------------------------------------------------------------

@dataclass
class FakeInhibitor:
    """A stand-in for systemd-inhibit: writes its pid to ``marker``, then sleeps."""

    marker: Path

    @property
    def command(self) -> list[str]:
        code = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(600)"
        return [sys.executable, "-c", code, str(self.marker)]

    def pids(self) -> list[int]:
        return [int(p) for p in self.marker.read_text().split()] if self.marker.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


async def test_the_inhibitor_is_held_while_busy_and_shared_by_back_to_back_tasks(tmp_path: Path) -> None:
    fake = FakeInhibitor(tmp_path / "pids")
    inhibitor = power.SleepInhibitor(fake.command, linger=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(inhibitor.run)
        await trio.sleep(0.05)
        assert inhibitor.holding is None
        inhibitor.set_busy(True)
        await wait_until(lambda: len(fake.pids()) == 1, 5, "the inhibitor started")
        (pid,) = fake.pids()
        inhibitor.set_busy(False)
        await trio.sleep(0.1)
        inhibitor.set_busy(True)  # the next task, within the linger
        await trio.sleep(0.4)
        assert fake.pids() == [pid] and alive(pid) and inhibitor.holding is not None
        inhibitor.set_busy(False)
        await wait_until(lambda: inhibitor.holding is None and not alive(pid), 5,
                         "the inhibitor stopped after the linger")
        inhibitor.set_busy(True)
        await wait_until(lambda: len(fake.pids()) == 2, 5, "a new inhibitor for the next busy spell")
        second = fake.pids()[1]
        nursery.cancel_scope.cancel()
    assert not alive(second)  # the daemon stopping stops it too


@pytest.mark.skipif(shutil.which("systemd-inhibit") is None, reason="systemd-inhibit is not installed")
@pytest.mark.skipif(os.path.exists("/run/dbus/system_bus_socket"),
                    reason="a system bus runs here: logind could really grant the inhibitor")
async def test_without_logind_systemd_inhibit_fails_and_rendering_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """Here systemd-inhibit exists but no system bus / logind runs."""
    inhibitor = power.SleepInhibitor(linger=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(inhibitor.run)
        inhibitor.set_busy(True)
        await wait_until(lambda: bool(inhibitor.failure) and inhibitor.holding is None, 10,
                         "systemd-inhibit gave up")
        assert "systemd-inhibit exited with status" in inhibitor.failure
        inhibitor.set_busy(False)
        inhibitor.set_busy(True)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.name == "rendernode.power" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "may suspend mid-frame" in warnings[0].getMessage()


async def test_after_a_failed_inhibitor_tasks_run_without_one_until_the_retry_time(tmp_path: Path) -> None:
    """No logind (a container, the test bed): systemd-inhibit fails every time, so it
    is not run again for every task, only for a busy spell ``retry`` s later."""
    fails = [sys.executable, "-c", "import sys; sys.exit('Failed to connect to bus')"]
    inhibitor = power.SleepInhibitor(fails, linger=0.05, retry=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(inhibitor.run)
        busy_at = trio.current_time()  # the failure comes after this, and the next try 3 s after it
        inhibitor.set_busy(True)
        await wait_until(lambda: bool(inhibitor.failure) and inhibitor.holding is None, 10, "the first failure")
        failed_at = trio.current_time()  # seen (a poll after the failure itself)
        assert inhibitor.attempts == 1 and "Failed to connect to bus" in inhibitor.failure
        for _ in range(5):  # more tasks, back to back
            inhibitor.set_busy(False)
            await trio.sleep(0.02)
            inhibitor.set_busy(True)
            await trio.sleep(0.02)
        assert trio.current_time() - failed_at < 3.0
        assert inhibitor.attempts == 1
        await wait_until(lambda: inhibitor.attempts == 2, 10, "a new try once the retry time passed")
        assert trio.current_time() - busy_at >= 3.0
        nursery.cancel_scope.cancel()


async def test_a_missing_inhibitor_program_is_reported_once() -> None:
    inhibitor = power.SleepInhibitor(["/nonexistent/systemd-inhibit"], linger=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(inhibitor.run)
        inhibitor.set_busy(True)
        await wait_until(lambda: bool(inhibitor.failure), 5, "the start failed")
        assert inhibitor.failure.startswith("cannot run /nonexistent/systemd-inhibit")
        nursery.cancel_scope.cancel()


async def test_a_rendering_worker_holds_the_inhibitor(short_dir: Path, token: bytes,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's on_busy hook drives the node's own inhibitor (the fake command)."""
    fake = FakeInhibitor(short_dir / "pids")
    monkeypatch.setattr(power, "INHIBIT_COMMAND", tuple(fake.command))
    monkeypatch.setattr(power, "LINGER", 0.2)
    scene = short_dir / "scene.txt"
    scene.write_text("a scene\n")
    prefs = node_prefs(short_dir, "w", mdns=False, election_grace=0.1)
    busy: list[bool] = []
    async with trio.open_nursery() as nursery:
        running = await start_node(nursery, prefs, token)
        running.node.worker.on_busy.append(busy.append)
        await wait_until(lambda: running.node.election.role == "server", 5, "the node is the server")
        result = await call(prefs.socket, "submit", scene=str(scene), renderer="command", frames="1",
                            rdata={"command": "sleep 0.5"})
        assert result["uuid"], result
        await wait_until(lambda: busy == [True], 10, "the worker is busy", lambda: busy)
        await wait_until(lambda: len(fake.pids()) == 1 and alive(fake.pids()[0]), 5,
                         "the inhibitor is held while rendering")
        await wait_until(lambda: busy == [True, False], 10, "the worker is idle again", lambda: busy)
        await wait_until(lambda: not alive(fake.pids()[0]), 5, "the inhibitor is let go")
        nursery.cancel_scope.cancel()
