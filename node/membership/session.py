"""One peer session: a ``protocol.PeerConnection`` over a trio stream, and the
tasks that own it.

Who touches the stream:

- During the handshake one task (``Peers``' handshake code) reads with
  ``next_event`` and writes with ``send``/``flush`` directly; nothing else
  holds the session yet.
- From ``begin`` on, sends are queued; ``run`` owns the stream with three
  tasks, and nothing else touches it:

  * the **writer**, the only task that encrypts and writes.  Callers queue
    control messages (``send``) and bulk data (``send_bulk_data``) for it.  A
    caller cancelled before its message is queued leaves no trace; a queued
    message is encrypted and written whole, or the session ends (a cut record
    or a skipped nonce would make the peer fail every later record).  Bulk data goes out ``BULK_BATCH`` bytes at a time, and every
    control message waiting is written between two batches, so a heartbeat or
    a reply never waits behind a whole chunk.  Control messages keep their
    order; ``send_bulk_data`` returns once its data is written, so what one
    task sends after it follows it on the wire.
  * the **reader**, which never awaits application code: it resolves replies
    to ``request``, moves the liveness deadline, hands bulk records to the
    synchronous bulk sink, runs the synchronous inline handlers (heartbeats,
    dial-back), and queues every other message for the dispatcher.
  * the **dispatcher**, which awaits the application's handler of each queued
    message in the order they arrived.  Handlers must be short (long work is
    started in a service's own nursery).

- The queue is bounded in bytes: a caller's ``send`` waits while
  ``SOFT_QUEUE`` bytes of control messages wait for the writer, except in a
  dispatcher, whose sends (replies, mostly) never wait.  That breaks the one
  cycle that could stop two peers for good: A's reader waits on A's
  dispatcher, which waits on A's writer, which waits for B to read, while
  B's reader waits the same way on A.  Past ``HARD_QUEUE`` bytes the session
  ends (the peer is not reading).  Bulk senders wait for their own data, so
  bulk in flight is bounded by the tasks sending it; a dispatcher may not send
  bulk data.

- The liveness deadline, ``window`` seconds after the last record read
  (stretched while this node is starved of CPU: node/membership/health.py),
  ends the session when it passes, whatever the tasks are blocked on (a
  writer stuck because the peer stopped reading included).  A watchdog task
  keeps it.  Ending the session wakes
  every caller waiting to queue, waiting for its bulk data to be written, or
  waiting for a reply, with ``SessionLost``.

Every error of the stream, and of the connection's ``send``, reaches callers
as ``SessionLost``; trio's and the OS's stream errors are mapped here and
nowhere else.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.errors import NodeError
from node.membership.health import LATE, Health
from protocol import NEED_DATA, PeerConnection, ProtocolError
from protocol.codec import Message
from protocol.connection import BulkReceived, ConnectionClosed, ConnEvent, MessageReceived
from protocol.framing import MAX_BULK
from protocol.messages import Error, Hello, Reply

log = logging.getLogger("rendernode.session")
RECEIVE_SIZE = 256 * 1024
BULK_BATCH = 256 * 1024  #: bulk bytes encrypted and written at once
SOFT_QUEUE = 1 << 20  #: control bytes waiting for the writer past which a caller's send waits
HARD_QUEUE = 32 << 20  #: control bytes waiting past which the session ends (the peer is not reading)
DISPATCH_QUEUE = 256  #: received messages waiting for their handlers

_DISPATCHERS: set[trio.lowlevel.Task] = set()  #: tasks whose sends never wait (see the docstring)

Dispatch = Callable[["Session", Message, int], Awaitable[None]]
Inline = Callable[["Session", Message, int], bool]
BulkSink = Callable[["Session", int, bytes], None]


class SessionLost(NodeError):
    """The session ended (its stream broke, the peer went silent, or it was
    closed), or a message could not be sent on it."""

    code = "session_lost"


class RequestFailed(NodeError):
    """A peer answered a request with an Error."""

    code = "request_failed"


@dataclass(eq=False)
class _Bulk:
    """Bulk data queued for the writer; ``done`` is set once it is written (or the session ended)."""

    stream_id: int
    data: bytes
    offset: int = 0
    written: bool = False
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Flush:
    """A marker in the control order: set once everything queued before it is written."""

    done: trio.Event = field(default_factory=trio.Event)


class Session:
    """A peer session; ``uuid`` and ``hello`` are set once Hellos are exchanged."""

    def __init__(self, stream: trio.abc.Stream, conn: PeerConnection, *, initiator: bool,
                 remote_ip: str) -> None:
        self.stream = stream
        self.conn = conn
        self.initiator = initiator
        self.remote_ip = remote_ip
        self.hello: Hello | None = None
        self.uuid = ""
        self.closed = trio.Event()
        self.added = False  #: dialed because a user added the machine (AddMachine)
        self.lost_reason = ""
        self.records_sent = 0  #: records the writer wrote (control + bulk), for tests and benches
        self.messages_received = 0  #: control messages the reader read
        self.last_write = -1e9  #: trio time the writer last wrote (keepalives skip busy sessions)
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Message]]] = {}
        self._control: deque[bytes | _Flush] = deque()  #: encoded control messages for the writer
        self._control_bytes = 0
        self._bulk: deque[_Bulk] = deque()
        self._work = trio.Event()  #: set when something is queued for the writer
        self._room = trio.Event()  #: set (and replaced) when the control queue drops below SOFT_QUEUE
        self._live = False
        self._heard = 0.0  #: trio time the reader last read a record
        self._scope: trio.CancelScope | None = None
        self.protocol_error = False  #: the session ended because the peer broke the protocol
        #: how it ended: "goodbye" (the peer said so), "closed" (the stream ended or broke),
        #: "timeout" (the liveness deadline), "local" (this node ended it)
        self.end_kind = ""

    # -- sending -----------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SessionLost(f"connection to {self.remote_ip} broke: {exc}") from None

    def _ended_reason(self) -> str:
        return f"session to {self.uuid or self.remote_ip} ended" + (
            f": {self.lost_reason}" if self.lost_reason else "")

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise SessionLost(self._ended_reason())

    def _queue(self, item: bytes | _Bulk | _Flush) -> None:
        """Hand ``item`` to the writer; synchronous, so a cancel cannot cut it in two."""
        if isinstance(item, _Bulk):
            self._bulk.append(item)
        else:
            self._control.append(item)
            if isinstance(item, bytes):
                self._control_bytes += len(item)
        self._work.set()
        if self._control_bytes > HARD_QUEUE:
            self.end(f"the peer is not reading: {self._control_bytes >> 20} MiB waiting to be sent")
            raise SessionLost(self._ended_reason())

    def begin(self) -> None:
        """The handshake is over: from now on sends are queued for the writer that
        ``run`` starts (messages queued before ``run`` wait for it)."""
        self._live = True

    async def flush(self) -> None:
        """Write what the handshake produced (including a reject); handshake only."""
        data = self.conn.data_to_send()
        if data:
            await self._write(data)

    async def send(self, message: Message, req_id: int = 0) -> None:
        """Send one control message.  Once the session is live this only queues it
        for the writer (waiting while ``SOFT_QUEUE`` bytes wait, except in a
        dispatcher); before that (the handshake) it writes at once.  ``SessionLost`` if the session ended or the
        message cannot be sent (unregistered, over the control limit)."""
        if not self._live:
            try:
                data = self.conn.send(message, req_id)
            except ProtocolError as exc:
                raise SessionLost(f"cannot send {type(message).__name__}: {exc.reason}") from None
            await self._write(data)
            return
        try:
            body = self.conn.encode(message, req_id)
        except ProtocolError as exc:
            raise SessionLost(f"cannot send {type(message).__name__}: {exc.reason}") from None
        await trio.lowlevel.checkpoint_if_cancelled()
        if trio.lowlevel.current_task() not in _DISPATCHERS:
            while self._control_bytes >= SOFT_QUEUE and not self.closed.is_set():
                await self._room.wait()  # a cancel here leaves no trace
        self._check_open()
        self._queue(body)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, message: Message, req_id: int = 0) -> bool:
        """Queue one control message without waiting (no back-pressure): for the few
        last words of a node on its way out.  False if the session is not live."""
        if not self._live or self.closed.is_set():
            return False
        try:
            self._queue(self.conn.encode(message, req_id))
        except (ProtocolError, SessionLost):
            return False
        return True

    async def send_bulk_data(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` as bulk records on ``stream_id`` and wait until it is written.
        Once queued it is written whole even if the caller is cancelled meanwhile."""
        if not data:
            return
        if not self._live:
            raise SessionLost("bulk data needs a live session")
        if trio.lowlevel.current_task() in _DISPATCHERS:
            raise RuntimeError("a message handler may not send bulk data (it would wait on the "
                               "writer and could stop two peers): start a task for it")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        item = _Bulk(stream_id, data)
        self._queue(item)
        await item.done.wait()
        if not item.written:
            raise SessionLost(self._ended_reason())

    async def drain(self) -> None:
        """Wait until every message queued so far is written (a Goodbye, say)."""
        if not self._live:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        marker = _Flush()
        self._queue(marker)
        await marker.done.wait()
        if self.closed.is_set():
            raise SessionLost(self._ended_reason())

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

    async def _writer(self) -> None:
        """The one task that encrypts and writes, control messages first."""
        control, bulk = self._control, self._bulk
        while True:
            while not control and not bulk:
                self._work = trio.Event()
                await self._work.wait()
            if control:
                records: list[bytes] = []
                size = 0
                while control and size < BULK_BATCH:
                    item = control.popleft()
                    if isinstance(item, _Flush):
                        if records:  # what came before the marker goes out first
                            control.appendleft(item)
                            break
                        item.done.set()
                        continue
                    records.append(self._seal(item))
                    size += len(records[-1])
                    self._control_bytes -= len(item)
                if self._control_bytes < SOFT_QUEUE:
                    self._room.set()
                    self._room = trio.Event()
                if records:
                    await self._write(b"".join(records))
                    self.records_sent += len(records)
                    self.last_write = trio.current_time()
                continue
            b = bulk[0]
            end = min(b.offset + BULK_BATCH, len(b.data))
            view = memoryview(b.data)
            try:
                records = [self.conn.send_bulk(b.stream_id, bytes(view[i:min(i + MAX_BULK, end)]))
                           for i in range(b.offset, end, MAX_BULK)]
            except ProtocolError as exc:
                raise SessionLost(f"cannot encrypt bulk data: {exc.reason}") from None
            b.offset = end
            await self._write(b"".join(records))
            self.records_sent += len(records)
            self.last_write = trio.current_time()
            if b.offset >= len(b.data):
                bulk.popleft()
                b.written = True
                b.done.set()
            else:
                bulk.rotate(-1)  # several bulk senders share the link in turn

    def _seal(self, body: bytes) -> bytes:
        try:
            return self.conn.send_encoded(body)
        except ProtocolError as exc:
            raise SessionLost(f"cannot encrypt: {exc.reason}") from None

    # -- receiving ---------------------------------------------------------------

    async def next_event(self) -> ConnEvent:
        """Read until the connection yields an event; raises ProtocolError or SessionLost.
        The handshake's reader until ``run``, then ``run``'s reader alone."""
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError:
                if not self._live:  # the handshake's reject or Goodbye
                    with trio.move_on_after(1):
                        try:
                            await self.flush()
                        except SessionLost:
                            pass
                raise
            if not self._live and self.conn.has_data_to_send:  # the handshake's
                await self.flush()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionLost(f"connection to {self.remote_ip} broke: {exc}") from None
            self.conn.receive_data(data)

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

    # -- the live session ----------------------------------------------------------

    async def run(self, *, window: float, dispatch: Dispatch, inline: Inline,
                  bulk: BulkSink | None = None, silent: str = "went silent",
                  health: Health | None = None) -> str:
        """Serve the live session until it ends; returns why it ended.

        ``inline(session, message, req_id)`` is called by the reader first and
        returns True if it handled the message (it must not block); every other
        message is awaited by ``dispatch`` in arrival order; ``bulk`` takes bulk
        records.  The session ends when the peer closes it, ``window`` seconds
        (times ``health``'s factor: node/membership/health.py) pass with nothing
        read (the reason is then ``silent``), ``end`` is called, the
        stream breaks, or the peer breaks the protocol (``protocol_error`` is then
        set).  Only the caller's own cancellation is raised.
        """
        self.begin()
        send, receive = trio.open_memory_channel[tuple[Message, int]](DISPATCH_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self.lost_reason:  # end() came before run()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guarded, self._writer())
                nursery.start_soon(self._guarded, self._dispatcher(receive, dispatch))
                with trio.CancelScope() as liveness:
                    self._heard = trio.current_time()
                    nursery.start_soon(self._watch, liveness, window, health)
                    await self._guarded(self._reader(send, inline, bulk))
                if liveness.cancelled_caught:
                    self.end(silent, "timeout")
                nursery.cancel_scope.cancel()
        finally:
            self._finish()
        return self.lost_reason or "closed"

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Run one of the session's tasks; its failure ends the session."""
        try:
            await work
        except SessionLost as exc:
            self.end(exc.reason, "closed")
        except ProtocolError as exc:
            self.protocol_error = True
            self.end(f"protocol error: {exc.reason}", "closed")

    async def _watch(self, liveness: trio.CancelScope, window: float, health: Health | None) -> None:
        """End the session (cancel ``liveness``) once ``window`` seconds, stretched by
        this node's health factor, pass with nothing read.  Not on a wake that came
        late (this node was starved: what the peer sent may wait unread, so the
        peer gets another window from the wake, and the health score stretches
        the windows after it)."""
        grace = -math.inf
        while True:
            now = trio.current_time()
            due = max(self._heard + window * (health.factor(now) if health is not None else 1.0), grace)
            if now >= due:
                liveness.cancel()
                return
            await trio.sleep_until(due)
            if health is not None:
                woke = trio.current_time()
                if health.woke_for(due, now, woke) >= LATE:
                    grace = woke + window

    async def _reader(self, dispatch: trio.MemorySendChannel[tuple[Message, int]], inline: Inline,
                      bulk: BulkSink | None) -> None:
        while True:
            event = await self.next_event()
            self._heard = trio.current_time()
            if isinstance(event, ConnectionClosed):
                self.end(event.reason, "goodbye" if event.clean else "closed")
                return
            if isinstance(event, BulkReceived):
                if bulk is not None:
                    bulk(self, event.stream, event.data)
                continue
            if not isinstance(event, MessageReceived):
                continue
            msg, req_id = event.message, event.req_id
            self.messages_received += 1
            if self.resolve(msg, req_id) or inline(self, msg, req_id):
                continue
            await dispatch.send((msg, req_id))

    async def _dispatcher(self, receive: trio.MemoryReceiveChannel[tuple[Message, int]],
                          dispatch: Dispatch) -> None:
        me = trio.lowlevel.current_task()
        _DISPATCHERS.add(me)
        try:
            async for msg, req_id in receive:
                try:
                    await dispatch(self, msg, req_id)
                except SessionLost as exc:  # a send to a session that ended (this one ends itself)
                    log.debug("handler of %s from %s: %s", type(msg).__name__, self.uuid, exc.reason)
        finally:
            _DISPATCHERS.discard(me)

    def end(self, reason: str, kind: str = "local") -> None:
        """End the live session (from any task): its tasks stop and every waiting
        caller gets ``SessionLost``.  ``kind`` says how (see ``end_kind``)."""
        if not self.lost_reason:
            self.lost_reason = reason
            self.end_kind = kind
        if self._scope is not None:
            self._scope.cancel()

    def _finish(self) -> None:
        """The session is over: wake everyone who waits on it."""
        self.closed.set()
        self._live = True  # nothing writes directly any more
        for item in [*self._control, *self._bulk]:
            if not isinstance(item, bytes):
                item.done.set()
        self._control.clear()
        self._bulk.clear()
        self._control_bytes = 0
        self._room.set()
        self.fail_pending()

    def fail_pending(self) -> None:
        """Wake every waiting request with no answer (the session ended)."""
        for done, _ in self._pending.values():
            done.set()

    async def aclose(self) -> None:
        """End the session and close the stream at once."""
        self.end(self.lost_reason or "closed")
        if self._scope is None:
            self._finish()
        await self.stream.aclose()

    def describe(self) -> dict[str, Any]:
        """A short description for logs."""
        return {"uuid": self.uuid, "ip": self.remote_ip, "initiator": self.initiator}


__all__ = ["BULK_BATCH", "RequestFailed", "Session", "SessionLost"]
