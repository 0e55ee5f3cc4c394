"""rendernode's wire protocol, sans-IO: framing, Noise handshake and transport,
messages and their codec, verification bits, the seed's enums.

Nothing in this package does I/O: bytes in, events out (see ``connection``).
"""

from __future__ import annotations

from .codec import PROTO_MAJOR, PROTO_MINOR, Message, decode, encode
from .connection import (
    NEED_DATA,
    BulkReceived,
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    MessageReceived,
    PeerConnection,
    PeerRejected,
    RejectCode,
    derive_psk,
)
from .errors import (
    HandshakeFailed,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    UnknownMessageType,
)
from .noise import Cipher

__all__ = [
    "NEED_DATA", "PROTO_MAJOR", "PROTO_MINOR", "BulkReceived", "Cipher", "ConnectionClosed",
    "ConnectionState", "HandshakeComplete", "HandshakeFailed", "LocalProtocolError", "Message",
    "MessageReceived", "PeerConnection", "PeerRejected", "ProtocolError", "RejectCode",
    "RemoteProtocolError", "UnknownMessageType", "decode", "derive_psk", "encode",
]
