"""The submitting node's side of a tiled job: tiles in, frames out.

Each tile a worker delivers is checked against its region's size, kept in
this node's state dir (``tiles/<job>/<gen>/``, the daemon's own files) and
recorded in the ``tiles`` table.  Then, one tile at a time per frame, the
frame is assembled from the tiles it has: while some are missing, a partial
image (``shot_0001.partial.png``: the tiles so far, transparent elsewhere)
is rewritten beside the frame's file so a user can watch it fill; once
every tile is there, the frame goes to the job's output pattern, the partial
image is removed, and the frame is recorded as any frame is.  Both are
written with the submitter's rights.

A tile's task is SUCCEEDED once its tiles are kept, and the task whose tile
completes a frame only once the frame is written: a frame is done when it is
assembled, and a frame that cannot be written fails its task as an
undeliverable frame does (its delivery is refused, tried again, then failed).

A frame is assembled from the tiles of the job's generation, and from older
generations' tiles of the tasks the generation kept as done (``rendernode
retry`` renders only the failed tiles again).  A deleted job's tiles are
removed with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from typing import Any, Protocol

import numpy as np
import trio

from node.assets.transfer import write_atomic
from node.db import Database
from node.errors import BadRequest, NodeError
from node.image import ImageError, encode, encode_exact, read_exact
from node.jobs.operations import Jobs, output_path, task_shape, tiling_of
from node.jobs.tiling import Tiling
from node.render.tiles import TileError, assemble
from protocol.crdt import JobDoc, Phase, TaskState, task_current
from protocol.messages import ResultReady

log = logging.getLogger("rendernode.assembly")
SCHEMA = """
CREATE TABLE IF NOT EXISTS tiles (
    job TEXT NOT NULL, gen INTEGER NOT NULL, frame INTEGER NOT NULL, tile INTEGER NOT NULL,
    kind TEXT NOT NULL, task INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, machine TEXT NOT NULL, render_time REAL NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (job, gen, frame, tile, kind)
);
"""
PARTIAL = ".partial"  #: inserted before the extension of a frame still missing tiles
PARTIAL_EVERY = 1.0  #: seconds between two writes of one frame's partial image


class SavingFailed(NodeError):
    """A frame (or a tile of one) cannot be written where it must go; the
    delivery is refused (the worker counts refusals, then fails the task)."""

    code = "saving_failed"


class Writer(Protocol):
    """What assembly needs of the results service."""

    async def write_as_owner(self, job: str, path: str, data: bytes) -> None:
        """Write a file of ``job`` with its submitter's rights."""

    async def unlink_as_owner(self, job: str, path: str) -> None:
        """Remove a file of ``job`` with its submitter's rights."""

    def wake(self) -> None:
        """Run the service's loop soon."""


def partial_path(path: str) -> str:
    """Where the partial image of the frame written to ``path`` goes."""
    stem, ext = os.path.splitext(path)
    return stem + PARTIAL + ext


def output_ext(doc: JobDoc) -> str:
    """The file type of the job's frames."""
    return os.path.splitext(str(doc.value("output") or ""))[1].lstrip(".").lower() or "png"


class Assembly:
    """Tiles kept, frames assembled (see the module docstring)."""

    def __init__(self, db: Database, jobs: Jobs, folder: str, writer: Writer) -> None:
        db.migrate(SCHEMA)
        self.db = db
        self.jobs = jobs
        self.folder = folder
        self.writer = writer
        self._locks: dict[tuple[str, int], trio.Lock] = {}
        self._gone: set[str] = set()  #: deleted jobs whose tiles are still here
        self.partial_every = PARTIAL_EVERY
        self._partial_at: dict[tuple[str, int], float] = {}  #: (job, frame) -> last partial image (trio clock)
        self._partial_due: dict[tuple[str, int], float] = {}  #: partial images left for later -> when
        jobs.book.listeners.append(self._on_change)

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        if doc.deleted is not None and delta.deleted is not None:
            self._gone.add(doc.uuid)
            self.writer.wake()

    def have(self, ready: ResultReady) -> bool:
        """True if nothing more is to be done with this tile: its task is done (or,
        for the repository, the tile is kept)."""
        if ready.repository:
            row = self.db.conn.execute(
                "SELECT 1 FROM tiles WHERE job=? AND gen=? AND frame=? AND tile=? AND kind='repository'",
                (ready.job, ready.gen, ready.frame, ready.tile)).fetchone()
            return row is not None
        doc = self.jobs.book.get(ready.job)
        return doc is not None and bool(task_current(doc, ready.task).done)

    async def record(self, offer: ResultReady, kind: str, path: str, data: bytes) -> None:
        """Record a kept tile."""
        row = (offer.job, offer.gen, offer.frame, offer.tile, kind, offer.task, path,
               hashlib.sha256(data).hexdigest(), len(data), offer.machine, offer.render_time, time.time())
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO tiles VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row))

    def _lock(self, job: str, frame: int) -> trio.Lock:
        lock = self._locks.get((job, frame))
        if lock is None:
            lock = self._locks[(job, frame)] = trio.Lock()
        return lock

    async def store(self, doc: JobDoc, offer: ResultReady, data: bytes) -> dict[str, Any]:
        """Keep a delivered tile and assemble its frame (see the module docstring);
        BadRequest for a tile the job does not have, SavingFailed when it does not fit
        its region or the frame cannot be written."""
        tiling = tiling_of(doc)
        shape = task_shape(doc, offer.task)
        if tiling is None or shape is None or offer.tile not in shape.tiles or shape.frames != [offer.frame]:
            raise BadRequest(f"job {doc.uuid} has no tile {offer.tile} of frame {offer.frame} in task {offer.task}")
        ext = os.path.splitext(offer.name)[1].lstrip(".").lower() or "png"
        path = os.path.join(self.folder, doc.uuid, str(doc.gen),
                            f"frame_{offer.frame:06d}_tile_{offer.tile:04d}.{ext}")
        try:
            await trio.to_thread.run_sync(_keep, path, data, tiling, offer.tile)
        except (OSError, ImageError, TileError) as exc:
            raise SavingFailed(f"tile {offer.tile} of frame {offer.frame}: {exc}") from None
        await self.record(offer, "output", path, data)
        async with self._lock(doc.uuid, offer.frame):
            current = self.jobs.book.get(doc.uuid)
            if current is None or current.gen != offer.gen:
                return {"stored": False, "stale": True}
            written = await self._assemble(current, tiling, offer)
        self._task_done(current, offer)
        return {"stored": True, "path": written, "tile": path}

    def _present(self, doc: JobDoc, frame: int) -> dict[int, str]:
        """Tile -> file of ``frame``'s tiles that count for the job's generation."""
        out: dict[int, str] = {}
        rows = self.db.conn.execute(
            "SELECT tile, gen, task, path FROM tiles WHERE job=? AND frame=? AND kind='output' AND gen<=? "
            "ORDER BY gen", (doc.uuid, frame, doc.gen)).fetchall()
        for tile, gen, task, path in rows:
            if gen == doc.gen:
                out[tile] = path
            else:  # kept by a retry: done in this generation without rendering again
                state = task_current(doc, task)
                if state.done and state.phase == Phase.SUCCEEDED and state.gen == doc.gen:
                    out.setdefault(tile, path)
        return out

    async def _assemble(self, doc: JobDoc, tiling: Tiling, offer: ResultReady) -> str:
        """Write the frame (every tile is there) or its partial image; the path written."""
        present = self._present(doc, offer.frame)
        complete = len(present) == tiling.count
        ext = output_ext(doc)
        final = output_path(doc, offer.frame, ext)
        key = (doc.uuid, offer.frame)
        if not complete:
            last = self._partial_at.get(key)
            if last is not None and trio.current_time() - last < self.partial_every:
                # at most one a second: the image waits for the next tile or ``flush``
                self._partial_due.setdefault(key, last + self.partial_every)
                self.writer.wake()
                return partial_path(final)
            self._partial_at[key] = trio.current_time()
            self._partial_due.pop(key, None)
        else:
            self._partial_at.pop(key, None)
            self._partial_due.pop(key, None)
        try:
            data = await trio.to_thread.run_sync(_encode, tiling, _placed(tiling, present), complete, ext)
        except (OSError, ImageError, TileError) as exc:
            raise SavingFailed(f"cannot assemble frame {offer.frame}: {exc}") from None
        if not complete:
            await self._write_partial(doc.uuid, offer.frame, partial_path(final), data)
            return partial_path(final)
        try:
            await self.writer.write_as_owner(doc.uuid, final, data)
        except OSError as exc:
            raise SavingFailed(f"cannot write {final}: {exc.strerror or exc}") from None
        total = sum(r[0] for r in self.db.conn.execute(
            "SELECT render_time FROM tiles WHERE job=? AND gen=? AND frame=? AND kind='output'",
            (doc.uuid, doc.gen, offer.frame)))
        row = (doc.uuid, doc.gen, offer.frame, "output", offer.task, final, hashlib.sha256(data).hexdigest(),
               len(data), offer.machine, total, time.time())
        await self.db.run(lambda c: c.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", row))
        try:
            await self.writer.unlink_as_owner(doc.uuid, partial_path(final))
        except (OSError, NodeError) as exc:
            log.info("cannot remove the partial image of frame %d of %s: %s", offer.frame, doc.uuid, exc)
        return final

    def next_due(self) -> float | None:
        """When ``flush`` has a partial image to write (trio clock), if it has one."""
        return min(self._partial_due.values(), default=None)

    async def flush(self) -> None:
        """Write the partial images left for later whose time has come (the results
        service calls this at ``next_due``)."""
        now = trio.current_time()
        for key, when in list(self._partial_due.items()):
            if when > now or self._partial_due.get(key) != when:
                continue
            del self._partial_due[key]
            job, frame = key
            async with self._lock(job, frame):
                doc = self.jobs.book.get(job)
                tiling = tiling_of(doc) if doc is not None else None
                if doc is None or tiling is None or doc.deleted is not None:
                    continue
                present = self._present(doc, frame)
                if not present or len(present) == tiling.count:
                    continue  # nothing yet, or the frame itself is written
                ext = output_ext(doc)
                self._partial_at[key] = trio.current_time()
                try:
                    data = await trio.to_thread.run_sync(_encode, tiling, _placed(tiling, present), False, ext)
                except (OSError, ImageError, TileError) as exc:  # only a preview: the tiles are kept
                    log.info("cannot assemble the partial image of frame %d of %s: %s", frame, job, exc)
                    continue
                await self._write_partial(job, frame, partial_path(output_path(doc, frame, ext)), data)

    async def _write_partial(self, job: str, frame: int, path: str, data: bytes) -> None:
        """Write a partial image; a failure is logged (only a preview: the tiles are kept)."""
        try:
            await self.writer.write_as_owner(job, path, data)
        except (OSError, NodeError) as exc:
            log.info("cannot write the partial image of frame %d of %s: %s", frame, job, exc)

    def partial_png(self, doc: JobDoc, frame: int) -> bytes | None:
        """The frame as far as its tiles here go, as a PNG (OpenEXR tiles tone mapped
        for a browser); None when none is here.  Blocking."""
        tiling = tiling_of(doc)
        present = self._present(doc, frame) if tiling is not None else {}
        if tiling is None or not present:
            return None
        image = assemble(tiling.width, tiling.height, _placed(tiling, present), complete=False)
        pixels = image.pixels
        if pixels.dtype != np.uint8:
            from node.render.preview import srgb

            colour = srgb(pixels[:, :, :3]) if pixels.shape[2] >= 3 else srgb(pixels[:, :, :1])
            alpha = np.asarray(np.round(np.clip(pixels[:, :, -1:], 0, 1) * 255), dtype=np.uint8)
            pixels = np.concatenate([colour, alpha], axis=2)
        return encode(pixels, "png", fast=True)  # for a browser, at every refresh

    def _task_done(self, doc: JobDoc, offer: ResultReady) -> None:
        """SUCCEEDED once every tile of the task is kept (its frame assembled, if it
        completed it: ``store`` raises before this otherwise)."""
        cur = task_current(doc, offer.task)
        if cur.done:
            return
        shape = task_shape(doc, offer.task)
        wanted = set(shape.tiles if shape is not None else ())
        rows = self.db.conn.execute(
            "SELECT tile, render_time FROM tiles WHERE job=? AND gen=? AND frame=? AND kind='output' AND task=?",
            (doc.uuid, doc.gen, offer.frame, offer.task)).fetchall()
        if not wanted <= {r[0] for r in rows}:
            return
        total = sum(r[1] for r in rows if r[0] in wanted)
        machines = tuple(dict.fromkeys((*cur.machines, offer.machine))) if offer.machine else cur.machines
        self.jobs.set_task(doc, offer.task, TaskState(
            gen=doc.gen, done=1, attempt=cur.attempt, phase=Phase.SUCCEEDED, stamp=self.jobs.book.stamp(),
            machines=machines, worker=offer.machine, render_time=max(total, cur.render_time), term=cur.term,
            failures=cur.failures, previews=cur.previews))

    def of_job(self, doc: JobDoc) -> list[dict[str, Any]]:
        """The job's kept tiles (this generation), as result rows of kind ``tile``."""
        rows = self.db.conn.execute(
            "SELECT frame, tile, path, sha256, size, machine, render_time, time FROM tiles "
            "WHERE job=? AND gen=? ORDER BY frame, tile, kind", (doc.uuid, doc.gen)).fetchall()
        keys = ("frame", "tile", "path", "sha256", "size", "machine", "render_time", "time")
        return [{**dict(zip(keys, r, strict=True)), "kind": "tile"} for r in rows]

    async def forget(self, job: str) -> int:
        """Remove the job's tiles here (files and rows); how many."""
        count = self.db.conn.execute("SELECT COUNT(*) FROM tiles WHERE job=?", (job,)).fetchone()[0]
        repository = [r[0] for r in self.db.conn.execute(
            "SELECT path FROM tiles WHERE job=? AND kind='repository'", (job,))]
        await trio.to_thread.run_sync(_remove, os.path.join(self.folder, job), repository)
        await self.db.run(lambda c: c.execute("DELETE FROM tiles WHERE job=?", (job,)))
        for by_frame in (self._locks, self._partial_at, self._partial_due):
            for key in [k for k in by_frame if k[0] == job]:
                del by_frame[key]
        return int(count)

    async def sweep(self) -> None:
        """Remove the tiles of jobs deleted since the last sweep."""
        while self._gone:
            await self.forget(self._gone.pop())


def _keep(path: str, data: bytes, tiling: Tiling, tile: int) -> None:
    """Write a delivered tile where it is kept, once it is known to fit its region."""
    write_atomic(path, data)
    image = read_exact(path)
    x0, y0, x1, y1 = tiling.region(tile)
    if (image.width, image.height) != (x1 - x0, y1 - y0):
        os.unlink(path)
        raise TileError(f"it is {image.width}x{image.height} pixels; its region {[x0, y0, x1, y1]} "
                        f"is {x1 - x0}x{y1 - y0}")


def _placed(tiling: Tiling, present: dict[int, str]) -> list[tuple[int, tuple[int, int, int, int], str]]:
    """The tiles of ``present`` (tile -> file) with their regions, in tile order."""
    return [(t, tiling.region(t), p) for t, p in sorted(present.items())]


def _encode(tiling: Tiling, tiles: list[tuple[int, tuple[int, int, int, int], str]], complete: bool,
            ext: str) -> bytes:
    # a partial image is rewritten at every tile: the fast encoding (see node.image)
    return encode_exact(assemble(tiling.width, tiling.height, tiles, complete), ext, fast=not complete)


def _remove(folder: str, files: list[str]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
