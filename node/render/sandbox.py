"""Where and as whom a task renders.

    <work_dir>/             0711, the daemon's: render users traverse, nobody lists
        tasks/              1733 (0700 when renders run as the daemon): a render
                            user makes its task's folder here, nobody lists it
            <job>-<task>-<gen>-<attempt>-<random>/   0700, the render user's
                home/ tmp/  HOME and TMPDIR of the render
        assets/<manifest>/  0700, the daemon's, read-only files; an ACL entry
                            lets the rendering user read it while it renders
    <state_dir>/work/<same name>/   0700, the daemon's: what the render left
                            (frames, rendernode_* status files), copied out of the
                            task's folder through descriptors the render user opened

The task's folder is made, emptied and removed by the file helper running as
the render user (``node.service.runas``): the daemon has no right to it.
The random part of its name keeps other render users from guessing it.  When
a task of the dedicated render user ends, every other process of that user
is ended with it, so no render outlives its task to read the next one's
files.  A render's environment is built from an allow-list, never from the
daemon's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import trio

from node.renderers.scene import PATH_MAP_ENV
from node.service.accounts import Account, RenderIdentity, user_name
from node.service.runas import Refused, RunAs, base_env

log = logging.getLogger("rendernode.sandbox")
RENDER_UMASK = 0o077
#: a render runs this much nicer than the daemon, so on a machine the render keeps busy the
#: daemon's keepalives, transfers and dashboard stay on time (nice costs a render nothing
#: when nothing else wants the CPU)
RENDER_NICE = 10
STATUS_PREFIX = "rendernode_"  #: files a backend leaves beside the frames for ``outcome``


@dataclass
class Place:
    """One task's folder and the account that renders it."""

    account: Account | None  #: None: the daemon's own user
    workdir: str  #: the render's folder (the account's)
    harvest: str  #: the daemon's copy of the frames and status files
    dedicated: bool  #: the account is the render user: its other processes may be ended
    closed: bool = False  #: the folder is gone (``Sandbox.close``)


class Sandbox:
    """Task folders, render environments and accounts (see the module docstring)."""

    def __init__(self, state_dir: str, work_dir: str, identity: RenderIdentity | None,
                 runas: RunAs, env_names: list[str] | tuple[str, ...] = ()) -> None:
        self.root = work_dir or os.path.abspath(state_dir).rstrip("/") + "-work"
        self.tasks = os.path.join(self.root, "tasks")
        self.harvests = os.path.join(state_dir, "work")
        self.identity = identity
        self.runas = runas
        self.env_names = tuple(env_names)
        self._render_user = trio.Lock()  #: helpers as the render user never overlap its kill

    @property
    def switching(self) -> bool:
        """True if renders may run as other users than the daemon's."""
        return self.identity is not None and self.identity.switching

    def setup(self) -> None:
        """Make the folders (blocking); remove what a crash left of the daemon's part."""
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.makedirs(self.tasks, exist_ok=True)
        os.chmod(self.tasks, 0o1733 if self.switching else 0o700)
        shutil.rmtree(self.harvests, ignore_errors=True)
        os.makedirs(self.harvests, mode=0o700, exist_ok=True)

    async def clear_leftovers(self) -> None:
        """Remove task folders a crash left, each as its owner."""
        try:
            entries = await trio.to_thread.run_sync(lambda: [(e.path, e.stat(follow_symlinks=False).st_uid)
                                                             for e in os.scandir(self.tasks)])
        except OSError:
            return
        owners: dict[int, list[str]] = {}
        for path, uid in entries:
            owners.setdefault(uid, []).append(path)
        for uid, paths in owners.items():
            account = None if uid in (0, os.geteuid()) else Account(user_name(uid), uid, uid)
            try:
                await self.runas.remove(account, paths)
            except OSError as exc:
                log.warning("cannot remove %d work folders of %s left by a crash: %s",
                            len(paths), user_name(uid), exc)

    def account_for(self, user: str) -> Account | None:
        """The account a task of ``user``'s job renders as (None: the daemon's)."""
        return self.identity.for_job(user) if self.identity is not None else None

    async def open(self, user: str, name: str) -> Place:
        """A fresh folder for a task of ``user``'s job; Refused if it cannot be made."""
        account = self.account_for(user)
        dedicated = account is not None and self.identity is not None and account == self.identity.user
        if account is None:
            workdir = await self.runas.make_workdir(None, self.tasks, name)
        else:
            async with self._lock(dedicated):
                workdir = await self.runas.make_workdir(account, self.tasks, name)
        return Place(account, workdir, os.path.join(self.harvests, os.path.basename(workdir)), dedicated)

    def _lock(self, dedicated: bool) -> AbstractAsyncContextManager[Any]:
        return self._render_user if dedicated else contextlib.nullcontext()

    def env(self, place: Place, path_map: dict[str, str] | None) -> dict[str, str]:
        """The render's environment: the allow-list, HOME and TMPDIR in its folder."""
        env = base_env(self.env_names)
        env["HOME"] = os.path.join(place.workdir, "home")
        env["TMPDIR"] = os.path.join(place.workdir, "tmp")
        if place.account is not None:
            env["USER"] = env["LOGNAME"] = place.account.name
        if path_map:
            env[PATH_MAP_ENV] = json.dumps(path_map)
        return env

    def process_args(self, place: Place) -> dict[str, Any]:
        """``open_process`` options that start the render as its account."""
        if place.account is None:
            return {"umask": RENDER_UMASK}
        return {"user": place.account.uid, "group": place.account.gid,
                "extra_groups": list(place.account.groups), "umask": RENDER_UMASK}

    @staticmethod
    def lower_priority(pid: int) -> None:
        """Make the render started as ``pid`` (the leader of its own process group)
        and the processes of its group ``RENDER_NICE`` nicer than the daemon."""
        try:
            nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + RENDER_NICE)
            os.setpriority(os.PRIO_PGRP, pid, nice)
        except OSError as exc:  # gone already, or not ours to renice
            log.debug("cannot lower the priority of render %d: %s", pid, exc)

    async def close(self, place: Place, names: list[str]) -> list[str]:
        """End the render user's other processes (dedicated account), copy ``names``
        and the status files out of the task's folder into ``place.harvest``, remove
        the folder.  The names copied."""
        place.closed = True
        try:
            async with self._lock(place.dedicated):
                return await self.runas.harvest(place.account, place.workdir, names, [STATUS_PREFIX],
                                                place.harvest, kill=place.dedicated)
        except Refused as exc:
            log.warning("cannot empty the work folder %s: %s", place.workdir, exc)
            return []

    async def discard(self, place: Place) -> None:
        """Remove a task's folder (unless ``close`` did) and the daemon's copy of
        what it left.  Nothing is ended: another task may render by now."""
        if not place.closed:
            place.closed = True
            try:
                async with self._lock(place.dedicated):
                    await self.runas.remove(place.account, [place.workdir], kill=False)
            except Refused as exc:
                log.warning("cannot remove the work folder %s: %s", place.workdir, exc)
        await trio.to_thread.run_sync(shutil.rmtree, place.harvest, True)

