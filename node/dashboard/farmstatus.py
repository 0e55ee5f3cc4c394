"""What every machine is doing, for the farm view: load, memory, the task it
renders with its progress, the machines it is waking.

The job book says which task a machine renders, but not how far it is (only
the server hears progress) nor how busy the machine is.  Each node sends a
``NodeStatus`` to every peer when its own changes (checked every
``CHECK_EVERY`` seconds, at most then), at least every ``REFRESH`` seconds,
and once to each new session; the last one heard from each peer is kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from node.membership.peers import Peers
from node.membership.session import Session, SessionLost
from node.render.worker import Worker
from protocol import ProtocolError
from protocol.messages import NodeStatus

log = logging.getLogger("rendernode.dashboard")
CHECK_EVERY = 2.0  #: seconds between looks at this node's own status
REFRESH = 20.0  #: seconds after which an unchanged status is sent again


def _meminfo() -> tuple[int, int]:
    total = available = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    available = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return total, available


class FarmStatus:
    """This node's status, sent to peers, and the last status of each peer."""

    def __init__(self, peers: Peers, worker: Worker) -> None:
        self.peers = peers
        self.worker = worker
        self.waking: Callable[[], list[str]] = lambda: []  #: set by the daemon (power's waker)
        self.heard: dict[str, tuple[float, NodeStatus]] = {}  #: uuid -> (wall time, status)
        self.on_change: list[Callable[[], None]] = []
        self._sent: NodeStatus | None = None
        self._nursery: trio.Nursery | None = None
        peers.register_handler(NodeStatus, self._on_status)
        peers.on_session.append(self._on_session)

    def local(self) -> NodeStatus:
        """This node's status now."""
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        total, available = _meminfo()
        rendering: dict[str, Any] = {}
        current = self.worker.current
        if current is not None:
            msg = current.msg
            rendering = {"job": msg.job, "task": msg.task, "frames": list(msg.frames)[:64],
                         "progress": round(current.progress, 3)}
        return NodeStatus(load=round(load, 2), cpus=os.cpu_count() or 0, mem_total=total,
                          mem_available=available, rendering=rendering, waking=self.waking())

    def of(self, uuid: str) -> NodeStatus | None:
        """The last status heard from ``uuid`` (this node's own, fresh)."""
        if uuid == self.peers.ident.uuid:
            return self.local()
        entry = self.heard.get(uuid)
        return entry[1] if entry is not None else None

    async def _on_status(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, NodeStatus)
        self.heard[session.uuid] = (time.time(), msg)
        for callback in self.on_change:
            callback()

    def _on_session(self, session: Session) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._send, session, self.local())

    async def _send(self, session: Session, status: NodeStatus) -> None:
        try:
            await session.send(status)
        except (SessionLost, ProtocolError) as exc:
            log.debug("status to %s not sent: %s", session.uuid, exc)

    def _changed(self, status: NodeStatus) -> bool:
        sent = self._sent
        if sent is None:
            return True
        return (sent.rendering != status.rendering or sent.waking != status.waking
                or abs(sent.load - status.load) >= 0.25
                or abs(sent.mem_available - status.mem_available) > status.mem_total // 50)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send this node's status to every peer when it changes, and now and then."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            last = 0.0
            while True:
                status = self.local()  # a few reads of /proc: too short to be worth a thread
                now = trio.current_time()
                if self._changed(status) or now - last >= REFRESH:
                    self._sent, last = status, now
                    for session in list(self.peers.sessions.values()):
                        nursery.start_soon(self._send, session, status)
                    for callback in self.on_change:
                        callback()
                await trio.sleep(CHECK_EVERY)
