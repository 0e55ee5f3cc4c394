"""Helpers the node tests share: in-process nodes, control calls off the trio
thread, and the bits a machine-table row carries."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node import config, daemon
from node.client import Client
from node.daemon import Node
from protocol.verification import VerificationBits

V = VerificationBits
UP = V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED


def new_token() -> bytes:
    """A fresh farm token, so nodes of other tests (and other people's runs on
    this machine, seen over mDNS) never verify with ours."""
    return secrets.token_urlsafe(32).encode()


def unique(name: str) -> str:
    """A node name no other run on this machine uses."""
    return f"{name}-{secrets.token_hex(3)}"


def node_prefs(root: Path, name: str, **overrides: Any) -> config.Preferences:
    """Preferences of an in-process test node: loopback only, state under ``root/name``."""
    state = root / name
    values: dict[str, Any] = {
        "state_dir": str(state), "listen": "127.0.0.1:0", "mdns_interfaces": ["127.0.0.1"],
        "socket": str(state / "x.sock"), "name": name, "dashboard": False,
    }
    values.update(overrides)
    return config.load(None, env={}, overrides=values)


@dataclass
class Running:
    """A node running in the test's nursery; ``stop()`` ends it alone."""

    node: Node
    scope: trio.CancelScope
    stopped: trio.Event

    @property
    def uuid(self) -> str:
        """The node's UUID."""
        return self.node.ident.uuid

    @property
    def port(self) -> int:
        """Its peer port."""
        return self.node.peers.listen_port

    def bits(self, uuid: str) -> V:
        """The bits this node's machine table holds for ``uuid`` (NONE if no row)."""
        row = self.node.table.get(uuid)
        return V(row.bits) if row is not None else V.VERIFICATIONBIT_NONE

    def sees_up(self, other: Running) -> bool:
        """True when ``other`` is ONLINE and VERIFIED in this node's table."""
        return self.bits(other.uuid) & UP == UP and other.uuid in self.node.peers.sessions

    async def stop(self) -> None:
        """Cancel the node and wait until every service has shut down."""
        self.scope.cancel()
        await self.stopped.wait()


async def start_node(nursery: trio.Nursery, prefs: config.Preferences, token: bytes,
                     env: dict[str, str] | None = None) -> Running:
    """Build and start a node; returns once every service is ready."""
    node = daemon.build(prefs, token, env or {})
    scope, stopped = await run_built(nursery, node)
    return Running(node, scope, stopped)


async def run_built(nursery: trio.Nursery, node: Node) -> tuple[trio.CancelScope, trio.Event]:
    """Run a built node in ``nursery`` until its scope is cancelled; returns once
    every service is ready: (the scope that stops it, set once it has stopped)."""
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    await inner.start(daemon.run_node, node)
                    task_status.started(scope)
        finally:
            stopped.set()

    scope = await nursery.start(run)
    return scope, stopped


async def start_nodes(nursery: trio.Nursery, prefs: list[config.Preferences],
                      token: bytes) -> list[Running]:
    """Start several nodes at once (mDNS start-up overlaps); returns them in order."""
    started: dict[int, Running] = {}

    async def one(i: int) -> None:
        started[i] = await start_node(nursery, prefs[i], token)

    async with trio.open_nursery() as starting:
        for i in range(len(prefs)):
            starting.start_soon(one, i)
    return [started[i] for i in range(len(prefs))]


async def call(path: str | Path, method: str, **args: Any) -> Any:
    """One control call through the blocking Client, off the trio thread."""
    def work() -> Any:
        with Client(str(path), timeout=10) as client:
            return client.call(method, **args)

    return await trio.to_thread.run_sync(work)


async def client_do(path: str | Path, fn: Callable[[Client], Any]) -> Any:
    """Run ``fn(Client)`` off the trio thread (the daemon shares our trio loop)."""
    def work() -> Any:
        with Client(str(path), timeout=10) as client:
            return fn(client)

    return await trio.to_thread.run_sync(work)
