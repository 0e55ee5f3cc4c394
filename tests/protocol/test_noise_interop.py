"""Our XXpsk3 against an independent implementation (the ``noiseprotocol``
package), in both roles and with both ciphers: the handshake completes, both
sides compute the same handshake hash, transport records (including after a
rekey) decrypt on the other side.  noiseprotocol returns bytearray; every
value is turned into bytes before it is compared or fed on."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

import protocol.connection
from protocol import (
    BulkReceived,
    Cipher,
    ConnectionState,
    HandshakeComplete,
    MessageReceived,
    PeerConnection,
    codec,
    derive_psk,
)
from protocol.codec import PROTO_MAJOR
from protocol.connection import MAGIC, prologue
from protocol.messages import Heartbeat
from protocol.noise import WrongPsk, protocol_name
from tests.harness.sansio_pair import FARM, TOKEN, as_record, feed, make_hello, public, record_body

I_HINT = {"node": "initiator", "term": 2}
R_HINT = {"node": "responder", "arch": "riscv64"}


def noise_peer(*, initiator: bool, cipher: Cipher, key: X25519PrivateKey,
               token: bytes = TOKEN) -> NoiseConnection:
    conn = NoiseConnection.from_name(protocol_name(cipher))
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, key.private_bytes_raw())
    conn.set_psks(psk=derive_psk(token, FARM))
    conn.set_prologue(prologue(PROTO_MAJOR, cipher, FARM))
    conn.start_handshake()
    return conn


def ours(*, initiator: bool, cipher: Cipher, key: X25519PrivateKey, hint: dict[str, Any]) -> PeerConnection:
    return PeerConnection(initiator=initiator, static_key=key, psk=derive_psk(TOKEN, FARM),
                          farm_id=FARM, hint=hint, cipher=cipher)


def check_transport(us: PeerConnection, them: NoiseConnection, rekey_every: int | None) -> None:
    """Hello each way, then ten more records each way; the noise side rekeys
    by hand where ours must rekey on its own."""
    hello = make_hello("ours")
    body = record_body(us.send(hello))
    assert bytes(them.decrypt(body)) == b"C" + codec.encode(hello)
    their_hello = make_hello("theirs")
    assert feed(us, as_record(bytes(them.encrypt(b"C" + codec.encode(their_hello, 4))))) == [
        MessageReceived(their_hello, 4)
    ]
    assert us.state is ConnectionState.OPEN
    for k in range(1, 11):
        body = record_body(us.send(Heartbeat(seq=k)))
        assert bytes(them.decrypt(body)) == b"C" + codec.encode(Heartbeat(seq=k))
        frame = b"frame-%d" % k
        ct = bytes(them.encrypt(b"B" + k.to_bytes(4, "big") + frame))
        assert feed(us, as_record(ct)) == [BulkReceived(k, frame)]
        if rekey_every and (k + 1) % rekey_every == 0:  # k + 1 records so far, Hello included
            them.rekey_inbound_cipher()
            them.rekey_outbound_cipher()


@pytest.mark.parametrize("rekey_every", [None, 3])
@pytest.mark.parametrize("cipher", list(Cipher))
def test_our_initiator_completes_with_a_noiseprotocol_responder(
    cipher: Cipher, rekey_every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rekey_every:
        monkeypatch.setattr(protocol.connection, "REKEY_INTERVAL", rekey_every)
    i_key, r_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    us = ours(initiator=True, cipher=cipher, key=i_key, hint=I_HINT)
    them = noise_peer(initiator=False, cipher=cipher, key=r_key)

    us.start()
    first = record_body(us.data_to_send())
    assert first[:5] == b"H" + MAGIC + bytes([PROTO_MAJOR, int(cipher)])
    assert msgpack.unpackb(bytes(them.read_message(first[5:]))) == I_HINT

    msg2 = bytes(them.write_message(msgpack.packb(R_HINT)))
    assert feed(us, as_record(b"H" + msg2)) == []
    assert us.remote_static == public(r_key)

    third = record_body(us.data_to_send())
    assert third[:1] == b"H"
    assert bytes(them.read_message(third[1:])) == b""
    assert them.handshake_finished

    [done] = feed(us, as_record(b"A"))  # the accept record is ours, not Noise's
    assert isinstance(done, HandshakeComplete)
    assert done.remote_static == public(r_key)
    assert done.hint == R_HINT
    assert bytes(them.get_handshake_hash()) == done.handshake_hash

    check_transport(us, them, rekey_every)


@pytest.mark.parametrize("rekey_every", [None, 3])
@pytest.mark.parametrize("cipher", list(Cipher))
def test_noiseprotocol_initiator_completes_with_our_responder(
    cipher: Cipher, rekey_every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rekey_every:
        monkeypatch.setattr(protocol.connection, "REKEY_INTERVAL", rekey_every)
    i_key, r_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    them = noise_peer(initiator=True, cipher=cipher, key=i_key)
    us = ours(initiator=False, cipher=Cipher.CHACHAPOLY, key=r_key, hint=R_HINT)

    msg1 = bytes(them.write_message(msgpack.packb(I_HINT)))
    assert feed(us, as_record(b"H" + MAGIC + bytes([PROTO_MAJOR, int(cipher)]) + msg1)) == []
    assert us.remote_hint == I_HINT

    second = record_body(us.data_to_send())
    assert second[:1] == b"H"
    assert msgpack.unpackb(bytes(them.read_message(second[1:]))) == R_HINT

    msg3 = bytes(them.write_message(b""))
    assert them.handshake_finished
    [done] = feed(us, as_record(b"H" + msg3))
    assert isinstance(done, HandshakeComplete)
    assert us.data_to_send() == as_record(b"A")
    assert done.remote_static == public(i_key)
    assert done.hint == I_HINT
    assert bytes(them.get_handshake_hash()) == done.handshake_hash

    check_transport(us, them, rekey_every)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_noiseprotocol_initiator_with_another_token_is_refused_as_wrong_psk(cipher: Cipher) -> None:
    i_key, r_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    them = noise_peer(initiator=True, cipher=cipher, key=i_key, token=b"someone else's token")
    us = ours(initiator=False, cipher=cipher, key=r_key, hint={})
    feed(us, as_record(b"H" + MAGIC + bytes([PROTO_MAJOR, int(cipher)]) + bytes(them.write_message())))
    them.read_message(record_body(us.data_to_send())[1:])
    with pytest.raises(WrongPsk):
        feed(us, as_record(b"H" + bytes(them.write_message())))
    assert us.remote_static == public(i_key)


def test_noiseprotocol_refuses_our_messages_under_another_prologue() -> None:
    i_key, r_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    us = ours(initiator=True, cipher=Cipher.CHACHAPOLY, key=i_key, hint=I_HINT)
    them = NoiseConnection.from_name(protocol_name(Cipher.CHACHAPOLY))
    them.set_as_responder()
    them.set_keypair_from_private_bytes(Keypair.STATIC, r_key.private_bytes_raw())
    them.set_psks(psk=derive_psk(TOKEN, FARM))
    them.set_prologue(prologue(PROTO_MAJOR + 1, Cipher.CHACHAPOLY, FARM))
    them.start_handshake()
    us.start()
    with pytest.raises(InvalidTag):
        them.read_message(record_body(us.data_to_send())[5:])
