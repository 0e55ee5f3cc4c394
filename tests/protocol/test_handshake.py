"""The XXpsk3 handshake between two PeerConnections linked in memory: the
good path, and each way it must fail, with the error that names why."""

from __future__ import annotations

import msgpack
import pytest

from protocol import (
    Cipher,
    ConnectionState,
    HandshakeComplete,
    HandshakeFailed,
    LocalProtocolError,
    MessageReceived,
    PeerRejected,
    RejectCode,
    RemoteProtocolError,
)
from protocol.connection import MAGIC
from protocol.noise import WrongPsk
from tests.harness.sansio_pair import (
    FARM,
    Pair,
    as_record,
    feed,
    handshake,
    make_hello,
    make_pair,
    public,
    record_body,
    split_records,
)

# Byte offsets inside the first handshake record's body: b"H" "RN" major cipher noise...
KIND, MAJOR_AT, CIPHER_AT, NOISE1_AT = 0, 3, 4, 5


def run_to_failure(pair: Pair, tamper_index: int | None = None, at: int = 0) -> None:
    """Drive the handshake, flipping byte ``at`` of handshake record
    ``tamper_index`` (messages 0, 1, 2, then the accept 3) in flight."""
    i, r = pair.initiator, pair.responder
    i.start()
    hops = [(i, r), (r, i), (i, r), (r, i)]
    for n, (src, dst) in enumerate(hops):
        wire = bytearray(src.data_to_send())
        if n == tamper_index:
            wire[at] ^= 0x01
        feed(dst, bytes(wire))


@pytest.mark.parametrize("cipher", list(Cipher))
def test_linked_peers_complete_the_handshake_and_exchange_hellos(cipher: Cipher) -> None:
    pair = make_pair(initiator={"hint": {"node": "i-uuid", "term": 3}, "cipher": cipher},
                     responder={"hint": {"node": "r-uuid", "arch": "arm64"}})
    i, r = pair.initiator, pair.responder
    i_events, r_events = handshake(pair)
    [i_done], [r_done] = i_events, r_events
    assert isinstance(i_done, HandshakeComplete) and isinstance(r_done, HandshakeComplete)
    assert i_done.remote_static == public(pair.r_key) == i.remote_static
    assert r_done.remote_static == public(pair.i_key) == r.remote_static
    assert i_done.hint == {"node": "r-uuid", "arch": "arm64"} == i.remote_hint
    assert r_done.hint == {"node": "i-uuid", "term": 3} == r.remote_hint
    assert i_done.handshake_hash == r_done.handshake_hash
    assert i.state is ConnectionState.HELLO and r.state is ConnectionState.HELLO

    i_hello, r_hello = make_hello("i"), make_hello("r")
    assert feed(r, i.send(i_hello)) == [MessageReceived(i_hello, 0)]
    assert r.state is ConnectionState.HELLO  # it has not sent its own Hello yet
    assert feed(i, r.send(r_hello, req_id=5)) == [MessageReceived(r_hello, 5)]
    assert i.state is ConnectionState.OPEN and r.state is ConnectionState.OPEN
    assert i.peer_hello == r_hello and r.peer_hello == i_hello


def test_sessions_have_distinct_handshake_hashes() -> None:
    a, b = make_pair(), make_pair()
    (ea,), _ = handshake(a)
    (eb,), _ = handshake(b)
    assert isinstance(ea, HandshakeComplete) and isinstance(eb, HandshakeComplete)
    assert ea.handshake_hash != eb.handshake_hash


def test_hint_keeps_only_string_and_integer_values() -> None:
    pair = make_pair(initiator={"hint": {"s": "x", "i": 1, "l": [1], "m": {"a": 1}, "n": None}})
    handshake(pair)
    assert pair.responder.remote_hint == {"s": "x", "i": 1}


def test_wrong_token_responder_raises_wrong_psk_and_initiator_gets_wrong_token_reject() -> None:
    pair = make_pair(i_token=b"token-A", r_token=b"token-B")
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    assert feed(i, r.data_to_send()) == []  # message 3 sent; waiting for accept or reject
    assert i.state is ConnectionState.HANDSHAKE
    with pytest.raises(WrongPsk) as r_err:
        feed(r, i.data_to_send())
    assert isinstance(r_err.value, HandshakeFailed)
    assert r.remote_static == public(pair.i_key)  # it knows who knocked

    with pytest.raises(PeerRejected) as i_err:
        feed(i, r.data_to_send())
    assert i_err.value.code is RejectCode.WRONG_TOKEN
    assert i_err.value.remote_static == public(pair.r_key)
    assert i.state is ConnectionState.ERROR and r.state is ConnectionState.ERROR


def test_initiator_may_not_send_until_the_responder_accepts_message_3() -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    feed(i, r.data_to_send())
    with pytest.raises(LocalProtocolError, match="handshake"):
        i.send(make_hello())
    [r_done] = feed(r, i.data_to_send())
    assert isinstance(r_done, HandshakeComplete)
    assert split_records(r.data_to_send()) == [as_record(b"A")]


def test_accept_record_where_none_is_due_is_refused() -> None:
    r = make_pair().responder
    with pytest.raises(RemoteProtocolError, match="unexpected accept"):
        feed(r, as_record(b"A"))
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(RemoteProtocolError, match="unexpected accept"):
        feed(pair.initiator, as_record(b"A"))  # before message 2


def test_handshake_message_instead_of_the_accept_is_refused() -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    msg2 = r.data_to_send()
    feed(i, msg2)
    with pytest.raises(RemoteProtocolError, match="after the handshake completed"):
        feed(i, msg2)


def test_wrong_farm_id_fails_the_handshake() -> None:
    pair = make_pair(i_farm=FARM, r_farm="another-farm")
    with pytest.raises(HandshakeFailed):
        run_to_failure(pair)
    assert pair.responder.state is ConnectionState.ERROR
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, pair.responder.data_to_send())
    assert err.value.code is RejectCode.FAILED


def test_same_token_different_farm_id_derives_another_psk() -> None:
    from protocol import derive_psk

    assert derive_psk(b"t", "a") != derive_psk(b"t", "b")
    assert derive_psk(b"t", "a") == derive_psk(b"t", "a")
    assert len(derive_psk(b"t", "a")) == 32
    with pytest.raises(LocalProtocolError, match="empty"):
        derive_psk(b"", "a")


def handshake_lengths() -> list[int]:
    """Byte lengths of the three handshake records of a normal run."""
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    lengths = []
    for src, dst in [(i, r), (r, i), (i, r), (r, i)]:
        wire = src.data_to_send()
        lengths.append(len(wire))
        feed(dst, wire)
    return lengths


LENGTHS = handshake_lengths()


@pytest.mark.parametrize("message", [0, 1, 2])
def test_tampered_byte_in_each_handshake_message_fails_the_handshake(message: int) -> None:
    # Every byte of the Noise message (after the 4-byte length and the kind byte,
    # and for message 1 after the magic, major and cipher bytes).
    first = 4 + (NOISE1_AT if message == 0 else 1)
    for at in range(first, LENGTHS[message]):
        pair = make_pair()
        with pytest.raises(HandshakeFailed):
            run_to_failure(pair, message, at)
        failed = pair.responder if message in (0, 2) else pair.initiator
        assert failed.state is ConnectionState.ERROR
        assert pair.initiator.state is not ConnectionState.OPEN


@pytest.mark.parametrize("message", [0, 1, 2, 3])
def test_tampered_kind_byte_is_a_remote_protocol_error(message: int) -> None:
    with pytest.raises(RemoteProtocolError, match="handshake record|reject"):
        run_to_failure(make_pair(), message, 4 + KIND)


@pytest.mark.parametrize("at", [1, 2])
def test_tampered_magic_is_not_a_rendernode_handshake(at: int) -> None:
    with pytest.raises(HandshakeFailed, match="not a rendernode handshake"):
        run_to_failure(make_pair(), 0, 4 + at)


@pytest.mark.parametrize("message", [0, 1, 2])
def test_noise_message_cut_short_fails_the_handshake(message: int) -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    with pytest.raises(HandshakeFailed):
        for n, (src, dst) in enumerate([(i, r), (r, i), (i, r)]):
            wire = src.data_to_send()
            if n == message:
                wire = as_record(record_body(wire)[:-20])
            feed(dst, wire)


@pytest.mark.parametrize("cut", [0, 1, 4, 20])
def test_eof_in_the_middle_of_the_handshake_is_a_remote_protocol_error(cut: int) -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    r.receive_data(i.data_to_send()[:cut] or b"")
    r.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="handshake"):
        r.next_event()


def test_eof_after_the_second_handshake_message_is_a_remote_protocol_error_for_the_responder() -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    with pytest.raises(RemoteProtocolError, match="during the handshake"):
        feed(r, b"")


def test_eof_instead_of_the_accept_is_a_remote_protocol_error_for_the_initiator() -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    feed(i, r.data_to_send())
    with pytest.raises(RemoteProtocolError, match="during the handshake"):
        feed(i, b"")


def test_initiator_hearing_eof_after_its_first_message_raises_remote_protocol_error() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(RemoteProtocolError, match="during the handshake"):
        feed(pair.initiator, b"")


def test_protocol_major_downgrade_is_rejected_with_wrong_major() -> None:
    pair = make_pair(initiator={"major": 2}, responder={"major": 1})
    with pytest.raises(HandshakeFailed, match="major 2"):
        run_to_failure(pair)
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, pair.responder.data_to_send())
    assert err.value.code is RejectCode.WRONG_MAJOR
    assert "1" in err.value.reason


def rewrite_first(pair: Pair, at: int, value: int) -> None:
    """A man in the middle sets byte ``at`` of the first record's body to ``value``."""
    i, r = pair.initiator, pair.responder
    i.start()
    wire = bytearray(i.data_to_send())
    wire[4 + at] = value
    r_events = feed(r, bytes(wire))
    assert r_events == []
    feed(i, r.data_to_send())


def test_man_in_the_middle_rewriting_the_major_byte_fails_on_the_prologue() -> None:
    pair = make_pair(initiator={"major": 2}, responder={"major": 1})
    with pytest.raises(HandshakeFailed, match="authenticate"):
        rewrite_first(pair, MAJOR_AT, 1)  # both now "agree" on major 1
    assert pair.responder.state is ConnectionState.ERROR
    assert pair.initiator.state is ConnectionState.HANDSHAKE


def test_man_in_the_middle_rewriting_the_cipher_byte_fails_on_the_prologue() -> None:
    pair = make_pair(initiator={"cipher": Cipher.AESGCM})
    with pytest.raises(HandshakeFailed, match="authenticate"):
        rewrite_first(pair, CIPHER_AT, int(Cipher.CHACHAPOLY))
    assert pair.responder.state is ConnectionState.ERROR


def test_cipher_the_responder_does_not_accept_is_rejected_with_cipher() -> None:
    pair = make_pair(initiator={"cipher": Cipher.AESGCM},
                     responder={"accept_ciphers": frozenset({Cipher.CHACHAPOLY})})
    with pytest.raises(HandshakeFailed, match="cipher"):
        run_to_failure(pair)
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, pair.responder.data_to_send())
    assert err.value.code is RejectCode.CIPHER


def test_unknown_cipher_id_is_rejected_with_cipher() -> None:
    pair = make_pair()
    with pytest.raises(HandshakeFailed, match="cipher 9"):
        rewrite_first(pair, CIPHER_AT, 9)
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, pair.responder.data_to_send())
    assert err.value.code is RejectCode.CIPHER


def test_aesgcm_negotiated_session_carries_messages_both_ways() -> None:
    pair = make_pair(initiator={"cipher": Cipher.AESGCM},
                     responder={"accept_ciphers": frozenset({Cipher.AESGCM})})
    handshake(pair)
    i, r = pair.initiator, pair.responder
    assert r._cipher is Cipher.AESGCM
    feed(r, i.send(make_hello("i")))
    feed(i, r.send(make_hello("r")))
    assert i.state is ConnectionState.OPEN and r.state is ConnectionState.OPEN
    [got] = feed(i, r.send_bulk(2, b"frame"))
    assert got.data == b"frame"  # type: ignore[union-attr]


def test_unknown_reject_code_is_reported_as_failed() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, as_record(b"R\xee" + "busy büt unknown".encode()))
    assert err.value.code is RejectCode.FAILED
    assert err.value.remote_static is None


def test_busy_reject_is_reported_with_its_reason() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(PeerRejected, match="try later") as err:
        feed(pair.initiator, as_record(bytes([ord("R"), RejectCode.BUSY]) + b"try later"))
    assert err.value.code is RejectCode.BUSY


def test_a_rejects_reason_is_kept_to_200_bytes_whatever_the_peer_sends() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(PeerRejected) as err:
        feed(pair.initiator, as_record(bytes([ord("R"), RejectCode.FAILED]) + b"x" * 60_000))
    assert err.value.reason.endswith(": " + "x" * 200)


@pytest.mark.parametrize("body", [b"R\x01nope", b"R", b"", b"X123"])
def test_responder_refuses_a_first_record_that_is_not_a_handshake(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        feed(make_pair().responder, as_record(body))


def test_first_record_without_magic_is_refused() -> None:
    with pytest.raises(HandshakeFailed, match="not a rendernode handshake"):
        feed(make_pair().responder, as_record(b"H" + b"XX\x01\x01" + b"\x00" * 48))
    with pytest.raises(HandshakeFailed, match="not a rendernode handshake"):
        feed(make_pair().responder, as_record(b"H" + MAGIC))


def test_oversized_handshake_hint_fails_the_handshake() -> None:
    pair = make_pair(initiator={"hint": {"pad": "x" * 5000}})
    with pytest.raises(HandshakeFailed, match="hint too large"):
        run_to_failure(pair)


def test_hint_that_is_not_a_map_fails_the_handshake() -> None:
    pair = make_pair()
    pair.initiator._hint = msgpack.packb([1, 2, 3])
    with pytest.raises(HandshakeFailed, match="not a map"):
        run_to_failure(pair)


def test_start_is_for_the_initiator_and_only_once() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(LocalProtocolError, match="once"):
        pair.initiator.start()
    with pytest.raises(LocalProtocolError, match="initiator"):
        pair.responder.start()


def test_initiator_fed_data_before_start_is_a_local_error() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError, match="start"):
        feed(pair.initiator, as_record(b"H" + b"\x00" * 96))


def test_sending_before_the_handshake_completes_is_a_local_error() -> None:
    pair = make_pair()
    pair.initiator.start()
    with pytest.raises(LocalProtocolError, match="handshake"):
        pair.initiator.send(make_hello())
    with pytest.raises(LocalProtocolError, match="open session"):
        pair.initiator.send_bulk(1, b"x")


def test_responder_hears_nothing_from_its_own_rejected_session_afterwards() -> None:
    pair = make_pair(i_token=b"a", r_token=b"b")
    with pytest.raises(WrongPsk):
        run_to_failure(pair)
    reject = pair.responder.data_to_send()
    assert [record_body(rec)[:2] for rec in split_records(reject)] == [
        bytes([ord("R"), RejectCode.WRONG_TOKEN])
    ]
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        pair.responder.receive_data(b"more")
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        pair.responder.next_event()


def test_large_first_message_in_the_same_read_as_the_accept_is_accepted() -> None:
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    i.start()
    feed(r, i.data_to_send())
    feed(i, r.data_to_send())
    feed(r, i.data_to_send())
    big = make_hello(name="n" * 100_000)  # > one Noise message, < the control limit
    events = feed(i, r.data_to_send() + r.send(big))
    assert isinstance(events[0], HandshakeComplete)
    assert events[1] == MessageReceived(big, 0)
