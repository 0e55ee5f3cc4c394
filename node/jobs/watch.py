"""Watch folders (preference ``watch``): a scene file that appears in one
becomes a job (RENDERJOBCREATOR_WATCHDIRECTORY); files already there when the
daemon starts become jobs with RENDERJOBCREATOR_WATCHDIRECTORYSTARTUP.

A file counts as complete once its size and modification time hold still
across two scans (a copy in progress keeps changing them).  Each submitted
file is remembered (path, size, mtime) in the database, so it is never
submitted twice, across restarts too.  Frames go to ``output/`` beside the
scene.

The folders are scanned every ``SCAN_INTERVAL``: the standard library has no
portable change notification, and a scan of a folder is cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.db import Database
from node.errors import NodeError
from node.renderers import SCENE_TYPES, scene_frames
from protocol.enums import RenderJobCreator

log = logging.getLogger("rendernode.watch")
SCAN_INTERVAL = 1.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS watch_seen (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL, job TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime)
);
"""
Submit = Callable[[dict[str, Any]], Awaitable[str]]
Frames = Callable[[str, str], Awaitable[str]]  #: (scene, renderer) -> its frame range


def default_frames(path: str, renderer: str) -> str:
    """The frame range a watched scene renders: the scene's own (``node.renderers.scene_frames``)."""
    return scene_frames(path, renderer)


async def _frames_as_self(path: str, renderer: str) -> str:
    return await trio.to_thread.run_sync(default_frames, path, renderer)


class Watcher:
    """Scans the watch folders and submits complete new scene files."""

    def __init__(self, folders: list[str], db: Database, submit: Submit, frames: Frames | None = None) -> None:
        self.folders = [os.path.abspath(f) for f in folders]
        self.db = db
        db.migrate(SCHEMA)
        self.submit = submit
        self.frames = frames or _frames_as_self
        self._sizes: dict[str, tuple[int, float]] = {}

    def _seen(self, path: str, size: int, mtime: float) -> bool:
        row = self.db.conn.execute("SELECT 1 FROM watch_seen WHERE path=? AND size=? AND mtime=?",
                                   (path, size, mtime)).fetchone()
        return row is not None

    def scan(self) -> list[tuple[str, int, float]]:
        """Scene files in the folders with their size and mtime (blocking: run in a thread)."""
        found = []
        for folder in self.folders:
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                log.warning("cannot read watch folder %s: %s", folder, exc)
                continue
            for entry in entries:
                ext = os.path.splitext(entry.name)[1].lower()
                if ext in SCENE_TYPES and entry.is_file() and not entry.name.startswith("."):
                    st = entry.stat()
                    found.append((entry.path, st.st_size, st.st_mtime))
        return found

    async def _submit(self, path: str, size: int, mtime: float, creator: RenderJobCreator) -> None:
        renderer = SCENE_TYPES[os.path.splitext(path)[1].lower()]
        stem = os.path.splitext(os.path.basename(path))[0]
        frames = await self.frames(path, renderer)
        args = {"scene": path, "renderer": renderer, "frames": frames, "creator": int(creator),
                "output": os.path.join(os.path.dirname(path), "output", f"{stem}_####.png"),
                "watch_folder": os.path.dirname(path), "name": os.path.basename(path)}
        try:
            job = await self.submit(args)
        except (NodeError, OSError) as exc:
            log.warning("watch folder: could not submit %s: %s", path, exc)
            return
        await self.db.run(lambda c: c.execute("INSERT OR IGNORE INTO watch_seen VALUES (?, ?, ?, ?)",
                                              (path, size, mtime, job)))
        log.info("watch folder: submitted %s as job %s", path, job)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan forever; files present at the first scan are start-up files."""
        task_status.started()
        if not self.folders:
            return
        startup: set[str] | None = None
        while True:
            found = await trio.to_thread.run_sync(self.scan)
            if startup is None:
                startup = {path for path, _, _ in found}
            for path, size, mtime in found:
                if self._seen(path, size, mtime):
                    continue
                stable = self._sizes.get(path) == (size, mtime)
                self._sizes[path] = (size, mtime)
                if stable:
                    creator = (RenderJobCreator.RENDERJOBCREATOR_WATCHDIRECTORYSTARTUP if path in startup
                               else RenderJobCreator.RENDERJOBCREATOR_WATCHDIRECTORY)
                    await self._submit(path, size, mtime, creator)
            await trio.sleep(SCAN_INTERVAL)
