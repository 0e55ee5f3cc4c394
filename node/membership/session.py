"""One peer session: a ``protocol.PeerConnection`` over a trio stream.

The session has one reader (whoever calls ``next_event``: the handshake code,
then the peers service's reader task) and one send lock; nothing else touches
the stream.  trio's and the OS's stream errors become ``SessionLost`` here
and nowhere else.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from node.errors import NodeError
from protocol import NEED_DATA, PeerConnection, ProtocolError
from protocol.codec import Message
from protocol.connection import ConnEvent
from protocol.framing import MAX_BULK
from protocol.messages import Error, Hello, Reply

RECEIVE_SIZE = 256 * 1024
BULK_BATCH = 256 * 1024  #: bulk bytes encrypted and written at once


class SessionLost(NodeError):
    """The stream broke or was closed under the session."""

    code = "session_lost"


class RequestFailed(NodeError):
    """A peer answered a request with an Error."""

    code = "request_failed"


class Session:
    """A peer session; ``uuid`` and ``hello`` are set once Hellos are exchanged."""

    def __init__(self, stream: trio.SocketStream, conn: PeerConnection, *, initiator: bool,
                 remote_ip: str) -> None:
        self.stream = stream
        self.conn = conn
        self.initiator = initiator
        self.remote_ip = remote_ip
        self.hello: Hello | None = None
        self.uuid = ""
        self.closed = trio.Event()
        self.cancel_scope: trio.CancelScope | None = None  #: the reader's scope, once running
        self.lost_reason = ""
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Message]]] = {}

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SessionLost(f"connection to {self.remote_ip} broke: {exc}") from None

    async def flush(self) -> None:
        """Write what the handshake produced (including a reject)."""
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self._write(data)

    async def next_event(self) -> ConnEvent:
        """Read until the connection yields an event; raises ProtocolError or SessionLost."""
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError:
                with trio.move_on_after(1):
                    try:
                        await self.flush()
                    except SessionLost:
                        pass
                raise
            if self.conn.has_data_to_send:  # the handshake's: never wait on the send lock for nothing
                await self.flush()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionLost(f"connection to {self.remote_ip} broke: {exc}") from None
            self.conn.receive_data(data)

    async def send(self, message: Message, req_id: int = 0) -> None:
        """Encrypt and write one control message."""
        async with self._send_lock:
            await self._write(self.conn.send(message, req_id))

    async def send_bulk(self, stream_id: int, data: bytes) -> None:
        """Encrypt and write one bulk record."""
        async with self._send_lock:
            await self._write(self.conn.send_bulk(stream_id, data))

    async def send_bulk_data(self, stream_id: int, data: bytes) -> None:
        """Write ``data`` as bulk records, ``BULK_BATCH`` bytes of them per write: fewer
        wake-ups than a write per record, while control messages still get between."""
        view = memoryview(data)
        for start in range(0, len(data), BULK_BATCH):
            end = min(start + BULK_BATCH, len(data))
            async with self._send_lock:
                records = [self.conn.send_bulk(stream_id, bytes(view[i : min(i + MAX_BULK, end)]))
                           for i in range(start, end, MAX_BULK)]
                await self._write(b"".join(records))

    async def request(self, message: Message) -> Message:
        """Send ``message`` and wait for the Reply/Error with the same id (callers
        bound the wait with a cancel scope)."""
        req_id = next(self._ids)
        done = trio.Event()
        slot: list[Message] = []
        self._pending[req_id] = (done, slot)
        try:
            await self.send(message, req_id)
            await done.wait()
        finally:
            self._pending.pop(req_id, None)
        if not slot:
            raise SessionLost(f"session to {self.uuid or self.remote_ip} closed before the reply")
        reply = slot[0]
        if isinstance(reply, Error):
            raise RequestFailed(f"{reply.code}: {reply.reason}")
        return reply

    def resolve(self, message: Message, req_id: int) -> bool:
        """Hand a Reply/Error to the request waiting for it; False if none waits."""
        if not isinstance(message, (Reply, Error)):
            return False
        waiting = self._pending.get(req_id)
        if waiting is None:
            return False
        waiting[1].append(message)
        waiting[0].set()
        return True

    def fail_pending(self) -> None:
        """Wake every waiting request with no answer (the session ended)."""
        for done, _ in self._pending.values():
            done.set()

    async def aclose(self) -> None:
        """Close the stream at once."""
        self.fail_pending()
        self.closed.set()
        await self.stream.aclose()

    def describe(self) -> dict[str, Any]:
        """A short description for logs."""
        return {"uuid": self.uuid, "ip": self.remote_ip, "initiator": self.initiator}
