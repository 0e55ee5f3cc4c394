"""A farm of rendernode daemons on a netlab bed, watched through their control sockets.

Design: daemons run in the bed's hosts (``Host.start_daemon``: real multicast
mDNS on each host's eth0, no static peers); the tests read each daemon's
``status`` and ``machines`` through ``node.client.Client`` on its control
socket, which is a file the root namespace reaches.  (The ``node`` CLI answers
the same calls, but one interpreter per poll would load the 2 cores the
daemons run on.)  Every wait is a ``poll_until`` (tests.harness.waiting) with a
deadline, every ``POLL`` s; latencies are measured from the moment before the
action that causes them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from node.client import Client
from node.errors import NodeError
from tests.harness.waiting import SYNC_POLL, poll_until
from tests.netlab import Bed, Host

__all__ = ["MEASUREMENTS", "POLL", "Farm", "new_token", "online", "report"]

POLL = SYNC_POLL  #: seconds between two looks at the daemons
#: Lines printed by :func:`report`, repeated in the terminal summary.
MEASUREMENTS: list[str] = []


def new_token() -> str:
    """A fresh farm token strong enough for ``load_token``."""
    return secrets.token_urlsafe(32)


def report(line: str) -> None:
    """Print a measurement (and keep it for the terminal summary)."""
    MEASUREMENTS.append(line)
    print(line, flush=True)


def good(row: Mapping[str, Any] | None) -> bool:
    """A machine row that is ONLINE and VERIFIED."""
    return row is not None and "ONLINE" in row["bits"] and "VERIFIED" in row["bits"]


def online(row: Mapping[str, Any] | None) -> bool:
    """A machine row that is ONLINE, verified or not (a node of a farm larger than
    its overlay's active view verifies only the peers it has had a session with)."""
    return row is not None and "ONLINE" in row["bits"]


def offline(row: Mapping[str, Any] | None) -> bool:
    """A machine row that is listed and not online."""
    return row is not None and not row["online"] and "ONLINE" not in row["bits"]


class Farm:
    """Daemons on some hosts of ``bed``, each host's UUID, and cached control clients."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.uuid: dict[str, str] = {}  #: host name -> daemon UUID
        self._clients: dict[str, Client] = {}
        self.started_at = 0.0
        self.answering_at = 0.0
        self.first_mesh_s: float | None = None  #: start of the daemons -> first full mesh

    # -- daemons -----------------------------------------------------------------

    def start(self, hosts: Iterable[Host], token: str, env: Mapping[str, str] | None = None) -> None:
        """Start a daemon on each host (returns at once)."""
        if not self.started_at:
            self.started_at = time.monotonic()
        for h in hosts:
            h.start_daemon(token, env=env)

    def wait_answering(self, hosts: Iterable[Host], timeout: float = 30.0) -> None:
        """Until each host's control socket answers ``status``; records the UUIDs."""
        for h in hosts:
            h.wait_daemon_socket(timeout)

            def answers(h: Host = h) -> tuple[bool, str]:
                self.uuid[h.name] = str(self.status(h)["uuid"])
                return True, ""

            poll_until(answers, timeout, f"{h.name}'s control socket answers status")
        self.answering_at = time.monotonic()

    def forget_client(self, host: Host) -> None:
        """Drop the cached client of ``host`` (its daemon is gone or frozen)."""
        client = self._clients.pop(host.name, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close every control connection."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- reading the daemons -------------------------------------------------------

    def call(self, host: Host, method: str, **args: Any) -> Any:
        """A control call on ``host``'s daemon."""
        client = self._clients.get(host.name)
        if client is None:
            client = self._clients[host.name] = Client(str(host.socket_path), timeout=5.0)
        try:
            return client.call(method, **args)
        except NodeError:
            self.forget_client(host)
            raise

    def status(self, host: Host) -> dict[str, Any]:
        """``status`` of ``host``'s daemon."""
        result: dict[str, Any] = self.call(host, "status")
        return result

    def rows(self, host: Host) -> dict[str, dict[str, Any]]:
        """``host``'s machine table without its own row: UUID -> row."""
        return {r["uuid"]: r for r in self.call(host, "machines") if not r["local"]}

    def name_of(self, uuid: str) -> str:
        """The host name of a UUID (or the UUID)."""
        for name, u in self.uuid.items():
            if u == uuid:
                return name
        return uuid

    def election_log(self, hosts: Sequence[Host], tail: int = 8) -> str:
        """The last ``tail`` election lines and membership deaths in each host's
        daemon log, UUIDs as host names: what a failed election check prints, so
        a rare failure in CI can be read without its bed."""
        out = []
        for h in hosts:
            try:
                lines = (h.dir / "daemon.log").read_text(errors="replace").splitlines()
            except OSError as exc:
                out.append(f"{h.name}: no log ({exc})")
                continue
            election = [ln for ln in lines if "rendernode.election" in ln][-tail:]
            deaths = [ln for ln in lines if "overlay: member" in ln and ln.endswith((" dead", " suspect"))][-tail:]
            text = "\n  ".join(sorted(election + deaths))
            for name, uuid in self.uuid.items():
                text = text.replace(uuid, name)
            out.append(f"{h.name}:\n  {text}")
        return "\n".join(out)

    # -- conditions -------------------------------------------------------------------

    def missing(self, hosts: Sequence[Host], want: Callable[[Any], bool] = good) -> dict[str, dict[str, str]]:
        """For each host, the others of ``hosts`` whose row fails ``want`` (default:
        ONLINE+VERIFIED), with how it lists them (bits and reason, or "not listed")."""
        missing: dict[str, dict[str, str]] = {}
        for h in hosts:
            rows = self.rows(h)
            lacks = {}
            for o in hosts:
                row = rows.get(self.uuid[o.name])
                if o is not h and not want(row):
                    lacks[o.name] = ("not listed" if row is None else
                                     f"{'|'.join(sorted(row['bits'])) or 'no bits'}: {row.get('reason', '')}")
            if lacks:
                missing[h.name] = lacks
        return missing

    def wait_all(self, hosts: Sequence[Host], want: Callable[[Any], bool], timeout: float, what: str,
                 since: float | None = None) -> float:
        """Until every host's row of every other satisfies ``want``, all in one round."""

        def check() -> tuple[bool, str]:
            missing = self.missing(hosts, want)
            return not missing, f"missing (observer: peers) {missing}"

        return poll_until(check, timeout, what, since=since)

    def wait_mesh(self, hosts: Sequence[Host], timeout: float, what: str = "full mesh",
                  since: float | None = None) -> float:
        """Until every host lists every other ONLINE+VERIFIED, all in one round."""
        return self.wait_all(hosts, good, timeout, what, since)

    def wait_online(self, hosts: Sequence[Host], timeout: float, what: str = "all ONLINE",
                    since: float | None = None) -> float:
        """Until every host lists every other ONLINE, all in one round."""
        return self.wait_all(hosts, online, timeout, what, since)

    def watch_peer(self, observers: Sequence[Host], target: Host, want: Callable[[Any], bool],
                   timeout: float, what: str, since: float) -> tuple[float, dict[str, float]]:
        """Until every observer's row of ``target`` satisfies ``want`` in one round.

        Returns (seconds until all at once, seconds until each observer first did).
        """
        first: dict[str, float] = {}
        uuid = self.uuid[target.name]

        def check() -> tuple[bool, str]:
            pending = {}
            for o in observers:
                row = self.rows(o).get(uuid)
                if want(row):
                    first.setdefault(o.name, time.monotonic() - since)
                else:
                    pending[o.name] = sorted(row["bits"]) if row else "not listed"
            return not pending, f"{target.name} as seen by {pending}"

        took = poll_until(check, timeout, what, since=since)
        return took, first

    def election(self, hosts: Sequence[Host]) -> tuple[bool, str, dict[str, dict[str, Any]]]:
        """Whether ``hosts`` agree on one server and term; (agreed, detail, statuses)."""
        statuses = {h.name: self.status(h) for h in hosts}
        views = {(s["server"], s["term"]) for s in statuses.values()}
        servers = [n for n, s in statuses.items() if s["role"] == "server"]
        server, term = next(iter(views)) if len(views) == 1 else (None, 0)
        agreed = (
            len(views) == 1 and server is not None and term > 0 and len(servers) == 1
            and self.uuid[servers[0]] == server
        )
        detail = ", ".join(
            f"{n}: {s['role']} term {s['term']} server {self.name_of(s['server'] or '-')}"
            for n, s in statuses.items()
        )
        return agreed, detail, statuses

    def wait_election(self, hosts: Sequence[Host], timeout: float, since: float | None = None,
                      what: str = "one server, one term") -> tuple[float, str, int]:
        """Until ``hosts`` agree; returns (seconds, server host name, term)."""
        found: list[tuple[str, int]] = []

        def check() -> tuple[bool, str]:
            agreed, detail, statuses = self.election(hosts)
            if agreed:
                s = next(iter(statuses.values()))
                found[:] = [(self.name_of(s["server"]), int(s["term"]))]
            return agreed, detail

        took = poll_until(check, timeout, what, since=since)
        return took, found[0][0], found[0][1]
