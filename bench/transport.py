"""Transport benchmark: framed plaintext against the encrypted session.

``python bench/transport.py`` runs, in one process and one trio loop, a sender
task streaming records over loopback TCP to a receiver task that decodes (and
for the encrypted runs decrypts) every record:

* plain: ``protocol.framing`` records (u32 length + body, ``RecordDecoder``);
* encrypted: ``PeerConnection`` after a real Noise XXpsk3 handshake and Hello
  exchange, ``send_bulk`` records, for each cipher asked for.

The measurements are interleaved in rounds (plain, then each cipher, again and
again) so a noisy neighbour hurts them alike; each line gives the median over
the rounds and the range.  Then it measures full handshakes (Noise + Hello
both ways) in memory and over loopback TCP.  The last line is
``encrypted/plain: R``, the default cipher's median MB/s over plain's.

Sender and receiver share one thread, so every MB/s figure pays for both ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import (
    NEED_DATA,
    PROTO_MAJOR,
    PROTO_MINOR,
    BulkReceived,
    Cipher,
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    PeerConnection,
    derive_psk,
)
from protocol.framing import MAX_BULK, RecordDecoder, encode_record
from protocol.messages import Hello

#: Bytes asked of the socket per read; big reads keep trio's per-call cost low.
RECV_SIZE = 1 << 20
#: Stream id the bulk records travel on.
STREAM_ID = 7
FARM_ID = "bench-farm"
CIPHER_NAMES = {"chachapoly": Cipher.CHACHAPOLY, "aesgcm": Cipher.AESGCM}
DEFAULT_CIPHER = Cipher.CHACHAPOLY  # what PeerConnection picks when not told


@dataclass(frozen=True)
class Peer:
    """One side's long-lived identity: static key, farm PSK and Hello."""

    static: X25519PrivateKey
    psk: bytes
    hello: Hello

    def connection(self, *, initiator: bool, cipher: Cipher) -> PeerConnection:
        """A fresh session for this peer."""
        return PeerConnection(initiator=initiator, static_key=self.static, psk=self.psk,
                              farm_id=FARM_ID, cipher=cipher)


def make_peer(name: str) -> Peer:
    """A peer of the bench farm."""
    hello = Hello(uuid=f"uuid-{name}", name=name, build_id="bench", arch="x86_64",
                  proto_major=PROTO_MAJOR, proto_minor=PROTO_MINOR,
                  capabilities={"blender": "4.1"}, listen=["127.0.0.1:9000"])
    return Peer(X25519PrivateKey.generate(), derive_psk(b"bench token", FARM_ID), hello)


# -- loopback TCP -----------------------------------------------------------


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected (client, server) pair of loopback TCP streams."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    return client, server


async def open_session(stream: trio.SocketStream, conn: PeerConnection, hello: Hello) -> None:
    """Handshake and exchange Hellos on ``stream``; returns once ``conn`` is OPEN."""
    if conn.initiator:
        conn.start()
    while conn.state is not ConnectionState.OPEN:
        event = conn.next_event()
        out = conn.data_to_send()  # what the handshake queued, before we wait to read
        if out:
            await stream.send_all(out)
        if event is NEED_DATA:
            conn.receive_data(await stream.receive_some(RECV_SIZE))
        elif isinstance(event, HandshakeComplete):
            await stream.send_all(conn.send(hello))
        elif isinstance(event, ConnectionClosed):
            raise RuntimeError(f"peer closed during session setup: {event.reason}")


# -- throughput -------------------------------------------------------------


async def _send_for(stream: trio.SocketStream, seconds: float,
                    record: Callable[[], bytes]) -> None:
    deadline = time.perf_counter() + seconds
    send_all = stream.send_all
    while time.perf_counter() < deadline:
        for _ in range(16):
            await send_all(record())
    await stream.send_eof()


@dataclass(frozen=True)
class Rate:
    """One throughput measurement: MB/s of wall time and MB per CPU-second of this process."""

    wall: float
    cpu: float


class _Clock:
    """Wall and process CPU time since construction."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def rate(self, nbytes: int) -> Rate:
        return Rate(nbytes / (time.perf_counter() - self.wall) / 1e6,
                    nbytes / (time.process_time() - self.cpu) / 1e6)


async def plain_throughput(seconds: float, size: int) -> Rate:
    """Throughput of framed plaintext records decoded by ``RecordDecoder``."""
    payload = os.urandom(size)
    client, server = await tcp_pair()
    received = 0

    async def receive() -> None:
        nonlocal received
        decoder = RecordDecoder(MAX_BULK)
        while data := await server.receive_some(RECV_SIZE):
            decoder.feed(data)
            while (body := decoder.next_record()) is not None:
                received += len(body)
        if decoder.buffered:
            raise RuntimeError("stream ended inside a record")

    clock = _Clock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(_send_for, client, seconds, lambda: encode_record(payload, MAX_BULK))
    rate = clock.rate(received)
    await client.aclose()
    await server.aclose()
    return rate


async def encrypted_throughput(seconds: float, size: int, cipher: Cipher,
                               alice: Peer, bob: Peer) -> Rate:
    """Throughput of ``send_bulk`` records through an open session, decrypted on arrival."""
    payload = os.urandom(size)
    client, server = await tcp_pair()
    tx = alice.connection(initiator=True, cipher=cipher)
    rx = bob.connection(initiator=False, cipher=cipher)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_session, client, tx, alice.hello)
        nursery.start_soon(open_session, server, rx, bob.hello)
    received = 0

    async def receive() -> None:
        nonlocal received
        while True:
            event = rx.next_event()
            if event is NEED_DATA:
                rx.receive_data(await server.receive_some(RECV_SIZE))
            elif isinstance(event, BulkReceived):
                received += len(event.data)
            elif isinstance(event, ConnectionClosed):
                return
            else:
                raise RuntimeError(f"unexpected event {event!r}")

    clock = _Clock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(_send_for, client, seconds, lambda: tx.send_bulk(STREAM_ID, payload))
    rate = clock.rate(received)
    await client.aclose()
    await server.aclose()
    return rate


def ends_in_memory(seconds: float, size: int, cipher: Cipher, alice: Peer, bob: Peer,
                   ) -> tuple[float, float]:
    """MB per CPU-second of ``send_bulk`` alone and of ``receive_data`` + ``next_event``
    alone (the cost of each end without a socket), through an open session."""
    tx, rx = handshake_in_memory(alice, bob, cipher)
    payload = os.urandom(size)
    seal = open_ = 0.0
    received = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.process_time()
        wire = [tx.send_bulk(STREAM_ID, payload) for _ in range(16)]
        t1 = time.process_time()
        blob = b"".join(wire)  # stands in for the socket; not timed
        t2 = time.process_time()
        del wire
        rx.receive_data(blob)
        del blob  # the decoder holds it now; freed once read, as a socket's buffer would be
        while (event := rx.next_event()) is not NEED_DATA:
            assert isinstance(event, BulkReceived)
            received += len(event.data)
        seal += t1 - t0
        open_ += time.process_time() - t2
    return received / seal / 1e6, received / open_ / 1e6


# -- handshakes -------------------------------------------------------------


def _step(conn: PeerConnection, hello: Hello, incoming: bytes) -> bytes:
    """Feed ``incoming`` to ``conn``, handle its events; return the bytes it would write."""
    if incoming:
        conn.receive_data(incoming)
    out = bytearray()
    while (event := conn.next_event()) is not NEED_DATA:
        out += conn.data_to_send()
        if isinstance(event, HandshakeComplete):
            out += conn.send(hello)
    out += conn.data_to_send()
    return bytes(out)


def handshake_in_memory(alice: Peer, bob: Peer, cipher: Cipher) -> tuple[PeerConnection, PeerConnection]:
    """One full session setup, both sides in this thread, bytes handed over directly;
    returns the open (initiator, responder) pair."""
    ini = alice.connection(initiator=True, cipher=cipher)
    res = bob.connection(initiator=False, cipher=cipher)
    ini.start()
    to_res = ini.data_to_send()
    for _ in range(4):
        to_res = _step(ini, alice.hello, _step(res, bob.hello, to_res))
        if ini.state is ConnectionState.OPEN:
            break
    _step(res, bob.hello, to_res)
    if ini.state is not ConnectionState.OPEN or res.state is not ConnectionState.OPEN:
        raise RuntimeError("a side is not open after the handshake and the Hellos")
    return ini, res


def handshakes_in_memory(seconds: float, alice: Peer, bob: Peer, cipher: Cipher) -> float:
    """Full session setups per second without I/O."""
    count = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(10):
            handshake_in_memory(alice, bob, cipher)
        count += 10
    return count / (time.perf_counter() - start)


async def handshakes_tcp(seconds: float, alice: Peer, bob: Peer, cipher: Cipher) -> float:
    """Session setups per second, each on a new loopback TCP connection, one at a time."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def respond(stream: trio.SocketStream) -> None:
        async with stream:
            await open_session(stream, bob.connection(initiator=False, cipher=cipher), bob.hello)

    count = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, respond, listeners)
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await open_session(stream, alice.connection(initiator=True, cipher=cipher),
                                   alice.hello)
            count += 1
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return count / elapsed


# -- main -------------------------------------------------------------------


def _summary(rates: list[Rate]) -> str:
    wall = [r.wall for r in rates]
    cpu = statistics.median(r.cpu for r in rates)
    return (f"{statistics.median(wall):.0f} MB/s (median of {len(rates)}, range "
            f"{min(wall):.0f}-{max(wall):.0f}; {cpu:.0f} MB per CPU-second)")


async def run(args: argparse.Namespace) -> None:
    """Run every measurement and print one line each."""
    size, seconds, rounds = args.record_size, args.seconds, args.rounds
    ciphers = [CIPHER_NAMES[c] for c in args.cipher]
    alice, bob = make_peer("alice"), make_peer("bob")
    label = f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; sender and "
          f"receiver share one thread; {rounds} interleaved rounds of {seconds:g}s each")
    plain: list[Rate] = []
    encrypted: dict[Cipher, list[Rate]] = {c: [] for c in ciphers}
    for _ in range(rounds):
        plain.append(await plain_throughput(seconds, size))
        for cipher in ciphers:
            encrypted[cipher].append(await encrypted_throughput(seconds, size, cipher, alice, bob))
    print(f"plain {label} records: {_summary(plain)}")
    for cipher in ciphers:
        print(f"encrypted {cipher.noise_name} {label} records: {_summary(encrypted[cipher])}")
    for cipher in ciphers:
        ends = [ends_in_memory(seconds / 2, size, cipher, alice, bob) for _ in range(rounds)]
        print(f"encrypted {cipher.noise_name} {label} records without a socket, per end: "
              f"send_bulk {statistics.median(e[0] for e in ends):.0f} MB, receive_data + "
              f"next_event {statistics.median(e[1] for e in ends):.0f} MB per CPU-second")
    for cipher in ciphers:
        mem = [handshakes_in_memory(seconds / 2, alice, bob, cipher) for _ in range(rounds)]
        print(f"handshakes {cipher.noise_name} (Noise XXpsk3 + Hello both ways, both sides "
              f"in memory, one core): {statistics.median(mem):.0f}/s")
    tcp = [await handshakes_tcp(seconds / 2, alice, bob, ciphers[0]) for _ in range(rounds)]
    print(f"handshakes {ciphers[0].noise_name} over loopback TCP with trio (a new connection "
          f"each, one at a time): {statistics.median(tcp):.0f}/s")
    ratio_cipher = DEFAULT_CIPHER if DEFAULT_CIPHER in encrypted else ciphers[0]
    enc = encrypted[ratio_cipher]
    cpu_ratio = statistics.median(r.cpu for r in enc) / statistics.median(r.cpu for r in plain)
    ratio = statistics.median(r.wall for r in enc) / statistics.median(r.wall for r in plain)
    print(f"encrypted/plain per CPU-second: {cpu_ratio:.2f} (less sensitive to other load)")
    print(f"(next line: {ratio_cipher.noise_name} median MB/s over plain median MB/s)")
    print(f"encrypted/plain: {ratio:.2f}")


def _record_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BULK:
        raise argparse.ArgumentTypeError(f"record size must be 1..{MAX_BULK} (protocol.framing.MAX_BULK)")
    return value


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="duration of each throughput measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; lines report the median (default 3)")
    parser.add_argument("--record-size", type=_record_size, default=MAX_BULK,
                        help=f"bytes of payload per record (default {MAX_BULK})")
    parser.add_argument("--cipher", choices=[*CIPHER_NAMES, "both"], default="both",
                        help="cipher(s) for the encrypted runs (default both)")
    args = parser.parse_args()
    args.cipher = list(CIPHER_NAMES) if args.cipher == "both" else [args.cipher]
    trio.run(run, args)


if __name__ == "__main__":
    main()
