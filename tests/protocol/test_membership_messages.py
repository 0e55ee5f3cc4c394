"""The overlay's wire messages: every one round-trips, and anything malformed or
oversize from a peer is refused with RemoteProtocolError, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError, RemoteProtocolError, UnknownMessageType
from protocol.membership import Member, Meta, State, decode, pack, unpack
from protocol.membership import messages as m
from protocol.membership.wire import MAX_ADDRESSES, MAX_ENTRIES, MAX_PAYLOAD

ALICE = Member("alice", 7, State.SUSPECT, ("10.0.0.1:7000", "[fd00::1]:7000"),
               Meta("alice", "build-1", "x86_64", 5, 3, "ab12", False))
BOB = Member("bob", 0)

EXAMPLES: list[m.Message] = [
    m.Join(ALICE), m.ForwardJoin(BOB, 6), m.Neighbor(ALICE, True), m.NeighborReply(BOB, False),
    m.Disconnect(),
    m.Shuffle(1, 3, (("carol", ("h:1",)), ("dave", ())), ("alice", "bob")),
    m.ShuffleReply(2, (("erin", ("h:2",)),), ("alice",)),
    m.PingReq("carol", 5, ALICE), m.PingReq("carol", 5), m.Ping(9, BOB), m.Ping(9), m.Ack(9),
    m.PingReqResult("carol", 5, True),
    m.Gossip(b"\x01" * 16, "alice", 3, m.KIND_MEMBERS, entries=(ALICE, BOB), by="bob",
             refused=True),
    m.Gossip(b"id", "alice", 0, m.KIND_APP, data=b"payload"),
    m.Gossip(b"id", "alice", 0, m.KIND_RELAY, data=b"payload", dst="bob"),
    m.IHave(((b"a", 1), (b"b", 2))), m.Graft((b"a", b"b")), m.Graft(()), m.Prune(),
    m.SyncHash((b"\x00" * 8,) * 64), m.SyncEntries((ALICE,), (3, 5), True),
    m.Relay(b"id", "alice", "bob", 16, b"data"),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: msg.TYPE)
def test_every_message_round_trips_through_its_wire_form_and_msgpack(msg: m.Message) -> None:
    assert decode(msg.to_wire()) == msg
    assert unpack(pack(msg)) == msg


def test_every_registered_type_has_an_example() -> None:
    assert {type(x) for x in EXAMPLES} == set(m.message_types().values())


def test_unknown_keys_are_ignored() -> None:
    wire = m.Ack(3).to_wire() | {"added_later": [1, 2]}
    assert decode(wire) == m.Ack(3)


def test_an_unknown_type_is_named() -> None:
    with pytest.raises(UnknownMessageType) as err:
        decode({"t": "from_the_future"})
    assert err.value.type_name == "from_the_future"


def _wire(msg: m.Message, **changes: Any) -> dict[str, Any]:
    return msg.to_wire() | changes


BAD: list[tuple[str, Any]] = [
    ("not a map", [1, 2]),
    ("no type", {"nonce": 1}),
    ("missing field", {"t": "ack"}),
    ("bool is not an int", _wire(m.Ack(1), nonce=True)),
    ("float is not an int", _wire(m.Ack(1), nonce=1.0)),
    ("negative nonce", _wire(m.Ack(1), nonce=-1)),
    ("ttl past the limit", _wire(m.ForwardJoin(BOB, 1), ttl=10_000)),
    ("empty uuid", _wire(m.PingReq("x", 1), target="")),
    ("long uuid", _wire(m.PingReq("x", 1), target="u" * 65)),
    ("member is not a list", _wire(m.Join(BOB), member={"uuid": "bob"})),
    ("member state out of range", _wire(m.Join(BOB), member=["bob", 0, 9, [], Meta().to_wire()])),
    ("incarnation is a string", _wire(m.Join(BOB), member=["bob", "0", 0, [], Meta().to_wire()])),
    ("too many addresses", _wire(m.Join(BOB), member=["bob", 0, 0, ["h:1"] * (MAX_ADDRESSES + 1),
                                                        Meta().to_wire()])),
    ("meta too short", _wire(m.Join(BOB), member=["bob", 0, 0, [], ["x"]])),
    ("sharing is not a bool", _wire(m.Join(BOB), member=["bob", 0, 0, [], ["", "", "", 0, 0, "", 1]])),
    ("unknown gossip kind", _wire(m.Gossip(b"i", "a", 0, m.KIND_APP), kind="z")),
    ("member gossip without entries", _wire(m.Gossip(b"i", "a", 0, m.KIND_APP), kind="m")),
    ("relay gossip without dst", _wire(m.Gossip(b"i", "a", 0, m.KIND_APP), kind="r")),
    ("empty message id", _wire(m.Gossip(b"i", "a", 0, m.KIND_APP), id=b"")),
    ("message id too long", _wire(m.Graft(()), ids=[b"x" * 33])),
    ("oversize payload", _wire(m.Relay(b"i", "a", "b", 1, b""), data=b"x" * (MAX_PAYLOAD + 1))),
    ("too many entries", _wire(m.SyncEntries((), (), False),
                               entries=[BOB.to_wire()] * (MAX_ENTRIES + 1))),
    ("bucket hash of the wrong size", _wire(m.SyncHash(()), buckets=[b"\x00" * 7])),
    ("bucket out of range", _wire(m.SyncEntries((), (), False), buckets=[1000])),
    ("contact is not a pair", _wire(m.Shuffle(1, 1, (), ()), sample=[["a"]])),
    ("path too long", _wire(m.Shuffle(1, 1, (), ()), path=["a"] * 17)),
]


@pytest.mark.parametrize(("why", "obj"), BAD, ids=[b[0] for b in BAD])
def test_a_malformed_message_is_refused_with_a_reason(why: str, obj: Any) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode(obj)
    assert err.value.reason


def test_oversize_bytes_are_refused_before_decoding() -> None:
    with pytest.raises(RemoteProtocolError):
        unpack(b"\x00" * ((1 << 20) + 1))


values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=12,
)
FIELDS = sorted({k for x in EXAMPLES for k in x.to_wire()})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=8),
       st.sampled_from(sorted(m.message_types())))
def test_random_fields_under_a_real_type_raise_only_protocol_errors(
        fields: dict[str, Any], type_name: str) -> None:
    try:
        msg = decode({**fields, "t": type_name})
    except ProtocolError:
        return
    assert decode(msg.to_wire()) == msg


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EXAMPLES), st.lists(st.integers(min_value=0), max_size=4))
def test_a_mutated_valid_message_raises_only_protocol_errors(
        msg: m.Message, flips: list[int]) -> None:
    data = bytearray(pack(msg))
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    try:
        unpack(bytes(data))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        unpack(data)
    except ProtocolError:
        pass


def test_msgpack_of_every_example_is_small() -> None:
    for msg in EXAMPLES:
        assert len(msgpack.packb(msg.to_wire(), use_bin_type=True)) < 2048
