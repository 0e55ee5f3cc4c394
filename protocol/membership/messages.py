"""The overlay's messages: frozen dataclasses with a msgpack-able wire form.

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
from typing import Any, ClassVar, TypeVar

import msgpack

from ..codec import unpack_limited
from ..errors import LocalProtocolError, RemoteProtocolError, UnknownMessageType
from ..framing import MAX_CONTROL
from .entries import Member, members_from_wire
from .wire import (
    BUCKET_HASH,
    MAX_BUCKETS,
    MAX_ENTRIES,
    MAX_IDS,
    MAX_INT,
    MAX_PATH,
    MAX_PAYLOAD,
    MAX_SAMPLE,
    MAX_TTL,
    as_addresses,
    as_bool,
    as_bytes,
    as_dict,
    as_int,
    as_list,
    as_msg_id,
    as_str,
    as_uuid,
    field,
)

Contact = tuple[str, tuple[str, ...]]  #: (uuid, addresses) in a shuffle sample
KIND_MEMBERS = "m"  #: a Gossip carrying member entries
KIND_APP = "a"  #: a Gossip carrying an application payload for every node
KIND_RELAY = "r"  #: a Gossip flooding a payload for one node (``dst``)
_KINDS = (KIND_MEMBERS, KIND_APP, KIND_RELAY)
M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}


class Message:
    """Base of the overlay's messages."""

    TYPE: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The msgpack-able fields (without the type)."""
        return {}

    @classmethod
    def read(cls: type[M], obj: dict[str, Any]) -> M:
        """Build from a peer's checked map; subclasses with fields override."""
        return cls()

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-able form ``{"t": TYPE, **fields}``."""
        return {"t": self.TYPE, **self.fields()}


def register(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` decodable by ``decode``."""
    if not cls.TYPE or cls.TYPE in _REGISTRY:
        raise LocalProtocolError(f"overlay message type {cls.TYPE!r} is empty or taken")
    _REGISTRY[cls.TYPE] = cls
    return cls


def decode(obj: Any) -> Message:
    """A peer's map as a message; RemoteProtocolError if anything is off."""
    env = as_dict(obj, "overlay message")
    t = env.get("t")
    if not isinstance(t, str):
        raise RemoteProtocolError("overlay message has no type")
    cls = _REGISTRY.get(t)
    if cls is None:
        raise UnknownMessageType(t)
    return cls.read(env)


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


# -- Plumtree ----------------------------------------------------------------------


@register
@dataclass(frozen=True)
class Gossip(Message):
    """A broadcast on a tree link: member entries (``kind`` "m", ``by`` the node that
    suspects them if it is a suspicion, ``refused`` if its dial was refused), an
    application payload ("a"), or a payload for the one node ``dst`` flooded
    because no route to it was known ("r")."""

    TYPE = "gsp"
    msg_id: bytes
    origin: str
    round: int
    kind: str
    data: bytes = b""
    entries: tuple[Member, ...] = ()
    by: str = ""
    dst: str = ""
    refused: bool = False

    def fields(self) -> dict[str, Any]:
        return {"id": self.msg_id, "origin": self.origin, "round": self.round,
                "kind": self.kind, "data": self.data,
                "entries": [e.to_wire() for e in self.entries], "by": self.by, "dst": self.dst,
                "refused": self.refused}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Gossip:
        w = cls.TYPE
        kind = as_str(field(obj, "kind", w), "gsp.kind", 1)
        if kind not in _KINDS:
            raise RemoteProtocolError(f"gsp.kind {kind!r} is none of {_KINDS}")
        msg = cls(
            msg_id=as_msg_id(field(obj, "id", w), "gsp.id"),
            origin=as_uuid(field(obj, "origin", w), "gsp.origin"),
            round=as_int(field(obj, "round", w), "gsp.round", 0, 1 << 16),
            kind=kind,
            data=as_bytes(obj.get("data", b""), "gsp.data", MAX_PAYLOAD),
            entries=members_from_wire(obj.get("entries", []), "gsp.entries", MAX_ENTRIES),
            by=as_str(obj.get("by", ""), "gsp.by", 64),
            dst=as_str(obj.get("dst", ""), "gsp.dst", 64),
            refused=as_bool(obj.get("refused", False), "gsp.refused"),
        )
        if (kind == KIND_MEMBERS) != bool(msg.entries) or (kind == KIND_RELAY) != bool(msg.dst):
            raise RemoteProtocolError(f"gsp of kind {kind!r} has the wrong fields filled")
        return msg


def _id_round(v: Any, where: str) -> tuple[bytes, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise RemoteProtocolError(f"{where} is not [id, round]")
    return (as_msg_id(v[0], f"{where}.id"), as_int(v[1], f"{where}.round", 0, 1 << 16))


@register
@dataclass(frozen=True)
class IHave(Message):
    """Lazy push: the sender holds these broadcasts (id, round)."""

    TYPE = "ihave"
    items: tuple[tuple[bytes, int], ...]

    def fields(self) -> dict[str, Any]:
        return {"items": [[i, r] for i, r in self.items]}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> IHave:
        return cls(tuple(as_list(field(obj, "items", cls.TYPE), "ihave.items", MAX_IDS, _id_round)))


@register
@dataclass(frozen=True)
class Graft(Message):
    """Send me these broadcasts, and make our link a tree link again."""

    TYPE = "graft"
    ids: tuple[bytes, ...]

    def fields(self) -> dict[str, Any]:
        return {"ids": list(self.ids)}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Graft:
        return cls(tuple(as_list(field(obj, "ids", cls.TYPE), "graft.ids", MAX_IDS, as_msg_id)))


@register
@dataclass(frozen=True)
class Prune(Message):
    """A duplicate came over our link: make it a lazy link."""

    TYPE = "prune"


# -- anti-entropy and relay --------------------------------------------------------


@register
@dataclass(frozen=True)
class SyncHash(Message):
    """Anti-entropy: the hash of each bucket of the sender's member list."""

    TYPE = "sync"
    buckets: tuple[bytes, ...]

    def fields(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets)}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> SyncHash:
        return cls(tuple(as_list(field(obj, "buckets", cls.TYPE), "sync.buckets", MAX_BUCKETS,
                                 lambda v, w: as_bytes(v, w, BUCKET_HASH, min_len=BUCKET_HASH))))


@register
@dataclass(frozen=True)
class SyncEntries(Message):
    """Anti-entropy: the sender's entries of ``buckets``; ``reply`` asks for ours back."""

    TYPE = "sync_e"
    entries: tuple[Member, ...]
    buckets: tuple[int, ...]
    reply: bool

    def fields(self) -> dict[str, Any]:
        return {"entries": [e.to_wire() for e in self.entries],
                "buckets": list(self.buckets), "reply": self.reply}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> SyncEntries:
        w = cls.TYPE
        return cls(members_from_wire(field(obj, "entries", w), "sync_e.entries", MAX_ENTRIES),
                   tuple(as_list(field(obj, "buckets", w), "sync_e.buckets", MAX_BUCKETS,
                                 lambda v, x: as_int(v, x, 0, MAX_BUCKETS - 1))),
                   as_bool(field(obj, "reply", w), "sync_e.reply"))


@register
@dataclass(frozen=True)
class Relay(Message):
    """A payload from ``src`` for ``dst``, forwarded hop by hop along learnt routes."""

    TYPE = "relay"
    msg_id: bytes
    src: str
    dst: str
    ttl: int
    data: bytes

    def fields(self) -> dict[str, Any]:
        return {"id": self.msg_id, "src": self.src, "dst": self.dst, "ttl": self.ttl,
                "data": self.data}

    @classmethod
    def read(cls, obj: dict[str, Any]) -> Relay:
        w = cls.TYPE
        return cls(as_msg_id(field(obj, "id", w), "relay.id"),
                   as_uuid(field(obj, "src", w), "relay.src"),
                   as_uuid(field(obj, "dst", w), "relay.dst"),
                   as_int(field(obj, "ttl", w), "relay.ttl", 0, MAX_TTL),
                   as_bytes(field(obj, "data", w), "relay.data", MAX_PAYLOAD))
