"""Failure detection by the active view's neighbours, with SWIM's indirect checks.

Design.  Sessions are the probes: the node layer's heartbeats keep a session's
liveness deadline (``heartbeat window``, 1.5 s by default), so an active
neighbour that stops answering loses its session, and one whose process died
closes it at once.  What this node does when it loses an active neighbour
depends on how the session ended (``reason`` from the node layer):

    "goodbye" / "local"  on purpose: nothing (a leaving node says LEFT itself)
    "closed"             the peer's socket closed: the process died or
                         restarted, or the link broke.  Check *before*
                         suspecting: redial it, and send PingReq to
                         ``indirect_checks`` other neighbours, which Ping it
                         over their session (or dial it).  Any answer, or our
                         redial connecting, ends the check: no suspicion.  All
                         helpers failing and our redial failing (a dead process
                         refuses at once), or ``indirect_timeout``, and we
                         suspect it.
    "timeout"            the window passed in silence (frozen, cable cut): the
                         window was the direct probe, so suspect at once, and
                         still PingReq the helpers carrying the suspicion: a
                         helper that reaches it hands it the news in its Ping
                         (Lifeguard's buddy system), so it refutes at once.

Partitions: only neighbours watch a member, so after a split a member whose
neighbours are all on its own side is not suspected on the other side.  A
dial that fails to a member held ONLINE (a refill, a sweep, the node layer's
own dial) is evidence too and starts a check (with no redial of our own);
and while several members have died within ``SWEEP_WINDOW`` (what a
partition looks like) every node dials a random ALIVE member it has no
session to every ``SWEEP_INTERVAL``, which finds those members in seconds.
A single crash starts no sweep.  A sweep dial that connects is evidence
against a partition: each one in a row doubles the wait before the next (up
to ``SWEEP_GAP_MAX``), and one that fails brings it back to
``SWEEP_INTERVAL``.  On a farm whose members die falsely again and again (an
overloaded bed), the sweep otherwise dialled two members a second on every
node, and the handshakes starved the farm further.

Local health (Lifeguard's idea, simplified): several neighbours timing out
within ``TIMEOUT_SETTLE`` of each other mean *this* node stalled (a freeze, a
starved CPU), so those are all checked before any is suspected; so is every
timeout while the node layer says this node is starved (``slowness`` above 1:
it stalled again and again), as a Lifeguard node with a high health score
trusts its own probes less.  Timeouts are therefore acted on
``TIMEOUT_SETTLE`` after they are reported.

The helper side: PingReq -> Ping the target (dialing it if no session is up)
-> PingReqResult(alive) to the requester, or alive=False after ``ping_timeout``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .effects import Config, Connect, Disconnect, Outbox
from .entries import Member, State
from .members import MemberTable
from .messages import Ack, Ping, PingReq, PingReqResult
from .views import Views

TIMEOUT_SETTLE = 0.05
SWEEP_DEATHS = 3  #: this many deaths within SWEEP_WINDOW look like a partition ...
SWEEP_WINDOW = 10.0
SWEEP_INTERVAL = 0.5  #: ... and make the node dial a random ALIVE member this often
SWEEP_GAP_MAX = 16.0  #: the longest wait between sweep dials after dials that connected


@dataclass
class Check:
    """Our check of a neighbour we lost."""

    nonce: int
    deadline: float
    helpers: set[str] = field(default_factory=set)
    nacks: int = 0
    redial_failed: bool = False
    refused: bool = False  #: our redial was refused: the process is gone
    suspected: bool = False  #: suspected at once (timeout); the check only spreads word


@dataclass
class Probe:
    """A check we run for another node (the helper side)."""

    requester: str
    target: str
    nonce: int  #: the requester's
    deadline: float
    dialed: bool = False
    suspect: Member | None = None  #: news for the target, passed on in our Ping


class Detector:
    """Checks of lost neighbours, and checks run for others."""

    def __init__(self, me: str, config: Config, outbox: Outbox, table: MemberTable,
                 views: Views, rng: random.Random) -> None:
        self.me = me
        self.config = config
        self.outbox = outbox
        self.table = table
        self.views = views
        self.rng = rng
        self.checks: dict[str, Check] = {}
        self.probes: dict[int, Probe] = {}  #: by the nonce of our Ping
        self._timeouts: dict[str, float] = {}  #: timed-out neighbours not yet acted on
        self._sweeping: set[str] = set()  #: members dialed by the partition sweep
        self._next_sweep = 0.0
        self._sweep_gap = SWEEP_INTERVAL  #: the wait before the next sweep dial
        self.slowness = 1.0  #: check timeouts are stretched this much (Membership.slowness)

    def forget_checks(self) -> None:
        """Back from isolation: the checks, probes and timeouts begun while cut off
        would only suspect members it could not reach from there."""
        self.checks.clear()
        self.probes.clear()
        self._timeouts.clear()
        self._sweeping.clear()

    # -- node layer inputs -----------------------------------------------------------

    def lost(self, uuid: str, now: float, reason: str) -> None:
        """Our session to active neighbour ``uuid`` ended for ``reason``."""
        member = self.table.get(uuid)
        if reason in ("goodbye", "local") or member is None or not member.state.online:
            return
        if reason == "timeout":
            self._timeouts[uuid] = now
        else:
            self._check(uuid, now, suspect_first=False)

    def connected(self, uuid: str, now: float) -> bool:
        """A session to ``uuid`` is up; True if that ended our check of it (it lives)."""
        if uuid in self._sweeping:
            self._sweeping.discard(uuid)
            self._sweep_gap = min(SWEEP_GAP_MAX, self._sweep_gap * 2)  # reachable: no partition here
            self._next_sweep = max(self._next_sweep, now + self._sweep_gap)
            if uuid not in self.views.active and uuid not in self.views.attempts:
                self.outbox.emit(Disconnect(uuid))
        for nonce, p in list(self.probes.items()):
            if p.target == uuid and p.dialed:
                self.outbox.send(uuid, Ping(nonce, p.suspect))
        return self.checks.pop(uuid, None) is not None

    def connect_failed(self, uuid: str, now: float, *, dial: bool = True,
                       refused: bool = False) -> None:
        """A dial to ``uuid`` failed.  Ours for a check or a probe: that check or probe
        has its answer.  Any other (a refill, or the node layer's own dial) is evidence
        too: an ONLINE member we cannot reach is checked through the helpers, which is
        how a member with no neighbour on our side of a partition is found out.
        ``dial=False``: a session that was not an active link ended (no evidence)."""
        probed = False
        if uuid in self._sweeping:
            self._sweeping.discard(uuid)
            self._sweep_gap = SWEEP_INTERVAL  # unreachable: sweep on at full pace
        for nonce, p in list(self.probes.items()):
            if p.target == uuid and p.dialed:
                probed = True
                self._answer(nonce, alive=False)
        check = self.checks.get(uuid)
        if check is not None:
            check.redial_failed = True
            check.refused = check.refused or refused
            self._settle(uuid, check, now)
            return
        member = self.table.get(uuid)
        if dial and not probed and member is not None and member.state.online:
            self._check(uuid, now, suspect_first=False, redial=False)

    # -- messages --------------------------------------------------------------------

    def on_ping_req(self, sender: str, msg: PingReq, now: float) -> None:
        """Check ``msg.target`` for ``sender``."""
        if msg.target in (self.me, sender):
            return
        nonce = self.rng.getrandbits(62)
        p = Probe(sender, msg.target, msg.nonce, now + self.config.ping_timeout * self.slowness,
                  suspect=msg.suspect)
        self.probes[nonce] = p
        if msg.target in self.outbox.sessions:
            self.outbox.send(msg.target, Ping(nonce, msg.suspect))
        else:
            target = self.table.get(msg.target)
            p.dialed = True
            self.outbox.emit(Connect(msg.target, target.addresses if target else ()))

    def on_ping(self, sender: str, msg: Ping, now: float) -> None:
        """Answer a Ping; news of our suspicion in it is merged (and refuted)."""
        if msg.suspect is not None and msg.suspect.uuid == self.me:
            self.table.apply(msg.suspect, now)
        self.outbox.send(sender, Ack(msg.nonce))

    def on_ack(self, sender: str, msg: Ack, now: float) -> None:
        """The target answered our Ping."""
        p = self.probes.get(msg.nonce)
        if p is not None and p.target == sender:
            self._answer(msg.nonce, alive=True)

    def on_result(self, sender: str, msg: PingReqResult, now: float) -> None:
        """A helper's answer about a neighbour we lost."""
        check = self.checks.get(msg.target)
        if check is None or check.nonce != msg.nonce or sender not in check.helpers:
            return
        if msg.alive:
            if not check.suspected:
                del self.checks[msg.target]
            return
        check.nacks += 1
        self._settle(msg.target, check, now)

    # -- timers ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Act on settled timeouts; end checks and probes past their deadline."""
        due = [u for u, t in self._timeouts.items() if t + TIMEOUT_SETTLE <= now]
        if due:
            # several at once, or this node starved (slowness > 1): the silence may be ours
            stalled = len(self._timeouts) > 1 or self.slowness > 1.0
            for uuid in due:
                del self._timeouts[uuid]
            for uuid in due:
                member = self.table.get(uuid)
                if member is not None and member.state.online:
                    self._check(uuid, now, suspect_first=not stalled)
        for uuid, check in list(self.checks.items()):
            if check.deadline <= now:
                del self.checks[uuid]
                if not check.suspected:
                    self.table.suspect(uuid, now)
        for nonce, p in list(self.probes.items()):
            if p.deadline <= now:
                self._answer(nonce, alive=False)
        sweep = self._sweep_at()
        if sweep is None:
            self._sweep_gap = SWEEP_INTERVAL
        elif now >= sweep:
            self._next_sweep = now + self._sweep_gap
            skip = self.outbox.sessions | set(self.checks) | self._sweeping
            member = self.table.choose(self.rng, (State.ALIVE,), skip)
            if member is not None and member.addresses:
                self._sweeping.add(member.uuid)
                self.outbox.emit(Connect(member.uuid, member.addresses))

    def _sweep_at(self) -> float | None:
        """When to dial the next member for the partition sweep (None: no sweep)."""
        deaths = self.table.deaths
        if len(deaths) < SWEEP_DEATHS:
            return None
        at = max(self._next_sweep, deaths[-1] + SWEEP_INTERVAL / 10)
        return at if at < deaths[-SWEEP_DEATHS] + SWEEP_WINDOW else None

    def next_deadline(self) -> float | None:
        """The earliest check, probe, settle or sweep deadline."""
        sweep = self._sweep_at()
        if not (self.checks or self.probes or self._timeouts) and sweep is None:
            return None
        times = [] if sweep is None else [sweep]
        times += [c.deadline for c in self.checks.values()]
        times += [p.deadline for p in self.probes.values()]
        times += [t + TIMEOUT_SETTLE for t in self._timeouts.values()]
        return min(times, default=None)

    # -- internals -------------------------------------------------------------------

    def _check(self, uuid: str, now: float, *, suspect_first: bool, redial: bool = True) -> None:
        if uuid in self.checks:
            return
        if suspect_first:
            self.table.suspect(uuid, now)
        helpers = [n for n in self.views.active if n != uuid]
        chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        check = Check(self.rng.getrandbits(62), now + self.config.indirect_timeout * self.slowness, set(chosen),
                      suspected=suspect_first, redial_failed=not redial)
        self.checks[uuid] = check
        suspect = self.table.get(uuid) if suspect_first else None
        for h in chosen:
            self.outbox.send(h, PingReq(uuid, check.nonce, suspect))
        if redial and not suspect_first:
            member = self.table.get(uuid)
            self.outbox.emit(Connect(uuid, member.addresses if member else ()))

    def _settle(self, uuid: str, check: Check, now: float) -> None:
        """Suspect once every helper and our own redial have failed (a refused redial
        is enough: nothing listens where the member was)."""
        if check.suspected or not check.redial_failed:
            return
        if check.nacks < len(check.helpers) and not check.refused:
            return
        del self.checks[uuid]
        self.table.suspect(uuid, now, refused=check.refused)

    def _answer(self, nonce: int, *, alive: bool) -> None:
        p = self.probes.pop(nonce)
        self.outbox.send(p.requester, PingReqResult(p.target, p.nonce, alive))
        if p.dialed and p.target not in self.views.active and p.target not in self.views.attempts:
            self.outbox.emit(Disconnect(p.target))
