"""The control socket: a Unix socket speaking the peer framing and codec
(unencrypted), one ``Call`` -> one ``Reply`` or ``Error`` at a time per
connection.  The caller is identified by SO_PEERCRED, its supplementary groups
by SO_PEERGROUPS (both as they were when it connected).

A stale socket file is replaced only if it is a socket and nothing answers on
it; the socket is mode 0660 (group ``control_group``, ``rendernode``, when
that group exists).

At most ``MAX_CLIENTS`` connections are served at once.  When all are taken,
a new connection closes the one that has waited longest for its next request
(sending nothing, or stuck in the middle of one), so idle or stuck clients
cannot lock everyone out; a connection whose request is running is never closed.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from node.errors import BadRequest, ConfigError, NodeError
from protocol import ProtocolError, codec
from protocol.framing import HEADER, MAX_CONTROL, RecordDecoder
from protocol.messages import Call, Error, Reply

log = logging.getLogger("rendernode.control")
REQUEST_TIMEOUT = 60.0
IDLE_TIMEOUT = 600.0
MAX_CLIENTS = 128


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a control connection."""

    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[int, ...] = ()  #: supplementary groups


Method = Callable[[Caller, dict[str, Any]], Awaitable[Any]]


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  #: Linux 4.13; Python names it from 3.13 on


def peer_groups(sock: socket.socket, pid: int) -> tuple[int, ...]:
    """The supplementary groups of a connected Unix socket's peer: SO_PEERGROUPS
    (the groups it had when it connected), else the Groups line of its
    /proc/PID/status (it waits for our answer, so it is still that process)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    except OSError:  # ERANGE beyond 256 groups; ENOPROTOOPT on old kernels
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def peer_caller(sock: socket.socket) -> Caller:
    """SO_PEERCRED (and SO_PEERGROUPS) of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    groups = tuple(g for g in peer_groups(sock, pid) if g != gid)
    return Caller(pid, uid, gid, user, groups)


def bind_unix(path: str, group: str = "rendernode") -> socket.socket:
    """Bind a listening Unix socket at ``path``, replacing only a dead socket file;
    mode 0660, group ``group`` when it exists."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ConfigError(f"cannot check {path}: {exc}") from None
            os.unlink(path)
        else:
            raise ConfigError(f"another daemon is already serving {path}")
        finally:
            probe.close()
    # bound and listening under a temporary name, then renamed into place: a client
    # never finds the path before it accepts (between bind and listen a connect
    # is refused, which reads as "no daemon running")
    tmp = f"{path}.{os.getpid()}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(tmp)
    finally:
        os.umask(old_umask)
    os.chmod(tmp, 0o660)
    try:
        os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
    except (KeyError, PermissionError):
        pass
    sock.listen(64)
    os.rename(tmp, path)
    return sock


class ControlServer:
    """Serves ``methods`` on the control socket."""

    def __init__(self, path: str, methods: dict[str, Method], group: str = "rendernode") -> None:
        self.path = path
        self.methods = methods
        self.group = group
        self._clients = trio.Semaphore(MAX_CLIENTS)
        self._idle: dict[trio.CancelScope, None] = {}  #: connections awaiting a request, longest first

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind and serve until cancelled; removes the socket file on exit."""
        raw = bind_unix(self.path, self.group)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            await trio.serve_listeners(self._serve, [listener], task_status=task_status)
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        if self._clients.value == 0 and self._idle:  # make room: close the longest idle
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.cancel()
        async with self._clients, stream:
            try:
                caller = peer_caller(stream.socket)  # type: ignore[arg-type]
            except OSError:
                return
            decoder = RecordDecoder(MAX_CONTROL)
            while True:
                body: bytes | None = None
                with trio.CancelScope() as idle:
                    self._idle[idle] = None
                    try:
                        with trio.fail_after(IDLE_TIMEOUT):
                            body = await self._read_record(stream, decoder)
                    except (trio.TooSlowError, trio.BrokenResourceError, OSError):
                        return
                    except ProtocolError as exc:
                        await self._reply(stream, Error("bad_request", exc.reason), 0)
                        return
                    finally:
                        self._idle.pop(idle, None)
                if idle.cancelled_caught or body is None:  # closed to serve a newer client, or EOF
                    return
                reply, req_id = await self._handle(caller, body)
                if not await self._reply(stream, reply, req_id):
                    return

    async def _read_record(self, stream: trio.SocketStream, decoder: RecordDecoder) -> bytes | None:
        while True:
            body = decoder.next_record()
            if body is not None:
                return body
            data = await stream.receive_some(65536)
            if not data:
                return None
            decoder.feed(data)

    async def _handle(self, caller: Caller, body: bytes) -> tuple[Reply | Error, int]:
        try:
            msg, req_id = codec.decode(body)
        except ProtocolError as exc:
            return Error("bad_request", exc.reason), 0
        if not isinstance(msg, Call):
            return Error("bad_request", f"expected a call, got {type(msg).TYPE}"), req_id
        method = self.methods.get(msg.method)
        if method is None:
            return Error("bad_request", f"unknown method {msg.method!r}"), req_id
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                result = await method(caller, msg.args)
        except NodeError as exc:
            return Error(exc.code, exc.reason), req_id
        except trio.TooSlowError:
            return Error("timeout", f"{msg.method} took longer than {REQUEST_TIMEOUT:.0f} s"), req_id
        except (KeyError, TypeError, ValueError) as exc:
            err = BadRequest(f"bad arguments to {msg.method}: {exc}")
            return Error(err.code, err.reason), req_id
        except Exception as exc:  # a bug in one method must not take the daemon down
            log.exception("control method %s failed", msg.method)
            return Error("internal", f"{msg.method} failed: {type(exc).__name__}: {exc}"), req_id
        return Reply(result), req_id

    async def _reply(self, stream: trio.SocketStream, reply: Reply | Error, req_id: int) -> bool:
        try:
            body = codec.encode(reply, req_id)
        except ProtocolError as exc:
            body = codec.encode(Error("internal", f"reply could not be encoded: {exc.reason}"), req_id)
        try:
            await stream.send_all(HEADER.pack(len(body)) + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        return True
