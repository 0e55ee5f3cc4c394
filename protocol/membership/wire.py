"""The base of the overlay's messages, typed checks for fields that come from
a peer, and the wire limits.

Every ``from_wire`` in this package reads a peer's msgpack-decoded object
through these helpers: each checks the type *and* the bound of one field and
raises ``RemoteProtocolError`` naming the field, so a malformed or oversize
message is refused with a reason and never reaches the state machines.
(``bool`` is not an ``int`` here, and ``1.0`` is not an ``int`` either.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ..errors import LocalProtocolError, RemoteProtocolError

T = TypeVar("T")
M = TypeVar("M", bound="Message")
REGISTRY: dict[str, type[Message]] = {}  #: wire type -> class (messages.decode reads it)

MAX_UUID = 64  #: characters of a node uuid
MAX_ADDRESSES = 8  #: addresses one member advertises
MAX_ADDRESS = 256  #: characters of one "host:port"
MAX_NAME = 256
MAX_SHORT = 128  #: build id, arch, capabilities digest
MAX_ENTRIES = 4096  #: member entries in one message
MAX_IDS = 4096  #: message ids in one IHave or Graft
MAX_MSG_ID = 32  #: bytes of a broadcast's id
MAX_PAYLOAD = 768 << 10  #: bytes of an application payload (a session record is <= 1 MiB)
MAX_TTL = 64
MAX_PATH = 16  #: hops a shuffle walk records
MAX_SAMPLE = 64  #: contacts in a shuffle sample
MAX_BUCKETS = 256
BUCKET_HASH = 8  #: bytes of one anti-entropy bucket hash
MAX_INT = (1 << 63) - 1


def field(obj: dict[str, Any], key: str, where: str) -> Any:
    """``obj[key]``, or a RemoteProtocolError naming what is missing."""
    try:
        return obj[key]
    except KeyError:
        raise RemoteProtocolError(f"{where} lacks field {key!r}") from None


def as_dict(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a map with string keys."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise RemoteProtocolError(f"{where} is not a map")
    return obj


def as_int(value: Any, where: str, lo: int = 0, hi: int = MAX_INT) -> int:
    """An ``int`` (not a bool) within ``[lo, hi]``."""
    if type(value) is not int or not lo <= value <= hi:
        raise RemoteProtocolError(f"{where} is not an integer in [{lo}, {hi}]")
    return value


def as_bool(value: Any, where: str) -> bool:
    """A ``bool``."""
    if type(value) is not bool:
        raise RemoteProtocolError(f"{where} is not a boolean")
    return value


def as_str(value: Any, where: str, max_len: int, *, empty: bool = True) -> str:
    """A ``str`` of at most ``max_len`` characters (non-empty unless ``empty``)."""
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value):
        raise RemoteProtocolError(f"{where} is not a string of 1-{max_len} characters"
                                  if not empty else f"{where} is not a string of <= {max_len} characters")
    return value


def as_uuid(value: Any, where: str) -> str:
    """A node uuid: a non-empty short string."""
    return as_str(value, where, MAX_UUID, empty=False)


def as_bytes(value: Any, where: str, max_len: int, *, min_len: int = 0) -> bytes:
    """``bytes`` of ``min_len`` to ``max_len`` bytes."""
    if not isinstance(value, bytes) or not min_len <= len(value) <= max_len:
        raise RemoteProtocolError(f"{where} is not {min_len}-{max_len} bytes")
    return value


def as_list(value: Any, where: str, max_len: int, item: Callable[[Any, str], T]) -> list[T]:
    """A list of at most ``max_len`` items, each read by ``item``."""
    if not isinstance(value, (list, tuple)) or len(value) > max_len:
        raise RemoteProtocolError(f"{where} is not a list of <= {max_len} items")
    return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]


def as_addresses(value: Any, where: str) -> tuple[str, ...]:
    """A member's "host:port" addresses."""
    return tuple(as_list(value, where, MAX_ADDRESSES,
                         lambda v, w: as_str(v, w, MAX_ADDRESS, empty=False)))


def as_msg_id(value: Any, where: str) -> bytes:
    """A broadcast's id: 1 to ``MAX_MSG_ID`` bytes."""
    return as_bytes(value, where, MAX_MSG_ID, min_len=1)


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
    if not cls.TYPE or cls.TYPE in REGISTRY:
        raise LocalProtocolError(f"overlay message type {cls.TYPE!r} is empty or taken")
    REGISTRY[cls.TYPE] = cls
    return cls
