"""System test: a live daemon attacked on its peer port and its control socket at once.

One bed of five hosts: ``victim``, ``good1`` and ``good2`` form a farm (one
token, a full mesh); ``attacker`` runs ``hostile.py peer`` against the
victim's peer port for ``ATTACK_S``: 300 idle half-open connections kept up
for the first ``IDLE_S`` (they hold all 64 handshake slots, so most other
connections are refused at once), garbage, oversize lengths, msgpack bombs in
real first handshake messages, and real handshakes with the wrong token at
``FLOOD_RATE`` a second (answered with WRONG_TOKEN once slots are free).  A
process in the victim's own host runs ``hostile.py control`` against its
control socket at the same time (garbage and msgpack bombs inside
well-formed records, oversize lengths, and ``STUCK`` connections stuck
mid-record, more than the daemon serves at once).
``late`` starts a daemon with the farm's token two seconds into the attack:
it must join while the slots are held (the victim's own dial waits its turn
for a slot; the late host's dials are refused until then).

Throughout, every ``POLL`` s, the test asks the victim for ``status`` on a new
connection (each answer timed), checks that the victim and both good hosts still list each
other ONLINE+VERIFIED, and watches for the late host to join; a thread samples
the victim's VmRSS every 50 ms.  Afterwards: every hostile connection was
answered or closed (none hung), the RSS peak stayed under ``RSS_LIMIT_MB``,
the late host joined, the daemon logged no traceback.  The defaults of the
daemon are the shipped ones (64 handshakes at once, 5 s each).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.errors import NodeError
from tests.harness.systemfarm import POLL, Farm, good, new_token, report
from tests.netlab import Proc, python_env

pytestmark = pytest.mark.system

HOSTILE = Path(__file__).with_name("hostile.py")
ATTACK_S = 10.0  #: how long garbage and the handshake flood go on
IDLE_S = 5.0  #: how long the 300 idle connections are kept up (opened again when closed)
HOLD_S = 8.0  #: how long an idle connection waits for the daemon to close it (handshake_timeout 5 s)
FLOOD_RATE = 40  #: wrong-token handshakes per second
LATE_AFTER_S = 2.0
JOIN_WITHIN_S = 15.0
RSS_LIMIT_MB = 150.0
STUCK = 150  #: control connections stuck mid-record: more than the 128 the daemon serves at once
STATUS_LIMIT_S = 3.0  #: the slowest status answer allowed while under attack


def hostile(*args: str | float) -> list[str]:
    return [sys.executable, str(HOSTILE), *map(str, args)]


class RssSampler(threading.Thread):
    """VmRSS of one process every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def read_kb(self) -> int:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            try:
                kb = self.read_kb()
            except FileNotFoundError:
                return
            self.samples.append(kb)
            self.peak_kb = max(self.peak_kb, kb)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)


def attack_result(proc: Any, name: str) -> dict[str, Any]:
    log = proc.read_log()
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise AssertionError(f"{name} printed no result (exit {proc.returncode}):\n{log[-3000:]}")


def outcomes(counts: dict[str, int]) -> dict[str, int]:
    """Counts by outcome (the part after the first colon), over every kind."""
    out: dict[str, int] = {}
    for key, n in counts.items():
        outcome = key.split(":", 1)[1]
        out[outcome] = out.get(outcome, 0) + n
    return out


@dataclass
class Watch:
    """What the test saw of the farm while the victim was under attack."""

    polls: int = 0
    worst_status_s: float = 0.0
    cli_status_s: float | None = None
    lost: list[str] = field(default_factory=list)  #: polls where a peer or the control socket was missing
    late_started: float | None = None
    joined_s: float | None = None  #: the late host ONLINE+VERIFIED both ways, seconds after its start
    joined_during_attack: bool = False


def watch_attack(farm: Farm, token: str, attacks: list[Proc], t_attack: float) -> Watch:
    """Poll the victim every POLL s until the attacks are over and the late host
    joined (or a deadline): status timed, peers checked both ways."""
    victim, good1, good2, late, _ = farm.bed.hosts
    w = Watch()
    deadline = t_attack + max(ATTACK_S, HOLD_S) + JOIN_WITHIN_S
    while time.monotonic() < deadline:
        now = time.monotonic()
        at = f"{now - t_attack:.1f} s"
        if w.late_started is None and now - t_attack >= LATE_AFTER_S:
            farm.start([late], token)
            w.late_started = time.monotonic()
        try:
            farm.forget_client(victim)  # a new connection each time, as the CLI makes
            t0 = time.monotonic()
            assert farm.status(victim)["uuid"] == farm.uuid[victim.name]
            w.worst_status_s = max(w.worst_status_s, time.monotonic() - t0)
            w.polls += 1
            seen = farm.rows(victim)
            for o in (good1, good2):
                if not good(seen.get(farm.uuid[o.name])):
                    w.lost.append(f"{at}: victim lists {o.name} as {seen.get(farm.uuid[o.name])}")
                if not good(farm.rows(o).get(farm.uuid[victim.name])):
                    w.lost.append(f"{at}: {o.name} does not list the victim ONLINE+VERIFIED")
            if w.late_started is not None and w.joined_s is None and late.socket_path.exists():
                farm.uuid.setdefault(late.name, str(farm.status(late)["uuid"]))
                if good(seen.get(farm.uuid[late.name])) and good(farm.rows(late).get(farm.uuid[victim.name])):
                    w.joined_s = time.monotonic() - w.late_started
                    w.joined_during_attack = time.monotonic() < t_attack + ATTACK_S
        except NodeError as exc:
            w.lost.append(f"{at}: control socket error: {exc.reason}")
            farm.forget_client(victim)
        if w.cli_status_s is None and now - t_attack >= ATTACK_S / 2:  # the CLI, once, mid-attack
            t0 = time.monotonic()
            assert victim.cli("status")["uuid"] == farm.uuid[victim.name]
            w.cli_status_s = time.monotonic() - t0
        if all(p.poll() is not None for p in attacks) and w.joined_s is not None:
            break
        time.sleep(POLL)
    return w


def test_a_daemon_under_attack_answers_keeps_its_peers_and_takes_a_new_one(
        module_bed_factory: Any) -> None:
    bed = module_bed_factory(5, names=["victim", "good1", "good2", "late", "attacker"])
    victim, good1, good2, late, attacker = bed.hosts
    farm = Farm(bed)
    token = new_token()
    farm.start([victim, good1, good2], token)
    farm.wait_answering([victim, good1, good2])
    farm.wait_mesh([victim, good1, good2], 30.0, "the three-host farm meshes before the attack")
    daemon = victim.daemon
    assert daemon is not None
    rss = RssSampler(daemon.pid)
    before_mb = rss.read_kb() / 1024
    rows_before = len(farm.rows(victim))

    env = python_env()
    peer_attack = attacker.spawn(hostile("peer", "--target", victim.listen, "--seconds", ATTACK_S,
                                         "--hold", HOLD_S, "--idle-seconds", IDLE_S,
                                         "--rate", FLOOD_RATE), env=env)
    control_attack = victim.spawn(hostile("control", "--socket", victim.socket_path,
                                          "--seconds", ATTACK_S, "--stuck", STUCK), env=env)
    peer_attack.wait_for_log("ready", 15.0)
    control_attack.wait_for_log("ready", 15.0)
    t_attack = time.monotonic()
    rss.start()
    try:
        w = watch_attack(farm, token, [peer_attack, control_attack], t_attack)
    finally:
        rss.stop()
    watched_s = time.monotonic() - t_attack
    peer_attack.wait(10)
    control_attack.wait(10)
    peer = attack_result(peer_attack, "hostile.py peer")
    control = attack_result(control_attack, "hostile.py control")
    log = daemon.read_log()
    assert daemon.alive(), f"the victim's daemon died:\n{log[-3000:]}"
    after_mb, peak_mb = rss.read_kb() / 1024, rss.peak_kb / 1024
    rows_after = len(farm.rows(victim))
    status_after = farm.status(victim)

    idle, junk, flood, ctl = (outcomes(peer["idle"]), outcomes(peer["garbage"]), outcomes(peer["flood"]),
                              outcomes(control["control"]))
    flood_n = sum(flood.values())
    report(f"hostile: victim RSS {before_mb:.0f} MB before, peak {peak_mb:.0f} MB, {after_mb:.0f} MB after "
           f"({len(rss.samples)} samples over {watched_s:.1f} s)")
    report(f"  peer port: {sum(idle.values())} idle connections {idle} (slowest close "
           f"{peer['idle_slowest_close']} s); {sum(junk.values())} garbage {junk}; "
           f"{flood_n} wrong-token handshakes ({flood_n / peer['seconds']:.0f}/s) {flood}")
    report(f"  the victim refused {log.count('refusing a connection')} connections at once "
           f"(64 handshakes in flight); {len(log.splitlines())} log lines; machine rows "
           f"{rows_before} -> {rows_after}")
    report(f"  control socket: {sum(ctl.values())} bad requests {ctl}; {control['stuck']} stuck mid-record")
    joined = "never" if w.joined_s is None else (
        f"{w.joined_s:.2f} s after its start ({'during' if w.joined_during_attack else 'after'} the attack)")
    report(f"  status: {w.polls} polls, worst {w.worst_status_s:.2f} s; CLI status "
           f"{w.cli_status_s or 0:.2f} s; verified peers lost: {len(w.lost)}; late host joined {joined}")

    assert "Traceback" not in log, f"the victim logged a traceback:\n{log[log.index('Traceback') - 500:][:4000]}"
    assert not w.lost, f"verified peers or the control socket were lost under attack: {w.lost[:10]}"
    assert w.joined_s is not None, f"the late host did not join within {JOIN_WITHIN_S} s of its start"
    assert status_after["online_peers"] == 3, status_after
    assert w.cli_status_s is not None, "the CLI was never asked"
    assert w.worst_status_s <= STATUS_LIMIT_S, f"a status poll took {w.worst_status_s:.2f} s under attack"
    assert peak_mb <= RSS_LIMIT_MB, f"the victim's RSS peaked at {peak_mb:.0f} MB"
    for name, seen in (("idle", idle), ("garbage", junk), ("flood", flood), ("control", ctl)):
        assert not seen.get("hung"), f"{name} connections neither answered nor closed: {seen}"
    assert not flood.get("completed"), f"a wrong-token handshake completed: {flood}"
    assert flood.get("rejected-WRONG_TOKEN", 0) >= FLOOD_RATE, f"few wrong-token handshakes answered: {flood}"
    assert not [k for k in ctl if k.startswith("reply")], f"a bomb got a reply: {control['control']}"
