"""Length-prefixed records: ``u32 big-endian length || body``.

The decoder is fed arbitrary slices (one byte at a time works) and yields
whole bodies.  The length is checked against the limit from the 4-byte header
alone, before any of the body is buffered, so a peer cannot make us hold more
than ``max_record`` bytes (plus one header) whatever it sends.
"""

from __future__ import annotations

import struct

from .errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

#: Largest control message (msgpack) in plaintext.
MAX_CONTROL = 1 << 20
#: Largest bulk data record in plaintext.
MAX_BULK = 64 << 10


def encode_record(body: bytes, max_record: int) -> bytes:
    """Return ``body`` with its length prefix; refuse a body over ``max_record``."""
    if len(body) > max_record:
        raise LocalProtocolError(f"record of {len(body)} bytes exceeds the limit of {max_record}")
    return HEADER.pack(len(body)) + body


class RecordDecoder:
    """Incremental decoder of length-prefixed records."""

    __slots__ = ("_buf", "_need", "max_record")

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._buf = bytearray()
        self._need = -1  # body length of the record being read, -1 while in header

    @property
    def buffered(self) -> int:
        """Bytes held and not yet returned as a record."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raises if a header announces an oversize record.
        The header is completed and checked before any of its body is buffered."""
        view = memoryview(data)
        if self._need < 0:
            take = max(0, HEADER_SIZE - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            self._check_header()
        self._buf += view

    def _check_header(self) -> None:
        if self._need < 0 and len(self._buf) >= HEADER_SIZE:
            (n,) = HEADER.unpack_from(self._buf)
            if n > self.max_record:
                raise RemoteProtocolError(
                    f"peer announced a record of {n} bytes; the limit is {self.max_record}"
                )
            self._need = n

    def next_record(self) -> bytes | None:
        """Return the next complete record body, or None if more data is needed.
        A record's header is checked when that record is asked for, so every
        whole record before an oversize one comes out, and ``max_record`` may
        change between records (handshake -> transport)."""
        self._check_header()
        need = self._need
        if need < 0:
            return None
        end = HEADER_SIZE + need
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        self._need = -1
        return body
