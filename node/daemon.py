"""``serve()``: start the node's services in dependency order and stop them on
SIGTERM/SIGINT (mDNS goodbye, Goodbye to every peer, database flushed).

    database -> machine table, job book -> replication -> peers (listener,
    dialers) -> election -> control socket -> discovery
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node import capabilities, renderers
from node.assets.jobassets import Assets
from node.assets.store import ChunkStore
from node.assets.swarm import Swarm
from node.assets.transfer import Transfers
from node.config import Preferences
from node.control.server import Caller, ControlServer, Method
from node.dashboard.service import Dashboard, dashboard_off
from node.db import Database
from node.jobs.api import JobsApi
from node.jobs.book import JobBook
from node.jobs.election import Election
from node.jobs.operations import Jobs
from node.jobs.replication import Replication
from node.jobs.scheduler import Scheduler
from node.jobs.watch import Watcher
from node.membership.api import MembershipApi
from node.membership.discovery import Discovery
from node.membership.identity import Identity, load_or_create
from node.membership.machines import MachineTable
from node.membership.peers import Peers
from node.render.results import Results
from node.render.worker import Worker
from node.service import power
from node.service.token import reload_token
from protocol.connection import derive_psk
from protocol.version import build_id

log = logging.getLogger("rendernode.daemon")


@dataclass
class Node:
    """The services of one running node, for tests that drive a node in-process."""

    prefs: Preferences
    ident: Identity
    db: Database
    table: MachineTable
    peers: Peers
    api: MembershipApi
    book: JobBook
    jobs: Jobs
    replication: Replication
    election: Election
    jobs_api: JobsApi
    results: Results
    worker: Worker
    scheduler: Scheduler
    swarm: Swarm
    assets: Assets
    methods: dict[str, Method] = field(default_factory=dict)
    dashboard: Dashboard | None = None  #: the web dashboard, unless ``dashboard = false``


def build(prefs: Preferences, token: bytes, env: dict[str, str] | None = None) -> Node:
    """Create (but do not start) a node's services."""
    env = dict(os.environ if env is None else env)
    os.makedirs(prefs.state_dir, mode=0o750, exist_ok=True)
    ident = load_or_create(prefs.state_dir)
    db = Database(prefs.state_dir)
    table = MachineTable(db)
    backends, versions = renderers.load(os.path.join(prefs.state_dir, "renderers.json"))
    peers = Peers(prefs, ident, table, derive_psk(token, prefs.farm),
                  build_id(capabilities.version(), env), capabilities.arch(), versions)
    peers.local_mac = power.local_mac(prefs.listen) if prefs.share else ""  # no cores: never woken
    book = JobBook(db, ident.uuid)
    jobs = Jobs(book, ident.uuid, prefs.admins)
    replication = Replication(book, peers)
    election = Election(peers, prefs.state_dir, prefs.server_priority, prefs.election_grace)
    api = MembershipApi(prefs, ident, peers, election.status)
    transfers = Transfers(peers)
    store = ChunkStore(os.path.join(prefs.state_dir, "chunks"), prefs.asset_cache_mb << 20)
    swarm = Swarm(store, peers, transfers)
    assets = Assets(store, swarm, book, peers, election, prefs.state_dir, set(versions), prefs.share)
    results = Results(db, jobs, peers, election, swarm, prefs.state_dir)
    worker = Worker(peers, election, jobs, backends, results, prefs.state_dir)
    worker.assets = assets
    worker.on_busy.append(lambda busy: swarm.throttle(busy, prefs.serve_slots_rendering))
    scheduler = Scheduler(jobs, peers, election, worker, versions, prefs.share, prefs.retries,
                          prefs.exclude_after, prefs.lease)
    worker.report_local = scheduler.on_update
    jobs_api = JobsApi(jobs, replication, peers, prefs.replicas, results, assets)
    node = Node(prefs, ident, db, table, peers, api, book, jobs, replication, election, jobs_api,
                results, worker, scheduler, swarm, assets, {**api.methods(), **jobs_api.methods()})
    if prefs.dashboard:
        dashboard = node.dashboard = Dashboard(node)
        api.status_extra.append(dashboard.status_info)
        node.methods.update(dashboard.methods())
    else:
        node.methods.update(dashboard_off())
    return node


async def run_node(node: Node, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every service of ``node`` until cancelled."""
    prefs = node.prefs
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.table.run)
            await nursery.start(node.book.run)
            await nursery.start(node.replication.run)
            await nursery.start(node.peers.run)
            await nursery.start(node.election.run)
            await nursery.start(node.swarm.run)
            await nursery.start(node.assets.run)
            await nursery.start(node.results.run)
            await nursery.start(node.jobs_api.run)
            await nursery.start(node.worker.run)
            await nursery.start(node.scheduler.run)
            pw = power.Power.of(node)
            await nursery.start(pw.run)
            await nursery.start(Watcher(prefs.watch, node.db, _watch_submit(node)).run)
            if node.dashboard is not None:
                node.dashboard.status.waking = pw.waking
                await nursery.start(node.dashboard.run)
            await nursery.start(ControlServer(prefs.socket, node.methods).run)
            if prefs.mdns:
                addresses: list[tuple[str, int]] = []
                for text in node.peers.advertised:
                    host, _, port = text.rpartition(":")
                    addresses.append((host, int(port)))
                disco = Discovery(
                    uuid=node.ident.uuid, name=prefs.name, addresses=addresses,
                    txt=_txt(node), interfaces=prefs.mdns_interfaces, on_found=node.peers.hint,
                )
                await nursery.start(disco.run)
            log.info("node %s (%s) ready: peers on %s, control on %s", prefs.name, node.ident.uuid,
                     ", ".join(node.peers.advertised), prefs.socket)
            task_status.started(node)
    finally:
        node.db.close()


def _watch_submit(node: Node) -> Callable[[dict[str, Any]], Awaitable[str]]:
    async def submit(args: dict[str, Any]) -> str:
        try:
            owner = pwd.getpwuid(os.stat(args["scene"]).st_uid).pw_name
        except (KeyError, OSError):
            owner = "watch"
        result = await node.jobs_api.submit(Caller(0, -1, -1, owner), args)
        return str(result["uuid"])

    return submit


def _txt(node: Node) -> dict[str, str]:
    return {
        "proto": "1", "build": node.peers.local.build_id, "arch": node.peers.local.arch,
        "uuid": node.ident.uuid, "name": node.prefs.name[:60], "term": "0",
    }


async def serve(prefs: Preferences, token: bytes, notify: Any = None) -> None:
    """The daemon: run the node until SIGTERM or SIGINT; SIGHUP reloads the token."""
    node = build(prefs, token)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_node, node)
            if notify is not None:
                notify("READY=1", f"STATUS=serving as {node.ident.uuid}")
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload(node, notify)
                    continue
                log.info("received %s; shutting down", signal.Signals(signum).name)
                if notify is not None:
                    notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def _reload(node: Node, notify: Any) -> None:
    log.info("received SIGHUP; reloading the farm token")
    if notify is not None:
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    ok = reload_token(node.prefs, node.peers)
    if notify is not None:
        notify("READY=1", f"STATUS=serving as {node.ident.uuid}"
                          + ("" if ok else "; token reload failed, see the log"))
