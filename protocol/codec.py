"""msgpack codec for control messages, with hard limits.

Every message is a frozen dataclass registered under a wire type name.  On
the wire it is a map ``{"v": major, "t": type, "id": request id, **fields}``.
Decoding ignores unknown keys (additive evolution within a major), fills
missing optional fields with their defaults, and checks each field's type
against the dataclass annotation.

msgpack object-count bombs are real: 2 MiB can hold 2 million empty maps,
about 130 MB of Python dicts.  Besides the per-container length limits the
decoder counts containers through msgpack's hooks and aborts past
``MAX_CONTAINERS``.  Declared-length bombs are real too: msgpack allocates an
array's slots (up to about 10,000) the moment it reads the array's header, so
5 KiB of nested headers each declaring 200,000 items, with no items after
them, cost 76 MB before the data runs out.  So the decoder first checks,
without building anything, that the data is one whole object: then every
declared item is present, a byte at least, and memory stays a small multiple
of the frame size.  Nesting is limited to ``MAX_DEPTH``: msgpack reads 1,000
levels but writes back only 511, and Python's repr and == recurse, so a value
nested deeper could be received but not stored, passed on or named in an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError, UnknownMessageType, shown
from .framing import MAX_CONTROL

#: Wire major version: a change here means nodes cannot talk at all.
PROTO_MAJOR = 1
#: Wire minor version: additions only.
PROTO_MINOR = 0

MAX_STR = 1 << 20
MAX_BIN = 1 << 20
MAX_ARRAY = 200_000
MAX_MAP = 20_000
MAX_CONTAINERS = 50_000
MAX_DEPTH = 100


class Message:
    """Base of every wire message; subclasses are frozen dataclasses."""

    TYPE: ClassVar[str] = ""


M = TypeVar("M", bound=type[Message])
_REGISTRY: dict[str, type[Message]] = {}
_CHECKERS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {}
_RESERVED = frozenset({"v", "t", "id"})


def register(cls: M) -> M:
    """Class decorator: make ``cls`` (a frozen dataclass) a wire message."""
    if not cls.TYPE or cls.TYPE in _REGISTRY:
        raise LocalProtocolError(f"message type {cls.TYPE!r} is empty or registered twice")
    hints = typing.get_type_hints(cls)
    checks = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in _RESERVED:
            raise LocalProtocolError(f"field name {f.name!r} is reserved by the envelope")
        checks[f.name] = (_checker(hints[f.name]), str(hints[f.name]))
    _REGISTRY[cls.TYPE] = cls
    _CHECKERS[cls.TYPE] = checks
    return cls


def _checker(tp: Any) -> Callable[[Any], bool]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda v: True
    if tp is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if tp in (str, bytes, bool):
        return lambda v: isinstance(v, tp)
    if tp is type(None):
        return lambda v: v is None
    if origin in (Union, types.UnionType):
        subs = [_checker(a) for a in args]
        return lambda v: any(c(v) for c in subs)
    if origin is list:
        item = _checker(args[0]) if args else (lambda v: True)
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is dict:
        key = _checker(args[0]) if args else (lambda v: True)
        val = _checker(args[1]) if args else (lambda v: True)
        return lambda v: isinstance(v, dict) and all(key(k) and val(x) for k, x in v.items())
    raise LocalProtocolError(f"unsupported field type {tp!r}")


def encode(msg: Message, req_id: int = 0) -> bytes:
    """Encode ``msg`` in its envelope; refuses a message over the control limit."""
    cls = type(msg)
    if _REGISTRY.get(cls.TYPE) is not cls:
        raise LocalProtocolError(f"{cls.__name__} is not a registered message")
    env: dict[str, Any] = {"v": PROTO_MAJOR, "t": cls.TYPE, "id": req_id}
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        env[f.name] = getattr(msg, f.name)
    try:
        data: bytes = msgpack.packb(env, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {cls.TYPE}: {exc}") from None
    if len(data) > MAX_CONTROL:
        raise LocalProtocolError(f"{cls.TYPE} encodes to {len(data)} bytes; the limit is {MAX_CONTROL}")
    return data


def _check_whole(data: bytes) -> None:
    """Refuse ``data`` unless it is exactly one complete msgpack object; builds nothing."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        raise RemoteProtocolError("malformed msgpack: the data ends inside an object") from None
    if unpacker.tell() != len(data):
        raise RemoteProtocolError("malformed msgpack: extra data after the object")


def _check_depth(root: Any) -> None:
    """Refuse a tree nested deeper than ``MAX_DEPTH`` (map keys are never containers)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RemoteProtocolError(f"message nests maps and arrays deeper than {MAX_DEPTH}")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def unpack_limited(data: bytes) -> Any:
    """msgpack-decode ``data`` under the module's limits; ProtocolError otherwise."""
    count = 0

    def hook(obj: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_CONTAINERS:
            raise RemoteProtocolError(f"message holds more than {MAX_CONTAINERS} maps and arrays")
        return obj

    try:
        _check_whole(data)
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_hook=hook,
            list_hook=hook,
            max_str_len=MAX_STR,
            max_bin_len=MAX_BIN,
            max_array_len=MAX_ARRAY,
            max_map_len=MAX_MAP,
            max_ext_len=0,
        )
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if count > MAX_DEPTH:  # fewer containers cannot nest deeper: no walk for most messages
        _check_depth(value)
    return value


def decode(data: bytes) -> tuple[Message, int]:
    """Decode one envelope into (message, request id)."""
    if len(data) > MAX_CONTROL:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the limit of {MAX_CONTROL}")
    env = unpack_limited(data)
    if not isinstance(env, dict):
        raise RemoteProtocolError("message envelope is not a map")
    v, t, req_id = env.get("v"), env.get("t"), env.get("id", 0)
    if type(v) is not int or v != PROTO_MAJOR:  # True == 1 and 1.0 == 1 are not majors
        raise RemoteProtocolError(f"message of protocol major {shown(v)}; this node speaks {PROTO_MAJOR}")
    if not isinstance(t, str):
        raise RemoteProtocolError("message envelope has no type")
    if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id < 1 << 63:
        raise RemoteProtocolError("message envelope has a bad request id")
    cls = _REGISTRY.get(t)
    if cls is None:
        raise UnknownMessageType(t)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in env:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RemoteProtocolError(f"{t} lacks field {f.name!r}")
            continue
        value = env[f.name]
        check, expected = _CHECKERS[t][f.name]
        if not check(value):
            raise RemoteProtocolError(f"{t}.{f.name} is not {expected}")
        kwargs[f.name] = value
    return cls(**kwargs), req_id


def message_types() -> dict[str, type[Message]]:
    """A copy of the registry: wire type name -> class."""
    return dict(_REGISTRY)
