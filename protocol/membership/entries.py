"""Member entries: what every node knows of every other, and which of two
entries about one member is the newer.

An entry is ``(uuid, incarnation, state, addresses, meta)``.  Only the member
itself raises its incarnation (to refute a suspicion, to change its metadata,
or at a restart), so the order below lets every node merge entries it hears
in any order and end with the same one (SWIM's rules):

    key(entry) = (incarnation, rank(state))     rank: ALIVE < SUSPECT < DEAD < LEFT

the greater key wins.  So ``SUSPECT(i)`` beats ``ALIVE(i)``, ``DEAD(i)`` beats
``SUSPECT(i)``, and only the member's own ``ALIVE(i + 1)`` beats any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from ..errors import RemoteProtocolError
from .wire import (
    MAX_INT,
    MAX_NAME,
    MAX_SHORT,
    MAX_UUID,
    as_addresses,
    as_int,
    as_list,
    as_str,
    as_uuid,
)


class State(IntEnum):
    """A member's state; the value is its rank in the merge order."""

    #: Heard from, directly or by gossip, and not suspected since.
    ALIVE = 0
    #: A neighbour lost its session to it and could not reach it; still ONLINE.
    SUSPECT = 1
    #: The suspicion ran out without a refutation; OFFLINE until it comes back.
    DEAD = 2
    #: It said goodbye (shutdown); OFFLINE until it comes back.
    LEFT = 3

    @property
    def online(self) -> bool:
        """ALIVE and SUSPECT members are ONLINE (a suspect may still refute)."""
        return self <= State.SUSPECT


@dataclass(frozen=True)
class Meta:
    """Small facts every node needs about every member (changing one means a
    new incarnation, so keep it to what rarely changes)."""

    name: str = ""
    build_id: str = ""
    arch: str = ""
    server_priority: int = 0
    term: int = 0
    capabilities: str = ""  #: a digest of the renderers it offers
    sharing: bool = True
    server: str = ""  #: the server it obeys (itself: it claims the role for ``term``)

    def to_wire(self) -> list[Any]:
        """Msgpack-able form."""
        return [self.name, self.build_id, self.arch, self.server_priority, self.term,
                self.capabilities, self.sharing, self.server]

    @classmethod
    def from_wire(cls, obj: Any, where: str = "meta") -> Meta:
        """Read a peer's Meta; RemoteProtocolError if any field is off."""
        if not isinstance(obj, list) or len(obj) < 7:
            raise RemoteProtocolError(f"{where} is not a list of 7 fields")
        sharing = obj[6]
        if type(sharing) is not bool:
            raise RemoteProtocolError(f"{where}.sharing is not a boolean")
        return cls(
            name=as_str(obj[0], f"{where}.name", MAX_NAME),
            build_id=as_str(obj[1], f"{where}.build_id", MAX_SHORT),
            arch=as_str(obj[2], f"{where}.arch", MAX_SHORT),
            server_priority=as_int(obj[3], f"{where}.server_priority", -(1 << 31), 1 << 31),
            term=as_int(obj[4], f"{where}.term"),
            capabilities=as_str(obj[5], f"{where}.capabilities", MAX_SHORT),
            sharing=sharing,
            server=as_str(obj[7], f"{where}.server", MAX_UUID) if len(obj) > 7 else "",
        )


@dataclass(frozen=True)
class Member:
    """One member as a node knows it."""

    uuid: str
    incarnation: int
    state: State = State.ALIVE
    addresses: tuple[str, ...] = ()  #: "host:port" it accepts sessions on
    meta: Meta = field(default_factory=Meta)

    @property
    def key(self) -> tuple[int, int]:
        """The merge order: the greater key is the newer entry."""
        return (self.incarnation, int(self.state))

    def newer_than(self, other: Member | None) -> bool:
        """Whether this entry replaces ``other`` (an entry about the same member)."""
        return other is None or self.key > other.key

    def with_state(self, state: State, incarnation: int | None = None) -> Member:
        """A copy in ``state`` (at ``incarnation`` if given)."""
        inc = self.incarnation if incarnation is None else incarnation
        return replace(self, state=state, incarnation=inc)

    def to_wire(self) -> list[Any]:
        """Msgpack-able form: ``[uuid, incarnation, state, addresses, meta]``."""
        return [self.uuid, self.incarnation, int(self.state), list(self.addresses),
                self.meta.to_wire()]

    @classmethod
    def from_wire(cls, obj: Any, where: str = "member") -> Member:
        """Read a peer's entry; RemoteProtocolError if any field is off."""
        if not isinstance(obj, list) or len(obj) < 5:
            raise RemoteProtocolError(f"{where} is not a list of 5 fields")
        return cls(
            uuid=as_uuid(obj[0], f"{where}.uuid"),
            incarnation=as_int(obj[1], f"{where}.incarnation", 0, MAX_INT),
            state=State(as_int(obj[2], f"{where}.state", 0, len(State) - 1)),
            addresses=as_addresses(obj[3], f"{where}.addresses"),
            meta=Meta.from_wire(obj[4], f"{where}.meta"),
        )


def members_from_wire(obj: Any, where: str, max_len: int) -> tuple[Member, ...]:
    """A list of entries, each checked."""
    return tuple(as_list(obj, where, max_len, Member.from_wire))
