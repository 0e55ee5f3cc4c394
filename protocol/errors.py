"""The protocol's one error hierarchy, typed by whose fault it is.

``LocalProtocolError``: this side misused the API (sent before the handshake
finished, oversize message from our own code).  ``RemoteProtocolError``: the
peer sent something we refuse.  Both carry a ``reason`` a human can act on.
"""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel = 3


def shown(value: Any) -> str:
    """A peer's value as an error reason names it: a short repr, never the whole
    megabyte a peer sent (reasons end up in logs and in replies)."""
    return _SHORT.repr(value)


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
        super().__init__(f"unknown message type {shown(type_name)}")
        self.type_name = type_name
