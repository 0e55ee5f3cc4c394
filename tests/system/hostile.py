"""Hostile clients of a live rendernode daemon, for ``test_system_hostile.py``.

``python hostile.py peer --target HOST:PORT --seconds S`` attacks the peer
port from a bed host, all at once:

* idle: ``--idle`` connections held open for ``--idle-seconds`` (one opened
  again a second after the daemon closes it): a third send nothing, a third
  half a length header, a third a header and one byte of the record it
  promises; each waits up to ``--hold`` s for the daemon to close it;
* garbage: ``--garbage-rate`` connections a second (``--workers`` at a time) send
  random bytes, an HTTP request, oversize length headers, handshake records
  with a bad magic or an unknown kind, or a real first Noise message whose
  hint is a msgpack bomb (nested headers declaring 200,000 items, nesting
  deeper than the codec allows), then ends its side; each waits for the daemon
  to answer (a reject record) or close;
* flood: real XXpsk3 handshakes from one peer with the wrong token, at
  ``--rate`` per second, ``--workers`` at a time: each ends with the daemon's
  reject (WRONG_TOKEN, or BUSY) or a close.

``python hostile.py control --socket PATH --seconds S`` attacks the control
socket, ``--rate`` a second: well-formed records carrying garbage and msgpack bombs (2 million
empty maps in 2 MiB, a million in 1 MiB, deep nesting, huge declared
lengths), oversize length headers, and connections stuck in the middle of a
record; each must get an Error or a close.

Every loop is bounded by a count and by ``--seconds``; the last line printed
is one JSON object with the counts.  Traffic goes only to ``--target`` (a bed
address) or ``--socket``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import time
from collections import Counter
from typing import Any

import msgpack
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import (
    NEED_DATA,
    PROTO_MAJOR,
    Cipher,
    PeerConnection,
    PeerRejected,
    ProtocolError,
    derive_psk,
)
from protocol.connection import MAGIC, prologue
from protocol.framing import HEADER, MAX_CONTROL, RecordDecoder
from protocol.noise import XXpsk3

CONNECT_S = 3.0
ANSWER_S = 8.0  #: a connection the daemon neither answers nor closes within this is "hung"
MAX_CONNECTIONS = 3000  #: per attack, whatever the rate
IDLE_ROUNDS = 30  #: connections one idle slot opens at most
REOPEN_S = 1.0  #: an idle slot whose connection was closed opens the next after this


def nested_headers(depth: int) -> bytes:
    """Array headers each declaring 200,000 items, and no items."""
    return (b"\xdd" + struct.pack(">I", 200_000)) * depth


def deep_list(depth: int) -> bytes:
    """A whole msgpack value nested ``depth`` arrays deep."""
    return b"\x91" * depth + b"\x00"


class Tally:
    """Outcomes by kind of connection, and the slowest close."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.slowest = 0.0

    def add(self, kind: str, outcome: str, took: float = 0.0) -> None:
        self.counts[f"{kind}:{outcome}"] += 1
        self.slowest = max(self.slowest, took)


async def read_until_closed(stream: trio.abc.Stream, limit: float) -> tuple[str, bytes]:
    """("closed" | "reset" | "hung", bytes received) once the daemon closes or ``limit`` passes."""
    data = bytearray()
    with trio.move_on_after(limit):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return "reset", bytes(data)
            if not chunk:
                return "closed", bytes(data)
            data += chunk
    return "hung", bytes(data)


# -- the peer port ------------------------------------------------------------------------


def first_message(farm: str, payload: bytes) -> bytes:
    """A real first handshake record (any key, any token) carrying ``payload`` as its hint."""
    hs = XXpsk3(initiator=True, static=X25519PrivateKey.generate(), psk=derive_psk(b"x" * 32, farm),
                prologue=prologue(PROTO_MAJOR, Cipher.CHACHAPOLY, farm))
    body = b"H" + MAGIC + bytes([PROTO_MAJOR, Cipher.CHACHAPOLY]) + hs.write_message(payload)
    return HEADER.pack(len(body)) + body


def garbage(rng: random.Random, farm: str, n: int) -> tuple[str, bytes]:
    """The ``n``-th garbage sent to the peer port."""
    kinds = [
        ("random", lambda: rng.randbytes(rng.randrange(1, 2000))),
        ("http", lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("oversize", lambda: HEADER.pack(0xFFFFFFF0) + b"H" * 1000),
        ("oversize-handshake", lambda: HEADER.pack(70_000) + b"H" * 100),
        ("bad-magic", lambda: HEADER.pack(16) + b"HXX\x01\x01" + rng.randbytes(11)),
        ("unknown-kind", lambda: HEADER.pack(5) + b"Zjunk"),
        ("hint-bomb", lambda: first_message(farm, nested_headers(800))),
        ("hint-deep", lambda: first_message(farm, deep_list(900))),
        ("hint-maps", lambda: first_message(farm, b"\xdc\x0f\xa0" + b"\x80" * 4000)),
    ]
    kind, make = kinds[n % len(kinds)]
    return kind, make()


async def idle_connection(host: str, port: int, n: int, deadline: float, hold: float, tally: Tally) -> None:
    """Hold one idle connection open until ``deadline``: when the daemon closes it,
    open another a second later.  Each waits up to ``hold`` s for its close."""
    sends = [b"", b"\x00\x00", HEADER.pack(100) + b"H"]
    kind = ("silent", "half-header", "partial-record")[n % 3]
    for _ in range(IDLE_ROUNDS):
        if time.monotonic() >= deadline:
            return
        try:
            with trio.fail_after(CONNECT_S):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError):
            tally.add(f"idle-{kind}", "connect-failed")
            await trio.sleep(REOPEN_S)
            continue
        async with stream:
            t0 = time.monotonic()
            try:
                if sends[n % 3]:
                    await stream.send_all(sends[n % 3])
                outcome, _ = await read_until_closed(stream, hold)
            except (trio.BrokenResourceError, OSError):
                outcome = "reset"
            tally.add(f"idle-{kind}", outcome, time.monotonic() - t0 if outcome != "hung" else 0.0)
        await trio.sleep(REOPEN_S)


async def garbage_worker(host: str, port: int, farm: str, deadline: float, seed: int, interval: float,
                         counter: list[int], tally: Tally) -> None:
    rng = random.Random(seed)
    next_at = time.monotonic()
    while time.monotonic() < deadline and counter[0] < MAX_CONNECTIONS:
        await trio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        counter[0] += 1
        kind, payload = garbage(rng, farm, counter[0])
        try:
            with trio.fail_after(CONNECT_S):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError):
            tally.add(kind, "connect-failed")
            continue
        async with stream:
            t0 = time.monotonic()
            try:
                await stream.send_all(payload)
                await stream.send_eof()
            except (trio.BrokenResourceError, OSError):
                tally.add(kind, "reset")
                continue
            outcome, data = await read_until_closed(stream, ANSWER_S)
            answered = "answered+" if data else ""
            tally.add(kind, answered + outcome, time.monotonic() - t0)


async def handshake_once(host: str, port: int, farm: str, key: X25519PrivateKey | None, tally: Tally) -> None:
    """One wrong-token handshake; ``key`` None: a fresh identity (key and hinted uuid) each time."""
    uuid = "hostile-peer" if key is not None else f"hostile-{os.urandom(8).hex()}"
    conn = PeerConnection(initiator=True, static_key=key or X25519PrivateKey.generate(),
                          psk=derive_psk(b"not the farm token", farm), farm_id=farm,
                          hint={"uuid": uuid, "name": "hostile"})
    t0 = time.monotonic()
    try:
        with trio.fail_after(CONNECT_S):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError):
        tally.add("flood", "connect-failed")
        return
    async with stream:
        outcome = "hung"
        with trio.move_on_after(ANSWER_S):
            try:
                conn.start()
                while True:
                    event = conn.next_event()
                    out = conn.data_to_send()
                    if out:
                        await stream.send_all(out)
                    if event is not NEED_DATA:
                        outcome = "completed"  # the daemon accepted a wrong token
                        break
                    conn.receive_data(await stream.receive_some(65536))
            except PeerRejected as exc:
                outcome = f"rejected-{exc.code.name}"
            except ProtocolError:
                outcome = "closed"  # ended before a reject: refused at accept
            except (trio.BrokenResourceError, OSError):
                outcome = "reset"
        tally.add("flood", outcome, time.monotonic() - t0)


async def flood(host: str, port: int, farm: str, deadline: float, rate: float, workers: int,
                fresh: bool, tally: Tally) -> None:
    key = None if fresh else X25519PrivateKey.generate()  # one peer, one identity, the wrong token
    slots = trio.Semaphore(workers)
    started = 0
    async with trio.open_nursery() as nursery:
        next_at = time.monotonic()
        while time.monotonic() < deadline and started < MAX_CONNECTIONS:
            await trio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / rate
            await slots.acquire()
            started += 1

            async def one() -> None:
                try:
                    await handshake_once(host, port, farm, key, tally)
                finally:
                    slots.release()

            nursery.start_soon(one)


async def peer_attack(a: argparse.Namespace) -> dict[str, Any]:
    host, _, port_s = a.target.rpartition(":")
    port = int(port_s)
    idle, junk, hand = Tally(), Tally(), Tally()
    deadline = time.monotonic() + a.seconds
    idle_deadline = time.monotonic() + (a.seconds if a.idle_seconds is None else a.idle_seconds)
    counter = [0]
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n in range(a.idle):
            nursery.start_soon(idle_connection, host, port, n, idle_deadline, a.hold, idle)
        for w in range(a.workers):
            nursery.start_soon(garbage_worker, host, port, a.farm, deadline, w, a.workers / a.garbage_rate,
                               counter, junk)
        nursery.start_soon(flood, host, port, a.farm, deadline, a.rate, a.workers, a.fresh_identities, hand)
    return {"idle": dict(idle.counts), "idle_slowest_close": round(idle.slowest, 2),
            "garbage": dict(junk.counts), "garbage_slowest": round(junk.slowest, 2),
            "flood": dict(hand.counts), "flood_slowest": round(hand.slowest, 2),
            "seconds": round(time.monotonic() - t0, 2)}


# -- the control socket ----------------------------------------------------------------------


def control_bodies() -> list[tuple[str, bytes]]:
    """Well-formed records whose bodies are garbage or msgpack bombs."""
    two_million_maps = b"\xdd" + (2_000_000).to_bytes(4, "big") + b"\x80" * 2_000_000
    inner = b"\xdd" + (200_000).to_bytes(4, "big") + b"\x80" * 200_000
    million_maps = b"\xdd" + (5).to_bytes(4, "big") + inner * 5
    call = {"v": PROTO_MAJOR, "t": "call", "id": 9, "method": "status", "args": {}}
    hole = "\x00SPLICE"

    def call_with(**raw: bytes) -> bytes:
        """The status call with raw msgpack bytes as the value of one key."""
        [(key, value)] = raw.items()
        packed: bytes = msgpack.packb({**call, key: hole})
        return packed.replace(msgpack.packb(hole), value)

    return [
        ("garbage", os.urandom(300)),
        ("not-msgpack", b"not msgpack at all"),
        ("maps-2mib", two_million_maps),  # over the 1 MiB limit: refused from its header
        ("maps-1mib", million_maps),
        ("maps-in-call", call_with(args=b"\x81\xa1a" + inner)),
        ("nested-headers", nested_headers(1000)),
        ("nested-in-call", call_with(args=b"\x81\xa1a" + nested_headers(1000))),
        ("deep-major", call_with(v=deep_list(1000))),
        ("deep-args", call_with(args=b"\x81\xa1a" + deep_list(900))),
        ("huge-str", call_with(args=b"\xdb\xff\xff\xff\xff" + b"x" * 100)),
        ("huge-bin", call_with(args=b"\xc6\xff\xff\xff\xff" + b"x" * 100)),
        ("huge-array", call_with(args=b"\xdd\xff\xff\xff\xff" + b"\x00" * 100)),
        ("huge-map", call_with(args=b"\xdf\xff\xff\xff\xff" + b"\x00" * 100)),
        ("ext", call_with(args=b"\xc7\x05\x01" + b"\x00" * 5)),
        ("nan-major", msgpack.packb({"v": math.nan, "t": "call", "id": 1, "method": "status"})),
    ]


async def control_request(path: str, kind: str, wire: bytes, tally: Tally) -> None:
    """Send ``wire`` on a fresh control connection; an Error reply or a close is the answer."""
    try:
        with trio.fail_after(CONNECT_S):
            stream = await trio.open_unix_socket(path)
    except (OSError, trio.TooSlowError):
        tally.add(kind, "connect-failed")
        return
    async with stream:
        t0 = time.monotonic()
        try:
            await stream.send_all(wire)
        except (trio.BrokenResourceError, OSError):
            tally.add(kind, "reset")
            return
        decoder = RecordDecoder(MAX_CONTROL)
        outcome = "hung"
        with trio.move_on_after(ANSWER_S):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, OSError):
                    outcome = "reset"
                    break
                if not chunk:
                    outcome = "closed"
                    break
                decoder.feed(chunk)
                body = decoder.next_record()
                if body is not None:
                    reply = msgpack.unpackb(body, raw=False)
                    outcome = f"{reply.get('t')}:{reply.get('code', '')}"
                    break
        tally.add(kind, outcome, time.monotonic() - t0)


async def control_attack(a: argparse.Namespace) -> dict[str, Any]:
    tally, stuck = Tally(), Tally()
    bodies = control_bodies()
    requests = [(kind, HEADER.pack(len(body)) + body) for kind, body in bodies]
    requests += [("oversize", HEADER.pack(MAX_CONTROL + 1)), ("oversize-max", HEADER.pack(0xFFFFFFFF) + b"x")]
    deadline = time.monotonic() + a.seconds
    t0 = time.monotonic()
    sent = [0]

    async def worker(w: int) -> None:
        next_at = time.monotonic()
        while time.monotonic() < deadline and sent[0] < MAX_CONNECTIONS:
            await trio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += a.workers / a.rate
            kind, wire = requests[sent[0] % len(requests)]
            sent[0] += 1
            await control_request(a.socket, kind, wire, tally)

    async def stuck_mid_record() -> None:  # promises 1000 bytes, sends one, waits
        with trio.move_on_after(a.seconds):
            try:
                stream = await trio.open_unix_socket(a.socket)
            except OSError:
                stuck.add("stuck", "connect-failed")
                return
            async with stream:
                try:
                    await stream.send_all(HEADER.pack(1000) + b"\x80")
                except (trio.BrokenResourceError, OSError):
                    stuck.add("stuck", "reset")
                    return
                stuck.add("stuck", "held")
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _ in range(a.stuck):  # one after another: the listener's backlog is short
            nursery.start_soon(stuck_mid_record)
            await trio.sleep(0.005)
        for w in range(a.workers):
            nursery.start_soon(worker, w)
    return {"control": dict(tally.counts), "control_slowest": round(tally.slowest, 2),
            "stuck": dict(stuck.counts), "seconds": round(time.monotonic() - t0, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    peer = sub.add_parser("peer")
    peer.add_argument("--target", required=True, help="HOST:PORT of the daemon's peer port")
    peer.add_argument("--farm", default="default")
    peer.add_argument("--seconds", type=float, default=10.0)
    peer.add_argument("--idle", type=int, default=300)
    peer.add_argument("--hold", type=float, default=9.0)
    peer.add_argument("--idle-seconds", type=float, help="how long idle connections are opened again "
                      "(default: --seconds)")
    peer.add_argument("--rate", type=float, default=40.0, help="wrong-token handshakes per second")
    peer.add_argument("--garbage-rate", type=float, default=100.0, help="garbage connections per second")
    peer.add_argument("--workers", type=int, default=4)
    peer.add_argument("--fresh-identities", action="store_true",
                      help="each flood handshake with a new key and hinted uuid")
    control = sub.add_parser("control")
    control.add_argument("--socket", required=True)
    control.add_argument("--seconds", type=float, default=10.0)
    control.add_argument("--workers", type=int, default=2)
    control.add_argument("--rate", type=float, default=60.0, help="bad requests per second")
    control.add_argument("--stuck", type=int, default=8)
    a = parser.parse_args()
    print("ready", flush=True)
    result = trio.run(peer_attack if a.mode == "peer" else control_attack, a)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
