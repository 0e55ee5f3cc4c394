"""The daemon's side of ``node.service.asuser``: file work with a user's rights.

``RunAs`` starts the helper as the given ``Account`` (``user=``, ``group=``,
``extra_groups=`` of ``subprocess``, an allow-listed environment, cwd ``/``)
and receives the descriptors it opened over a socketpair (SCM_RIGHTS).  The
daemon acts as itself instead, in-process, when the account is its own, or
root (the daemon's rights are within root's); a daemon that cannot switch
users refuses to act as anyone else (``Refused``).

Every method is async; the helper runs in a thread (``HELPERS`` at once),
bounded by ``HELPER_TIMEOUT``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.service import asuser
from node.service.accounts import Account, of_self
from node.service.asuser import Refused

log = logging.getLogger("rendernode.runas")
HELPER_TIMEOUT = 600.0  #: seconds one helper may take (Blender lists a big scene's files in it)
HELPERS = 4  #: helpers running at once
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ENV_ALLOWED = ("PATH", "LANG", "LANGUAGE", "TZ")  #: and every LC_*: all a child of the daemon inherits

__all__ = ["Opened", "Refused", "RunAs", "base_env"]


def base_env(extra: tuple[str, ...] = (), source: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of the daemon's environment (PATH, LANG, LC_*, TZ and
    ``extra`` names) that its children get; never a secret it was started with."""
    source = dict(os.environ if source is None else source)
    env = {k: v for k, v in source.items()
           if k in ENV_ALLOWED or k.startswith("LC_") or k in extra}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


@dataclass
class Opened:
    """Files opened for reading with a user's rights: path -> descriptor."""

    files: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Close every descriptor."""
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


def _receiver(into: list[tuple[str, int]]) -> Callable[[list[str], list[int]], None]:
    def send(paths: list[str], fds: list[int]) -> None:
        into.extend((p, os.dup(fd)) for p, fd in zip(paths, fds, strict=True))

    return send


class RunAs:
    """File operations as a user (see the module docstring)."""

    def __init__(self, switching: bool, python: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.switching = switching
        self.python = python  #: the helper's interpreter (None: this one's)
        self.env = base_env() if env is None else env
        self.me = of_self()
        self._limiter = trio.CapacityLimiter(HELPERS)

    def as_self(self, account: Account | None) -> bool:
        """True if work for ``account`` is done by the daemon itself; Refused if it
        cannot be done at all (a daemon that cannot switch users, another user)."""
        if account is None or account.uid in (0, self.me.uid):
            return True
        if not self.switching:
            raise Refused(f"this daemon runs as {self.me.name} and cannot act as {account.name} "
                          "(it is not root and has no CAP_SETUID/CAP_SETGID)")
        return False

    # -- the helper -----------------------------------------------------------------

    def _helper(self, account: Account, op: str, args: dict[str, Any], data: bytes | None = None,
                env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        """Run the helper as ``account`` (blocking): its answer and the files it sent."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        received: list[tuple[str, int]] = []
        try:
            try:
                proc = subprocess.Popen(
                    [self.python or sys.executable, "-P", "-m", "node.service.asuser", op,
                     str(child.fileno())],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(child.fileno(),),
                    cwd="/", env={"HOME": "/", **self.env, **(env or {})}, umask=0o022,
                    start_new_session=True, user=account.uid, group=account.gid,
                    extra_groups=list(account.groups))  # always given: else the daemon's groups stay
            except OSError as exc:
                raise Refused(f"cannot start a helper as {account.name}: {exc}") from None
            finally:
                child.close()
            try:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(json.dumps(args).encode() + b"\n" + (data or b""))
                except BrokenPipeError:
                    pass
                proc.stdin.close()
                parent.settimeout(HELPER_TIMEOUT)
                while True:
                    msg, got, flags, _ = socket.recv_fds(parent, 1 << 20, asuser.MAX_FDS)
                    if not msg and not got:
                        break
                    paths = json.loads(msg)
                    if flags & socket.MSG_CTRUNC or len(paths) != len(got):
                        for fd in got:
                            os.close(fd)
                        raise Refused(f"the helper as {account.name} sent a damaged message")
                    received.extend(zip(paths, got, strict=True))
                assert proc.stdout is not None and proc.stderr is not None
                out, err = proc.stdout.read(), proc.stderr.read()  # a line of JSON; a traceback at most
                proc.wait(timeout=HELPER_TIMEOUT)
            except (TimeoutError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
                raise Refused(f"{op} as {account.name} took over {HELPER_TIMEOUT:.0f} s") from None
            except BaseException:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise
            try:
                answer = json.loads(out or b"{}")
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"status {proc.returncode}"]
                raise Refused(f"{op} as {account.name} failed: {tail[0]}")
            if "error" in answer:
                raise Refused(str(answer["error"]))
            return answer, received
        except BaseException:
            for _, fd in received:
                os.close(fd)
            raise
        finally:
            parent.close()

    def _do(self, account: Account | None, op: str, args: dict[str, Any], data: bytes | None = None,
            env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        """One operation, in-process or through the helper (blocking)."""
        if account is None or self.as_self(account):
            args = {**args, "kill": False}  # the daemon's own processes are not a render's
            received: list[tuple[str, int]] = []
            try:
                answer = asuser.OPS[op](args, _receiver(received), data or b"")
            except BaseException:
                for _, fd in received:
                    os.close(fd)
                raise
            return answer, received
        return self._helper(account, op, args, data, env)

    async def _run(self, account: Account | None, op: str, args: dict[str, Any],
                   data: bytes | None = None,
                   env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        return await trio.to_thread.run_sync(self._do, account, op, args, data, env,
                                             limiter=self._limiter)

    # -- operations -----------------------------------------------------------------

    async def collect(self, account: Account | None, scene: str, renderer: str,
                      extra: list[str]) -> Opened:
        """The scene and every file it needs, opened with ``account``'s rights."""
        env = {"HOME": "/nonexistent"}  # Blender, listing a .blend's files, keeps nothing
        answer, received = await self._run(account, "collect", {"scene": scene, "renderer": renderer,
                                                                "extra": extra}, env=env)
        opened = Opened(missing=list(answer.get("missing", [])),
                        unreadable=list(answer.get("unreadable", [])))
        for path, fd in received:
            if path in opened.files:
                os.close(fd)
            else:
                opened.files[path] = fd
        return opened

    async def scene_frames(self, account: Account | None, scene: str) -> str:
        """The frame range of a built-in scene, read with ``account``'s rights."""
        answer, _ = await self._run(account, "frames", {"scene": scene})
        return str(answer["frames"])

    async def check_writable(self, account: Account | None, folder: str) -> None:
        """Refused unless ``account`` can create a file in ``folder`` (made if need be)."""
        await self._run(account, "writable", {"folder": folder})

    async def write(self, account: Account | None, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` with ``account``'s rights (temp file + rename)."""
        await self._run(account, "write", {"path": path}, data)

    async def unlink(self, account: Account | None, path: str) -> None:
        """Remove ``path`` with ``account``'s rights."""
        await self._run(account, "unlink", {"path": path})

    async def make_workdir(self, account: Account | None, root: str, prefix: str) -> str:
        """A fresh private folder under ``root`` owned by ``account``."""
        answer, _ = await self._run(account, "mkdir", {"root": root, "prefix": prefix})
        return str(answer["path"])

    async def harvest(self, account: Account | None, folder: str, names: list[str],
                      prefixes: list[str], dest: str, kill: bool) -> list[str]:
        """Copy the named files of ``folder`` (and those starting with a prefix) into
        ``dest`` (ours), then remove ``folder``; ``kill`` ends every other process of
        the account first.  The names copied."""
        _, received = await self._run(account, "harvest", {
            "folder": folder, "names": names, "prefixes": prefixes, "kill": kill, "remove": True})
        return await trio.to_thread.run_sync(_copy_out, received, dest)

    async def remove(self, account: Account | None, paths: list[str], kill: bool = False) -> None:
        """Remove folders owned by ``account`` (ending its other processes first if ``kill``)."""
        await self._run(account, "remove", {"paths": paths, "kill": kill})


def _copy_out(received: list[tuple[str, int]], dest: str) -> list[str]:
    """Write each received file into ``dest`` under its name; close the descriptors."""
    names = []
    try:
        os.makedirs(dest, mode=0o700, exist_ok=True)
        for name, fd in received:
            out = os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                          | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                offset = 0
                while sent := os.sendfile(out, fd, offset, 1 << 30):
                    offset += sent
            finally:
                os.close(out)
            names.append(name)
    finally:
        for _, fd in received:
            os.close(fd)
    return names
