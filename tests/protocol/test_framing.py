"""Length-prefixed records: whole, byte by byte, with junk after, and the
size limits checked from the header before anything is buffered."""

from __future__ import annotations

import pytest

from protocol import LocalProtocolError, RemoteProtocolError
from protocol.framing import (
    HEADER,
    HEADER_SIZE,
    MAX_BULK,
    MAX_CONTROL,
    RecordDecoder,
    encode_record,
)
from tests.harness.sansio_pair import as_record, feed, make_pair, open_pair

BODIES = [b"", b"x", b"hello world", bytes(range(256)) * 4]


def records_out(decoder: RecordDecoder) -> list[bytes]:
    out = []
    while (body := decoder.next_record()) is not None:
        out.append(body)
    return out


def test_limits_are_one_mib_for_control_and_64_kib_for_bulk() -> None:
    assert MAX_CONTROL == 1 << 20
    assert MAX_BULK == 64 << 10


@pytest.mark.parametrize("body", BODIES, ids=len)
def test_record_fed_whole_yields_its_body(body: bytes) -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    decoder.feed(encode_record(body, MAX_CONTROL))
    assert records_out(decoder) == [body]
    assert decoder.buffered == 0


@pytest.mark.parametrize("body", BODIES, ids=len)
def test_record_fed_byte_by_byte_yields_its_body_only_at_the_last_byte(body: bytes) -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    wire = encode_record(body, MAX_CONTROL)
    for i in range(len(wire) - 1):
        decoder.feed(wire[i : i + 1])
        assert decoder.next_record() is None
    decoder.feed(wire[-1:])
    assert records_out(decoder) == [body]


def test_several_records_in_one_feed_come_out_in_order() -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    decoder.feed(b"".join(encode_record(b, MAX_CONTROL) for b in BODIES))
    assert records_out(decoder) == BODIES


def test_memoryview_and_bytearray_input_is_accepted() -> None:
    decoder = RecordDecoder(100)
    wire = encode_record(b"abc", 100)
    decoder.feed(memoryview(wire)[:3])
    decoder.feed(bytearray(wire[3:]))
    assert records_out(decoder) == [b"abc"]


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 8])
def test_record_followed_by_a_partial_record_yields_only_the_whole_one(cut: int) -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    junk = encode_record(b"partial!", MAX_CONTROL)[:cut]
    decoder.feed(encode_record(b"first", MAX_CONTROL) + junk)
    assert records_out(decoder) == [b"first"]
    assert decoder.buffered == len(junk)


def test_record_followed_by_an_oversize_header_yields_the_record_then_the_error() -> None:
    decoder = RecordDecoder(1000)
    decoder.feed(encode_record(b"good", 1000) + HEADER.pack(1001))
    assert decoder.next_record() == b"good"
    with pytest.raises(RemoteProtocolError, match="1000"):
        decoder.next_record()


def test_record_followed_by_junk_fed_byte_by_byte_yields_the_record_then_the_error() -> None:
    decoder = RecordDecoder(1000)
    wire = encode_record(b"good", 1000) + HEADER.pack(0xFFFFFFFF) + b"junk"
    got: list[bytes] = []
    with pytest.raises(RemoteProtocolError, match="1000"):
        for i in range(len(wire)):
            decoder.feed(wire[i : i + 1])
            got += records_out(decoder)
    assert got == [b"good"]


def test_record_of_exactly_the_limit_is_accepted() -> None:
    decoder = RecordDecoder(MAX_BULK)
    decoder.feed(encode_record(b"\x01" * MAX_BULK, MAX_BULK))
    assert records_out(decoder) == [b"\x01" * MAX_BULK]


def test_oversize_length_is_refused_from_the_header_alone() -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    with pytest.raises(RemoteProtocolError) as err:
        decoder.feed(HEADER.pack(MAX_CONTROL + 1))
    assert str(MAX_CONTROL) in err.value.reason
    assert decoder.buffered <= HEADER_SIZE


def test_oversize_header_is_refused_when_it_arrives_byte_by_byte() -> None:
    decoder = RecordDecoder(MAX_CONTROL)
    header = HEADER.pack(MAX_CONTROL + 1)
    for b in header[:-1]:
        decoder.feed(bytes([b]))
    with pytest.raises(RemoteProtocolError, match=str(MAX_CONTROL)):
        decoder.feed(header[-1:])
    assert decoder.buffered <= HEADER_SIZE


def test_oversize_record_fed_whole_is_refused_without_buffering_its_body() -> None:
    decoder = RecordDecoder(MAX_BULK)
    with pytest.raises(RemoteProtocolError, match=str(MAX_BULK)):
        decoder.feed(HEADER.pack(MAX_BULK + 1) + b"\x00" * (MAX_BULK + 1))
    assert decoder.buffered <= HEADER_SIZE


def test_encode_record_refuses_a_body_over_the_limit() -> None:
    assert encode_record(b"a" * 10, 10) == HEADER.pack(10) + b"a" * 10
    with pytest.raises(LocalProtocolError, match="10"):
        encode_record(b"a" * 11, 10)


def test_send_bulk_refuses_more_than_64_kib() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError, match=str(MAX_BULK)):
        pair.initiator.send_bulk(1, b"\x00" * (MAX_BULK + 1))


def test_bulk_record_of_exactly_64_kib_arrives() -> None:
    pair = open_pair()
    data = bytes(range(256)) * (MAX_BULK // 256)
    events = feed(pair.responder, pair.initiator.send_bulk(7, data))
    assert len(events) == 1
    assert events[0].stream == 7 and events[0].data == data  # type: ignore[union-attr]


def test_peer_sending_a_bulk_record_over_64_kib_is_refused() -> None:
    pair = open_pair()
    # A misbehaving peer: seal the oversize bulk record below the public API.
    wire = pair.initiator._seal(b"B" + (7).to_bytes(4, "big") + b"\x00" * (MAX_BULK + 1))
    with pytest.raises(RemoteProtocolError, match=str(MAX_BULK)):
        feed(pair.responder, wire)


def test_peer_announcing_a_control_record_over_1_mib_is_refused_from_the_header() -> None:
    pair = open_pair()
    r = pair.responder
    with pytest.raises(RemoteProtocolError, match="limit"):
        r.receive_data(HEADER.pack(MAX_CONTROL + 64))
    assert r._decoder.buffered <= HEADER_SIZE


def test_handshake_record_over_the_noise_limit_is_refused_from_the_header() -> None:
    r = make_pair().responder
    with pytest.raises(RemoteProtocolError, match="limit"):
        r.receive_data(as_record(b"H" + b"\x00" * 70_000))
    assert r._decoder.buffered <= HEADER_SIZE
