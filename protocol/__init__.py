"""rendernode's wire protocol, sans-IO: framing, Noise handshake and transport,
messages and their codec, verification bits, the seed's enums.

Nothing in this package does I/O: bytes in, events out (see ``connection``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names, for type checkers; at run time each is imported on first use
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

#: where each name of the package lives: importing ``protocol.enums`` (a renderer
#: process does, for its results) must not load the Noise handshake and cryptography
_HOME = {
    "PROTO_MAJOR": "codec", "PROTO_MINOR": "codec", "Message": "codec", "decode": "codec", "encode": "codec",
    "NEED_DATA": "connection", "BulkReceived": "connection", "ConnectionClosed": "connection",
    "ConnectionState": "connection", "HandshakeComplete": "connection", "MessageReceived": "connection",
    "PeerConnection": "connection", "PeerRejected": "connection", "RejectCode": "connection",
    "derive_psk": "connection",
    "HandshakeFailed": "errors", "LocalProtocolError": "errors", "ProtocolError": "errors",
    "RemoteProtocolError": "errors", "UnknownMessageType": "errors",
    "Cipher": "noise",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    if home == "codec":
        from . import codec as module
    elif home == "connection":
        from . import connection as module  # type: ignore[no-redef]
    elif home == "errors":
        from . import errors as module  # type: ignore[no-redef]
    else:
        from . import noise as module  # type: ignore[no-redef]
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "NEED_DATA", "PROTO_MAJOR", "PROTO_MINOR", "BulkReceived", "Cipher", "ConnectionClosed",
    "ConnectionState", "HandshakeComplete", "HandshakeFailed", "LocalProtocolError", "Message",
    "MessageReceived", "PeerConnection", "PeerRejected", "ProtocolError", "RejectCode",
    "RemoteProtocolError", "UnknownMessageType", "decode", "derive_psk", "encode",
]
