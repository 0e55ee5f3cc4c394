"""The open session: records that are tampered with, replayed, reordered or cut
are refused; an error leaves the session unusable; rekeying keeps both
directions working; Hello comes first; Goodbye and EOF close."""

from __future__ import annotations

import pytest

import protocol.connection
from protocol import (
    BulkReceived,
    ConnectionClosed,
    ConnectionState,
    LocalProtocolError,
    MessageReceived,
    PeerConnection,
    RemoteProtocolError,
    UnknownMessageType,
    codec,
)
from protocol.framing import HEADER_SIZE
from protocol.messages import Call, Goodbye, Heartbeat, Reply
from protocol.noise import CipherState
from tests.harness.sansio_pair import as_record, feed, handshake, make_hello, make_pair, open_pair


def heartbeats(conn: PeerConnection, n: int, start: int = 0) -> list[bytes]:
    return [conn.send(Heartbeat(seq=start + k)) for k in range(n)]


def assert_unusable(conn: PeerConnection) -> None:
    assert conn.state is ConnectionState.ERROR
    for call in (lambda: conn.receive_data(b"x"), conn.next_event,
                 lambda: conn.send(Heartbeat(seq=1)), lambda: conn.send_bulk(1, b"x"),
                 conn.start):
        with pytest.raises(LocalProtocolError, match="failed earlier"):
            call()


def test_messages_and_request_ids_cross_an_open_session_both_ways() -> None:
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    assert feed(r, i.send(Call(method="jobs.list", args={"all": True}), req_id=9)) == [
        MessageReceived(Call(method="jobs.list", args={"all": True}), 9)
    ]
    assert feed(i, r.send(Reply(result=[1, "two"]), req_id=9)) == [
        MessageReceived(Reply(result=[1, "two"]), 9)
    ]


def test_many_records_in_one_read_and_byte_by_byte_give_the_same_events() -> None:
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    wire = b"".join(heartbeats(i, 5)) + i.send_bulk(3, b"data")
    whole = feed(r, wire[: len(wire) // 2]) + feed(r, wire[len(wire) // 2 :])
    pair2 = open_pair()
    wire2 = b"".join(heartbeats(pair2.initiator, 5)) + pair2.initiator.send_bulk(3, b"data")
    bytewise = []
    for k in range(len(wire2)):
        bytewise += feed(pair2.responder, wire2[k : k + 1])
    expected = [MessageReceived(Heartbeat(seq=k), 0) for k in range(5)] + [BulkReceived(3, b"data")]
    assert whole == expected == bytewise


@pytest.mark.parametrize("where", ["length", "first", "middle", "tag"])
def test_tampered_record_is_refused_and_the_session_is_unusable(where: str) -> None:
    pair = open_pair()
    wire = bytearray(pair.initiator.send(Heartbeat(seq=1)))
    at = {"length": 3, "first": HEADER_SIZE, "middle": len(wire) // 2, "tag": len(wire) - 1}[where]
    wire[at] ^= 0x80
    r = pair.responder
    with pytest.raises(RemoteProtocolError):
        feed(r, bytes(wire))
        feed(r, b"")  # a shortened length leaves the rest as a cut record
    assert_unusable(r)


def test_replayed_record_is_refused() -> None:
    pair = open_pair()
    wire = pair.initiator.send(Heartbeat(seq=1))
    assert feed(pair.responder, wire) == [MessageReceived(Heartbeat(seq=1), 0)]
    with pytest.raises(RemoteProtocolError, match="authenticate"):
        feed(pair.responder, wire)
    assert_unusable(pair.responder)


def test_reordered_records_are_refused() -> None:
    pair = open_pair()
    first, second = heartbeats(pair.initiator, 2)
    with pytest.raises(RemoteProtocolError, match="authenticate"):
        feed(pair.responder, second + first)
    assert_unusable(pair.responder)


def test_dropped_record_makes_the_next_one_fail() -> None:
    pair = open_pair()
    _lost, second = heartbeats(pair.initiator, 2)
    with pytest.raises(RemoteProtocolError, match="authenticate"):
        feed(pair.responder, second)


def test_record_from_another_session_is_refused() -> None:
    a, b = open_pair(), open_pair()
    with pytest.raises(RemoteProtocolError, match="authenticate"):
        feed(b.responder, a.initiator.send(Heartbeat(seq=1)))


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3, -1])
def test_record_cut_by_eof_is_refused(cut: int) -> None:
    pair = open_pair()
    wire = pair.initiator.send(Heartbeat(seq=1))
    r = pair.responder
    r.receive_data(wire[:cut])
    r.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a record"):
        r.next_event()
    assert_unusable(r)


def test_eof_at_a_record_boundary_closes_without_claiming_a_clean_goodbye() -> None:
    pair = open_pair()
    r = pair.responder
    events = feed(r, pair.initiator.send(Heartbeat(seq=1)))
    r.receive_data(b"")
    assert r.next_event() == ConnectionClosed("peer closed the connection without a Goodbye", clean=False)
    assert r.state is ConnectionState.CLOSED
    assert events == [MessageReceived(Heartbeat(seq=1), 0)]


def test_goodbye_closes_the_session_with_its_reason() -> None:
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    wire = i.send(Goodbye(reason="shutting down")) + i.send(Heartbeat(seq=99))
    assert feed(r, wire) == [ConnectionClosed("shutting down", clean=True)]
    assert r.state is ConnectionState.CLOSED
    assert r.next_event() is protocol.connection.NEED_DATA  # nothing after Goodbye
    with pytest.raises(LocalProtocolError, match="closed"):
        r.send(Heartbeat(seq=1))
    with pytest.raises(LocalProtocolError, match="open session"):
        r.send_bulk(1, b"x")


def test_goodbye_without_reason_still_says_why() -> None:
    pair = open_pair()
    [closed] = feed(pair.responder, pair.initiator.send(Goodbye()))
    assert isinstance(closed, ConnectionClosed) and closed.reason


def test_sending_something_other_than_hello_first_is_a_local_error() -> None:
    pair = make_pair()
    handshake(pair)
    with pytest.raises(LocalProtocolError, match="Hello"):
        pair.initiator.send(Heartbeat(seq=1))
    with pytest.raises(LocalProtocolError, match="open session"):
        pair.initiator.send_bulk(1, b"x")


def test_receiving_something_other_than_hello_first_is_a_remote_error() -> None:
    pair = make_pair()
    handshake(pair)
    rogue = pair.initiator._seal(b"C" + codec.encode(Heartbeat(seq=1)))
    with pytest.raises(RemoteProtocolError, match="Hello first"):
        feed(pair.responder, rogue)
    assert_unusable(pair.responder)


def test_bulk_data_before_hello_is_a_remote_error() -> None:
    pair = make_pair()
    handshake(pair)
    rogue = pair.initiator._seal(b"B" + (1).to_bytes(4, "big") + b"data")
    with pytest.raises(RemoteProtocolError, match="before Hello"):
        feed(pair.responder, rogue)


def test_second_hello_is_a_remote_error() -> None:
    pair = open_pair()
    rogue = pair.initiator._seal(b"C" + codec.encode(make_hello("again")))
    with pytest.raises(RemoteProtocolError, match="second Hello"):
        feed(pair.responder, rogue)


@pytest.mark.parametrize("plaintext", [b"", b"Z", b"B\x00\x00"])
def test_unknown_or_short_record_kind_is_a_remote_error(plaintext: bytes) -> None:
    pair = open_pair()
    with pytest.raises(RemoteProtocolError):
        feed(pair.responder, pair.initiator._seal(plaintext))


def test_unknown_message_type_in_a_session_is_refused_by_name() -> None:
    pair = open_pair()
    body = codec.encode(Heartbeat(seq=1)).replace(b"\xa2hb", b"\xa2zz")
    with pytest.raises(UnknownMessageType, match="zz"):
        feed(pair.responder, pair.initiator._seal(b"C" + body))


def test_empty_bulk_record_is_delivered() -> None:
    pair = open_pair()
    assert feed(pair.responder, pair.initiator.send_bulk(0xFFFFFFFF, b"")) == [
        BulkReceived(0xFFFFFFFF, b"")
    ]


def test_rekey_keeps_both_directions_working_and_changes_the_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol.connection, "REKEY_INTERVAL", 3)
    pair = open_pair()  # each side has already sent one record (its Hello)
    i, r = pair.initiator, pair.responder
    assert i._tx is not None and r._tx is not None
    i_keys, r_keys = {i._tx._k}, {r._tx._k}
    for k in range(20):
        assert feed(r, i.send(Heartbeat(seq=k))) == [MessageReceived(Heartbeat(seq=k), 0)]
        assert feed(i, r.send_bulk(k, b"frame %d" % k)) == [BulkReceived(k, b"frame %d" % k)]
        i_keys.add(i._tx._k)
        r_keys.add(r._tx._k)
    # 21 records each way, a rekey after every 3rd: the first key and seven more.
    assert len(i_keys) == 8 and len(r_keys) == 8
    assert i._tx._k == r._rx._k and r._tx._k == i._rx._k  # type: ignore[union-attr]
    assert i._tx.n == 21  # Rekey() leaves the nonce counting on


def test_record_sealed_with_the_pre_rekey_key_is_refused_after_the_rekey(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol.connection, "REKEY_INTERVAL", 3)
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    assert i._tx is not None and i._tx._k is not None
    old = CipherState(i._tx._cipher, i._tx._k)
    for k in range(2):  # Hello + 2 heartbeats = 3 records, then both sides rekey
        feed(r, i.send(Heartbeat(seq=k)))
    old.n = 3
    plaintext = b"C" + codec.encode(Heartbeat(seq=3))
    stale = old.encrypt_with_ad(None, plaintext)
    fresh = i.send(Heartbeat(seq=3))
    assert stale != fresh[HEADER_SIZE:]
    with pytest.raises(RemoteProtocolError, match="authenticate"):
        feed(r, as_record(stale))
    pair2 = open_pair()
    feed(pair2.responder, b"".join(heartbeats(pair2.initiator, 2)))
    assert feed(pair2.responder, pair2.initiator.send(Heartbeat(seq=3))) == [
        MessageReceived(Heartbeat(seq=3), 0)
    ]


def test_unencodable_message_is_a_local_error() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        pair.initiator.send(Call(method="m", args={"x": object()}))


def test_eof_after_the_handshake_but_before_the_peers_hello_is_an_error() -> None:
    pair = make_pair()
    handshake(pair)
    r = pair.responder
    r.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="before its Hello"):
        r.next_event()
