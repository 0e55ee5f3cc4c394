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

Local health (Lifeguard's idea, simplified): several neighbours timing out
within ``TIMEOUT_SETTLE`` of each other mean *this* node stalled (a freeze, a
starved CPU), so those are all checked before any is suspected.  Timeouts are
therefore acted on ``TIMEOUT_SETTLE`` after they are reported.

The helper side: PingReq -> Ping the target (dialing it if no session is up)
-> PingReqResult(alive) to the requester, or alive=False after ``ping_timeout``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .effects import Config, Connect, Disconnect, Outbox
from .entries import Member
from .members import MemberTable
from .messages import Ack, Ping, PingReq, PingReqResult
from .views import Views

TIMEOUT_SETTLE = 0.05


@dataclass
class Check:
    """Our check of a neighbour we lost."""

    nonce: int
    deadline: float
    helpers: set[str] = field(default_factory=set)
    nacks: int = 0
    redial_failed: bool = False
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
        for nonce, p in list(self.probes.items()):
            if p.target == uuid and p.dialed:
                self.outbox.send(uuid, Ping(nonce, p.suspect))
        return self.checks.pop(uuid, None) is not None

    def connect_failed(self, uuid: str, now: float) -> None:
        """A dial to ``uuid`` failed."""
        check = self.checks.get(uuid)
        if check is not None:
            check.redial_failed = True
            self._settle(uuid, check, now)
        for nonce, p in list(self.probes.items()):
            if p.target == uuid and p.dialed:
                self._answer(nonce, alive=False)

    # -- messages --------------------------------------------------------------------

    def on_ping_req(self, sender: str, msg: PingReq, now: float) -> None:
        """Check ``msg.target`` for ``sender``."""
        if msg.target in (self.me, sender):
            return
        nonce = self.rng.getrandbits(62)
        p = Probe(sender, msg.target, msg.nonce, now + self.config.ping_timeout,
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
            stalled = len(self._timeouts) > 1
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

    def next_deadline(self) -> float | None:
        """The earliest check, probe or settle deadline."""
        if not (self.checks or self.probes or self._timeouts):
            return None
        times = [c.deadline for c in self.checks.values()]
        times += [p.deadline for p in self.probes.values()]
        times += [t + TIMEOUT_SETTLE for t in self._timeouts.values()]
        return min(times, default=None)

    # -- internals -------------------------------------------------------------------

    def _check(self, uuid: str, now: float, *, suspect_first: bool) -> None:
        if uuid in self.checks:
            return
        if suspect_first:
            self.table.suspect(uuid, now)
        helpers = [n for n in self.views.active if n != uuid]
        chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        check = Check(self.rng.getrandbits(62), now + self.config.indirect_timeout, set(chosen),
                      suspected=suspect_first)
        self.checks[uuid] = check
        suspect = self.table.get(uuid) if suspect_first else None
        for h in chosen:
            self.outbox.send(h, PingReq(uuid, check.nonce, suspect))
        if not suspect_first:
            member = self.table.get(uuid)
            self.outbox.emit(Connect(uuid, member.addresses if member else ()))

    def _settle(self, uuid: str, check: Check, now: float) -> None:
        """Suspect once every helper and our own redial have failed."""
        if check.suspected or not check.redial_failed or check.nacks < len(check.helpers):
            return
        del self.checks[uuid]
        self.table.suspect(uuid, now)

    def _answer(self, nonce: int, *, alive: bool) -> None:
        p = self.probes.pop(nonce)
        self.outbox.send(p.requester, PingReqResult(p.target, p.nonce, alive))
        if p.dialed and p.target not in self.views.active and p.target not in self.views.attempts:
            self.outbox.emit(Disconnect(p.target))
