"""Job assets: collect a scene's dependencies at submit, fetch and materialise
them on the worker.

Submit: the scene and every file it needs (builtin: its textures; blender:
what Blender itself reports, image sequences and linked libraries; povray:
its #include and image files; command: the ``assets`` listed in rdata) are
chunked into the store under one manifest, rooted at their common folder.  A
missing file fails the submit with CREATEJOBRESULT_ASSETMISSING naming it
(only a warning in the job log, unless HANDLEWARNINGASERROR).

Worker: the manifest and its chunks come from the swarm (any peer; only the
origin and the server with NOPEERTOPEERASSETDISTRIBUTION), are materialised
once per manifest under ``assets/<id>/``, and the scene opens there; paths
the scene names absolutely are rewritten through a path map (origin root ->
local folder).  With NOREQUESTONDEMAND every eligible worker fetches a job's
assets as soon as the job starts, instead of when it gets a task.

No peer that holds a job's manifest may be reachable for a while (its
submitter restarting, a partition, a cut cable): the worker asks again as
sessions come, for ``MANIFEST_PATIENCE`` seconds, as the swarm waits for a
source of a chunk, before the task fails.  It used to fail at once, and three
such failures in a short partition failed an acknowledged job for good.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass

import trio

from node.assets.store import ChunkStore, CorruptChunk
from node.assets.swarm import NO_SOURCE_WAIT, FetchFailed, Swarm, bits_of
from node.jobs.book import JobBook
from node.jobs.election import Election
from node.jobs.operations import renders_on
from node.membership.peers import Peers
from node.membership.session import Session, SessionLost
from node.nursery import service_nursery
from node.service import privilege
from node.service.runas import Opened
from protocol import ProtocolError
from protocol.crdt import JobDoc
from protocol.enums import NetRenderFlags
from protocol.manifest import Manifest

log = logging.getLogger("rendernode.assets")
F = NetRenderFlags
FETCH_ROUNDS = 3  #: fetch + materialise rounds before a chunk that keeps vanishing fails the task
MANIFEST_PATIENCE = 60.0  #: seconds a worker looks for a peer able to send a job's manifest


class AssetMissing(Exception):
    """Files a scene needs do not exist."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__("missing: " + ", ".join(paths))
        self.paths = paths


@dataclass(frozen=True)
class Collected:
    """What submit stores in the job."""

    manifest: str
    root: str
    scene_rel: str
    size: int
    missing: tuple[str, ...]


def chunk_opened(store: ChunkStore, scene: str, opened: Opened) -> Collected:
    """Chunk the opened scene and dependencies into the store (blocking): files
    are read through the descriptors the submitter's rights opened."""
    scene = os.path.abspath(scene)
    files = list(opened.files)
    root = os.path.commonpath([os.path.dirname(p) for p in files]) if files else os.path.dirname(scene)
    manifest = store.add_files(root, files, opened.files)
    return Collected(manifest.id, root, os.path.relpath(scene, root).replace(os.sep, "/"),
                     manifest.size, tuple(opened.missing))


def collect(store: ChunkStore, scene: str, renderer: str, extra: list[str]) -> Collected:
    """Chunk the scene and its dependencies into the store with the daemon's own
    rights (blocking; tools and tests: a submit opens them as the submitter)."""
    from node.service import asuser

    opened = Opened()

    def keep(paths: list[str], fds: list[int]) -> None:
        opened.files.update((p, os.dup(fd)) for p, fd in zip(paths, fds, strict=True))

    try:
        answer = asuser.collect({"scene": scene, "renderer": renderer, "extra": extra}, keep)
        if answer["unreadable"]:
            raise OSError("cannot read " + "; ".join(answer["unreadable"]))
        opened.missing = list(answer["missing"])
        return chunk_opened(store, scene, opened)
    finally:
        opened.close()


class Assets:
    """Fetching and materialising job assets on this node."""

    def __init__(self, store: ChunkStore, swarm: Swarm, book: JobBook, peers: Peers,
                 election: Election, state_dir: str, renderers: set[str], share: bool,
                 work_dir: str = "") -> None:
        self.store = store
        self.swarm = swarm
        self.book = book
        self.peers = peers
        self.election = election
        self.me = peers.ident.uuid
        #: materialised copies, one folder per manifest: under the work root, which
        #: render users may traverse (the state dir is the daemon's alone)
        self.dir = os.path.join(work_dir or state_dir, "assets")
        if work_dir:
            shutil.rmtree(os.path.join(state_dir, "assets"), ignore_errors=True)  # where they were
        self._acl_warned = False
        self.renderers = renderers
        self.share = share
        self._locks: dict[str, trio.Lock] = {}
        self._pushing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._session_came = trio.Event()
        book.listeners.append(self._on_change)
        peers.on_session.append(self._new_session)

    def _new_session(self, session: Session) -> None:
        self._session_came.set()
        self._session_came = trio.Event()

    def _sources(self, doc: JobDoc) -> set[str] | None:
        if int(doc.value("flags", 0)) & F.NETRENDERFLAGS_NOPEERTOPEERASSETDISTRIBUTION:
            return {str(doc.value("origin")), self.election.server or ""} - {""}
        return None

    async def prepare(self, doc: JobDoc) -> tuple[str, dict[str, str]]:
        """Fetch and materialise the job's assets; (scene path here, path map)."""
        mid = str(doc.value("assets") or "")
        if not mid:
            return str(doc.value("scene")), {}
        dest = os.path.join(self.dir, mid)
        lock = self._locks.setdefault(mid, trio.Lock())
        async with lock:
            if not await trio.to_thread.run_sync(os.path.exists, os.path.join(dest, ".complete")):
                origin = str(doc.value("origin"))
                manifest = await self._manifest(mid, origin)
                if origin != self.me and origin not in self.swarm.holdings.get(mid, {}):
                    n = len(manifest.chunk_ids())
                    self.swarm.holdings.setdefault(mid, {})[origin] = bits_of(range(n), n)
                held = await self._hold_sources([origin, self.election.server or ""])
                try:
                    for attempt in range(1, FETCH_ROUNDS + 1):
                        await self.swarm.fetch(manifest, self._sources(doc))
                        try:
                            await trio.to_thread.run_sync(self._materialize, manifest, dest)
                            break
                        except (KeyError, CorruptChunk) as exc:  # dropped since (damaged, gc): again
                            if attempt == FETCH_ROUNDS:
                                raise FetchFailed(f"chunks of {mid[:12]} keep vanishing: {exc}") from None
                            log.warning("a chunk of %s vanished before it was materialised (%s); "
                                        "fetching again", mid[:12], exc)
                finally:
                    for uuid in held:
                        self.peers.release(uuid, "assets")
        root = str(doc.value("asset_root") or "/")
        return os.path.join(dest, *str(doc.value("scene_rel")).split("/")), {root: dest}

    async def _hold_sources(self, uuids: list[str]) -> list[str]:
        """Open and hold sessions to ``uuids`` (the job's origin and the server hold
        every chunk) for a fetch; the ones held, to release after it."""
        held = []
        for uuid in dict.fromkeys(uuids):
            if not uuid or uuid == self.me:
                continue
            try:
                await self.peers.session(uuid, hold="assets")
            except SessionLost:
                self.peers.release(uuid, "assets")
                continue
            held.append(uuid)
        return held

    async def _manifest(self, mid: str, origin: str) -> Manifest:
        """The manifest, from the origin or any peer; asked again as sessions come
        (or every NO_SOURCE_WAIT s) until MANIFEST_PATIENCE runs out."""
        deadline = trio.current_time() + MANIFEST_PATIENCE
        while True:
            came = self._session_came
            sources = [origin, *(u for u in self.peers.sessions if u != origin)]
            try:
                return await self.swarm.get_manifest(mid, sources)
            except FetchFailed:
                if trio.current_time() >= deadline:
                    raise
            with trio.move_on_at(min(deadline, trio.current_time() + NO_SOURCE_WAIT)):
                await came.wait()

    def prune(self, live: set[str]) -> int:
        """Remove the materialised copies of manifests not in ``live`` (blocking); how many."""
        removed = 0
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        for name in names:
            lock = self._locks.get(name)
            if name in live or (lock is not None and lock.locked()):
                continue
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            self._locks.pop(name, None)
            removed += 1
        return removed

    def _materialize(self, manifest: Manifest, dest: str) -> None:
        """Write the manifest's files under ``dest``, read-only (the daemon owns
        them; ``grant`` lets a render user read them while it renders)."""
        os.makedirs(dest, mode=0o700, exist_ok=True)
        os.chmod(dest, 0o700)
        self.store.materialize(manifest, dest)
        with open(os.path.join(dest, ".complete"), "w") as f:
            f.write(manifest.id)
        for top, dirs, names in os.walk(dest):
            for name in dirs:
                os.chmod(os.path.join(top, name), 0o755)
            for name in names:
                path = os.path.join(top, name)
                os.chmod(path, 0o444 | (os.stat(path).st_mode & 0o111))

    def folder(self, doc: JobDoc) -> str:
        """Where the job's assets are materialised ("" if it has none)."""
        mid = str(doc.value("assets") or "")
        return os.path.join(self.dir, mid) if mid else ""

    def grant(self, folder: str, uid: int) -> None:
        """Let ``uid`` read the materialised assets in ``folder`` until ``revoke``
        (blocking).  Without ACLs on this file system every local user may read
        them meanwhile: said once."""
        try:
            privilege.grant_read(folder, uid)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if not self._acl_warned:
                log.warning("%s has no ACLs: a job's assets are readable by every local user "
                            "while it renders here", self.dir)
                self._acl_warned = True
            os.chmod(folder, 0o755)

    def revoke(self, folder: str) -> None:
        """Only the daemon may read ``folder`` again (blocking)."""
        privilege.revoke(folder)

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        """Pin live jobs' manifests; push assets of NOREQUESTONDEMAND jobs as they start."""
        mid = str(doc.value("assets") or "")
        if doc.deleted is not None:
            self.store.pinned.pop(delta.uuid, None)
            return
        if not mid:
            return
        if delta.uuid not in self.store.pinned and self._nursery is not None:
            self._nursery.start_soon(self._pin, delta.uuid, mid)
        flags = int(doc.value("flags", 0))
        if (flags & F.NETRENDERFLAGS_NOREQUESTONDEMAND and doc.value("state") == "queued"
                and self.share and str(doc.value("renderer")) in self.renderers
                and doc.uuid not in self._pushing and self._nursery is not None
                and str(doc.value("origin")) != self.me and renders_on(doc, self.me, self.peers.prefs.name)):
            self._pushing.add(doc.uuid)
            self._nursery.start_soon(self._push, doc.uuid)

    async def _pin(self, job: str, mid: str) -> None:
        manifest = await trio.to_thread.run_sync(self.store.manifest, mid)
        self.store.pinned[job] = set(manifest.chunk_ids()) if manifest else set()

    async def _push(self, job: str) -> None:
        doc = self.book.get(job)
        if doc is None:
            return
        try:
            await self.prepare(doc)
            log.info("assets of job %s are here (pushed at start)", job)
        except (FetchFailed, CorruptChunk, OSError, ProtocolError, SessionLost) as exc:
            log.warning("fetching the assets of job %s at start failed: %s", job, exc)
        finally:
            self._pushing.discard(job)  # the job's next change tries again if it failed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery pushes run in; announce the manifests we hold."""
        async with service_nursery(self):
            for doc in self.book.live():
                mid = str(doc.value("assets") or "")
                if mid:
                    self.swarm.announce(mid)
                    self._on_change(doc, doc)  # pin; a push cut short by a crash resumes
            task_status.started()
            await trio.sleep_forever()
