"""Direct file transfer over a peer session, verified by SHA-256.

Sender: ``FileOffer`` (a request: the receiver says whether it wants the
file), bulk records on a fresh stream id, then ``FileCommit`` (a request: the
receiver checks size and hash and stores the file before it answers).
Receiver: buffers each stream up to its announced size (``MAX_FILE``), and
refuses anything that does not match.  The asset issue's chunk swarm replaces
this for large files; frames are small.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from protocol.framing import MAX_BULK
from protocol.messages import Error, FileCommit, FileOffer, Reply

from .errors import BadRequest
from .peers import Peers
from .session import RequestFailed, Session

log = logging.getLogger("rendernode.transfer")
MAX_FILE = 1 << 30
MAX_SINK = 8 << 20
_streams = itertools.count(1)
_requested_streams = itertools.count(1)


def requested_stream() -> int:
    """A stream id for data we ask a peer to send us (high bit set, so it never
    meets the ids a peer picks for files it offers)."""
    return 0x80000000 | (next(_requested_streams) & 0x7FFFFFFF)
Store = Callable[[Session, FileOffer, bytes], Awaitable[dict[str, Any]]]
Want = Callable[[Session, FileOffer], bool]


@dataclass
class Incoming:
    """A file arriving on one stream."""

    offer: FileOffer
    data: bytearray = field(default_factory=bytearray)


def sha256_file(path: str) -> tuple[str, int]:
    """(hex digest, size) of a file; call off the trio thread for big files."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Transfers:
    """Sends and receives files over peer sessions; ``kinds`` decide what is kept."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.stores: dict[str, Store] = {}
        self.wants: dict[str, Want] = {}
        self._incoming: dict[tuple[int, int], Incoming] = {}
        self._sinks: dict[tuple[int, int], bytearray] = {}
        peers.handlers[FileOffer] = self._on_offer
        peers.handlers[FileCommit] = self._on_commit
        peers.bulk_handler = self._on_bulk

    async def send_file(self, session: Session, path: str, offer: FileOffer) -> dict[str, Any]:
        """Offer and send ``path``; returns the receiver's answer (``{"stored": ...}``)."""
        stream = next(_streams)
        offer = FileOffer(**{**offer.__dict__, "stream": stream})
        reply = await session.request(offer)
        assert isinstance(reply, Reply)
        if not (isinstance(reply.result, dict) and reply.result.get("want")):
            return {"stored": True, "already": True}
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(MAX_BULK):
                await session.send_bulk(stream, chunk)
        reply = await session.request(FileCommit(stream))
        assert isinstance(reply, Reply)
        result: dict[str, Any] = reply.result if isinstance(reply.result, dict) else {}
        return result

    def _key(self, session: Session, stream: int) -> tuple[int, int]:
        return (id(session), stream)

    async def _on_offer(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, FileOffer)
        want_fn = self.wants.get(msg.kind)
        if want_fn is None or not 0 <= msg.size <= MAX_FILE or len(msg.sha256) != 64:
            await session.send(Error("bad_request", f"cannot take a {msg.kind} file of {msg.size} bytes"),
                               req_id)
            return
        want = want_fn(session, msg)
        if want:
            self._incoming[self._key(session, msg.stream)] = Incoming(msg)
        await session.send(Reply({"want": want}), req_id)

    def expect(self, session: Session, stream: int) -> bytearray:
        """Collect the bulk records ``session`` sends on ``stream`` (see ``forget``)."""
        sink = bytearray()
        self._sinks[self._key(session, stream)] = sink
        return sink

    def forget(self, session: Session, stream: int) -> None:
        """Stop collecting ``stream``."""
        self._sinks.pop(self._key(session, stream), None)

    async def _on_bulk(self, session: Session, stream: int, data: bytes) -> None:
        sink = self._sinks.get(self._key(session, stream))
        if sink is not None:
            if len(sink) + len(data) <= MAX_SINK:
                sink += data
            return
        incoming = self._incoming.get(self._key(session, stream))
        if incoming is None:
            return
        if len(incoming.data) + len(data) > incoming.offer.size:
            del self._incoming[self._key(session, stream)]
            log.warning("peer %s sent more than the %d bytes it offered", session.uuid, incoming.offer.size)
            return
        incoming.data += data

    async def _on_commit(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, FileCommit)
        incoming = self._incoming.pop(self._key(session, msg.stream), None)
        if incoming is None:
            await session.send(Error("bad_request", "no such transfer"), req_id)
            return
        data = bytes(incoming.data)
        if len(data) != incoming.offer.size or hashlib.sha256(data).hexdigest() != incoming.offer.sha256:
            await session.send(Error("corrupt", "size or SHA-256 does not match the offer"), req_id)
            return
        try:
            result = await self.stores[incoming.offer.kind](session, incoming.offer, data)
        except (OSError, BadRequest) as exc:
            await session.send(Error("saving_failed", str(exc)), req_id)
            return
        await session.send(Reply(result), req_id)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and rename."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.part-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["MAX_FILE", "RequestFailed", "Transfers", "sha256_file", "write_atomic"]
