"""Failover benchmark: how soon a farm whose server was SIGKILLed gives its next
command, and how soon replicas agree again after a partition heals.

``python bench/failover.py`` builds a netlab bed (network-namespace hosts on one
bridge; needs root, exits 77 with the reason where namespaces are not allowed)
and starts one ``rendernode daemon`` per host with the default timings
(heartbeat 0.5 s x 3 misses, election grace 2 s); they find each other by
multicast mDNS.

Failover (``--runs``, default 5): each run submits a queue (a ``command`` job of
``sleep 0.3`` frames, more frames than the workers can hold), waits until it
renders, SIGKILLs the server and measures from the kill to

- *new server*: every survivor's ``status`` names one new server (control-socket
  polls every 10 ms);
- *first command*: the new server's first ``Assign``, i.e. the first task state
  ASSIGNED under the new term in a survivor's job book (the server writes it to
  its SQLite book in the same scheduler pass that sends the Assign; this bench
  reads the survivors' books read-only every 10 ms).  Workers hold a task and a
  waiting one, so the first Assign leaves when a worker frees a slot: it
  includes up to one frame's render time (0.3 s).

The killed daemon is restarted (same state dir) and the farm re-meshed before
the next run.  The printed figure is the median of the first-command times.
A SIGKILLed daemon's TCP connections are closed by its kernel, so its peers see
their sessions end at once; a machine that vanishes silently (power cut,
cable) would be noticed only after the heartbeat window (3 x 0.5 s), which
these figures do not include.

Convergence (``--heals``, default 3): the bed is split in two halves for
``--partition`` seconds (default 5); each half elects or keeps a server, gets
two jobs (frames of ``true``) submitted on it and renders them; then the bed
heals and the bench measures until every host's ``jobs`` list (sorted by job
UUID, compared as JSON) is identical and holds every job of both halves.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tests package: not installed
    sys.path.append(str(ROOT))

from node.db import FILENAME  # noqa: E402
from node.errors import NodeError  # noqa: E402
from node.jobs.book import decode_task_blob  # noqa: E402
from protocol.crdt import Phase  # noqa: E402
from tests.harness.systemfarm import Farm, new_token  # noqa: E402
from tests.harness.waiting import poll_until  # noqa: E402
from tests.netlab import Bed, Host, netns_unavailable_reason  # noqa: E402

EXIT_SKIPPED = 77
POLL = 0.01
FRAME = "sleep 0.3"


class Books:
    """Read-only views of the survivors' job books: ASSIGNED states of a term."""

    def __init__(self, hosts: list[Host]) -> None:
        self.conns = {}
        self.last: dict[str, int] = {}
        for h in hosts:
            uri = f"file:{h.state_dir / FILENAME}?mode=ro"
            self.conns[h.name] = sqlite3.connect(uri, uri=True, check_same_thread=False)
            row = self.conns[h.name].execute("SELECT COALESCE(MAX(rowid), 0) FROM tasks").fetchone()
            self.last[h.name] = int(row[0])

    def assigned_since(self, term: int) -> str | None:
        """A host whose book holds a task ASSIGNED under a term above ``term``, written
        since the last call.  Rows are rewritten with INSERT OR REPLACE, which gives a
        changed row a new, greater rowid: only new rows are read."""
        found = None
        for name, conn in self.conns.items():
            try:
                rows = conn.execute("SELECT rowid, state FROM tasks WHERE rowid > ?",
                                    (self.last[name],)).fetchall()
            except sqlite3.OperationalError:
                continue  # busy: the next poll reads it
            for rowid, blob in rows:
                self.last[name] = max(self.last[name], int(rowid))
                state = decode_task_blob(blob)
                if state.phase == Phase.ASSIGNED and state.term > term and found is None:
                    found = name
        return found

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def agreed_server(farm: Farm, hosts: list[Host]) -> tuple[Host, int]:
    """Wait until ``hosts`` agree on a server; (its host, term)."""
    _, name, term = farm.wait_election(hosts, 30.0, what="an agreed server")
    return farm.bed.host(name), term


def settle(farm: Farm) -> None:
    """Restart dead daemons; wait for a full mesh and one agreed server."""
    hosts = farm.bed.hosts
    dead = [h for h in hosts if h.daemon is None or not h.daemon.alive()]
    for h in dead:
        farm.forget_client(h)
        h.restart_daemon()
    if dead:
        farm.wait_answering(dead)
    farm.wait_mesh(hosts, 30.0)
    farm.wait_election(hosts, 30.0)


def submit(farm: Farm, host: Host, scene: str, frames: str, command: str, name: str) -> str:
    ack = farm.call(host, "submit", scene=scene, renderer="command", frames=frames,
                    rdata={"command": command}, name=name)
    if ack["result_name"] != "OK":
        raise RuntimeError(f"submit on {host.name} failed: {ack}")
    return str(ack["uuid"])


def failover_run(farm: Farm, scene: str, n: int) -> tuple[float, float, str]:
    """One kill: (seconds to the new server in every status, seconds to its first Assign, detail)."""
    hosts = farm.bed.hosts
    server, term = agreed_server(farm, hosts)
    survivors = [h for h in hosts if h is not server]
    job = submit(farm, survivors[0], scene, f"1-{12 * len(hosts)}", FRAME, f"bench-failover-{n}")

    def rendering() -> tuple[bool, str]:
        j = {r["uuid"]: r for r in farm.call(survivors[0], "jobs")}[job]
        return j["state"] == "rendering" and j["frames_done"] >= len(hosts), f"{j['state']} {j['frames_done']}"

    poll_until(rendering, 20.0, "the queue renders")
    books = Books(survivors)
    proc = server.daemon
    assert proc is not None
    farm.forget_client(server)
    t_kill = time.monotonic()
    proc.kill()
    new_server = first_assign = None
    where = ""
    deadline = t_kill + 20.0
    try:
        while new_server is None or first_assign is None:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"run {n}: new server {new_server}, first assign {first_assign} "
                                   f"after {now - t_kill:.1f} s")
            if first_assign is None:
                host = books.assigned_since(term)
                if host is not None:
                    first_assign, where = time.monotonic() - t_kill, host
            if new_server is None:
                try:
                    agreed, _, statuses = farm.election(survivors)
                except NodeError:
                    agreed, statuses = False, {}
                if agreed and next(iter(statuses.values()))["server"] != farm.uuid[server.name]:
                    new_server = time.monotonic() - t_kill
            time.sleep(POLL)
    finally:
        books.close()
    proc.wait(5)
    status = farm.status(survivors[0])
    detail = (f"{server.name} (term {term}) killed -> {farm.name_of(status['server'])} "
              f"(term {status['term']}), first Assign seen in {where}'s book")
    settle(farm)
    return new_server, first_assign, detail


def converge_run(farm: Farm, scene: str, n: int, partition: float) -> tuple[float, float]:
    """One partition and heal: (seconds to one server, seconds to identical job lists)."""
    hosts = farm.bed.hosts
    half = len(hosts) // 2
    side_a, side_b = hosts[:half], hosts[half:]
    t_split = time.monotonic()
    farm.bed.partition(side_a, side_b)
    try:
        uuids = []
        for label, side in (("a", side_a), ("b", side_b)):
            farm.wait_election(side, 15.0, what=f"side {label} has one server")
            mine = [submit(farm, h, scene, "1-4", "true", f"bench-heal-{n}-{label}{i}")
                    for i, h in enumerate(side[:2])]
            uuids += mine

            def done(side: list[Host] = side, mine: list[str] = mine) -> tuple[bool, str]:
                for h in side:
                    rows = {r["uuid"]: r for r in farm.call(h, "jobs")}
                    if any(u not in rows or rows[u]["state"] != "done" for u in mine):
                        seen = [(u[:8], rows[u]["state"], rows[u]["frames_done"]) if u in rows
                                else (u[:8], "missing") for u in mine]
                        return False, f"{h.name}: {seen}; status {farm.status(h)}"
                return True, ""

            poll_until(done, 20.0, f"side {label} renders its jobs")
        time.sleep(max(0.0, partition - (time.monotonic() - t_split)))
    finally:
        t_heal = time.monotonic()
        farm.bed.heal()
    one = converged = None
    while one is None or converged is None:
        now = time.monotonic()
        if now - t_heal > 60.0:
            raise RuntimeError(f"heal {n}: one server {one}, converged {converged} after 60 s")
        try:
            if converged is None:
                lists = [farm.call(h, "jobs") for h in hosts]
                texts = {json.dumps(sorted(rows, key=lambda r: r["uuid"]), sort_keys=True) for rows in lists}
                if len(texts) == 1 and all(u in {r["uuid"] for r in lists[0]} for u in uuids):
                    converged = time.monotonic() - t_heal
            if one is None and farm.election(hosts)[0]:
                one = time.monotonic() - t_heal
        except NodeError:
            pass
        time.sleep(POLL)
    settle(farm)
    return one, converged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5, help="server kills (median of these)")
    parser.add_argument("--heals", type=int, default=3, help="partitions healed (median of these)")
    parser.add_argument("--partition", type=float, default=5.0, help="seconds each partition lasts")
    parser.add_argument("--keep", action="store_true", help="keep the bed's folder (daemon logs)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason is not None:
        print(f"failover bench skipped: {reason}", file=sys.stderr)
        return EXIT_SKIPPED
    with Bed(args.hosts, keep_dir=args.keep) as bed:
        farm = Farm(bed)
        try:
            scene_path = Path(bed.dir) / "bench-scene.txt"
            scene_path.write_text("never opened by the command jobs\n")
            scene = str(scene_path)
            farm.start(bed.hosts, new_token())
            farm.wait_answering(bed.hosts)
            settle(farm)
            statuses, assigns = [], []
            for n in range(args.runs):
                to_server, to_assign, detail = failover_run(farm, scene, n)
                statuses.append(to_server)
                assigns.append(to_assign)
                print(f"  run {n + 1}: new server in all statuses {to_server:.3f} s, "
                      f"first Assign {to_assign:.3f} s ({detail})", flush=True)
            for job in farm.call(bed.hosts[0], "jobs"):  # the queues would keep rendering
                farm.call(bed.hosts[0], "delete", job=job["uuid"])
            ones, converged = [], []
            for n in range(args.heals):
                one, conv = converge_run(farm, scene, n, args.partition)
                ones.append(one)
                converged.append(conv)
                print(f"  heal {n + 1}: one server {one:.3f} s, identical job lists {conv:.3f} s", flush=True)
        finally:
            farm.close()
            if args.keep:
                print(f"bed folder kept: {bed.dir}")
    runs = ", ".join(f"{s:.2f}" for s in assigns)
    print(f"hosts: {args.hosts} (mDNS, heartbeat 0.5 s x 3 misses, lease 5 s)")
    print("failover = SIGKILL of the server -> the new server's first Assign "
          "(a task ASSIGNED under the new term in a survivor's job book)")
    print(f"failover median of {len(assigns)}: {statistics.median(assigns):.2f} s (runs: {runs}; target <= 2 s)")
    print(f"new server in every survivor's status: median {statistics.median(statuses):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in statuses)})")
    print(f"one server after heal: median {statistics.median(ones):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in ones)})")
    print(f"convergence after heal: {statistics.median(converged):.2f} s (median of {len(converged)} heals "
          f"after {args.partition:.0f} s partitions; runs: {', '.join(f'{s:.2f}' for s in converged)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
