"""The dissemination messages: Plumtree's (Gossip, IHave, Graft, Prune),
anti-entropy's (SyncHash, SyncEntries) and Relay.  Same conventions as
``messages``: frozen dataclasses, ``to_wire()``, every field checked in
``read``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RemoteProtocolError
from .entries import Member, members_from_wire
from .wire import (
    BUCKET_HASH,
    MAX_BUCKETS,
    MAX_ENTRIES,
    MAX_IDS,
    MAX_PAYLOAD,
    MAX_TTL,
    Message,
    as_bool,
    as_bytes,
    as_int,
    as_list,
    as_msg_id,
    as_str,
    as_uuid,
    field,
    register,
)

KIND_MEMBERS = "m"  #: a Gossip carrying member entries
KIND_APP = "a"  #: a Gossip carrying an application payload for every node
KIND_RELAY = "r"  #: a Gossip flooding a payload for one node (``dst``)
_KINDS = (KIND_MEMBERS, KIND_APP, KIND_RELAY)


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
