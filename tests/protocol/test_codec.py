"""The msgpack codec: every message round-trips, the envelope is checked,
and object-count bombs are refused cheaply (memory measured, not guessed)."""

from __future__ import annotations

import dataclasses
import tracemalloc
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Cipher,
    LocalProtocolError,
    RemoteProtocolError,
    UnknownMessageType,
    codec,
    crdt,
    derive_psk,
)
from protocol.codec import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    PROTO_MAJOR,
    Message,
    decode,
    encode,
    message_types,
)
from protocol.connection import MAGIC, ConnectionState, prologue
from protocol.framing import HEADER, HEADER_SIZE, MAX_CONTROL, RecordDecoder
from protocol.messages import Call, Heartbeat, Hello
from protocol.noise import XXpsk3
from tests.harness.sansio_pair import FARM, feed, make_pair, open_pair

PEAK_LIMIT = 16 * 1024 * 1024

# -- strategies built from each message's annotations --------------------------

_int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
_scalars = st.none() | st.booleans() | _int64 | st.text(max_size=20) | st.binary(max_size=20) | (
    st.floats(allow_nan=False)
)
_any = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the annotated field type ``tp`` that msgpack round-trips."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _any
    if tp is int:
        return _int64
    if tp is str:
        return st.text(max_size=30)
    if tp is bool:
        return st.booleans()
    if tp is bytes:
        return st.binary(max_size=30)
    if tp is float:
        return st.floats(allow_nan=False)
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=5)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=5)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of([strategy_for(a) for a in args])
    if tp is type(None):
        return st.none()
    raise AssertionError(f"no strategy for {tp!r}; extend strategy_for")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


def envelope(t: str = "hb", **fields: Any) -> bytes:
    env: dict[str, Any] = {"v": PROTO_MAJOR, "t": t, "id": 1}
    env.update(fields)
    return msgpack.packb(env, use_bin_type=True)  # type: ignore[no-any-return]


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Measure the peak of traced allocations inside the block (bytes)."""
    result: list[int] = []
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


# -- round trips ---------------------------------------------------------------


def test_registry_holds_the_peer_and_control_messages() -> None:
    assert {"hello", "verdict", "hb", "bye", "dialback", "dialback_result", "call", "reply",
            "error", "event"} <= set(message_types())


@pytest.mark.parametrize("type_name", sorted(message_types()))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), req_id=st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_every_registered_message_round_trips(type_name: str, data: st.DataObject, req_id: int) -> None:
    cls = message_types()[type_name]
    msg = data.draw(message_strategy(cls))
    assert decode(encode(msg, req_id)) == (msg, req_id)


def test_optional_fields_take_their_defaults_when_absent() -> None:
    msg, req_id = decode(envelope("hb", seq=3))
    assert msg == Heartbeat(seq=3) and req_id == 1


def test_missing_request_id_means_zero() -> None:
    msg, req_id = decode(msgpack.packb({"v": PROTO_MAJOR, "t": "hb", "seq": 1}))
    assert msg == Heartbeat(seq=1) and req_id == 0


def test_unknown_keys_are_ignored() -> None:
    msg, req_id = decode(envelope("hb", seq=5, added_in_minor_7=[1, {"x": b"y"}]))
    assert msg == Heartbeat(seq=5) and req_id == 1


def test_unknown_type_raises_unknown_message_type_naming_it() -> None:
    with pytest.raises(UnknownMessageType) as err:
        decode(envelope("from_the_future", seq=1))
    assert err.value.type_name == "from_the_future"
    assert isinstance(err.value, RemoteProtocolError)


@pytest.mark.parametrize("value", ["five", 5.0, None, True, [5]])
def test_wrong_field_type_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(RemoteProtocolError, match=r"hb\.seq"):
        decode(envelope("hb", seq=value))


def test_wrong_item_type_inside_a_container_field_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match=r"dialback\.addresses"):
        decode(envelope("dialback", addresses=["ok", 5]))
    with pytest.raises(RemoteProtocolError, match=r"hello\.capabilities"):
        decode(envelope("hello", uuid="u", name="n", build_id="b", arch="a", proto_major=1,
                        proto_minor=0, capabilities={"blender": 4}))


def test_missing_required_field_is_refused_naming_it() -> None:
    with pytest.raises(RemoteProtocolError, match="lacks field 'seq'"):
        decode(envelope("hb"))


@pytest.mark.parametrize("env", [[1, "hb", 0], "hb", 7, None, b"bytes"])
def test_envelope_that_is_not_a_map_is_refused(env: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="not a map"):
        decode(msgpack.packb(env))


@pytest.mark.parametrize("major", [0, PROTO_MAJOR + 1, -1, None, "1", True, 1.0])
def test_wrong_or_non_integer_major_is_refused(major: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="major"):
        decode(envelope("hb", v=major, seq=1))


def test_missing_major_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="major"):
        decode(msgpack.packb({"t": "hb", "id": 0, "seq": 1}))


@pytest.mark.parametrize("t", [None, 5, b"hb", ["hb"]])
def test_missing_or_non_string_type_is_refused(t: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="no type"):
        decode(envelope(t, seq=1))


@pytest.mark.parametrize("req_id", [-1, 1 << 63, "1", True, None, 1.5])
def test_bad_request_id_is_refused(req_id: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="request id"):
        decode(envelope("hb", id=req_id, seq=1))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        envelope("hb", seq=1)[:-1],  # truncated
        envelope("hb", seq=1) + b"\xc0",  # extra data
        b"\xc1",  # never-used byte
        msgpack.packb({1: 2}),  # non-string map key
        msgpack.packb(msgpack.ExtType(5, b"x")),  # ext types are not part of the protocol
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
        b"\xa2\xff\xfe",  # invalid UTF-8 in a str
    ],
    ids=["empty", "truncated", "extra", "reserved", "intkey", "ext", "deep", "badutf8"],
)
def test_malformed_msgpack_is_a_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_decode_refuses_data_over_the_control_limit() -> None:
    with pytest.raises(RemoteProtocolError, match=str(MAX_CONTROL)):
        decode(b"\x00" * (MAX_CONTROL + 1))


def test_encode_refuses_a_message_over_the_control_limit() -> None:
    with pytest.raises(LocalProtocolError, match=str(MAX_CONTROL)):
        encode(Call(method="m", args={"blob": b"\x00" * MAX_CONTROL}))


def test_encode_refuses_an_unregistered_message() -> None:
    @dataclasses.dataclass(frozen=True)
    class Rogue(Message):
        TYPE = "hb"
        seq: int

    with pytest.raises(LocalProtocolError, match="not a registered"):
        encode(Rogue(seq=1))


def test_encode_refuses_a_value_msgpack_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(Call(method="m", args={"x": object()}))
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(Heartbeat(seq=1 << 70))


def test_registering_a_reserved_field_name_or_a_duplicate_type_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="reserved"):
        @codec.register
        @dataclasses.dataclass(frozen=True)
        class Bad(Message):
            TYPE = "test_reserved_field"
            id: int

    with pytest.raises(LocalProtocolError, match="registered twice"):
        @codec.register
        @dataclasses.dataclass(frozen=True)
        class Dup(Message):
            TYPE = "hb"
            seq: int

    assert "test_reserved_field" not in message_types()
    assert message_types()["hb"] is Heartbeat


# -- msgpack bombs: refused, and cheaply ----------------------------------------


def maps_bomb_2mib() -> bytes:
    """A 2 MiB msgpack array of 2 million empty maps (~130 MB as Python dicts)."""
    n = 2_000_000
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


def maps_bomb_1mib() -> bytes:
    """About 1 MiB: five arrays of 200 000 empty maps each (each array within
    MAX_ARRAY, so only the container budget can stop it)."""
    inner = b"\xdd" + (200_000).to_bytes(4, "big") + b"\x80" * 200_000
    return b"\xdd" + (5).to_bytes(4, "big") + inner * 5


def test_2mib_bomb_frame_is_refused_by_the_record_decoder_from_its_header_with_little_memory() -> None:
    frame = HEADER.pack(len(maps_bomb_2mib())) + maps_bomb_2mib()
    decoder = RecordDecoder(MAX_CONTROL)
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match=str(MAX_CONTROL)):
        decoder.feed(frame)
    assert peak[0] < PEAK_LIMIT
    assert decoder.buffered <= HEADER_SIZE


def test_2mib_bomb_frame_is_refused_by_an_open_session_with_little_memory() -> None:
    r = open_pair().responder
    frame = HEADER.pack(len(maps_bomb_2mib())) + maps_bomb_2mib()
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match="limit"):
        feed(r, frame)
    assert peak[0] < PEAK_LIMIT
    assert r._decoder.buffered <= HEADER_SIZE
    assert r.state is ConnectionState.ERROR


def test_2mib_bomb_frame_is_refused_during_the_handshake_with_little_memory() -> None:
    r = make_pair().responder
    frame = HEADER.pack(len(maps_bomb_2mib())) + maps_bomb_2mib()
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match="limit"):
        feed(r, frame)
    assert peak[0] < PEAK_LIMIT


def test_1mib_array_of_a_million_empty_maps_is_refused_by_the_container_budget() -> None:
    bomb = maps_bomb_1mib()
    assert len(bomb) <= MAX_CONTROL
    for fn in (codec.unpack_limited, decode):
        with peak_memory() as peak, pytest.raises(RemoteProtocolError, match=str(MAX_CONTAINERS)):
            fn(bomb)
        assert peak[0] < PEAK_LIMIT


def test_1mib_bomb_inside_an_encrypted_control_record_is_refused_with_little_memory() -> None:
    pair = open_pair()
    bomb = maps_bomb_1mib()
    wire = pair.initiator._seal(b"C" + bomb)  # a peer that encrypts a bomb
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match=str(MAX_CONTAINERS)):
        feed(pair.responder, wire)
    assert peak[0] < PEAK_LIMIT


def test_flat_array_longer_than_max_array_is_refused_before_allocation() -> None:
    n = 1_000_000
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match="max_array_len"):
        decode(bomb)
    assert peak[0] < PEAK_LIMIT


def nested_headers_bomb(depth: int, header: bytes = b"\xdd" + (200_000).to_bytes(4, "big")) -> bytes:
    """``depth`` array headers, each declaring 200 000 items, and no items: msgpack
    used to allocate ~10 000 slots per header before noticing the data ends
    (found by bench/fuzz.py: 76 MB for these 5 KB)."""
    return header * depth


@pytest.mark.parametrize("bomb", [
    nested_headers_bomb(1000),
    nested_headers_bomb(1000) + b"\x80" * 1000,  # some items, far from all
    nested_headers_bomb(1600, b"\xdc\xff\xff"),  # array16 headers
    nested_headers_bomb(5000),  # deeper than msgpack's stack
])
def test_nested_headers_declaring_absent_items_are_refused_before_allocation(bomb: bytes) -> None:
    for fn in (codec.unpack_limited, decode):
        with peak_memory() as peak, pytest.raises(RemoteProtocolError, match="malformed msgpack"):
            fn(bomb)
        assert peak[0] < 1 << 20, f"{peak[0] / 2**20:.1f} MiB for {len(bomb)} bytes"


def test_nested_headers_bomb_in_an_unauthenticated_handshake_hint_is_refused_with_little_memory() -> None:
    r = make_pair().responder
    hs = XXpsk3(initiator=True, static=X25519PrivateKey.generate(), psk=derive_psk(b"any", FARM),
                prologue=prologue(PROTO_MAJOR, Cipher.CHACHAPOLY, FARM))
    bomb = nested_headers_bomb(800)  # within the 4 KiB a hint may take
    record = b"H" + MAGIC + bytes([PROTO_MAJOR, Cipher.CHACHAPOLY]) + hs.write_message(bomb)
    with peak_memory() as peak, pytest.raises(RemoteProtocolError, match="malformed msgpack"):
        feed(r, HEADER.pack(len(record)) + record)
    assert peak[0] < 1 << 20, f"{peak[0] / 2**20:.1f} MiB for a {len(record)} byte record"


def nested(depth: int, leaf: Any = 0) -> Any:
    """A value nested ``depth`` arrays deep."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("where", ["v", "args"])
def test_values_nested_deeper_than_max_depth_are_refused(where: str) -> None:
    # found by bench/fuzz.py: a major nested 1,000 deep raised RecursionError naming it,
    # and one nested 600 deep decoded but could not be written back (msgpack packs 511)
    env = {"v": PROTO_MAJOR, "t": "call", "id": 1, "method": "status", "args": {}}
    env[where] = nested(1000) if where == "v" else {"a": nested(600)}
    with pytest.raises(RemoteProtocolError, match=f"deeper than {MAX_DEPTH}"):
        decode(msgpack.packb(env))


def test_values_nested_to_max_depth_decode_and_encode_again() -> None:
    call = Call("status", {"a": nested(MAX_DEPTH - 2)})  # the envelope and args: 2 levels
    assert decode(encode(call, 1)) == (call, 1)
    with pytest.raises(RemoteProtocolError, match="deeper"):
        decode(encode(Call("status", {"a": nested(MAX_DEPTH - 1)}), 1))


def test_errors_name_a_peers_values_briefly() -> None:
    """A reason ends up in a log line or a reply: never the megabyte a peer sent."""
    huge = "x" * 500_000
    for data in (msgpack.packb({"v": huge, "t": "hb", "id": 1}), msgpack.packb({"v": 1, "t": huge, "id": 1})):
        with pytest.raises(RemoteProtocolError) as info:
            decode(data)
        assert len(info.value.reason) < 200, info.value.reason[:300]
    for wire in ({"uuid": "j", "x": [huge]}, {"uuid": "j", "g": huge},
                 {"uuid": "j", "t": [[0, [0, 0, 0, 0, [1, 0, "a"], "", [], huge, "", 0.0, 0]]]}):
        with pytest.raises(RemoteProtocolError) as info:
            crdt.job_from_wire(wire)
        assert len(info.value.reason) < 200, info.value.reason[:300]


def test_a_whole_object_then_anything_is_refused_as_extra_data() -> None:
    with pytest.raises(RemoteProtocolError, match="extra data"):
        decode(envelope("hb", seq=1) + b"\x90")
    with pytest.raises(RemoteProtocolError, match="ends inside"):
        decode(envelope("hb", seq=1)[:-1])


def test_container_budget_counts_nested_containers_just_past_the_limit() -> None:
    ok = msgpack.packb([{} for _ in range(MAX_CONTAINERS - 1)])  # plus the outer list
    assert len(codec.unpack_limited(ok)) == MAX_CONTAINERS - 1
    with pytest.raises(RemoteProtocolError, match=str(MAX_CONTAINERS)):
        codec.unpack_limited(msgpack.packb([{} for _ in range(MAX_CONTAINERS)]))


def test_hello_survives_the_codec_with_every_field_set() -> None:
    hello = Hello(uuid="u", name="n", build_id="b", arch="arm64", proto_major=1, proto_minor=3,
                  capabilities={"blender": "4.1"}, server_priority=5, term=9,
                  listen=["10.0.0.1:7700"], sharing=False, features=["zstd"], mac="aa:bb")
    assert decode(encode(hello, 12)) == (hello, 12)
