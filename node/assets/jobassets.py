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

import logging
import os
import re
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
from protocol import ProtocolError
from protocol.crdt import JobDoc
from protocol.enums import NetRenderFlags
from protocol.manifest import Manifest

log = logging.getLogger("rendernode.assets")
F = NetRenderFlags
FETCH_ROUNDS = 3  #: fetch + materialise rounds before a chunk that keeps vanishing fails the task
MANIFEST_PATIENCE = 60.0  #: seconds a worker looks for a peer able to send a job's manifest
_POV_INCLUDE = re.compile(r'#include\s+"([^"]+)"')
_POV_FILE = re.compile(r'\b(?:png|jpeg|jpg|tga|tiff|gif|ppm|pgm|sys|exr|hdr|iff|df3)\s+"([^"]+)"', re.I)


class AssetMissing(Exception):
    """Files a scene needs do not exist."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__("missing: " + ", ".join(paths))
        self.paths = paths


def povray_dependencies(scene: str) -> list[str]:
    """Files a POV-Ray scene includes or maps, recursively; system includes are skipped."""
    found: list[str] = []
    todo = [scene]
    seen = {os.path.abspath(scene)}
    while todo:
        path = todo.pop()
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        base = os.path.dirname(os.path.abspath(path))
        for name in _POV_INCLUDE.findall(text) + _POV_FILE.findall(text):
            full = os.path.normpath(os.path.join(base, name))
            if full in seen:
                continue
            seen.add(full)
            if not os.path.exists(full) and name.endswith(".inc") and not os.path.isabs(name):
                continue  # a standard include from POV-Ray's library path
            found.append(full)
            if name.endswith((".inc", ".pov")):
                todo.append(full)
    return found


def dependencies(scene: str, renderer: str, extra: list[str]) -> list[str]:
    """Absolute paths of every file the scene needs, besides the scene."""
    deps: list[str] = []
    if renderer == "builtin":
        from node.renderers.builtin import scene_dependencies

        deps = scene_dependencies(scene)
    elif renderer == "blender":
        from node.renderers.blender_deps import blend_dependencies

        deps = blend_dependencies(scene)
    elif renderer == "povray":
        deps = povray_dependencies(scene)
    deps += [os.path.abspath(p) for p in extra]
    return list(dict.fromkeys(os.path.abspath(d) for d in deps))


@dataclass(frozen=True)
class Collected:
    """What submit stores in the job."""

    manifest: str
    root: str
    scene_rel: str
    size: int
    missing: tuple[str, ...]


def collect(store: ChunkStore, scene: str, renderer: str, extra: list[str]) -> Collected:
    """Chunk the scene and its dependencies into the store (blocking)."""
    scene = os.path.abspath(scene)
    deps = dependencies(scene, renderer, extra)
    files: list[str] = []
    missing: list[str] = []
    for path in [scene, *deps]:
        if os.path.isdir(path):
            for top, _, names in os.walk(path):
                files.extend(os.path.join(top, n) for n in sorted(names))
        elif os.path.isfile(path):
            files.append(path)
        else:
            missing.append(path)
    root = os.path.commonpath([os.path.dirname(p) for p in files]) if files else os.path.dirname(scene)
    manifest = store.add_files(root, files)
    return Collected(manifest.id, root, os.path.relpath(scene, root).replace(os.sep, "/"),
                     manifest.size, tuple(missing))


class Assets:
    """Fetching and materialising job assets on this node."""

    def __init__(self, store: ChunkStore, swarm: Swarm, book: JobBook, peers: Peers,
                 election: Election, state_dir: str, renderers: set[str], share: bool) -> None:
        self.store = store
        self.swarm = swarm
        self.book = book
        self.peers = peers
        self.election = election
        self.me = peers.ident.uuid
        self.dir = os.path.join(state_dir, "assets")
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
        root = str(doc.value("asset_root") or "/")
        return os.path.join(dest, *str(doc.value("scene_rel")).split("/")), {root: dest}

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
        self.store.materialize(manifest, dest)
        with open(os.path.join(dest, ".complete"), "w") as f:
            f.write(manifest.id)

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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for doc in self.book.live():
                mid = str(doc.value("assets") or "")
                if mid:
                    self.swarm.announce(mid)
                    self._on_change(doc, doc)  # pin; a push cut short by a crash resumes
            task_status.started()
            await trio.sleep_forever()
