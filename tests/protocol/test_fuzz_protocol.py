"""Property-based: whatever bytes arrive, in whatever slices, the protocol
raises nothing but ProtocolError and never holds more than its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    ConnectionClosed,
    HandshakeComplete,
    MessageReceived,
    PeerConnection,
    ProtocolError,
    RemoteProtocolError,
    codec,
    crdt,
)
from protocol.connection import _HANDSHAKE_RECORD_MAX, _TRANSPORT_RECORD_MAX, MAGIC
from protocol.framing import HEADER, HEADER_SIZE, RecordDecoder
from protocol.messages import Heartbeat, Hello, Reply
from tests.harness.sansio_pair import as_record, drain, make_hello, make_pair

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
slice_sizes = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8)


def slices(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, used cyclically."""
    out, k = [], 0
    while data:
        out.append(data[: sizes[k % len(sizes)]])
        data = data[sizes[k % len(sizes)] :]
        k += 1
    return out


# -- RecordDecoder ---------------------------------------------------------------

SMALL_LIMIT = 64


@FUZZ
@given(data=st.binary(max_size=2000), sizes=slice_sizes)
def test_record_decoder_on_random_bytes_raises_only_protocol_errors_within_limits(
    data: bytes, sizes: list[int]
) -> None:
    decoder = RecordDecoder(SMALL_LIMIT)
    try:
        for piece in slices(data, sizes):
            decoder.feed(piece)
            while (body := decoder.next_record()) is not None:
                assert len(body) <= SMALL_LIMIT
            assert decoder.buffered < HEADER_SIZE + SMALL_LIMIT
    except RemoteProtocolError as exc:
        assert str(SMALL_LIMIT) in exc.reason
        assert decoder.buffered <= HEADER_SIZE + SMALL_LIMIT + max(sizes)


@FUZZ
@given(
    bodies=st.lists(st.binary(max_size=SMALL_LIMIT), max_size=10),
    junk=st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=HEADER_SIZE - 1),  # a partial header
        st.integers(min_value=SMALL_LIMIT + 1, max_value=0xFFFFFFFF).map(HEADER.pack),  # oversize
    ),
    sizes=slice_sizes,
)
def test_record_decoder_yields_the_same_records_however_the_stream_is_sliced(
    bodies: list[bytes], junk: bytes, sizes: list[int]
) -> None:
    wire = b"".join(as_record(b) for b in bodies) + junk
    decoder = RecordDecoder(SMALL_LIMIT)
    got: list[bytes] = []
    refused = False
    try:
        for piece in slices(wire, sizes):
            decoder.feed(piece)
            while (body := decoder.next_record()) is not None:
                got.append(body)
    except RemoteProtocolError:
        refused = True
    assert got == bodies  # every whole record before the junk comes out, in order
    assert refused == (len(junk) == HEADER_SIZE)
    if refused:
        assert decoder.buffered <= HEADER_SIZE


# -- codec -------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=6,
)
type_names = st.sampled_from(sorted(codec.message_types())) | st.text(max_size=8)
FIELD_NAMES = sorted({f for cls in codec.message_types().values() for f in cls.__dataclass_fields__})
envelopes = st.tuples(
    st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=5),
    type_names,
    st.sampled_from([1, 1, 1, 2, 0, True, "1", None]),
    st.integers(min_value=-2, max_value=(1 << 64) - 1) | st.none(),
).map(lambda parts: {**parts[0], "t": parts[1], "v": parts[2], "id": parts[3]})


@FUZZ
@given(st.binary(max_size=500))
def test_decode_of_random_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        msg, req_id = codec.decode(data)
    except ProtocolError:
        return
    assert isinstance(msg, codec.Message) and req_id >= 0


@FUZZ
@given(envelopes)
def test_decode_of_random_envelopes_raises_only_protocol_errors(env: dict[str, Any]) -> None:
    try:
        msg, req_id = codec.decode(msgpack.packb(env, use_bin_type=True))
    except ProtocolError:
        return
    assert type(msg).TYPE == env["t"] and req_id == env["id"]
    assert codec.decode(codec.encode(msg, req_id)) == (msg, req_id)


@FUZZ
@given(data=st.binary(max_size=300), flips=st.lists(st.integers(min_value=0), max_size=4))
def test_decode_of_a_mutated_valid_message_raises_only_protocol_errors(
    data: bytes, flips: list[int]
) -> None:
    wire = bytearray(codec.encode(make_hello(features=["a", "b"], mac=data.hex())))
    for f in flips:
        wire[f % len(wire)] ^= 1 << (f % 8)
    try:
        codec.decode(bytes(wire))
    except ProtocolError:
        pass


# -- job documents a peer sends (protocol.crdt) ----------------------------------------

_STAMP = (1_700_000_000_000, 2, "node-a")
GOOD_JOB = crdt.job_to_wire(crdt.JobDoc(
    "job-1", fields={"scene": crdt.Register(_STAMP, "/p/s.blend")}, gen=2,
    tasks={0: crdt.TaskState(1, 0, 1, 2, _STAMP, "w", ("w", "v"), 1.5, "", 1.7e9, 3, 1)},
    log={_STAMP: "submitted"}, log_base=_STAMP))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside a decoded msgpack tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


@FUZZ
@given(data=st.data(), value=msgpack_values)
def test_a_job_document_with_any_value_anywhere_parses_or_raises_a_protocol_error(
    data: st.DataObject, value: Any
) -> None:
    wire = msgpack.unpackb(msgpack.packb(GOOD_JOB), raw=False)
    *parent, key = data.draw(st.sampled_from(paths(wire)))
    node = wire
    for k in parent:
        node = node[k]
    node[key] = value
    try:
        doc = crdt.job_from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    except ProtocolError:
        return
    crdt.digest(doc)  # what parsed can be stored and passed on (msgpack writes it back)


# -- PeerConnection on garbage --------------------------------------------------------


def feed_all(conn: PeerConnection, data: bytes, sizes: list[int], limit: int) -> None:
    for piece in slices(data, sizes):
        conn.receive_data(piece)
        drain(conn)
        assert conn._decoder.buffered < HEADER_SIZE + limit


@FUZZ
@given(data=st.binary(max_size=2000), sizes=slice_sizes, eof=st.booleans())
def test_responder_on_random_bytes_raises_only_protocol_errors(
    data: bytes, sizes: list[int], eof: bool
) -> None:
    r = make_pair().responder
    try:
        feed_all(r, data, sizes, _HANDSHAKE_RECORD_MAX)
        if eof:
            r.receive_data(b"")
            drain(r)
    except ProtocolError:
        assert r._decoder.buffered <= HEADER_SIZE + _HANDSHAKE_RECORD_MAX


@FUZZ
@given(data=st.binary(max_size=2000), sizes=slice_sizes)
def test_responder_on_a_valid_prefix_then_random_bytes_raises_only_protocol_errors(
    data: bytes, sizes: list[int]
) -> None:
    r = make_pair().responder
    prefix = as_record(b"H" + MAGIC + b"\x01\x01" + data[:48]) + data[48:]
    try:
        feed_all(r, prefix, sizes, _HANDSHAKE_RECORD_MAX)
    except ProtocolError:
        pass


@FUZZ
@given(data=st.binary(max_size=2000), sizes=slice_sizes,
       kind=st.sampled_from([b"", b"H", b"R", b"A"]))
def test_initiator_on_random_bytes_raises_only_protocol_errors(
    data: bytes, sizes: list[int], kind: bytes
) -> None:
    i = make_pair().initiator
    i.start()
    wire = as_record(kind + data[:200]) + data[200:] if kind else data
    try:
        feed_all(i, wire, sizes, _HANDSHAKE_RECORD_MAX)
    except ProtocolError:
        pass


# -- a live session with one mutation in flight -------------------------------------------


@dataclass
class Side:
    conn: PeerConnection
    pending: bytearray = field(default_factory=bytearray)
    error: ProtocolError | None = None
    got: list[Any] = field(default_factory=list)

    def react(self, event: Any) -> None:
        """What a node would send on ``event``."""
        self.got.append(event)
        conn = self.conn
        if isinstance(event, HandshakeComplete):
            self.pending += conn.send(make_hello("i" if conn.initiator else "r"))
            if conn.initiator:
                self.pending += conn.send(Heartbeat(seq=1), req_id=1)
        elif isinstance(event, MessageReceived) and isinstance(event.message, Hello):
            if conn.state.value == "open":
                self.pending += conn.send_bulk(5, b"chunk" * 50)
        elif isinstance(event, MessageReceived) and isinstance(event.message, Heartbeat):
            self.pending += conn.send(Reply(result={"ok": True}), req_id=event.req_id)


@dataclass(frozen=True)
class Mutation:
    hop: int  #: which transfer (0 = initiator's first, 1 = responder's first, ...)
    at: int  #: byte offset, modulo the transfer's length
    kind: str  #: flip, insert, delete, cut
    value: int


mutations = st.builds(Mutation, hop=st.integers(min_value=0, max_value=7),
                      at=st.integers(min_value=0), kind=st.sampled_from(["flip", "insert", "delete", "cut"]),
                      value=st.integers(min_value=1, max_value=255))


def apply(m: Mutation, data: bytes) -> bytes:
    at = m.at % len(data)
    if m.kind == "flip":
        return data[:at] + bytes([data[at] ^ m.value]) + data[at + 1 :]
    if m.kind == "insert":
        return data[:at] + bytes([m.value]) + data[at:]
    if m.kind == "delete":
        return data[:at] + data[at + 1 :]
    return data[:at]


def run_session(mutation: Mutation | None, sizes: list[int]) -> tuple[Side, Side, bool]:
    pair = make_pair()
    i, r = Side(pair.initiator), Side(pair.responder)
    i.conn.start()
    i.pending += i.conn.data_to_send()
    hop, mutated = 0, False
    for _ in range(5):
        for src, dst in ((i, r), (r, i)):
            data, src.pending = bytes(src.pending), bytearray()
            if not data:
                continue
            if mutation is not None and mutation.hop == hop:
                data, mutated = apply(mutation, data), True
            hop += 1
            if dst.error is not None:
                continue
            try:
                for piece in slices(data, sizes):
                    dst.conn.receive_data(piece)
                    events = drain(dst.conn)
                    dst.pending += dst.conn.data_to_send()  # handshake output goes first
                    for event in events:
                        dst.react(event)
                    assert dst.conn._decoder.buffered < HEADER_SIZE + _TRANSPORT_RECORD_MAX
            except ProtocolError as exc:
                dst.error = exc
                dst.pending += dst.conn.data_to_send()  # a reject
    for side in (i, r):
        if side.error is None:
            try:
                side.conn.receive_data(b"")
                side.got += drain(side.conn)
            except ProtocolError as exc:
                side.error = exc
    return i, r, mutated


@FUZZ
@given(mutation=mutations, sizes=slice_sizes)
def test_live_session_with_a_mutated_byte_fails_only_with_protocol_errors(
    mutation: Mutation, sizes: list[int]
) -> None:
    i, r, mutated = run_session(mutation, sizes)
    if mutated:
        # a cut at a record boundary after the Hellos looks like a crash: the
        # stream ends without a Goodbye, and the close says it was not clean
        unclean = any(isinstance(e, ConnectionClosed) and not e.clean for side in (i, r) for e in side.got)
        assert i.error is not None or r.error is not None or unclean, "a mutation went unnoticed"


@settings(max_examples=20, deadline=None)
@given(sizes=slice_sizes)
def test_live_session_without_mutation_completes_however_it_is_sliced(sizes: list[int]) -> None:
    i, r, mutated = run_session(None, sizes)
    assert not mutated and i.error is None and r.error is None
    assert [type(e).__name__ for e in i.got] == [
        "HandshakeComplete", "MessageReceived", "BulkReceived", "MessageReceived", "ConnectionClosed"
    ]
    assert [type(e).__name__ for e in r.got] == [
        "HandshakeComplete", "MessageReceived", "MessageReceived", "BulkReceived", "ConnectionClosed"
    ]
