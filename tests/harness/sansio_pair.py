"""Two PeerConnections linked in memory, and the small helpers the protocol
tests share.  Bytes move only when a test moves them, so a test can drop,
replay, reorder, tamper with or cut any record on the way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import NEED_DATA, ConnectionState, PeerConnection, derive_psk
from protocol.connection import ConnEvent
from protocol.framing import HEADER, HEADER_SIZE
from protocol.messages import Hello

TOKEN = b"correct horse battery staple"
FARM = "farm-test"


def public(key: X25519PrivateKey) -> bytes:
    """Raw public key bytes of ``key``."""
    return key.public_key().public_bytes_raw()


def make_hello(name: str = "node", **fields: Any) -> Hello:
    """A valid Hello; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "uuid": f"uuid-{name}", "name": name, "build_id": "0.1.0+p1.0", "arch": "x86_64",
        "proto_major": 1, "proto_minor": 0, "capabilities": {"builtin": "1"},
    }
    values.update(fields)
    return Hello(**values)


def drain(conn: PeerConnection) -> list[ConnEvent]:
    """Every event ``conn`` has ready, until NEED_DATA."""
    events: list[ConnEvent] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)


def feed(conn: PeerConnection, data: bytes) -> list[ConnEvent]:
    """Give ``data`` to ``conn`` and return the events it produces."""
    conn.receive_data(data)
    return drain(conn)


def split_records(stream: bytes) -> list[bytes]:
    """Cut a byte stream into whole length-prefixed records (header included)."""
    out = []
    while stream:
        (n,) = HEADER.unpack_from(stream)
        out.append(stream[: HEADER_SIZE + n])
        stream = stream[HEADER_SIZE + n :]
    return out


def record_body(record: bytes) -> bytes:
    """The body of one whole record."""
    return record[HEADER_SIZE:]


def as_record(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return HEADER.pack(len(body)) + body


@dataclass
class Pair:
    """An initiator and a responder with their keys."""

    initiator: PeerConnection
    responder: PeerConnection
    i_key: X25519PrivateKey
    r_key: X25519PrivateKey


def make_pair(
    *,
    i_token: bytes = TOKEN,
    r_token: bytes = TOKEN,
    i_farm: str = FARM,
    r_farm: str = FARM,
    initiator: dict[str, Any] | None = None,
    responder: dict[str, Any] | None = None,
) -> Pair:
    """A fresh, unconnected pair; ``initiator``/``responder`` are extra kwargs."""
    i_key, r_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    i = PeerConnection(initiator=True, static_key=i_key, psk=derive_psk(i_token, i_farm),
                       farm_id=i_farm, **(initiator or {}))
    r = PeerConnection(initiator=False, static_key=r_key, psk=derive_psk(r_token, r_farm),
                       farm_id=r_farm, **(responder or {}))
    return Pair(i, r, i_key, r_key)


def handshake(pair: Pair) -> tuple[list[ConnEvent], list[ConnEvent]]:
    """Run the three handshake messages and the responder's accept record;
    return (initiator events, responder events)."""
    i, r = pair.initiator, pair.responder
    i.start()
    r_events = feed(r, i.data_to_send())  # message 1 -> message 2 queued
    i_events = feed(i, r.data_to_send())  # message 2 -> message 3 queued
    r_events += feed(r, i.data_to_send())  # message 3 -> accept queued
    i_events += feed(i, r.data_to_send())  # accept
    return i_events, r_events


def open_pair(**kwargs: Any) -> Pair:
    """A pair past the handshake with both Hellos exchanged (state OPEN)."""
    pair = make_pair(**kwargs)
    handshake(pair)
    i, r = pair.initiator, pair.responder
    feed(r, i.send(make_hello("initiator")))
    feed(i, r.send(make_hello("responder")))
    assert i.state is ConnectionState.OPEN and r.state is ConnectionState.OPEN
    return pair
