"""One peer session, sans-IO: handshake -> hello -> open.

State machine (every ProtocolError moves it to ERROR, after which every call
raises ``LocalProtocolError``)::

    HANDSHAKE --3 Noise messages--> HELLO --both Hellos--> OPEN --Goodbye/EOF--> CLOSED

Records on the wire (``protocol.framing``) during HANDSHAKE are cleartext and
start with a kind byte: ``H`` a Noise message (the initiator's first one is
prefixed by ``RN``, the wire major and the cipher it picked), ``R`` a reject
(code byte + reason) the responder sends before closing, ``A`` the responder's
accept after message 3 authenticated.  The initiator stays in HANDSHAKE until
``A`` or ``R`` arrives, so a wrong token reaches it as a typed reject rather
than as an undecryptable record.  After the handshake
every record is ciphertext whose plaintext starts with ``C`` (a control
message, msgpack) or ``B`` (bulk data: u32 stream id + at most 64 KiB).

The prologue binds the wire major, the cipher pick and the farm id, so a
rewritten major byte (downgrade), a swapped cipher or a foreign farm fail the
handshake.  Nonces are implicit counters, so a replayed, dropped or reordered
record fails its tag: the receiver accepts only the exact next counter.

Bytes to write come back from ``send``/``send_bulk``; bytes the handshake
itself produces (including a reject) wait in ``data_to_send()``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Final

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import codec
from .codec import PROTO_MAJOR, Message
from .errors import HandshakeFailed, LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import HEADER, MAX_BULK, MAX_CONTROL, RecordDecoder
from .messages import Goodbye, Hello
from .noise import MAX_NOISE_MESSAGE, REKEY_INTERVAL, TAGLEN, Cipher, CipherState, WrongPsk, XXpsk3

MAGIC: Final = b"RN"
PSK_SALT: Final = b"rendernode farm psk v1"
_STREAM = struct.Struct(">I")
_HANDSHAKE_RECORD_MAX = MAX_NOISE_MESSAGE + 8
_TRANSPORT_RECORD_MAX = MAX_CONTROL + 1 + TAGLEN
MAX_REJECT_REASON = 200  #: bytes of a reject's reason kept (the peer's text lands in our machine table)


def derive_psk(token: bytes, farm_id: str) -> bytes:
    """PSK = HKDF-SHA256(farm token, fixed salt, info = farm id)."""
    if not token:
        raise LocalProtocolError("the farm token is empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=PSK_SALT,
                info=farm_id.encode()).derive(token)


def prologue(major: int, cipher: Cipher, farm_id: str) -> bytes:
    """What both sides mix into the handshake hash before the first message."""
    return b"rendernode/%d/%d/" % (major, int(cipher)) + farm_id.encode()


class RejectCode(IntEnum):
    """Why a responder refused a handshake (sent in a cleartext ``R`` record)."""

    WRONG_TOKEN = 1  #: message 3 did not authenticate: the tokens differ
    WRONG_MAJOR = 2  #: the initiator speaks another wire major version
    CIPHER = 3  #: the initiator picked a cipher this node does not accept
    FAILED = 4  #: any other handshake failure
    BUSY = 5  #: too many handshakes in flight; try again later


class ConnectionState(Enum):
    """Where a session is."""

    HANDSHAKE = "handshake"  #: Noise messages in flight
    HELLO = "hello"  #: transport keys ready; Hellos not both exchanged yet
    OPEN = "open"  #: both Hellos exchanged; any message may flow
    CLOSED = "closed"  #: Goodbye or clean EOF; nothing more is accepted
    ERROR = "error"  #: a ProtocolError happened; the session is unusable


class PeerRejected(HandshakeFailed):
    """The responder refused our handshake and said why."""

    def __init__(self, code: RejectCode, reason: str, remote_static: bytes | None) -> None:
        super().__init__(f"peer refused the handshake ({code.name}): {reason}")
        self.code = code
        self.remote_static = remote_static


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake succeeded; ``remote_static`` is the peer's authenticated key."""

    remote_static: bytes
    handshake_hash: bytes
    hint: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MessageReceived:
    """A control message arrived."""

    message: Message
    req_id: int


@dataclass(frozen=True)
class BulkReceived:
    """A bulk data record arrived on ``stream``."""

    stream: int
    data: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer said Goodbye (``clean``) or closed the stream at a record boundary
    without one, which is also what a crash or a truncating attacker looks like."""

    reason: str
    clean: bool = False


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
ConnEvent = HandshakeComplete | MessageReceived | BulkReceived | ConnectionClosed


def _hint_bytes(hint: dict[str, Any] | None) -> bytes:
    return msgpack.packb(hint, use_bin_type=True) if hint else b""


def _parse_hint(payload: bytes) -> dict[str, Any]:
    if not payload:
        return {}
    if len(payload) > 4096:
        raise HandshakeFailed("handshake hint too large")
    value = codec.unpack_limited(payload)
    if not isinstance(value, dict):
        raise HandshakeFailed("handshake hint is not a map")
    return {k: v for k, v in value.items() if isinstance(v, (str, int))}


class PeerConnection:
    """A sans-IO peer session.  Feed ``receive_data``, drain ``next_event`` until
    NEED_DATA, write ``data_to_send()`` and whatever ``send*`` returns."""

    def __init__(
        self,
        *,
        initiator: bool,
        static_key: X25519PrivateKey,
        psk: bytes,
        farm_id: str,
        hint: dict[str, Any] | None = None,
        cipher: Cipher = Cipher.CHACHAPOLY,
        accept_ciphers: frozenset[Cipher] = frozenset(Cipher),
        major: int = PROTO_MAJOR,
    ) -> None:
        self.initiator = initiator
        self.state = ConnectionState.HANDSHAKE
        self.remote_static: bytes | None = None
        self.remote_hint: dict[str, Any] = {}
        self.peer_hello: Hello | None = None
        self._static = static_key
        self._psk = psk
        self._farm_id = farm_id
        self._hint = _hint_bytes(hint)
        self._cipher = cipher
        self._accept = accept_ciphers
        self._major = major
        self._decoder = RecordDecoder(_HANDSHAKE_RECORD_MAX)
        self._outbox = bytearray()
        self._hs: XXpsk3 | None = None
        self._tx: CipherState | None = None
        self._rx: CipherState | None = None
        self._sent_hello = False
        self._eof = False
        self._started = False

    # -- output -------------------------------------------------------------

    @property
    def has_data_to_send(self) -> bool:
        """True while ``data_to_send`` would return bytes (handshake messages, a reject)."""
        return bool(self._outbox)

    def data_to_send(self) -> bytes:
        """Bytes the handshake produced that must be written before anything else."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def _queue_record(self, body: bytes) -> None:
        self._outbox += HEADER.pack(len(body))
        self._outbox += body

    def start(self) -> None:
        """Initiator only: queue the first handshake message."""
        self._check_usable()
        if not self.initiator or self._started:
            raise LocalProtocolError("start() is for the initiator, once")
        self._started = True
        self._hs = self._new_handshake(self._cipher)
        msg1 = self._hs.write_message(self._hint)
        self._queue_record(b"H" + MAGIC + bytes([self._major, int(self._cipher)]) + msg1)

    def _new_handshake(self, cipher: Cipher) -> XXpsk3:
        return XXpsk3(initiator=self.initiator, static=self._static, psk=self._psk,
                      prologue=prologue(self._major, cipher, self._farm_id), cipher=cipher)

    def send(self, message: Message, req_id: int = 0) -> bytes:
        """Encrypt a control message; the first one must be our Hello."""
        self._check_usable()
        if self.state is ConnectionState.HANDSHAKE:
            raise LocalProtocolError("cannot send a message before the handshake completes")
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the session is closed")
        if not self._sent_hello:
            if not isinstance(message, Hello):
                raise LocalProtocolError("the first message of a session must be Hello")
            self._sent_hello = True
            self._maybe_open()
        return self._seal(b"C" + codec.encode(message, req_id))

    def encode(self, message: Message, req_id: int = 0) -> bytes:
        """A control message checked and encoded, not yet encrypted: the half of
        ``send`` that can refuse a message (unregistered, over the control limit)
        without touching the session's nonces.  Hand the result to ``send_encoded``."""
        return b"C" + codec.encode(message, req_id)

    def send_encoded(self, body: bytes) -> bytes:
        """Encrypt a body from ``encode``: the half of ``send`` that uses a nonce.
        Only after our Hello (which goes through ``send``)."""
        self._check_usable()
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the session is closed")
        if not self._sent_hello:
            raise LocalProtocolError("the first message of a session must be Hello (send it with send)")
        return self._seal(body)

    def send_bulk(self, stream: int, data: bytes) -> bytes:
        """Encrypt one bulk record of at most 64 KiB on ``stream``."""
        if self.state is not ConnectionState.OPEN:
            self._check_usable()
            raise LocalProtocolError(f"bulk data needs an open session (state {self.state.value})")
        if len(data) > MAX_BULK:
            raise LocalProtocolError(f"bulk record of {len(data)} bytes; the limit is {MAX_BULK}")
        return self._seal(b"B" + _STREAM.pack(stream) + data)

    def _seal(self, plaintext: bytes) -> bytes:
        tx = self._tx
        assert tx is not None
        ct = tx.encrypt_with_ad(None, plaintext)
        if tx.n % REKEY_INTERVAL == 0:
            tx.rekey()
        return HEADER.pack(len(ct)) + ct

    # -- input --------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""
        self._check_usable()
        if not data:
            self._eof = True
            return
        try:
            self._decoder.feed(data)
        except ProtocolError:
            self.state = ConnectionState.ERROR
            raise

    def next_event(self) -> ConnEvent | _NeedData:
        """The next event, or NEED_DATA; raises ProtocolError on anything refused."""
        self._check_usable()
        if self.state is ConnectionState.CLOSED:
            return NEED_DATA
        try:
            return self._next_event()
        except ProtocolError:
            self.state = ConnectionState.ERROR
            raise

    def _next_event(self) -> ConnEvent | _NeedData:
        decoder = self._decoder
        while self.state is ConnectionState.HANDSHAKE:
            body = decoder.next_record()
            if body is None:
                return self._on_eof() if self._eof else NEED_DATA
            event = self._handshake_record(body)
            if event is not None:
                return event
        record = decoder.next_record_view()  # decrypted from the decoder's buffer, not copied
        if record is None:
            return self._on_eof() if self._eof else NEED_DATA
        with record:
            return self._transport_record(record)

    def _on_eof(self) -> ConnEvent:
        if self.state is ConnectionState.HANDSHAKE:
            raise RemoteProtocolError("peer closed the connection during the handshake")
        if self.peer_hello is None:
            raise RemoteProtocolError("peer closed the connection before its Hello")
        if self._decoder.buffered:
            raise RemoteProtocolError("peer closed the connection in the middle of a record")
        self.state = ConnectionState.CLOSED
        return ConnectionClosed("peer closed the connection without a Goodbye")

    def _reject(self, code: RejectCode, reason: str) -> None:
        self._queue_record(b"R" + bytes([code]) + reason.encode()[:MAX_REJECT_REASON])

    def _handshake_record(self, body: bytes) -> HandshakeComplete | None:
        kind, rest = body[:1], body[1:]
        if kind == b"R":
            if not self.initiator or not rest:
                raise RemoteProtocolError("unexpected reject record")
            try:
                code = RejectCode(rest[0])
            except ValueError:
                code = RejectCode.FAILED
            reason = rest[1:1 + MAX_REJECT_REASON].decode("utf-8", "replace")  # a sender cuts it there too
            raise PeerRejected(code, reason, self.remote_static)
        if kind == b"A":
            if not self.initiator or self._hs is None or not self._hs.complete:
                raise RemoteProtocolError("unexpected accept record")
            return self._complete(self._hs)
        if kind != b"H":
            raise RemoteProtocolError(f"expected a handshake record, got kind {kind!r}")
        if self._hs is None:
            if self.initiator:
                raise LocalProtocolError("call start() before feeding data to an initiator")
            rest = self._accept_first(rest)
        hs = self._hs
        assert hs is not None
        if hs.complete:
            raise RemoteProtocolError("a handshake message after the handshake completed")
        try:
            payload = hs.read_message(rest)
        except WrongPsk:
            self.remote_static = hs.remote_static
            self._reject(RejectCode.WRONG_TOKEN, "the farm tokens differ")
            raise
        except HandshakeFailed as exc:
            self.remote_static = hs.remote_static
            if not self.initiator:
                self._reject(RejectCode.FAILED, exc.reason)
            raise
        self.remote_static = hs.remote_static
        if hs.step == 1:  # responder read message 1
            self.remote_hint = _parse_hint(payload)
            self._queue_record(b"H" + hs.write_message(self._hint))
            return None
        if hs.step == 2:  # initiator read message 2; wait for the accept
            self.remote_hint = _parse_hint(payload)
            self._queue_record(b"H" + hs.write_message(b""))
            return None
        self._queue_record(b"A")  # responder: message 3 authenticated
        return self._complete(hs)

    def _accept_first(self, rest: bytes) -> bytes:
        if len(rest) < 4 or rest[:2] != MAGIC:
            raise HandshakeFailed("not a rendernode handshake")
        major, cipher_id = rest[2], rest[3]
        if major != self._major:
            self._reject(RejectCode.WRONG_MAJOR, f"this node speaks protocol {self._major}")
            raise HandshakeFailed(f"peer speaks protocol major {major}; this node speaks {self._major}")
        try:
            cipher = Cipher(cipher_id)
        except ValueError:
            cipher = None
        if cipher is None or cipher not in self._accept:
            self._reject(RejectCode.CIPHER, "cipher not accepted")
            raise HandshakeFailed(f"peer picked cipher {cipher_id}, which this node does not accept")
        self._cipher = cipher
        self._hs = self._new_handshake(cipher)
        return rest[4:]

    def _complete(self, hs: XXpsk3) -> HandshakeComplete:
        self._tx, self._rx = hs.split()
        self.state = ConnectionState.HELLO
        self._decoder.max_record = _TRANSPORT_RECORD_MAX
        assert hs.remote_static is not None
        done = HandshakeComplete(hs.remote_static, hs.handshake_hash, self.remote_hint)
        self._hs = None
        return done

    def _transport_record(self, body: bytes | memoryview) -> ConnEvent:
        rx = self._rx
        assert rx is not None
        try:
            pt = rx.decrypt_with_ad(None, body)
        except InvalidTag:
            raise RemoteProtocolError(
                "record failed to authenticate (tampered, replayed or reordered)"
            ) from None
        if rx.n % REKEY_INTERVAL == 0:
            rx.rekey()
        kind = pt[:1]
        if kind == b"B":
            if self.state is not ConnectionState.OPEN:
                raise RemoteProtocolError("bulk data before Hello")
            if len(pt) < 5 or len(pt) > 5 + MAX_BULK:
                raise RemoteProtocolError(f"bulk record of {len(pt) - 5} bytes; the limit is {MAX_BULK}")
            (stream,) = _STREAM.unpack_from(pt, 1)
            return BulkReceived(stream, pt[5:])
        if kind != b"C":
            raise RemoteProtocolError(f"unknown record kind {kind!r}")
        message, req_id = codec.decode(pt[1:])
        if self.peer_hello is None:
            if not isinstance(message, Hello):
                raise RemoteProtocolError(f"expected Hello first, got {type(message).TYPE}")
            self.peer_hello = message
            self._maybe_open()
        elif isinstance(message, Hello):
            raise RemoteProtocolError("a second Hello in one session")
        if isinstance(message, Goodbye):
            self.state = ConnectionState.CLOSED
            return ConnectionClosed(message.reason or "peer said goodbye", clean=True)
        return MessageReceived(message, req_id)

    def _maybe_open(self) -> None:
        if self._sent_hello and self.peer_hello is not None and self.state is ConnectionState.HELLO:
            self.state = ConnectionState.OPEN

    def _check_usable(self) -> None:
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("the session failed earlier and cannot be used")
