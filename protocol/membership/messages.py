"""The overlay's messages: frozen dataclasses with a msgpack-able wire form.
This module holds HyParView's and failure detection's, re-exports the
dissemination ones (``gossip``), and decodes them all.

Every one rides an authenticated session (node/session.py), so the sender is
the session's verified uuid; ``from_uuid`` is never taken from the message.
``to_wire()`` gives a map ``{"t": type, **fields}``; ``decode(obj)`` reads a
peer's map back, checking every field's type and bound, and raises
``RemoteProtocolError`` for anything malformed or oversize (unknown keys are
ignored, as in ``protocol.codec``).  ``pack``/``unpack`` add msgpack under the
codec's limits for callers that carry the overlay as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ..codec import unpack_limited
from ..errors import LocalProtocolError, RemoteProtocolError, UnknownMessageType
from ..framing import MAX_CONTROL
from .entries import Member
from .gossip import (
    KIND_APP,
    KIND_MEMBERS,
    KIND_RELAY,
    Gossip,
    Graft,
    IHave,
    Prune,
    Relay,
    SyncEntries,
    SyncHash,
)
from .wire import (
    MAX_INT,
    MAX_PATH,
    MAX_SAMPLE,
    MAX_TTL,
    REGISTRY,
    Message,
    as_addresses,
    as_bool,
    as_dict,
    as_int,
    as_list,
    as_uuid,
    field,
    register,
)

__all__ = [
    "KIND_APP", "KIND_MEMBERS", "KIND_RELAY", "Ack", "Contact", "Disconnect", "ForwardJoin",
    "Gossip", "Graft", "IHave", "Join", "Message", "Neighbor", "NeighborReply", "Ping",
    "PingReq", "PingReqResult", "Prune", "Relay", "Shuffle", "ShuffleReply", "SyncEntries",
    "SyncHash", "decode", "message_types", "pack", "unpack",
]

Contact = tuple[str, tuple[str, ...]]  #: (uuid, addresses) in a shuffle sample


def decode(obj: Any) -> Message:
    """A peer's map as a message; RemoteProtocolError if anything is off."""
    env = as_dict(obj, "overlay message")
    t = env.get("t")
    if not isinstance(t, str):
        raise RemoteProtocolError("overlay message has no type")
    cls = REGISTRY.get(t)
    if cls is None:
        raise UnknownMessageType(t)
    return cls.read(env)


def message_types() -> dict[str, type[Message]]:
    """A copy of the registry: wire type -> class."""
    return dict(REGISTRY)


def pack(msg: Message) -> bytes:
    """``msg`` as msgpack bytes (LocalProtocolError past the control limit)."""
    data: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    if len(data) > MAX_CONTROL:
        raise LocalProtocolError(f"{msg.TYPE} packs to {len(data)} bytes; the limit is {MAX_CONTROL}")
    return data


def unpack(data: bytes) -> Message:
    """msgpack bytes from a peer as a message, under the codec's limits."""
    if len(data) > MAX_CONTROL:
        raise RemoteProtocolError(f"overlay message of {len(data)} bytes is over the limit")
    return decode(unpack_limited(data))


def _member(obj: dict[str, Any], key: str, where: str) -> Member:
    return Member.from_wire(field(obj, key, where), f"{where}.{key}")


def _contact(v: Any, where: str) -> Contact:
    if not isinstance(v, list) or len(v) != 2:
        raise RemoteProtocolError(f"{where} is not [uuid, addresses]")
    return (as_uuid(v[0], f"{where}.uuid"), as_addresses(v[1], f"{where}.addresses"))


def _path(v: Any, where: str) -> tuple[str, ...]:
    return tuple(as_list(v, where, MAX_PATH, as_uuid))


def _nonce(obj: dict[str, Any], where: str) -> int:
    return as_int(field(obj, "nonce", where), f"{where}.nonce", 0, MAX_INT)


# -- HyParView ---------------------------------------------------------------------


@register
@dataclass(frozen=True)
class Join(Message):
    """A new node asks the receiver (its contact) to take it into the overlay."""

    TYPE = "join"
    member: Member

    def fields(self) -> dict[str, Any]:
        return {"member": self.member.to_wire()}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Join:
        return cls(_member(obj, "member", cls.TYPE))


@register
@dataclass(frozen=True)
class ForwardJoin(Message):
    """A random walk announcing ``member``; where it ends, a node links to it."""

    TYPE = "fjoin"
    member: Member
    ttl: int

    def fields(self) -> dict[str, Any]:
        return {"member": self.member.to_wire(), "ttl": self.ttl}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> ForwardJoin:
        return cls(_member(obj, "member", cls.TYPE),
                   as_int(field(obj, "ttl", cls.TYPE), "fjoin.ttl", 0, MAX_TTL))


@register
@dataclass(frozen=True)
class Neighbor(Message):
    """Take me into your active view (``high``: even if it is full)."""

    TYPE = "nbr"
    member: Member
    high: bool

    def fields(self) -> dict[str, Any]:
        return {"member": self.member.to_wire(), "high": self.high}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Neighbor:
        return cls(_member(obj, "member", cls.TYPE),
                   as_bool(field(obj, "high", cls.TYPE), "nbr.high"))


@register
@dataclass(frozen=True)
class NeighborReply(Message):
    """Answer to Join or Neighbor: whether the sender took us into its active view."""

    TYPE = "nbr_re"
    member: Member
    accept: bool

    def fields(self) -> dict[str, Any]:
        return {"member": self.member.to_wire(), "accept": self.accept}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> NeighborReply:
        return cls(_member(obj, "member", cls.TYPE),
                   as_bool(field(obj, "accept", cls.TYPE), "nbr_re.accept"))


@register
@dataclass(frozen=True)
class Disconnect(Message):
    """The sender took the receiver out of its active view (on purpose: no suspicion)."""

    TYPE = "disc"


@register
@dataclass(frozen=True)
class Shuffle(Message):
    """A walk carrying a sample of the origin's views; ``path`` leads back (origin first)."""

    TYPE = "shuf"
    nonce: int
    ttl: int
    sample: tuple[Contact, ...]
    path: tuple[str, ...]

    def fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "ttl": self.ttl, "path": list(self.path),
                "sample": [[u, list(a)] for u, a in self.sample]}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Shuffle:
        w = cls.TYPE
        return cls(_nonce(obj, w), as_int(field(obj, "ttl", w), "shuf.ttl", 0, MAX_TTL),
                   tuple(as_list(field(obj, "sample", w), "shuf.sample", MAX_SAMPLE, _contact)),
                   _path(field(obj, "path", w), "shuf.path"))


@register
@dataclass(frozen=True)
class ShuffleReply(Message):
    """The walk's end answers with a sample of its passive view, back along ``path``."""

    TYPE = "shuf_re"
    nonce: int
    sample: tuple[Contact, ...]
    path: tuple[str, ...]

    def fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "path": list(self.path),
                "sample": [[u, list(a)] for u, a in self.sample]}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> ShuffleReply:
        w = cls.TYPE
        return cls(_nonce(obj, w),
                   tuple(as_list(field(obj, "sample", w), "shuf_re.sample", MAX_SAMPLE, _contact)),
                   _path(field(obj, "path", w), "shuf_re.path"))


# -- failure detection -------------------------------------------------------------


def _optional_member(obj: dict[str, Any], where: str) -> Member | None:
    value = obj.get("suspect")
    return None if value is None else Member.from_wire(value, f"{where}.suspect")


@register
@dataclass(frozen=True)
class PingReq(Message):
    """Check ``target`` for me (I lost my session to it); tell it ``suspect`` if reached."""

    TYPE = "preq"
    target: str
    nonce: int
    suspect: Member | None = None

    def fields(self) -> dict[str, Any]:
        return {"target": self.target, "nonce": self.nonce,
                "suspect": None if self.suspect is None else self.suspect.to_wire()}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> PingReq:
        return cls(as_uuid(field(obj, "target", cls.TYPE), "preq.target"),
                   _nonce(obj, cls.TYPE), _optional_member(obj, cls.TYPE))


@register
@dataclass(frozen=True)
class Ping(Message):
    """Answer with Ack(nonce); ``suspect`` is news about the receiver to refute."""

    TYPE = "ping"
    nonce: int
    suspect: Member | None = None

    def fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce,
                "suspect": None if self.suspect is None else self.suspect.to_wire()}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Ping:
        return cls(_nonce(obj, cls.TYPE), _optional_member(obj, cls.TYPE))


@register
@dataclass(frozen=True)
class Ack(Message):
    """Answer to Ping."""

    TYPE = "ack"
    nonce: int

    def fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Ack:
        return cls(_nonce(obj, cls.TYPE))


@register
@dataclass(frozen=True)
class PingReqResult(Message):
    """Answer to PingReq: whether the helper reached ``target``."""

    TYPE = "pres"
    target: str
    nonce: int
    alive: bool

    def fields(self) -> dict[str, Any]:
        return {"target": self.target, "nonce": self.nonce, "alive": self.alive}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> PingReqResult:
        w = cls.TYPE
        return cls(as_uuid(field(obj, "target", w), "pres.target"), _nonce(obj, w),
                   as_bool(field(obj, "alive", w), "pres.alive"))
