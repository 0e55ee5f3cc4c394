"""Bulk data routing over peer sessions.

A node that asks a peer for data (a chunk) picks a stream id with the high
bit set (``requested_stream``) and registers a sink for it; the peers
service hands every bulk record of that stream to the sink.  The reply that
follows the data on the same session tells the asker it has all of it.
"""

from __future__ import annotations

import itertools
import os

from node.membership.peers import Peers
from node.membership.session import Session

MAX_SINK = 8 << 20  #: a sink never holds more than this (chunks are 1 MiB)
_requested_streams = itertools.count(1)


def requested_stream() -> int:
    """A stream id for data we ask a peer to send us."""
    return 0x80000000 | (next(_requested_streams) & 0x7FFFFFFF)


class Sink:
    """The bulk records of one stream, kept as received and joined once at the end."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def data(self) -> bytes:
        """Everything received, in order."""
        return b"".join(self.parts)


class Transfers:
    """Routes bulk records to the sinks waiting for them."""

    def __init__(self, peers: Peers) -> None:
        self._sinks: dict[tuple[int, int], Sink] = {}
        peers.bulk_handler = self._on_bulk

    def _key(self, session: Session, stream: int) -> tuple[int, int]:
        return (id(session), stream)

    def expect(self, session: Session, stream: int) -> Sink:
        """Collect the bulk records ``session`` sends on ``stream`` (see ``forget``)."""
        sink = Sink()
        self._sinks[self._key(session, stream)] = sink
        return sink

    def forget(self, session: Session, stream: int) -> None:
        """Stop collecting ``stream``."""
        self._sinks.pop(self._key(session, stream), None)

    def _on_bulk(self, session: Session, stream: int, data: bytes) -> None:
        sink = self._sinks.get(self._key(session, stream))
        if sink is not None and sink.size + len(data) <= MAX_SINK:
            sink.parts.append(data)
            sink.size += len(data)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and rename."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.part-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
