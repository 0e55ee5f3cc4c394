"""Finished frames: the worker's outbox, the submitter's output files and the
server's repository.

A worker puts every rendered frame in its outbox (state dir, survives a
restart) and delivers it to the job's submitting node and, with
SAVERESULTSINREPOSITORY, to the server, the way assets travel: the frame goes
into the worker's chunk store under a manifest, the target is told
(``ResultReady``) and fetches the verified chunks through the swarm.  The
worker deletes a frame only once every target has answered that it holds it.  The submitting node writes the frame to the job's output
pattern (``renders/shot_####.png``), records it, and marks the task SUCCEEDED
once every frame of the task is there.  A tiled job's tiles travel the same
way; the submitting node assembles its frames from them (``node.render.assembly``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import trio

from node.assets.store import CorruptChunk
from node.assets.swarm import FetchFailed, Swarm, bits_of
from node.assets.transfer import write_atomic
from node.db import Database
from node.errors import BadRequest, NotFound
from node.jobs.election import Election
from node.jobs.operations import Jobs, output_path, task_frames
from node.jobs.owners import Owners
from node.membership.peers import Peers
from node.membership.session import RequestFailed, Session, SessionLost
from node.nursery import service_nursery
from node.render.assembly import Assembly, SavingFailed
from node.service.accounts import Account
from node.service.runas import RunAs
from protocol import ProtocolError
from protocol.crdt import JobDoc, Phase, TaskState, task_current
from protocol.enums import NetRenderFlags
from protocol.manifest import Manifest
from protocol.messages import Error, Reply, ResultReady

log = logging.getLogger("rendernode.results")
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    job TEXT NOT NULL, gen INTEGER NOT NULL, frame INTEGER NOT NULL, kind TEXT NOT NULL,
    task INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    machine TEXT NOT NULL, render_time REAL NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (job, gen, frame, kind)
);
"""
RETRY = 2.0
DELIVERY_TRIES = 5  #: a frame its target refuses (cannot write it) this many times fails its task
FETCH_TIMEOUT = 600.0  #: seconds a target may take to fetch one frame




def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


async def write_test(runas: RunAs, account: Account | None, folder: str, output_dirs: list[str]) -> str:
    """"" if ``account`` (the submitter) may write frames into ``folder``, else why not.

    The one place the output folder is tested at submit (NETRENDERFLAGS_NOWRITETEST
    skips it): the folder must lie within ``output_dirs`` when that preference
    names some (the systemd unit lets the daemon's helpers write only there), exist
    or be creatable, and take a file, with the submitter's rights."""
    if output_dirs and not any(_inside(folder, d) for d in output_dirs):
        return (f"cannot write to the output folder {folder}: it is outside the folders this "
                f"daemon may write to (output_dirs: {', '.join(output_dirs)})")
    try:
        await runas.check_writable(account, folder)
    except OSError as exc:
        return f"cannot write to the output folder {folder}: {exc.strerror or exc}"
    return ""


@dataclass
class OutboxItem:
    """A rendered frame waiting for its targets."""

    path: str
    job: str
    gen: int
    task: int
    frame: int
    origin: str
    targets: list[str]  #: "origin" and/or "repository"
    render_time: float
    machine: str
    failures: int = 0  #: deliveries the target refused (a lost session does not count)
    tile: int = -1  #: a tile of the frame (tiled jobs), -1 for the whole frame

    @property
    def what(self) -> str:
        """``frame 3`` or ``tile 5 of frame 3``, for messages."""
        return f"frame {self.frame}" if self.tile < 0 else f"tile {self.tile} of frame {self.frame}"

    @property
    def meta_path(self) -> str:
        """The item's description beside the frame."""
        return self.path + ".json"


class Results:
    """Outbox delivery (worker side) and result storage (submitter and server side)."""

    def __init__(self, db: Database, jobs: Jobs, peers: Peers, election: Election,
                 swarm: Swarm, state_dir: str) -> None:
        self.db = db
        db.migrate(SCHEMA)
        self.jobs = jobs
        self.peers = peers
        self.election = election
        self.swarm = swarm
        self.me = peers.ident.uuid
        self.outbox_dir = os.path.join(state_dir, "outbox")
        self.repo_dir = os.path.join(state_dir, "repository")
        os.makedirs(self.outbox_dir, exist_ok=True)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.owners: Owners | None = None  #: who submitted each job here: frames are written as them
        self.runas = RunAs(switching=False)
        self.assembly = Assembly(db, jobs, os.path.join(state_dir, "tiles"), self)
        peers.register_handler(ResultReady, self._on_ready)
        peers.on_session.append(lambda s: self.wake())
        election.on_role.append(self.wake)

    def wake(self) -> None:
        """Try deliveries now."""
        self._wake.set()

    # -- worker side --------------------------------------------------------------

    def put(self, src: str, job: JobDoc, gen: int, task: int, frame: int, render_time: float,
            tile: int = -1) -> None:
        """Move a rendered frame (or tile of one) into the outbox (blocking file work:
        call in a thread)."""
        ext = os.path.splitext(src)[1] or ".png"
        name = f"{job.uuid}_{gen}_{task}_{frame}" + (f"_t{tile}" if tile >= 0 else "")
        path = os.path.join(self.outbox_dir, name + ext)
        shutil.move(src, path)
        targets = ["origin"]
        if int(job.value("flags", 0)) & NetRenderFlags.NETRENDERFLAGS_SAVERESULTSINREPOSITORY:
            targets.append("repository")
        item = OutboxItem(path, job.uuid, gen, task, frame, str(job.value("origin")), targets,
                          render_time, self.me, tile=tile)
        write_atomic(item.meta_path, json.dumps(item.__dict__).encode())

    def pending(self) -> list[OutboxItem]:
        """Every frame still in the outbox."""
        items = []
        for name in sorted(os.listdir(self.outbox_dir)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.outbox_dir, name)) as f:
                    items.append(OutboxItem(**json.load(f)))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable outbox entry %s: %s", name, exc)
        return items

    async def _deliver(self, item: OutboxItem) -> bool:
        """Try every remaining target once; True when none remains."""
        doc = self.jobs.book.get(item.job)
        if doc is None:  # deleted: nobody wants it
            self._drop(item)
            return True
        for target in list(item.targets):
            node = item.origin if target == "origin" else self.election.server
            if not node:
                continue
            ready = ResultReady(job=item.job, task=item.task, frame=item.frame, gen=item.gen,
                                manifest="", name=os.path.basename(item.path),
                                render_time=item.render_time, machine=item.machine,
                                repository=target == "repository", tile=item.tile)
            try:
                if node == self.me:
                    data = await trio.to_thread.run_sync(_read, item.path)
                    await self.store(ready, data)
                else:
                    manifest = await trio.to_thread.run_sync(self._chunk, item.path)
                    async with self.peers.using(node, "results") as session:
                        with trio.fail_after(FETCH_TIMEOUT):
                            await session.request(ResultReady(**{**ready.__dict__, "manifest": manifest.id}))
            except (SessionLost, ProtocolError, OSError, trio.TooSlowError) as exc:
                log.info("delivering %s of %s to %s failed: %s", item.what, item.job, node, exc)
                continue
            except (RequestFailed, SavingFailed, BadRequest) as exc:
                refused = not isinstance(exc, RequestFailed) or exc.reason.startswith(SavingFailed.code + ":")
                if not refused:  # the target could not fetch it this time
                    log.info("delivering %s of %s to %s failed: %s", item.what, item.job, node, exc)
                    continue
                if not self._refused(item, target, doc, exc.reason.removeprefix(SavingFailed.code + ": ")):
                    continue
            item.targets.remove(target)
            if item.targets:
                write_atomic(item.meta_path, json.dumps(item.__dict__).encode())
        if not item.targets:
            self._drop(item)
            return True
        return False

    def _refused(self, item: OutboxItem, target: str, doc: JobDoc, reason: str) -> bool:
        """Count a refused delivery; True once the frame is given up (after
        DELIVERY_TRIES), its task FAILED with the reason when the target was the
        submitter (``--wait`` prints it)."""
        item.failures += 1
        where = "the submitting machine" if target == "origin" else "the server's repository"
        log.warning("delivering %s of %s to %s failed (try %d of %d): %s", item.what, item.job,
                    where, item.failures, DELIVERY_TRIES, reason)
        if item.failures == 1:
            self.jobs.add_log(doc, f"delivering {item.what} to {where} failed: {reason}; "
                                   f"trying {DELIVERY_TRIES - 1} more times")
        if item.failures < DELIVERY_TRIES:
            write_atomic(item.meta_path, json.dumps(item.__dict__).encode())
            return False
        error = (f"RENDERRESULT_SAVINGFAILED: {item.what} could not be delivered to {where} "
                 f"after {item.failures} tries: {reason}")
        self.jobs.add_log(doc, f"task {item.task} failed: {error}")
        cur = task_current(doc, item.task)
        if target == "origin" and not cur.done and cur.gen == item.gen:
            self.jobs.set_task(doc, item.task, TaskState(
                gen=cur.gen, done=1, attempt=cur.attempt, phase=Phase.FAILED, stamp=self.jobs.book.stamp(),
                machines=cur.machines, render_time=cur.render_time, error=error, term=cur.term,
                failures=cur.failures))
        return True

    def _drop(self, item: OutboxItem) -> None:
        for path in (item.path, item.meta_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _chunk(self, path: str) -> Manifest:
        return self.swarm.store.add_files(os.path.dirname(path), [path])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver the outbox whenever something changes, retrying what failed."""
        async with service_nursery(self):
            task_status.started()
            while True:
                self._wake = trio.Event()
                await self.assembly.sweep()
                await self.assembly.flush()
                items = await trio.to_thread.run_sync(self.pending)
                waiting = False
                for item in items:
                    if not await self._deliver(item):
                        waiting = True
                deadline = trio.current_time() + (RETRY if waiting else 3600)
                due = self.assembly.next_due()
                with trio.move_on_at(deadline if due is None else min(deadline, due)):
                    await self._wake.wait()

    # -- receiving side ------------------------------------------------------------

    def _have(self, ready: ResultReady) -> bool:
        if ready.tile >= 0:
            return self.assembly.have(ready)
        kind = "repository" if ready.repository else "output"
        row = self.db.conn.execute(
            "SELECT 1 FROM results WHERE job=? AND gen=? AND frame=? AND kind=?",
            (ready.job, ready.gen, ready.frame, kind)).fetchone()
        return row is not None

    async def _on_ready(self, session: Session, msg: object, req_id: int) -> None:
        assert isinstance(msg, ResultReady)
        if self._nursery is not None:
            self._nursery.start_soon(self._fetch_result, session, msg, req_id)

    async def _fetch_result(self, session: Session, ready: ResultReady, req_id: int) -> None:
        """Fetch a worker's finished frame through the swarm and keep it."""
        reply: Reply | Error
        try:
            doc = self.jobs.book.get(ready.job)
            if doc is None or ready.gen != doc.gen or self._have(ready):
                reply = Reply({"stored": False, "already": True})
            else:
                manifest = await self.swarm.get_manifest(ready.manifest, [session.uuid])
                if len(manifest.files) != 1:
                    raise BadRequest("a result manifest holds exactly one file")
                n = len(manifest.chunk_ids())
                self.swarm.holdings.setdefault(manifest.id, {})[session.uuid] = bits_of(range(n), n)
                await self.swarm.fetch(manifest, allowed={session.uuid},
                                       deadline=trio.current_time() + FETCH_TIMEOUT, announce=False)
                data = await trio.to_thread.run_sync(self._assemble, manifest)
                reply = Reply(await self.store(ready, data))
        except (SavingFailed, BadRequest) as exc:  # the worker counts these and gives up
            reply = Error(SavingFailed.code, exc.reason)
        except (FetchFailed, CorruptChunk, OSError, ProtocolError, SessionLost) as exc:  # tried again
            reply = Error("fetch_failed", f"frame {ready.frame} of {ready.job}: {exc}")
        try:
            await session.send(reply, req_id)
        except (SessionLost, ProtocolError):
            pass

    def _assemble(self, manifest: Manifest) -> bytes:
        entry = manifest.files[0]
        data = b"".join(self.swarm.store.get(c) for c in entry.chunks)
        if len(data) != entry.size:
            raise CorruptChunk(f"assembled {len(data)} bytes, the manifest says {entry.size}")
        return data

    async def store(self, offer: ResultReady, data: bytes) -> dict[str, Any]:
        """Keep a delivered frame: in the output pattern (submitter) or the repository."""
        doc = self.jobs.book.get(offer.job)
        if doc is None:
            raise BadRequest(f"job {offer.job} no longer exists")
        if offer.gen != doc.gen:
            return {"stored": False, "stale": True}
        ext = os.path.splitext(offer.name)[1].lstrip(".") or "png"
        if offer.tile >= 0:
            if offer.repository:
                path = os.path.join(self.repo_dir, offer.job, f"frame_{offer.frame:06d}_tile_{offer.tile:04d}.{ext}")
                try:
                    await trio.to_thread.run_sync(write_atomic, path, data)
                except OSError as exc:
                    raise SavingFailed(f"cannot write {path}: {exc.strerror or exc}") from None
                await self.assembly.record(offer, "repository", path, data)
                return {"stored": True, "path": path}
            if str(doc.value("origin")) != self.me:
                raise BadRequest("this node did not submit the job")
            return await self.assembly.store(doc, offer, data)
        if offer.repository:
            kind = "repository"
            path = os.path.join(self.repo_dir, offer.job, f"frame_{offer.frame:06d}.{ext}")
        else:
            kind = "output"
            if str(doc.value("origin")) != self.me:
                raise BadRequest("this node did not submit the job")
            path = output_path(doc, offer.frame, ext)
        digest = hashlib.sha256(data).hexdigest()
        try:
            if kind == "output":
                await self.write_as_owner(offer.job, path, data)
            else:
                await trio.to_thread.run_sync(write_atomic, path, data)
        except OSError as exc:
            raise SavingFailed(f"cannot write {path}: {exc.strerror or exc}") from None
        row = (offer.job, offer.gen, offer.frame, kind, offer.task, path, digest, len(data),
               offer.machine, offer.render_time, time.time())
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", row))
        if kind == "output":
            self._maybe_done(doc, offer)
        return {"stored": True, "path": path}

    async def unlink_as_owner(self, job: str, path: str) -> None:
        """Remove a file of ``job`` in its output folder with its submitter's rights."""
        await self._unlink_result(job, path, "output")

    async def write_as_owner(self, job: str, path: str, data: bytes) -> None:
        """Write a frame with the rights of whoever submitted ``job`` here."""
        if self.owners is None:  # a node built without owners (tests of this module)
            await trio.to_thread.run_sync(write_atomic, path, data)
            return
        await self.runas.write(self._owner(job), path, data)

    def _owner(self, job: str) -> Account:
        account = self.owners.get(job) if self.owners is not None else None
        if account is None:
            raise BadRequest(f"this node has no record of who submitted job {job}; "
                             "it writes and removes no file of that job")
        return account

    async def _unlink_result(self, job: str, path: str, kind: str) -> None:
        """Remove a result file: an output with its owner's rights, ours from the repository."""
        if kind == "output" and self.owners is not None:
            await self.runas.unlink(self._owner(job), path)
        else:
            await trio.to_thread.run_sync(_unlink, path)

    def _maybe_done(self, doc: JobDoc, offer: ResultReady) -> None:
        frames = task_frames(doc)[offer.task]
        have = {r[0] for r in self.db.conn.execute(
            "SELECT frame FROM results WHERE job=? AND gen=? AND kind='output' AND task=?",
            (doc.uuid, doc.gen, offer.task))}
        if not set(frames) <= have:
            return
        cur = task_current(doc, offer.task)
        if cur.done:
            return
        total = sum(r[0] for r in self.db.conn.execute(
            "SELECT render_time FROM results WHERE job=? AND gen=? AND kind='output' AND task=?",
            (doc.uuid, doc.gen, offer.task)))
        machines = tuple(dict.fromkeys((*cur.machines, offer.machine))) if offer.machine else cur.machines
        self.jobs.set_task(doc, offer.task, TaskState(
            gen=doc.gen, done=1, attempt=cur.attempt, phase=Phase.SUCCEEDED,
            stamp=self.jobs.book.stamp(), machines=machines, worker=offer.machine,
            render_time=max(total, cur.render_time), term=cur.term, failures=cur.failures))

    # -- listing and clearing -----------------------------------------------------------

    def of_job(self, job: str) -> list[dict[str, Any]]:
        """Results of a job held on this node (current generation)."""
        doc = self.jobs.book.get(job)
        if doc is None:
            raise NotFound(f"no job {job!r}")
        rows = self.db.conn.execute(
            "SELECT frame, kind, path, sha256, size, machine, render_time, time FROM results "
            "WHERE job=? AND gen=? ORDER BY frame, kind", (job, doc.gen)).fetchall()
        keys = ("frame", "kind", "path", "sha256", "size", "machine", "render_time", "time")
        return [dict(zip(keys, r, strict=True)) for r in rows] + self.assembly.of_job(doc)

    def repository(self) -> list[dict[str, Any]]:
        """GetRepository: every job's results in this node's repository."""
        rows = self.db.conn.execute(
            "SELECT job, COUNT(*), SUM(size) FROM results WHERE kind='repository' GROUP BY job").fetchall()
        out = []
        for j, n, b in rows:
            doc = self.jobs.book.get(j)
            out.append({"job": j, "frames": n, "bytes": b, "name": doc.value("name") if doc else None})
        return out

    async def clear(self, job: str) -> int:
        """ClearResults: delete this node's result files of the job; returns how many."""
        rows = self.db.conn.execute("SELECT path, kind FROM results WHERE job=?", (job,)).fetchall()
        for path, kind in rows:
            await self._unlink_result(job, path, kind)
        await self.db.run(lambda c: c.execute("DELETE FROM results WHERE job=?", (job,)))
        return len(rows) + await self.assembly.forget(job)

    async def remove(self, job: str, path: str) -> bool:
        """RemoveResult: delete one result file of the job, named by its path as
        ``results list`` shows it, its path relative to a folder above it, or its
        file name."""
        rows = self.db.conn.execute("SELECT path, kind FROM results WHERE job=?", (job,)).fetchall()
        tail = "/" + path.lstrip("./")
        match = [(p, k) for p, k in rows if p == path or os.path.basename(p) == path or p.endswith(tail)]
        if not match:
            raise NotFound(f"job {job} has no result {path!r}; `rendernode results {job}` lists them")
        for p, k in match:
            await self._unlink_result(job, p, k)
        await self.db.run(lambda c: c.executemany(
            "DELETE FROM results WHERE job=? AND path=?", [(job, p) for p, _ in match]))
        return True


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
