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
    """Incremental decoder of length-prefixed records.

    The bytes not yet returned are ``_held[_pos:]``.  A ``bytes`` object fed
    while nothing is pending is held as it is, not copied, and records are
    sliced straight out of it.  Only bytes that must wait for more (a partial
    record) move into an owned ``bytearray``, which grows at its end and drops
    what was consumed when the next feed arrives.
    """

    __slots__ = ("_held", "_need", "_pos", "max_record")

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._held: bytes | bytearray = b""
        self._pos = 0  # start of the bytes not yet returned
        self._need = -1  # body length of the record at _pos, -1 until its header is checked

    @property
    def buffered(self) -> int:
        """Bytes held and not yet returned as a record."""
        return len(self._held) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raises if a header announces an oversize record.
        The header is completed and checked before any of its body is buffered."""
        held = self._held
        if self._pos == len(held):  # nothing pending: hold ``data`` itself once its header passes
            self._pos = 0
            if len(data) >= HEADER_SIZE:
                (n,) = HEADER.unpack_from(data)
                if n > self.max_record:  # refused with only the header held
                    self._held = bytes(memoryview(data)[:HEADER_SIZE])
                    self._check_length(n)
                self._need = n
            self._held = data if type(data) is bytes else bytes(data)
            return
        if isinstance(held, bytes):
            held = self._held = bytearray(memoryview(held)[self._pos :])
        elif self._pos:
            del held[: self._pos]
        self._pos = 0
        if self._need < 0:
            view = memoryview(data)
            take = max(0, HEADER_SIZE - len(held))
            held += view[:take]
            data = view[take:]
            self._check_header()
        held += data

    def _check_length(self, n: int) -> None:
        if n > self.max_record:
            raise RemoteProtocolError(
                f"peer announced a record of {n} bytes; the limit is {self.max_record}"
            )

    def _check_header(self) -> None:
        if self._need < 0 and len(self._held) - self._pos >= HEADER_SIZE:
            (n,) = HEADER.unpack_from(self._held, self._pos)
            self._check_length(n)
            self._need = n

    def _take(self) -> int:
        """Consume the next whole record; return where its body starts, or -1."""
        self._check_header()
        need = self._need
        if need < 0:
            return -1
        start = self._pos + HEADER_SIZE
        if len(self._held) < start + need:
            return -1
        self._pos = start + need
        self._need = -1
        return start

    def next_record(self) -> bytes | None:
        """Return the next complete record body, or None if more data is needed.
        A record's header is checked when that record is asked for, so every
        whole record before an oversize one comes out, and ``max_record`` may
        change between records (handshake -> transport)."""
        start = self._take()
        if start < 0:
            return None
        held, end = self._held, self._pos
        if isinstance(held, bytes):
            return held[start:end]
        with memoryview(held) as view:
            return bytes(view[start:end])

    def next_record_view(self) -> memoryview | None:
        """Like ``next_record`` but without a copy: a view of the body inside the
        decoder's buffer.  Release it (``with``) before the next ``feed``."""
        start = self._take()
        if start < 0:
            return None
        return memoryview(self._held)[start : self._pos]
