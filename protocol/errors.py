"""The protocol's one error hierarchy, typed by whose fault it is.

``LocalProtocolError``: this side misused the API (sent before the handshake
finished, oversize message from our own code).  ``RemoteProtocolError``: the
peer sent something we refuse.  Both carry a ``reason`` a human can act on.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by ``protocol``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """This side used the API wrongly; the peer did nothing wrong."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message this side refuses."""


class HandshakeFailed(RemoteProtocolError):
    """The Noise handshake failed: wrong token, foreign farm, tampering or downgrade."""


class UnknownMessageType(RemoteProtocolError):
    """A well-formed envelope named a message type this build does not know."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown message type {type_name!r}")
        self.type_name = type_name
