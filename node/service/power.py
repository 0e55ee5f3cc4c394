"""Power: this machine's MAC address, Wake-on-LAN for sleeping farm machines,
and a sleep inhibitor while this node renders.

- ``local_mac`` reads the MAC of the interface that carries the listen
  address (or the default route) from ``/sys/class/net``; peers learn it from
  our Hello and keep it in their machine table.  A node that does not share
  its cores announces no MAC, so nobody wakes it.
- ``sleepers`` are the offline machines that were verified once and have a
  MAC; ``Waker`` sends each a magic packet at most once per ``WAKE_EVERY``
  seconds (the clock is injected).
- ``SleepInhibitor`` holds ``systemd-inhibit --what=sleep ... sleep infinity``
  while the worker is busy (and ``LINGER`` seconds after, so back-to-back
  tasks share one inhibitor), so a workstation does not suspend mid-frame.
- ``Power.run`` is the service: it wakes machines when queued tasks still
  wait ``SETTLE`` seconds after the job book or the membership changed, on the
  server only (any node while no server is known), and runs the inhibitor.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.config import parse_hostport
from node.errors import ConfigError
from node.jobs.operations import task_frames
from protocol.crdt import JobDoc, Phase, task_current

if TYPE_CHECKING:
    from node.daemon import Node

log = logging.getLogger("rendernode.power")
WOL_PORT = 9
WAKE_EVERY = 300.0  #: seconds between magic packets to one machine
SETTLE = 3.0  #: seconds the scheduler gets to place tasks before sleepers are woken
LINGER = 10.0  #: seconds the inhibitor outlives the last task
STOP_WAIT = 2.0  #: seconds the inhibitor gets to exit after SIGTERM
INHIBIT_RETRY = 300.0  #: after an inhibitor failed, busy spells within this long run without one
INHIBIT_COMMAND = ("systemd-inhibit", "--what=sleep", "--who=rendernode",
                   "--why=rendering a frame for the render farm", "--mode=block", "sleep", "infinity")
SYS_NET = Path("/sys/class/net")
ROUTES = Path("/proc/net/route")
_NO_MAC = "00:00:00:00:00:00"


# -- this machine's MAC ---------------------------------------------------------

def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (or with ``-``) -> 6 bytes; ValueError if malformed."""
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def _read_mac(iface: str, sys_net: Path) -> str:
    try:
        text = (sys_net / iface / "address").read_text().strip().lower()
        parse_mac(text)
    except (OSError, ValueError):
        return ""
    return "" if text == _NO_MAC else text


def default_route_interface(routes: Path = ROUTES) -> str:
    """The interface of the IPv4 default route (lowest metric), or ""."""
    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError:
        return ""
    best: tuple[int, str] | None = None
    for line in lines:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            metric = int(cols[6]) if cols[6].isdigit() else 0
            if best is None or metric < best[0]:
                best = (metric, cols[0])
    return best[1] if best else ""


def _interface_of(address: str) -> str:
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            value = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if value == address:
                return str(adapter.name)
    return ""


def local_mac(listen: str, sys_net: Path = SYS_NET, routes: Path = ROUTES) -> str:
    """The MAC of the interface carrying ``listen``'s address, else the default
    route's, else of the first interface that has one; "" if none does."""
    try:
        host, _ = parse_hostport(listen)
    except ConfigError:
        host = ""
    candidates = []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if host not in ("0.0.0.0", "::"):
            candidates.append(_interface_of(host))
    candidates.append(default_route_interface(routes))
    try:
        candidates.extend(sorted(p.name for p in sys_net.iterdir() if p.name != "lo"))
    except OSError:
        pass
    for iface in candidates:
        mac = _read_mac(iface, sys_net) if iface else ""
        if mac:
            return mac
    return ""


# -- Wake-on-LAN ---------------------------------------------------------------

def magic_packet(mac: str) -> bytes:
    """Six 0xFF bytes, then the MAC sixteen times."""
    return b"\xff" * 6 + parse_mac(mac) * 16


def broadcast_targets(port: int = WOL_PORT) -> list[tuple[str, int]]:
    """The directed broadcast address of every IPv4 subnet this machine is on,
    and 255.255.255.255 (which leaves by the default route only)."""
    import ifaddr

    out: list[tuple[str, int]] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str) or ip.ip.startswith("127.") or ip.network_prefix >= 31:
                continue
            net = ipaddress.ip_interface(f"{ip.ip}/{ip.network_prefix}").network
            out.append((str(net.broadcast_address), port))
    out.append(("255.255.255.255", port))
    return list(dict.fromkeys(out))


async def send_magic(mac: str, targets: Sequence[tuple[str, int]]) -> int:
    """Send the magic packet for ``mac`` to every target; returns how many sends worked."""
    packet = magic_packet(mac)
    sent = 0
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_BROADCAST, 1)
        for host, port in targets:
            try:
                await sock.sendto(packet, (host, port))
                sent += 1
            except OSError as exc:
                log.debug("magic packet to %s:%d failed: %s", host, port, exc)
    return sent


@dataclass(frozen=True)
class Sleeper:
    """An offline machine that could be woken."""

    uuid: str
    name: str
    mac: str


def waiting_tasks(docs: Sequence[JobDoc]) -> bool:
    """True if a started job has a task that is queued and not yet done."""
    for doc in docs:
        if doc.value("state") != "queued":
            continue
        for tid in range(len(task_frames(doc))):
            state = task_current(doc, tid)
            if not state.done and state.phase == Phase.QUEUED:
                return True
    return False


def sleepers(rows: Sequence[Any]) -> list[Sleeper]:
    """Machine-table rows that are offline, were verified once, and have a MAC
    (a machine that does not share its cores announces none)."""
    return [Sleeper(r.uuid, r.name, r.mac) for r in rows
            if not r.local and not r.online and r.mac and r.was_verified]


class Waker:
    """Sends magic packets to sleepers, at most once per ``every`` seconds each."""

    def __init__(self, targets: Callable[[], Sequence[tuple[str, int]]] = broadcast_targets,
                 clock: Callable[[], float] = time.monotonic, every: float = WAKE_EVERY) -> None:
        self.targets = targets
        self.clock = clock
        self.every = every
        self.last: dict[str, float] = {}  #: uuid -> when it was last sent a packet

    def due(self, machines: Sequence[Sleeper]) -> list[Sleeper]:
        """The machines whose last packet is ``every`` seconds old or more."""
        now = self.clock()
        return [m for m in machines if now - self.last.get(m.uuid, -math.inf) >= self.every]

    async def wake(self, machines: Sequence[Sleeper]) -> list[Sleeper]:
        """Send to the due machines; returns them."""
        due = self.due(machines)
        if not due:
            return []
        targets = self.targets()
        for m in due:
            try:
                await send_magic(m.mac, targets)
            except ValueError:
                log.warning("machine %s has a malformed MAC %r", m.name or m.uuid, m.mac)
                continue
            self.last[m.uuid] = self.clock()
            log.info("tasks are waiting: sent Wake-on-LAN to %s (%s)", m.name or m.uuid, m.mac)
        return due


# -- sleep inhibitor ------------------------------------------------------------

class SleepInhibitor:
    """Holds a logind sleep inhibitor (a subprocess) while the worker is busy."""

    def __init__(self, command: Sequence[str] | None = None, linger: float | None = None,
                 retry: float = INHIBIT_RETRY) -> None:
        self.command = list(command or INHIBIT_COMMAND)
        self.linger = LINGER if linger is None else linger
        self.retry = retry
        self.attempts = 0  #: inhibitor processes started
        self._retry_at = float("-inf")  #: no new inhibitor before this (trio clock), after a failure
        self.busy = False
        self.holding: trio.Process | None = None  #: the inhibitor process while it runs
        self.failure = ""  #: why the last inhibitor ended early, if it did
        self._changed = trio.Event()
        self._warned = False

    def set_busy(self, busy: bool) -> None:
        """The worker's hook: True when a task starts, False when it ends."""
        if busy != self.busy:
            self.busy = busy
            self._changed.set()

    async def _next_change(self) -> None:
        await self._changed.wait()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the inhibitor across busy spells until cancelled."""
        task_status.started()
        while True:
            if not self.busy:
                await self._next_change()
                continue
            if trio.current_time() < self._retry_at:
                # it failed a while ago (no logind, say): a process a task would fail the same
                # way, so the next try is a busy spell after ``retry`` s
                with trio.move_on_at(self._retry_at):
                    await self._next_change()
                continue
            if await self._hold():
                continue  # let go after the linger (busy again by now, perhaps)
            self._retry_at = trio.current_time() + self.retry

    async def _hold(self) -> bool:
        """Hold an inhibitor until idle for ``linger``: True; False if it could not be held."""
        try:
            proc = await trio.lowlevel.open_process(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self._fail(f"cannot run {self.command[0]}: {exc.strerror or exc}")
            return False
        self.holding = proc
        self.attempts += 1
        released = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, proc, nursery.cancel_scope)
                while True:
                    while self.busy:
                        await self._next_change()
                    with trio.move_on_after(self.linger):
                        while not self.busy:
                            await self._next_change()
                    if not self.busy:
                        break
                released = True
                nursery.cancel_scope.cancel()
        finally:
            self.holding = None
            with trio.CancelScope(shield=True):
                await _stop(proc)
        return released

    async def _watch(self, proc: trio.Process, scope: trio.CancelScope) -> None:
        code = await proc.wait()
        self.holding = None
        detail = b""
        if proc.stderr is not None:
            with trio.move_on_after(0.5):
                while len(detail) < 4096 and (data := await proc.stderr.receive_some(4096)):
                    detail += data
        self._fail(f"{self.command[0]} exited with status {code}: "
                   f"{detail.decode(errors='replace').strip() or 'no message'}")
        scope.cancel()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.log(logging.DEBUG if self._warned else logging.WARNING,
                "no sleep inhibitor while rendering (this machine may suspend mid-frame): %s", reason)
        self._warned = True


async def _stop(proc: trio.Process) -> None:
    """SIGTERM the inhibitor's process group (systemd-inhibit and its sleep), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        with trio.move_on_after(STOP_WAIT):
            await proc.wait()
            break
    if proc.stderr is not None:
        await proc.stderr.aclose()


# -- the service -----------------------------------------------------------------

class Power:
    """Wake-on-LAN for sleepers while tasks wait; the sleep inhibitor while rendering."""

    def __init__(self, docs: Callable[[], Sequence[JobDoc]], rows: Callable[[], Sequence[Any]],
                 active: Callable[[], bool], waker: Waker | None = None,
                 inhibitor: SleepInhibitor | None = None, wake_on_lan: bool = True,
                 settle: float = SETTLE) -> None:
        self.docs = docs
        self.rows = rows
        self.active = active
        self.waker = waker or Waker()
        self.inhibitor = inhibitor or SleepInhibitor()
        self.wake_on_lan = wake_on_lan
        self.settle = settle
        self._changed = trio.Event()

    @classmethod
    def of(cls, node: Node, **kwargs: Any) -> Power:
        """The power service of a built node, hooked to its book, peers and worker."""
        election, peers = node.election, node.peers

        def rows() -> list[Any]:  # another node on this very machine is awake, whatever it says
            return [r for r in node.table.all() if not r.mac or r.mac != peers.local_mac]

        power = cls(node.book.live, rows,
                    lambda: election.server is None or election.role == "server",
                    wake_on_lan=node.prefs.wake_on_lan, **kwargs)
        node.book.listeners.append(lambda doc, delta: power.poke())
        node.peers.on_change.append(power.poke)
        node.worker.on_busy.append(power.inhibitor.set_busy)
        return power

    def waking(self, within: float = 120.0) -> list[str]:
        """The machines sent a magic packet in the last ``within`` seconds."""
        now = self.waker.clock()
        return sorted(u for u, t in self.waker.last.items() if now - t <= within)

    def poke(self) -> None:
        """Something changed: look again whether sleepers should be woken."""
        self._changed.set()

    async def check(self) -> bool:
        """Wake the due sleepers if tasks wait; True if tasks wait and sleepers exist."""
        if not self.wake_on_lan or not self.active() or not waiting_tasks(self.docs()):
            return False
        machines = sleepers(self.rows())
        await self.waker.wake(machines)
        return bool(machines)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the inhibitor and the wake loop until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.inhibitor.run)
            task_status.started()
            again = 0.0  # look once at start: jobs may have waited while this node was down
            while True:
                with trio.move_on_after(again):
                    await self._changed.wait()
                self._changed = trio.Event()
                await trio.sleep(self.settle)
                again = self.waker.every if await self.check() else math.inf
