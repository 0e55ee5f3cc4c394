"""Helpers the job-book tests share: job books over SQLite in a temp dir, and
farms of in-process nodes on loopback that find each other by static
addresses only (no mDNS), driven through the blocking control-socket client."""

from __future__ import annotations

import itertools
import math
import os
import pwd
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node import config, daemon
from node.client import Client, SubmitRefused
from node.daemon import Node
from node.db import Database
from node.jobs.book import JobBook
from node.jobs.operations import Jobs, JobSpec
from tests.harness.nodes import run_built
from tests.harness.waiting import wait_until

GRACE = 0.5
#: memory-backed temp space where there is one: SQLite's fsyncs on a real disk
#: cost tens of milliseconds each, and these tests make many databases
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: a real scene for the built-in renderer: submit collects the scene's files
EXAMPLE_SCENE = Path(__file__).resolve().parents[2] / "examples" / "spheres.json"


def me() -> str:
    """The OS user running the tests: the caller every control call is made as."""
    return pwd.getpwuid(os.getuid()).pw_name


def spec(**args: Any) -> JobSpec:
    """A validated submit."""
    return JobSpec.from_args({"scene": "/scenes/shot.scn", **args})


class FakeWall:
    """An injectable wall clock (seconds) that tests move by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_book(state_dir: Path, node: str, wall: Callable[[], float] | None = None) -> JobBook:
    """A job book over SQLite in ``state_dir`` (created if need be)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return JobBook(Database(state_dir), node, wall or FakeWall())


def table_rows(state_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read through a connection of its own: what is committed, nothing else."""
    conn = sqlite3.connect(state_dir / "rendernode.db")
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


# -- in-process farms ---------------------------------------------------------------


@dataclass
class Member:
    """A node running in the farm's nursery."""

    node: Node
    scope: trio.CancelScope
    stopped: trio.Event
    scene: str  #: a scene file submits can use

    @property
    def uuid(self) -> str:
        """The node's UUID."""
        return self.node.ident.uuid

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.prefs.name

    @property
    def address(self) -> str:
        """Where its peers dial it."""
        return f"127.0.0.1:{self.node.peers.listen_port}"

    @property
    def sock(self) -> str:
        """Its control socket."""
        return self.node.prefs.socket

    @property
    def role(self) -> str:
        """server or worker."""
        return self.node.election.role

    @property
    def term(self) -> int:
        """The term of the server it obeys."""
        return self.node.election.term

    @property
    def server(self) -> str | None:
        """The server it obeys."""
        return self.node.election.server

    def sees(self, *others: Member) -> bool:
        """True when it has a live verified session with each of ``others``."""
        return all(o.uuid in self.node.peers.sessions for o in others)

    async def stop(self) -> None:
        """Cancel the node and wait until every service has shut down."""
        self.scope.cancel()
        await self.stopped.wait()

    async def call(self, fn: Callable[[Client], Any]) -> Any:
        """Run ``fn(Client)`` on this node's control socket, off the trio thread."""
        def work() -> Any:
            with Client(self.sock, timeout=10) as client:
                return fn(client)

        return await trio.to_thread.run_sync(work)

    async def submit(self, scene: str = "", **args: Any) -> dict[str, Any]:
        """CreateRenderJob through the control socket (this farm's scene unless given):
        the daemon's answer, a refusal's (``SubmitRefused.result``) included."""
        def work(c: Client) -> dict[str, Any]:
            try:  # one frame and the builtin renderer unless told: what these tests were written for
                return c.create_render_job(scene or self.scene, **{"frames": "1", "renderer": "builtin", **args})
            except SubmitRefused as refused:
                return refused.result

        result: dict[str, Any] = await self.call(work)
        return result

    async def link(self, other: Member) -> None:
        """AddMachine: dial ``other`` as a static peer."""
        await self.call(lambda c: c.add_machine(other.address))

    async def forget(self, other: Member) -> None:
        """Remove ``other`` from the machine table (no more dialing, session closed)."""
        await self.call(lambda c: c.remove_machine(other.uuid))


@dataclass
class Farm:
    """Nodes of one farm (one token) in one test."""

    nursery: trio.Nursery
    root: Path
    token: bytes
    defaults: dict[str, Any] = field(default_factory=dict)  #: preferences of every node
    members: list[Member] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)
    scene: str = ""  #: ``root/shot.json``, a copy of an example scene

    def __post_init__(self) -> None:
        self.scene = str(self.root / "shot.json")
        shutil.copyfile(EXAMPLE_SCENE, self.scene)

    def prefs(self, name: str, **overrides: Any) -> config.Preferences:
        """A test node's preferences: loopback, no mDNS, not rendering, state under root."""
        state = self.root / name
        values: dict[str, Any] = {
            "state_dir": str(state), "listen": "127.0.0.1:0", "mdns": False,
            "socket": str(self.root / f"{name}.sock"), "name": name, "election_grace": GRACE,
            "share": False, "dashboard": False, **self.defaults,
        }
        admins = overrides.pop("admins", None)
        values.update(overrides)
        prefs = config.load(None, env={}, overrides=values)
        if admins is not None:
            prefs.admins = admins
        return prefs

    async def start(self, name: str = "", peers: list[Member] | None = None,
                    prefs: config.Preferences | None = None,
                    built: Callable[[daemon.Node], None] | None = None, **overrides: Any) -> Member:
        """Build and start a node whose static peers are ``peers``; returns once its
        services are ready (not once it has found its peers).  ``built`` sees the
        node after it loaded its state dir and before it talks to anyone."""
        name = name or f"n{next(self._names)}"
        if prefs is None:
            prefs = self.prefs(name, peers=[p.address for p in peers or []], **overrides)
        node = daemon.build(prefs, self.token, {})
        if built is not None:
            built(node)
        scope, stopped = await run_built(self.nursery, node)
        member = Member(node, scope, stopped, self.scene)
        self.members.append(member)
        return member

    async def restart(self, member: Member, built: Callable[[daemon.Node], None] | None = None,
                      **overrides: Any) -> Member:
        """Start ``member``'s node again from its state dir (after ``stop``)."""
        prefs = member.node.prefs
        for key, value in overrides.items():
            setattr(prefs, key, value)
        self.members.remove(member)
        return await self.start(prefs=prefs, built=built)

    async def mesh(self, *names: str, **overrides: Any) -> list[Member]:
        """Start nodes that each list every node started before them as static peers,
        and wait until all of them see each other."""
        out: list[Member] = []
        for name in names:
            out.append(await self.start(name, peers=list(out), **overrides))
        with trio.fail_after(5):
            await connected(out)
        return out

    def live(self) -> list[Member]:
        """Members still running."""
        return [m for m in self.members if not m.stopped.is_set()]


async def connected(members: list[Member], within: float = math.inf) -> None:
    """Wait until every one of ``members`` has a session with every other (by
    default as long as the caller's ``trio.fail_after`` lets it)."""
    await wait_until(lambda: all(m.sees(*(o for o in members if o is not m)) for m in members),
                     within, "every node sees every other",
                     lambda: {m.name: len(m.node.peers.sessions) for m in members})


def one_server(members: list[Member]) -> Member | None:
    """The server every one of ``members`` obeys, if they all agree on one that claims it."""
    servers = {m.server for m in members}
    terms = {m.term for m in members}
    if len(servers) != 1 or len(terms) != 1 or None in servers:
        return None
    (uuid,) = servers
    chosen = [m for m in members if m.uuid == uuid]
    if len(chosen) != 1 or chosen[0].role != "server" or chosen[0].term < 1:
        return None
    if [m for m in members if m.role == "server"] != chosen:
        return None
    return chosen[0]


async def agreed_server(members: list[Member], within: float = math.inf) -> Member:
    """Wait until ``members`` agree on exactly one server (by default as long as
    the caller's ``trio.fail_after`` lets it); return it."""
    await wait_until(lambda: one_server(members) is not None, within, "a single server all nodes agree on",
                     lambda: [(m.name, m.role, m.term, m.server) for m in members])
    server = one_server(members)
    assert server is not None
    return server


def book_digests(member: Member) -> dict[str, bytes]:
    """Every job's digest on ``member``."""
    return member.node.book.digests()


def new_jobs(jobs: Jobs) -> list[str]:
    """UUIDs of the live jobs in queue order."""
    return [d.uuid for d in jobs.queue()]
