"""Scale benchmark of membership and dissemination (issue 18).

``python bench/scale.py --sim 1000`` runs 1,000 nodes of the real membership
code (``protocol.membership``: HyParView views, SWIM/Lifeguard member list,
Plumtree broadcast, anti-entropy, relay) in one process on an in-memory
network with a simulated clock (``protocol.membership.simnet``; its docstring
describes the model of the node layer: sessions, keepalives, dials).  In one
run, in this order:

1. the farm forms: nodes start at ``--join-rate`` per second, each told of one
   random earlier node (as mDNS or a static peer would), until every node
   holds every other ALIVE;
2. at rest for ``--rest`` s: messages each node sends per second, keepalives
   included (the model sends one per session direction when nothing else was
   sent for ``--keepalive`` s), and dials;
3. a new node joins: seconds (and broadcast hops) until every node holds it;
4. ``--changes`` application payloads from random nodes, ``--spacing`` apart:
   seconds until each reached every node (p50, p99), payload copies sent per
   node per change;
5. a node is killed (SIGKILL: its sessions close at once): seconds until every
   other node holds it DEAD; then one is frozen (SIGSTOP: silent, its sessions
   time out): the same; then the killed one restarts with the same uuid: seconds
   until every node holds it ALIVE again;
6. ``false deaths``: members declared DEAD by anyone while their process was
   running, over the whole run (``--loss 0.01`` to test).

``--loss`` is packet loss (TCP turns it into retransmission delay, as on a
LAN), ``--drop`` drops whole overlay messages, ``--delay-ms`` is the one-way
delay.  The last lines are the wall time and CPU of the simulation.

``python bench/scale.py --netns --hosts 8,16,32,64`` runs real daemons, one
per host of the netlab bed, and measures each size's idle cost; the last line
is ``idle cost 64/8: R`` (median CPU per daemon at the largest size over that
at the smallest).  ``--netns --hosts 100`` also renders a 500-frame command job
across the farm.  ``bench/scale_netns.py`` says what is measured and how.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import time

from node.membership.overlay import ACTIVE_MAX
from protocol.membership import Config, Deliver, MemberChanged, State
from protocol.membership.messages import Gossip, Message
from protocol.membership.simnet import SimNet, payload_copies


class Watch:
    """What every node holds about every other, updated from MemberChanged."""

    def __init__(self, net: SimNet) -> None:
        self.net = net
        self.online: dict[str, set[str]] = {}  #: observer -> members it holds ONLINE
        self.dead: dict[str, set[str]] = {}  #: observer -> members it holds DEAD or LEFT
        self.false_deaths: list[tuple[float, str, str]] = []
        self.delivered: dict[bytes, dict[str, float]] = {}
        self.copies = 0
        self.hops: dict[str, int] = {}  #: member -> most hops a broadcast of its entry took
        net.on_change.append(self._changed)
        net.on_deliver.append(self._delivered)
        net.on_send.append(self._sent)

    def _changed(self, observer: str, eff: MemberChanged, now: float) -> None:
        uuid, state = eff.member.uuid, eff.member.state
        online = self.online.setdefault(observer, set())
        dead = self.dead.setdefault(observer, set())
        if state.online:
            online.add(uuid)
            dead.discard(uuid)
        else:
            online.discard(uuid)
            dead.add(uuid)
            node = self.net.nodes.get(uuid)
            if state == State.DEAD and node is not None and node.state == "up":
                self.false_deaths.append((now, observer, uuid))

    def _delivered(self, node: str, eff: Deliver, now: float) -> None:
        self.delivered.setdefault(eff.msg_id, {})[node] = now

    def _sent(self, sender: str, to: str, msg: Message) -> None:
        self.copies += payload_copies(msg)
        if isinstance(msg, Gossip) and msg.kind == "m":
            for e in msg.entries:
                if e.uuid in self.hops:
                    self.hops[e.uuid] = max(self.hops[e.uuid], msg.round + 1)

    def all_hold(self, uuid: str, online: bool) -> bool:
        """Every running node other than ``uuid`` holds it online (or dead)."""
        for u in self.net.up():
            if u == uuid:
                continue
            held = self.online.get(u, set()) if online else self.dead.get(u, set())
            if uuid not in held:
                return False
        return True

    def formed(self, n: int) -> bool:
        """Every running node holds ``n`` members online."""
        return all(len(self.online.get(u, ())) == n for u in self.net.up())


def wait(net: SimNet, done: object, limit: float, step: float = 0.01) -> float | None:
    """Run until ``done()`` holds (checked every ``step``); seconds taken or None."""
    start = net.now
    while net.now - start < limit:
        net.run_until(net.now + step)
        if done():  # type: ignore[operator]
            return net.now - start
    return None


def fmt(t: float | None) -> str:
    return "never" if t is None else f"{t:.2f}"


def run_sim(args: argparse.Namespace) -> int:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    n = args.sim
    net = SimNet(seed=args.seed, loss=args.loss, drop=args.drop, delay=args.delay_ms / 1000,
                 keepalive=args.keepalive, window=args.window,
                 config=Config(active_max=args.active_max))
    watch = Watch(net)
    rng = random.Random(args.seed)
    names = [f"node-{i:05d}" for i in range(n)]
    for i, uuid in enumerate(names):
        net.add(uuid, contacts=[names[rng.randrange(i)]] if i else [], at=i / args.join_rate)
    print(f"simulated farm of {n} nodes; loss {args.loss:g}, drop {args.drop:g}, "
          f"one-way delay {args.delay_ms:g} ms; assumed keepalive: one per session direction "
          f"after {args.keepalive:g} s without traffic, liveness window {args.window:g} s")
    net.run_until(n / args.join_rate)
    formed = wait(net, lambda: watch.formed(n), 300.0, 0.1)
    print(f"farm formed (all {n} hold all ALIVE): {fmt(formed)} s after the last node started")
    net.run_until(net.now + (10.0 if args.settle is None else args.settle))

    # -- at rest -----------------------------------------------------------------------
    sent0 = {u: (x.sent, x.dials, x.heartbeats) for u, x in net.nodes.items()}
    net.run_until(net.now + args.rest)
    msgs = [x.sent - sent0[u][0] for u, x in net.nodes.items()]
    dials = sum(x.dials - sent0[u][1] for u, x in net.nodes.items())
    beats = sum(x.heartbeats - sent0[u][2] for u, x in net.nodes.items())
    sessions = [len(x.machine.active_view()) for x in net.nodes.values()]
    rate = sum(msgs) / n / args.rest
    print(f"active view per node: mean {statistics.mean(sessions):.2f}, min {min(sessions)}, "
          f"max {max(sessions)}; sessions open: {len(net.links)}")
    print(f"messages per node per second at rest: {rate:.2f} "
          f"(keepalives {beats / n / args.rest:.2f}, busiest node {max(msgs) / args.rest:.2f}; "
          f"dials per node per second {dials / n / args.rest:.3f})")

    # -- a new node ------------------------------------------------------------------
    new = f"node-{n:05d}"
    watch.hops[new] = 0
    net.add(new, contacts=[rng.choice(names)])
    joined = wait(net, lambda: watch.all_hold(new, True), 30.0)
    print(f"new node known to all: {fmt(joined)} s ({watch.hops[new]} rounds)")
    net.run_until(net.now + 2.0)

    # -- application payloads --------------------------------------------------------
    copies0 = watch.copies
    ids = []
    starts: dict[bytes, float] = {}
    for _ in range(args.changes):
        origin = net.nodes[rng.choice(net.up())]
        msg_id = origin.machine.broadcast(b"x" * args.payload, net.now)
        net._settle(origin)
        ids.append(msg_id)
        starts[msg_id] = net.now
        net.run_until(net.now + args.spacing)
    net.run_until(net.now + 3.0)
    copies = (watch.copies - copies0) / len(net.nodes) / args.changes
    reach: list[float] = []
    missed = 0
    for msg_id in ids:
        got = watch.delivered.get(msg_id, {})
        if len(got) < len(net.up()) - 1:
            missed += 1
            continue
        reach.append(max(got.values()) - starts[msg_id])
    reach.sort()
    p99 = reach[min(len(reach) - 1, int(0.99 * len(reach)))] if reach else None
    print(f"change reaches all (p99): {fmt(p99)} s (p50 {fmt(reach[len(reach) // 2] if reach else None)}"
          f" s, max {fmt(reach[-1] if reach else None)} s, {missed} of {args.changes} missed someone)")
    print(f"payload copies per node per change: {copies:.2f}")

    # -- failures --------------------------------------------------------------------
    victim = rng.choice(names[1:])
    net.kill(victim)
    died = wait(net, lambda: watch.all_hold(victim, False), 30.0)
    print(f"death known by all: {fmt(died)} s (killed: its sessions closed at once)")
    frozen = rng.choice([u for u in names[1:] if u != victim])
    net.freeze(frozen)
    silent = wait(net, lambda: watch.all_hold(frozen, False), 30.0)
    print(f"silent death known by all: {fmt(silent)} s (frozen: its sessions timed out)")
    net.thaw(frozen)
    back_frozen = wait(net, lambda: watch.all_hold(frozen, True), 30.0)
    net.add(victim, contacts=[rng.choice(names)], incarnation=int(net.now * 1000))
    back = wait(net, lambda: watch.all_hold(victim, True), 30.0)
    print(f"restart known by all: {fmt(back)} s (same uuid, new incarnation); "
          f"thawed node back: {fmt(back_frozen)} s")
    net.run_until(net.now + 5.0)
    print(f"false deaths: {len(watch.false_deaths)}")
    for t, observer, uuid in watch.false_deaths[:5]:
        print(f"  at {t:.2f} s {observer} declared {uuid} dead")
    print(f"wall: {time.perf_counter() - wall0:.1f} s, cpu: {time.process_time() - cpu0:.1f} s "
          f"(simulated {net.now:.1f} s)")
    return 0


def run_netns(args: argparse.Namespace) -> int:
    import scale_netns  # bench/: the bed's helpers load only for this mode

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the daemons too

    return scale_netns.run_netns(args)


def sizes(text: str) -> list[int]:
    """``8,16,32`` -> [8, 16, 32]."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if not out or not all(2 <= x <= 250 for x in out):
        raise argparse.ArgumentTypeError("sizes must be between 2 and 250")
    return out


MODES = {"sim": run_sim, "netns": run_netns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sim", type=int, metavar="N",
                      help="N nodes of the membership code on an in-memory network")
    sim = parser.add_argument_group("--sim options")
    sim.add_argument("--loss", type=float, default=0.0, help="packet loss (0.01 = 1 %%)")
    sim.add_argument("--drop", type=float, default=0.0, help="whole overlay messages dropped")
    sim.add_argument("--delay-ms", type=float, default=1.0, help="one-way delay (ms)")
    sim.add_argument("--keepalive", type=float, default=0.75, help="idle seconds before a keepalive")
    sim.add_argument("--window", type=float, default=1.5, help="liveness window (s)")
    sim.add_argument("--join-rate", type=float, default=100.0, help="nodes started per second")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds between forming and rest (default 10 with --sim, 15 with --netns)")
    sim.add_argument("--rest", type=float, default=30.0, help="seconds measured at rest")
    sim.add_argument("--changes", type=int, default=100, help="application payloads broadcast")
    sim.add_argument("--spacing", type=float, default=0.1, help="seconds between payloads")
    sim.add_argument("--payload", type=int, default=1000, help="bytes per payload")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--active-max", type=int, default=ACTIVE_MAX,
                     help="neighbours per node (default: the daemon's, node/membership/overlay.py)")
    mode.add_argument("--netns", action="store_true",
                      help="real daemons, one per network-namespace host of the netlab bed")
    net = parser.add_argument_group("--netns options")
    net.add_argument("--hosts", type=sizes, default=[8, 16, 32, 64],
                     help="farm sizes, one after the other (default 8,16,32,64)")
    net.add_argument("--starting", type=int, default=8,
                     help="daemons starting (control socket not yet answering) at once (default 8)")
    net.add_argument("--idle-window", type=float, default=20.0,
                     help="seconds of the quiet window (default 20)")
    net.add_argument("--frames", type=int, default=None,
                     help="frames of the command job rendered after the window (default 500 with "
                          "one size, else none)")
    net.add_argument("--timeout", type=float, default=300.0,
                     help="seconds allowed to start the daemons, and again to become one farm")
    net.add_argument("--job-timeout", type=float, default=600.0, help="seconds allowed for the job")
    net.add_argument("--poll", type=float, default=0.25, help="seconds between polling rounds")
    net.add_argument("--stop-timeout", type=float, default=15.0,
                     help="seconds after SIGTERM before SIGKILL")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    net.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    name = next(k for k in MODES if getattr(args, k) not in (None, False))
    return MODES[name](args)


if __name__ == "__main__":
    sys.exit(main())
