"""File work done with a user's rights: the helper the daemon starts as that user.

    python -P -m node.service.asuser OP FD  < ARGS_JSON \n DATA

runs as the submitter (or the render identity), started by the daemon with
``user=``/``group=``/``extra_groups=`` and an allow-listed environment
(``node.service.runas``).  The kernel checks that user's rights on every
open, so the daemon never reads or writes a user's file by a path it checked
first (no check-then-use race: a symlink swapped after a check only gets
what the user could get).  Files to read come back as open file descriptors
over the socket ``FD`` (SCM_RIGHTS), each batch with a JSON list of their
paths.  The arguments are a line of JSON on stdin (argv would show them and
caps one argument at 128 KiB), followed by the data to write; the answer is
one JSON object on stdout, ``{"error": ...}`` on failure (exit status 1).

OPs (their functions run in-process too, when the daemon acts as itself):

    collect   the scene and every file it needs (dependency lists are made
              here, as the user: Blender runs on the user's .blend as them);
              each regular file opened for reading and sent
    frames    the frame range a built-in scene names
    writable  make the folder if need be, then create and remove a temp file in it
    write     stdin to PATH through a temp file and a rename
    unlink    remove one file
    mkdir     a fresh private folder (0700, with home/ and tmp/) under a root
    harvest   (kill every other process of this user), open the named files of
              a work folder without following symlinks and send them, remove it
    remove    remove folders (and what is left in them)

Only the standard library and the light renderer modules are imported: the
helper starts for every operation.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

MAX_FDS = 200  #: descriptors per SCM_RIGHTS message (the kernel allows 253)
MAX_NAMES = 48 << 10  #: bytes of paths per message (a SOCK_SEQPACKET message stays small)
Send = Callable[[list[str], list[int]], None]
Op = Callable[[dict[str, Any], Send, bytes], dict[str, Any]]


class Refused(OSError):
    """The operation cannot be done with this user's rights; the message says why."""


def _open_regular(path: str, follow: bool = True) -> int:
    """An fd reading the regular file ``path``; OSError otherwise (a FIFO never blocks)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _batched(send: Send) -> tuple[Callable[[str, int], None], Callable[[], None]]:
    paths: list[str] = []
    fds: list[int] = []
    size = [0]

    def flush() -> None:
        if fds:
            send(list(paths), list(fds))
            for fd in fds:
                os.close(fd)
            paths.clear()
            fds.clear()
            size[0] = 0

    def add(path: str, fd: int) -> None:
        paths.append(path)
        fds.append(fd)
        size[0] += len(path.encode(errors="surrogateescape")) + 4
        if len(fds) >= MAX_FDS or size[0] >= MAX_NAMES:
            flush()

    return add, flush


def _files(paths: list[str]) -> Iterator[tuple[str, bool]]:
    """(file, exists) for each path; a folder stands for every file under it.  A
    path this user may not look at "exists": opening it tells them why not."""
    for path in paths:
        if os.path.isdir(path):
            denied: list[OSError] = []
            for top, dirs, names in os.walk(path, onerror=denied.append):
                dirs.sort()
                for name in sorted(names):
                    yield os.path.join(top, name), True
            for exc in denied:  # opening it says why it could not be read
                yield str(exc.filename), True
        else:
            try:
                os.lstat(path)
                yield path, True
            except FileNotFoundError:
                yield path, False
            except OSError:
                yield path, True


def collect(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Open the scene and its dependencies (made as this user) and send them."""
    from node.assets.dependencies import dependencies

    scene = os.path.abspath(str(args["scene"]))
    try:
        deps = dependencies(scene, str(args["renderer"]), [str(p) for p in args.get("extra", [])])
    except (OSError, ValueError) as exc:
        raise Refused(str(exc)) from None
    add, flush = _batched(send)
    missing: list[str] = []
    unreadable: list[str] = []
    for path, exists in _files([scene, *deps]):
        if not exists:
            missing.append(path)
            continue
        try:
            add(path, _open_regular(path))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                missing.append(path)
            else:
                unreadable.append(f"{path}: {exc.strerror or exc}")
    flush()
    return {"missing": missing, "unreadable": unreadable}


def frames(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """The frame range of a built-in scene."""
    from node.renderers.builtin import scene_frames

    try:
        return {"frames": str(scene_frames(str(args["scene"])))}
    except (OSError, ValueError) as exc:
        raise Refused(str(exc)) from None


def writable(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Prove ``folder`` writable: make it if need be, create and remove a temp file."""
    folder = str(args["folder"])
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rendernode-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise Refused(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return {}


def write(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Write ``data`` to ``path`` atomically: a temp file beside it, then a rename."""
    path = str(args["path"])
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.part-{secrets.token_hex(6)}")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise Refused(f"cannot write {path}: {exc.strerror or exc}") from None
    return {"size": len(data)}


def unlink(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Remove one file (gone already is fine)."""
    try:
        os.unlink(str(args["path"]))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Refused(f"cannot remove {args['path']}: {exc.strerror or exc}") from None
    return {}


def mkdir(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """A fresh folder ``root/PREFIX-RANDOM`` (0700) with ``home`` and ``tmp`` in it."""
    path = os.path.join(str(args["root"]), f"{args.get('prefix', 'task')}-{secrets.token_hex(16)}")
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
        for sub in ("home", "tmp"):
            os.mkdir(os.path.join(path, sub), 0o700)
    except OSError as exc:
        raise Refused(f"cannot make a work folder in {args['root']}: {exc.strerror or exc}") from None
    return {"path": path}


def _remove(path: str) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        for top, dirs, _ in os.walk(path):  # a render made a folder unwritable to itself
            for name in dirs:
                try:
                    os.chmod(os.path.join(top, name), 0o700)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)


def _kill_others() -> None:
    """SIGKILL every process of this user but this one (the dedicated render
    user only: nothing else runs as it), so no render outlives its task."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def harvest(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Send the named files (and those starting with a prefix) of a work folder."""
    folder = str(args["folder"])
    if args.get("kill"):
        _kill_others()
    names = [str(n) for n in args.get("names", [])]
    prefixes = tuple(str(p) for p in args.get("prefixes", []))
    try:
        names += sorted(n for n in os.listdir(folder) if prefixes and n.startswith(prefixes) and n not in names)
    except OSError:
        pass
    add, flush = _batched(send)
    for name in names:
        if "/" in name or name in (".", ".."):
            continue
        try:
            add(name, _open_regular(os.path.join(folder, name), follow=False))
        except OSError:
            pass  # absent, a symlink or not a file: the outcome says which frames are missing
    flush()
    if args.get("remove"):
        _remove(folder)
    return {}


def remove(args: dict[str, Any], send: Send, data: bytes = b"") -> dict[str, Any]:
    """Remove folders (after killing this user's other processes, if asked)."""
    if args.get("kill"):
        _kill_others()
    for path in args.get("paths", []):
        _remove(str(path))
    return {}


OPS: dict[str, Op] = {
    "collect": collect, "frames": frames, "writable": writable, "write": write, "unlink": unlink,
    "mkdir": mkdir, "harvest": harvest, "remove": remove,
}


def main(argv: list[str]) -> int:
    """Run one operation as the user this process runs as."""
    op, fd = argv[0], int(argv[1])
    channel = socket.socket(fileno=fd)
    args = json.loads(sys.stdin.buffer.readline())
    data = sys.stdin.buffer.read()

    def send(paths: list[str], fds: list[int]) -> None:
        socket.send_fds(channel, [json.dumps(paths).encode()], fds)

    try:
        result = OPS[op](args, send, data)
        code = 0
    except Refused as exc:
        result, code = {"error": str(exc)}, 1
    finally:
        channel.close()
    sys.stdout.write(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
