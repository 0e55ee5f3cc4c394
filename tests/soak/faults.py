"""The soak's faults: a random one every few seconds, each healed on its own clock.

Kinds and how long each lasts:

- ``kill``: SIGKILL of a host's daemon (the current server half the time) and
  of every process it started (a machine that crashes takes its renders with
  it); the daemon is started again 1-5 s later with the same state dir;
- ``freeze``: SIGSTOP of the daemon and its processes for 3 s, then SIGCONT;
- ``cut``: every frame to or from the host dropped at its bridge port for 5 s;
- ``partition``: the hosts split into two random halves for 10 s;
- ``loss``: 5 % of the host's IP packets dropped each way for 10 s (nftables
  ``numgen random``; this kernel has no netem).

A host holds one fault at a time and the farm one partition; a kind that has
no free target gives way to another.  ``spared`` hosts are never killed (every
other fault hits them): with a kill every 17 s on average, few daemons of a
long soak would otherwise live through it, and those are the ones whose memory
and descriptors tell a leak.  Everything here runs on one thread (the
bed's nft table is rewritten whole by each change).
"""

from __future__ import annotations

import heapq
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.netlab import Bed, Host

__all__ = ["KINDS", "Faults", "descendants"]

KINDS = ("kill", "freeze", "cut", "partition", "loss")
RESTART_AFTER = (1.0, 5.0)
FREEZE_S = 3.0
CUT_S = 5.0
PARTITION_S = 10.0
LOSS_S = 10.0
LOSS_PERCENT = 5.0
PARTITION = "partition"  #: the key of the farm-wide fault in ``Faults.active``


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass(order=True)
class Active:
    """A fault in force until ``until`` (monotonic)."""

    until: float
    key: str = field(compare=False)  #: host name, or PARTITION
    kind: str = field(compare=False)
    pids: list[int] = field(default_factory=list, compare=False)  #: frozen processes


class Faults:
    """Injects faults into a bed's daemons and network, and heals them."""

    def __init__(self, bed: Bed, rng: random.Random, server: Callable[[], Host | None],
                 before_kill: Callable[[Host], None], after_start: Callable[[Host], None],
                 spared: frozenset[str] = frozenset()) -> None:
        """``server`` names the current server's host if it can tell; ``before_kill``
        and ``after_start`` are told of each daemon killed and started again;
        ``spared`` names hosts never killed."""
        self.bed = bed
        self.spared = spared
        self.rng = rng
        self.server = server
        self.before_kill = before_kill
        self.after_start = after_start
        self.counts: Counter[str] = Counter()
        self.server_kills = 0
        self.active: dict[str, Active] = {}
        self._ends: list[Active] = []  #: heap by end time
        self.last_heal = 0.0
        self.log: list[tuple[float, str]] = []
        self.on_event: Callable[[float, str], None] | None = None  #: told of each fault and heal

    def _note(self, t: float, what: str) -> None:
        self.log.append((t, what))
        if self.on_event is not None:
            self.on_event(t, what)

    def free(self) -> list[Host]:
        """Hosts with no fault of their own in force."""
        return [h for h in self.bed.hosts if h.name not in self.active]

    def down(self, host: Host) -> bool:
        """True while ``host``'s daemon is killed or frozen by a fault."""
        fault = self.active.get(host.name)
        return fault is not None and fault.kind in ("kill", "freeze")

    def inject(self) -> str:
        """One fault, of a kind picked at random among those with a free target."""
        kinds = [k for k in KINDS if (k == "partition" and PARTITION not in self.active)
                 or (k == "kill" and self._killable()) or (k not in ("partition", "kill") and self.free())]
        if not kinds:
            return "no free target"
        kind = self.rng.choice(kinds)
        now = time.monotonic()
        if kind == "partition":
            hosts = list(self.bed.hosts)
            self.rng.shuffle(hosts)
            half = len(hosts) // 2
            self.bed.partition(hosts[:half], hosts[half:])
            what = f"partition {sorted(h.name for h in hosts[:half])} | {sorted(h.name for h in hosts[half:])}"
            self._hold(Active(now + PARTITION_S, PARTITION, kind))
        else:
            host = self._target(kind)
            what = f"{kind} {host.name}"
            if kind == "kill":
                self._kill(host)
                self._hold(Active(time.monotonic() + self.rng.uniform(*RESTART_AFTER), host.name, kind))
            elif kind == "freeze":
                self._hold(Active(now + FREEZE_S, host.name, kind, self._freeze(host)))
            elif kind == "cut":
                host.cut()
                self._hold(Active(now + CUT_S, host.name, kind))
            else:
                host.loss(LOSS_PERCENT)
                self._hold(Active(now + LOSS_S, host.name, kind))
        self.counts[kind] += 1
        self._note(now, what)
        return what

    def _killable(self) -> list[Host]:
        return [h for h in self.free() if h.name not in self.spared]

    def _target(self, kind: str) -> Host:
        free = self._killable() if kind == "kill" else self.free()
        if kind == "kill" and self.rng.random() < 0.5:
            server = self.server()
            if server is not None and server in free:
                self.server_kills += 1
                return server
        return self.rng.choice(free)

    def _hold(self, fault: Active) -> None:
        self.active[fault.key] = fault
        heapq.heappush(self._ends, fault)

    def _kill(self, host: Host) -> None:
        proc = host.daemon
        assert proc is not None
        self.before_kill(host)
        proc.signal(signal.SIGSTOP)  # no new child between the listing and the kill
        kids = descendants(proc.pid)
        proc.kill()
        _signal_all(kids, signal.SIGKILL)
        proc.wait(10)

    def _freeze(self, host: Host) -> list[int]:
        proc = host.daemon
        assert proc is not None
        proc.signal(signal.SIGSTOP)
        kids = descendants(proc.pid)
        _signal_all(kids, signal.SIGSTOP)
        return kids

    def heal_due(self, now: float | None = None) -> None:
        """End every fault whose time is up."""
        now = time.monotonic() if now is None else now
        while self._ends and self._ends[0].until <= now:
            self._end(heapq.heappop(self._ends))

    def finish(self) -> float:
        """End every fault now; returns the moment the last one was healed."""
        while self._ends:
            self._end(heapq.heappop(self._ends))
        return self.last_heal

    def _end(self, fault: Active) -> None:
        if self.active.get(fault.key) is not fault:
            return
        del self.active[fault.key]
        if fault.kind == "partition":
            self.bed.heal()
        else:
            host = self.bed.host(fault.key)
            if fault.kind == "kill":
                host.restart_daemon()
                self.after_start(host)
            elif fault.kind == "freeze":
                proc = host.daemon
                assert proc is not None
                _signal_all(fault.pids, signal.SIGCONT)
                proc.signal(signal.SIGCONT)
            elif fault.kind == "cut":
                host.uncut()
            else:
                host.loss(0)
        self.last_heal = time.monotonic()
        self._note(self.last_heal, f"healed {fault.kind} {fault.key}")
