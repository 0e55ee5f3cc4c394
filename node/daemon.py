"""``serve()``: start the node's services in dependency order and stop them on
SIGTERM/SIGINT (mDNS goodbye, Goodbye to every peer, database flushed).

    database -> machine table, job book -> replication -> peers (listener,
    dialers) -> election -> control socket -> discovery
"""

from __future__ import annotations

import logging
import os
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
from node.jobs.owners import Owners
from node.jobs.replication import Replication
from node.jobs.scheduler import Scheduler
from node.jobs.watch import Watcher
from node.membership.api import MembershipApi
from node.membership.discovery import Discovery
from node.membership.identity import Identity, load_or_create
from node.membership.machines import MachineTable
from node.membership.overlay import Overlay
from node.membership.peers import Peers
from node.render.results import Results
from node.render.sandbox import Sandbox
from node.render.worker import Worker
from node.service import accounts, power, privilege
from node.service.accounts import Account, RenderIdentity
from node.service.runas import RunAs
from node.service.statelock import StateLock
from node.service.token import reload_token
from protocol.connection import derive_psk
from protocol.membership.entries import Meta
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
    overlay: Overlay
    methods: dict[str, Method] = field(default_factory=dict)
    identity: RenderIdentity | None = None  #: whom renders run as
    runas: RunAs | None = None  #: file work with users' rights
    dashboard: Dashboard | None = None  #: the web dashboard, unless ``dashboard = false``


def build(prefs: Preferences, token: bytes, env: dict[str, str] | None = None) -> Node:
    """Create (but do not start) a node's services."""
    env = dict(os.environ if env is None else env)
    os.makedirs(prefs.state_dir, mode=0o700, exist_ok=True)
    if os.stat(prefs.state_dir).st_uid == os.geteuid():
        os.chmod(prefs.state_dir, 0o700)  # key, database, chunks: the daemon's alone
    ident = load_or_create(prefs.state_dir)
    db = Database(prefs.state_dir)
    identity = RenderIdentity(prefs.render_user, prefs.render_as, prefs.render_groups,
                              prefs.control_group)
    if identity.warning():
        log.warning("%s", identity.warning())
    runas = RunAs(identity.switching)
    owners = Owners(db)
    table = MachineTable(db)
    backends, versions = renderers.load(os.path.join(prefs.state_dir, "renderers.json"))
    peers = Peers(prefs, ident, table, derive_psk(token, prefs.farm),
                  build_id(capabilities.version(), env), capabilities.arch(), versions)
    peers.local_mac = power.local_mac(prefs.listen) if prefs.share else ""  # no cores: never woken
    book = JobBook(db, ident.uuid)
    jobs = Jobs(book, ident.uuid, prefs.admins)
    replication = Replication(book, peers)
    election = Election(peers, prefs.state_dir, prefs.server_priority, prefs.election_grace)

    def meta() -> Meta:
        term, server = election.meta_claim()
        return Meta(name=prefs.name, build_id=peers.local.build_id, arch=peers.local.arch,
                    server_priority=prefs.server_priority, term=term,
                    capabilities=",".join(sorted(versions))[:128], sharing=prefs.share, server=server)

    overlay = Overlay(peers, prefs.state_dir, meta)
    api = MembershipApi(prefs, ident, peers, election.status, identity.status)
    transfers = Transfers(peers)
    store = ChunkStore(os.path.join(prefs.state_dir, "chunks"), prefs.asset_cache_mb << 20)
    swarm = Swarm(store, peers, transfers)
    assets = Assets(store, swarm, book, peers, election, prefs.state_dir, set(versions), prefs.share,
                    prefs.work_dir)
    results = Results(db, jobs, peers, election, swarm, prefs.state_dir)
    results.owners, results.runas = owners, runas
    sandbox = Sandbox(prefs.state_dir, prefs.work_dir, identity, runas, prefs.render_env)
    worker = Worker(peers, election, jobs, backends, results, prefs.state_dir, sandbox)
    worker.assets = assets
    worker.on_busy.append(lambda busy: swarm.throttle(busy, prefs.serve_slots_rendering))
    scheduler = Scheduler(jobs, peers, election, worker, versions, prefs.share, prefs.retries,
                          prefs.exclude_after, prefs.lease)
    worker.report_local = scheduler.on_update
    jobs_api = JobsApi(jobs, replication, peers, prefs.replicas, results, assets)
    jobs_api.owners, jobs_api.runas = owners, runas
    node = Node(prefs, ident, db, table, peers, api, book, jobs, replication, election, jobs_api,
                results, worker, scheduler, swarm, assets, overlay, {**api.methods(), **jobs_api.methods()},
                identity, runas)
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
            await nursery.start(node.overlay.run)
            await nursery.start(node.election.run)
            await nursery.start(node.swarm.run)
            await nursery.start(node.assets.run)
            await nursery.start(node.results.run)
            await nursery.start(node.jobs_api.run)
            await nursery.start(node.worker.run)
            await nursery.start(node.scheduler.run)
            pw = power.Power.of(node)
            await nursery.start(pw.run)
            await nursery.start(Watcher(prefs.watch, node.db, _watch_submit(node), _watch_frames(node)).run)
            if node.dashboard is not None:
                node.dashboard.status.waking = pw.waking
                await nursery.start(node.dashboard.run)
            await nursery.start(ControlServer(prefs.socket, node.methods, prefs.control_group).run)
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


def _folder_owner(folder: str) -> Account:
    """The owner of a watch folder: its jobs are theirs, read and written with their rights."""
    return accounts.of_uid(os.stat(folder).st_uid)


def _watch_submit(node: Node) -> Callable[[dict[str, Any]], Awaitable[str]]:
    async def submit(args: dict[str, Any]) -> str:
        owner = await trio.to_thread.run_sync(_folder_owner, args["watch_folder"])
        caller = Caller(0, owner.uid, owner.gid, owner.name, owner.groups)
        result = await node.jobs_api.submit(caller, args)
        if result["uuid"] is None:  # remembered all the same: tried again once the file changes
            log.warning("watch folder: %s refused (%s): %s", args["scene"], result["result_name"],
                        result.get("reason", ""))
            return ""
        return str(result["uuid"])

    return submit


def _watch_frames(node: Node) -> Callable[[str, str], Awaitable[str]]:
    async def frames(path: str, renderer: str) -> str:
        if renderer != "builtin" or node.runas is None:
            return "1"
        owner = await trio.to_thread.run_sync(_folder_owner, os.path.dirname(path))
        try:
            return await node.runas.scene_frames(owner, path)
        except OSError as exc:
            log.warning("cannot read the frame range of %s (%s); rendering frame 1", path, exc)
            return "1"

    return frames


def _txt(node: Node) -> dict[str, str]:
    return {
        "proto": "1", "build": node.peers.local.build_id, "arch": node.peers.local.arch,
        "uuid": node.ident.uuid, "name": node.prefs.name[:60], "term": "0",
    }


async def serve(prefs: Preferences, token: bytes, notify: Any = None) -> None:
    """The daemon: run the node until SIGTERM or SIGINT; SIGHUP reloads the token.
    The state dir is locked first: a second daemon on it fails (ConfigError)."""
    os.umask(0o077)  # the daemon's files are its own; the control socket sets its mode itself
    privilege.keep_capabilities_to_self()
    with StateLock(prefs.state_dir, prefs.socket):
        await _serve(prefs, token, notify)


async def _serve(prefs: Preferences, token: bytes, notify: Any) -> None:
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
