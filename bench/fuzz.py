"""Fuzzers of the wire protocol: the record decoder, the codec, the handshake and session.

``python bench/fuzz.py`` (``--inputs N``, default 1,000,000, split evenly
across the three targets) feeds each sans-IO layer inputs made mostly from
valid seeds, so the deep paths are reached and not only the first check:

* framing: streams of valid records (``protocol.framing``) with their length
  headers and bodies mutated, fed to ``RecordDecoder`` in random slices (one
  byte at a time, random sizes, whole); checked against a reference decoder
  of a few lines (same records, refused exactly when it must be);
* codec: valid envelopes of every registered message type, mutated as bytes
  and as msgpack trees (values of the wrong type, unknown keys, other types'
  names, deep nesting, declared lengths far past the data, empty-map bombs),
  decoded by ``codec.decode``; what decodes must round-trip, and the job
  documents and manifests in it go through ``protocol.crdt`` and
  ``protocol.manifest`` as a node would read them;
* session: handshakes and sessions captured between two ``PeerConnection``
  (both ciphers, wrong token, wrong major, refused cipher, foreign farm),
  replayed mutated to a fresh responder or initiator (the captures replay
  byte for byte because both sides' ephemeral keys are fixed, as in the
  Noise test vectors), an authenticated peer sending crafted plaintext, live
  pairs with a byte mutated in flight, and random bytes.

Each input starts from its own ``random.Random(f"{seed}:{target}:{i}")``, so
``--repro TARGET:I`` runs one input again and prints what it did.  A crash is
any exception outside the protocol's ``ProtocolError`` family, a decoder
holding more than its limit, a wrong answer (the framing reference, a
round-trip), one input allocating more than its bound (tracemalloc peak over
``MEMORY_FACTOR`` times its size plus ``MEMORY_SLACK``) or taking over
``SLOW_S`` of CPU.  Printed per target: inputs tried, crashes, distinct error kinds
(the ProtocolError reasons, numbers and quoted values folded), how deep the
inputs got, the worst single input's memory, peak memory over the run
(tracemalloc) and seconds; then the first input and traceback of each crash
kind, and last ``crashes: N``.  Exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import re
import struct
import sys
import time
import traceback
import tracemalloc
import types
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tests package: not installed
    sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    NEED_DATA,
    BulkReceived,
    Cipher,
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    MessageReceived,
    PeerConnection,
    ProtocolError,
    codec,
    crdt,
    derive_psk,
    manifest,
)
from protocol.connection import MAGIC, PeerRejected  # noqa: E402
from protocol.framing import HEADER, HEADER_SIZE, MAX_BULK, MAX_CONTROL, RecordDecoder  # noqa: E402
from protocol.messages import (  # noqa: E402
    Call,
    DialBack,
    Error,
    Goodbye,
    Have,
    Heartbeat,
    JobDelta,
    JobDigest,
    Reply,
    Verdict,
)
from protocol.noise import XXpsk3  # noqa: E402
from tests.harness.sansio_pair import FARM, TOKEN, as_record, make_hello  # noqa: E402

TARGETS = ("framing", "codec", "session")
MEMORY_FACTOR = 64  #: an input may make the code under test allocate this many times its size ...
MEMORY_SLACK = 2 << 20  #: ... plus this
SLOW_S = 2.0  #: an input that takes more CPU seconds is a crash (a hang, in the limit)
SHOW_CRASHES = 5  #: crash kinds printed with the traceback of their first input


class Violation(Exception):
    """The code under test answered wrongly or held too much (a crash that is not an exception)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# -- the runner -------------------------------------------------------------------------------


def error_kind(exc: ProtocolError) -> str:
    """A ProtocolError's class and reason with numbers and quoted or bracketed values folded
    (a reject: its code, not the text the peer chose)."""
    if isinstance(exc, PeerRejected):
        return f"PeerRejected: {exc.code.name}"
    reason = exc.reason.encode("ascii", "backslashreplace").decode()
    reason = re.sub(r"b?'[^']*'|b?\"[^\"]*\"|\[.*\]|\{.*\}", "…", reason)
    reason = re.sub(r"major [^;]*;", "major …;", reason)
    reason = re.sub(r"0x[0-9a-f]+", "0x…", reason)
    reason = re.sub(r"\d+", "N", reason)
    return f"{type(exc).__name__}: {reason[:80]}"


def crash_kind(exc: BaseException) -> str:
    """Where an unexpected exception was raised: its type and innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


@dataclass
class Probe:
    """What one input did: the protocol errors it met and how deep it got."""

    errors: list[ProtocolError] = field(default_factory=list)
    reached: set[str] = field(default_factory=set)
    size: int = 0  #: bytes of input, for the memory bound and the report

    def error(self, exc: ProtocolError) -> None:
        self.errors.append(exc)

    def reach(self, label: str) -> None:
        self.reached.add(label)


@dataclass
class Tally:
    """One target's counts over a run."""

    name: str
    inputs: int = 0
    crashes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)
    crash_kinds: dict[str, tuple[int, str, str]] = field(default_factory=dict)  #: kind -> (input, head, tb)
    worst_alloc: tuple[int, int] = (0, 0)  #: (bytes allocated, input size) of the hungriest input
    slowest: float = 0.0
    peak: int = 0
    seconds: float = 0.0

    def crash(self, kind: str, index: int, head: str, tb: str) -> None:
        self.crashes += 1
        self.crash_kinds.setdefault(kind, (index, head, tb))


Run = Callable[[Probe], None]
#: Builds one input from its Random: (input size in bytes, the run of the code under test).
#: Only the run is timed and has its allocations counted.
Target = Callable[[random.Random], tuple[int, Run]]


def run_target(name: str, target: Target, count: int, seed: int, start: int = 0,
               verbose: bool = False) -> Tally:
    """Run ``count`` inputs of ``target``, each from its own seeded Random, under tracemalloc."""
    tally = Tally(name)
    tracemalloc.start()
    began = time.perf_counter()
    for index in range(start, start + count):
        rng = random.Random(f"{seed}:{name}:{index}")
        probe = Probe()
        probe.size, run = target(rng)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.process_time()  # CPU time: the neighbours on a shared machine do not count
        try:
            run(probe)
        except ProtocolError as exc:
            probe.error(exc)
        except Violation as exc:
            tally.crash(exc.kind, index, str(exc)[:300], traceback.format_exc())
        except Exception as exc:  # the point of the exercise: anything else is a finding
            tally.crash(crash_kind(exc), index, f"{type(exc).__name__}: {exc}"[:300],
                        traceback.format_exc())
        took = time.process_time() - t0
        _, peak = tracemalloc.get_traced_memory()
        used = peak - base
        tally.peak = max(tally.peak, peak)
        if used > tally.worst_alloc[0]:
            tally.worst_alloc = (used, probe.size)
        if used > MEMORY_FACTOR * probe.size + MEMORY_SLACK:
            tally.crash("memory over its bound", index,
                        f"{used / 2**20:.1f} MiB allocated for an input of {probe.size} bytes", "")
        if took > SLOW_S:
            tally.crash("slow input", index, f"{took:.2f} s for an input of {probe.size} bytes", "")
        tally.slowest = max(tally.slowest, took)
        for exc in probe.errors:
            tally.kinds[error_kind(exc)] += 1
        tally.reached.update(probe.reached)
        tally.inputs += 1
        if verbose:
            print(f"input {name}:{index}: {probe.size} bytes, reached {sorted(probe.reached)}, "
                  f"errors {[error_kind(e) for e in probe.errors]}, {used} bytes allocated")
    tally.seconds = time.perf_counter() - began
    tracemalloc.stop()
    return tally


# -- byte mutations -------------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xC4, 0xCA, 0xCB, 0xD9, 0xDB,
                     0xDC, 0xDD, 0xDE, 0xDF, 0x90, 0x9F, 0x8F, 0xA0, 0xBF]
INTERESTING_U32 = [0, 1, 2, 3, 4, 5, 15, 16, 255, 256, 0xFFFF, 0x10000, MAX_BULK - 1, MAX_BULK,
                   MAX_BULK + 1, MAX_CONTROL - 1, MAX_CONTROL, MAX_CONTROL + 1, MAX_CONTROL + 17,
                   200_000, 2**31 - 1, 2**31, 2**32 - 1]


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes], rounds: int = 0) -> bytes:
    """Apply 1-4 random byte-level mutations (``pool``: other seeds to splice from)."""
    buf = bytearray(data)
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 2, 3, 4))):
        n = len(buf)
        op = rng.randrange(12)
        at = rng.randrange(n) if n else 0
        if op == 0 and n:  # flip a bit
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            buf[at] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # insert random bytes
            buf[at:at] = rng.randbytes(rng.choice((1, 1, 2, 4, 8, 33)))
        elif op == 3 and n:  # delete a range
            del buf[at:at + rng.choice((1, 1, 2, 4, 16, n))]
        elif op == 4 and n:  # repeat a range, sometimes very often
            span = bytes(buf[at:at + rng.choice((1, 2, 3, 5, 9, 32))])
            buf[at:at] = span * rng.choice((1, 2, 10, 100, 1000))
        elif op == 5 and pool:  # splice a piece of another seed in
            other = rng.choice(pool)
            if other:
                a = rng.randrange(len(other))
                piece = other[a:a + rng.randrange(1, 64)]
                if rng.random() < 0.5:
                    buf[at:at + len(piece)] = piece
                else:
                    buf[at:at] = piece
        elif op == 6 and n:  # an interesting u32/u16 big-endian at a random offset
            value = rng.choice(INTERESTING_U32)
            width = rng.choice((2, 4))
            buf[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
        elif op == 7 and n:  # truncate
            del buf[at:]
        elif op == 8:  # append junk
            buf += rng.randbytes(rng.choice((1, 3, 4, 7, 100)))
        elif op == 9 and n > 1:  # swap two ranges
            a, b = sorted(rng.sample(range(n), 2))
            w = min(rng.choice((1, 4, 16)), b - a)
            buf[a:a + w], buf[b:b + w] = buf[b:b + w], buf[a:a + w]
        elif op == 10 and n:  # add a small delta to a byte
            buf[at] = (buf[at] + rng.choice((-2, -1, 1, 2))) & 0xFF
        elif op == 11 and n:  # random bytes over a range
            w = min(rng.choice((1, 2, 4, 8, 32)), n - at)
            buf[at:at + w] = rng.randbytes(w)
    return bytes(buf)


def slices(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut the way a socket might deliver it."""
    how = rng.randrange(5)
    if how == 0 or not data:
        return [data] if data else []
    if how == 1 and len(data) <= 4096:
        return [data[i:i + 1] for i in range(len(data))]
    if how == 2:
        size = rng.choice((2, 3, 4, 5, 7, 64, 1000) if len(data) <= 4096 else (64, 1000, 4096, 65536))
        return [data[i:i + size] for i in range(0, len(data), size)]
    if how == 3:  # cut at a few random points
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 6))))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out, at = [], 0
    while at < len(data):
        size = rng.randrange(1, 300)
        out.append(data[at:at + size])
        at += size
    return out


# -- target: framing ------------------------------------------------------------------------


def reference_records(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    """What a correct decoder yields from ``stream``: the whole records before the
    first oversize header, and whether it must refuse that header."""
    records, at = [], 0
    while len(stream) - at >= HEADER_SIZE:
        (n,) = HEADER.unpack_from(stream, at)
        if n > limit:
            return records, True
        if len(stream) - at - HEADER_SIZE < n:
            break
        records.append(stream[at + HEADER_SIZE:at + HEADER_SIZE + n])
        at += HEADER_SIZE + n
    return records, False


def framing_input(rng: random.Random) -> tuple[int, Run]:
    limit = rng.choice((0, 1, 16, 64, 64, 1024, MAX_BULK, MAX_CONTROL))
    sizes = [0, 1, 2, 3, 5, 17, limit - 1, limit, limit + 1] if limit <= MAX_BULK else [0, 1, 9, 100]
    bodies = [rng.randbytes(max(0, rng.choice(sizes) if rng.random() < 0.3 else rng.randrange(0, 40)))
              for _ in range(rng.randrange(0, 8))]
    stream = b"".join(as_record(b) for b in bodies)
    if rng.random() < 0.8:
        stream = mutate_bytes(rng, stream, bodies)
    if rng.random() < 0.2:  # an oversize (or exactly fitting) length header somewhere
        at = rng.randrange(len(stream) + 1)
        stream = stream[:at] + HEADER.pack(rng.choice(INTERESTING_U32)) + stream[at:]
    changing = rng.random() < 0.15  # the limit moves between records (handshake -> transport)
    views = rng.random() < 0.5
    pieces = slices(rng, stream)
    limits = [rng.choice((16, 64, MAX_BULK)) for _ in range(7)]
    return len(stream), lambda probe: decode_records(stream, pieces, limit, limits if changing else [],
                                                     views, probe)


def decode_records(stream: bytes, pieces: list[bytes], limit: int, limits: list[int], views: bool,
                   probe: Probe) -> None:
    """Feed ``pieces`` of ``stream`` to a RecordDecoder; after each record the limit
    moves to the next of ``limits`` if any; compared with the reference if none."""
    decoder = RecordDecoder(limit)
    got: list[bytes] = []
    try:
        for piece in pieces:
            try:
                decoder.feed(piece)
            except ProtocolError:
                if decoder.buffered > HEADER_SIZE + decoder.max_record + len(piece):
                    raise Violation("decoder over its limit", f"{decoder.buffered} bytes held") from None
                raise
            while True:
                if views:
                    view = decoder.next_record_view()
                    if view is None:
                        break
                    with view:
                        body = bytes(view)
                else:
                    maybe = decoder.next_record()
                    if maybe is None:
                        break
                    body = maybe
                if len(body) > decoder.max_record:
                    raise Violation("record over the limit", f"{len(body)} > {decoder.max_record}")
                got.append(body)
                probe.reach("record")
                if limits:
                    decoder.max_record = limits[len(got) % len(limits)]
            if decoder.buffered >= HEADER_SIZE + decoder.max_record:
                raise Violation("decoder over its limit",
                                f"{decoder.buffered} bytes held, limit {decoder.max_record}")
    except ProtocolError as exc:
        probe.error(exc)
        refused = True
    else:
        refused = False
    if not limits:
        want, must_refuse = reference_records(stream, limit)
        if got != want or refused != must_refuse:
            raise Violation("framing differs from the reference",
                            f"{len(got)} records (refused {refused}), want {len(want)} "
                            f"(refused {must_refuse})")


# -- target: codec --------------------------------------------------------------------------

SENTINEL = "\x00FUZZ-SPLICE\x00"
STAMP = [1_700_000_000_000, 3, "node-a"]


def sample(tp: Any, rng: random.Random, depth: int = 0) -> Any:
    """A random value of the annotated field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return rng.choice([None, True, 7, -1, 2.5, "text", b"\x00\xff", [1, "a"], {"k": [1]},
                           {"frames": "1-10", "renderer": "builtin", "nested": {"a": {"b": [{}]}}}])
    if tp is int:
        return rng.choice([0, 1, 7, 300, 70_000, 2**31, 2**63 - 1, -1, -(2**63)])
    if tp is float:
        return rng.choice([0.0, 1.5, -3.25, 1e300, 12.0])
    if tp is str:
        return rng.choice(["", "x", "uuid-1234", "ünïcode ✓", "a" * 300])
    if tp is bool:
        return rng.random() < 0.5
    if tp is bytes:
        return rng.randbytes(rng.choice((0, 1, 16, 32)))
    if origin is list:
        return [sample(args[0], rng, depth + 1) for _ in range(rng.randrange(0, 4 if depth else 20))]
    if origin is dict:
        return {str(sample(args[0], rng, depth + 1)) + str(i): sample(args[1], rng, depth + 1)
                for i in range(rng.randrange(0, 4))}
    if origin in (typing.Union, types.UnionType):
        return sample(rng.choice(args), rng, depth)
    return None


def job_seed(rng: random.Random) -> dict[str, Any]:
    """A realistic job document on the wire (``crdt.job_to_wire``)."""
    stamp: crdt.Stamp = (1_700_000_000_000 + rng.randrange(1000), rng.randrange(5), "node-a")
    tasks = {tid: crdt.TaskState(gen=1, done=tid % 2, attempt=rng.randrange(3), phase=tid % 6,
                                 stamp=stamp, worker="node-b", machines=("node-b", "node-c"),
                                 render_time=1.25, error="", lease_until=1.7e9, term=4,
                                 failures=rng.randrange(2),
                                 seen=("node-b", "node-c") if tid % 3 else (),
                                 runs=((4, 0), (4, 1)) if tid % 3 else ())
             for tid in range(rng.randrange(0, 30))}
    doc = crdt.JobDoc(
        uuid=f"job-{rng.randrange(100)}",
        fields={"scene": crdt.Register(stamp, "/proj/shot.blend"), "frames": crdt.Register(stamp, "1-100"),
                "rdata": crdt.Register(stamp, {"width": 640, "samples": 16})},
        gen=rng.randrange(3), deleted=stamp if rng.random() < 0.1 else None, tasks=tasks,
        log={stamp: "submitted", (stamp[0] + 1, 0, "node-c"): "rendering"},
        log_base=stamp if rng.random() < 0.3 else None,
    )
    return crdt.job_to_wire(doc)


def manifest_seed(rng: random.Random) -> bytes:
    """A valid asset manifest's encoding."""
    files = []
    for i in range(rng.randrange(1, 5)):
        size = rng.choice((0, 1, 1 << 20, (1 << 20) + 1))
        chunks = tuple(f"{rng.getrandbits(256):064x}" for _ in range((size + (1 << 20) - 1) >> 20))
        files.append(manifest.FileEntry(f"tex/file{i}.png", size, 0o644, chunks))
    return manifest.Manifest(tuple(files)).encode()


def codec_seeds(rng: random.Random) -> list[dict[str, Any]]:
    """Valid envelopes (as maps) of every registered message type, minimal and full."""
    out = []
    for type_name, cls in sorted(codec.message_types().items()):
        hints = typing.get_type_hints(cls)
        for full in (False, True, True):
            env: dict[str, Any] = {"v": codec.PROTO_MAJOR, "t": type_name,
                                   "id": rng.choice([0, 1, 2**63 - 1])}
            for f in dataclasses.fields(cls):
                required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                if required or full:
                    env[f.name] = sample(hints[f.name], rng)
            out.append(env)
    for _ in range(30):  # job documents: the richest thing a peer sends
        out.append({"v": 1, "t": "job_delta", "id": 3, "jobs": [job_seed(rng) for _ in range(2)]})
    for _ in range(6):
        out.append({"v": 1, "t": "reply", "id": 4, "result": {"data": manifest_seed(rng)}})
        out.append({"v": 1, "t": "call", "id": 5, "method": "status", "args": {}})
        out.append({"v": 1, "t": "job_digest", "id": 0,
                    "digests": {f"job-{i}": rng.randbytes(16) for i in range(8)}})
    return out


def bomb(rng: random.Random) -> bytes:
    """A msgpack fragment that promises far more than it holds, or nests deep."""
    kind = rng.choice((0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6))
    count = rng.choice([1, 15, 16, 1000, 65_535, 200_000, 200_001, 2**32 - 1])
    if kind == 0:  # nested container headers, each declaring many items
        header = rng.choice([b"\xdc" + struct.pack(">H", min(count, 0xFFFF)),
                             b"\xdd" + struct.pack(">I", count),
                             b"\xde" + struct.pack(">H", min(count, 0xFFFF)), b"\x91", b"\x9f"])
        return header * rng.choice((2, 10, 100, 1000, 5000))
    if kind == 1:  # an array of many empty maps or arrays
        n = rng.choice((15, 16, 100, 1000)) if rng.random() < 0.95 else rng.choice((60_000, 200_000))
        return b"\xdd" + struct.pack(">I", n) + rng.choice((b"\x80", b"\x90")) * n
    if kind == 2:  # a string or bin declaring more than the data holds
        return rng.choice((b"\xdb", b"\xc6", b"\xda", b"\xc5")) + struct.pack(">I", count)[
            -4 if rng.random() < 0.5 else -2:] + rng.randbytes(rng.randrange(0, 50))
    if kind == 3:  # extension types (refused: max_ext_len=0) and reserved bytes
        return rng.choice((b"\xd4\x01\x00", b"\xc7\x05\xff" + bytes(5), b"\xd6\xff" + bytes(4), b"\xc1"))
    if kind == 4:  # a map with keys that are not strings
        return b"\x81" + rng.choice((b"\x01", b"\xc0", b"\x90", b"\x80", b"\xcb" + bytes(8))) + b"\x01"
    if kind == 5:  # floats that are not numbers
        return rng.choice((b"\xcb\x7f\xf8" + bytes(6), b"\xcb\x7f\xf0" + bytes(6), b"\xcb\xff\xf0" + bytes(6)))
    n = 100 if rng.random() < 0.9 else 50_001  # 50_001: just past the container budget
    return b"\xdd" + struct.pack(">I", n) + b"\x91\x80" * n


ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, 1e300, 2.0**64, math.inf,
                         -math.inf, math.nan, "12", "", "x" * 70, b"", b"\x00" * 3, [], [[]], {}, {"": None},
                         [1, "two", 3.0], {"a": {"b": {"c": {}}}}, STAMP, [STAMP, "line"]]


def odd_value(rng: random.Random) -> Any:
    """A fresh copy of one of ``ODD_VALUES`` (the tree mutations change values in place)."""
    return copy.deepcopy(rng.choice(ODD_VALUES))


def slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of a decoded msgpack tree, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((node, key))
            slots(value, out)
    elif isinstance(node, list):
        for at, value in enumerate(node):
            out.append((node, at))
            slots(value, out)
    return out


def mutate_tree(rng: random.Random, tree: Any, names: list[str]) -> Any:
    """Change one spot of a decoded msgpack tree, picked uniformly among all its
    values (so a task state deep inside a job document is as likely as the
    envelope's type); returns the new tree."""
    spots = slots(tree, [])
    if not spots:
        return odd_value(rng) if rng.random() < 0.9 else SENTINEL
    parent, key = rng.choice(spots)
    op = rng.randrange(8)
    if op == 0:  # gone
        del parent[key]
    elif op == 1 and isinstance(parent, dict):  # a sibling key, known to some message or not
        parent[rng.choice(["zz", "t", "v", "id", "uuid", "f", "g", "x", "l", "lb", "jobs"])] = odd_value(rng)
    elif op == 1:
        parent.insert(key, odd_value(rng))
    elif op == 2 and isinstance(parent, list):  # the list grows
        parent.extend([parent[key]] * (rng.choice((2, 10, 50)) if rng.random() < 0.95 else 1000))
    elif op == 3 and key == "t":
        parent[key] = rng.choice(names)
    elif op == 4:
        parent[key] = SENTINEL  # spliced with a bomb after packing
    elif op == 5:
        parent[key] = [parent[key]] * rng.choice((1, 5))
    else:
        parent[key] = odd_value(rng)
    return tree


def codec_bytes(rng: random.Random, seeds: list[bytes], envelopes: list[dict[str, Any]]) -> bytes:
    """One codec input: a mutated valid envelope, a bomb, or random bytes."""
    how = rng.random()
    if how < 0.4:
        return mutate_bytes(rng, rng.choice(seeds), seeds)
    if how < 0.85:
        env = msgpack.unpackb(msgpack.packb(rng.choice(envelopes), use_bin_type=True), raw=False)
        names = sorted(codec.message_types())
        for _ in range(rng.choice((1, 1, 2, 3))):
            env = mutate_tree(rng, env, names)
        packed: bytes = msgpack.packb(env, use_bin_type=True)
        if len(packed) > MAX_CONTROL + 4096:  # the codec refuses it from its size: keep it cheap
            packed = packed[:MAX_CONTROL + rng.choice((1, 100, 4096))]
        spliced = msgpack.packb(SENTINEL, use_bin_type=True)
        while spliced in packed:
            packed = packed.replace(spliced, bomb(rng), 1)
        return mutate_bytes(rng, packed, seeds) if rng.random() < 0.2 else packed
    if how < 0.95:
        wrapped: bytes = msgpack.packb({"v": 1, "t": rng.choice(["call", "job_delta", "reply"]),
                                        "id": 1, "args": SENTINEL, "jobs": SENTINEL,
                                        "result": SENTINEL}, use_bin_type=True)
        return wrapped.replace(msgpack.packb(SENTINEL, use_bin_type=True), bomb(rng))
    return rng.randbytes(rng.choice((0, 1, 2, 5, 30, 300)))


def read_deep(msg: codec.Message, probe: Probe) -> None:
    """Read what is inside a message the way a node does (job documents, manifests)."""
    if isinstance(msg, JobDelta):
        for wire in msg.jobs:
            try:
                doc = crdt.job_from_wire(wire)
            except ProtocolError as exc:
                probe.error(exc)
                continue
            probe.reach("job document")
            merged, _ = crdt.absorb(None, doc)
            crdt.merge_job(merged, doc)
            crdt.digest(merged)
            merged.visible_log()
    elif isinstance(msg, Reply) and isinstance(msg.result, dict) and isinstance(msg.result.get("data"), bytes):
        try:
            found = manifest.decode(msg.result["data"])
        except ProtocolError as exc:
            probe.error(exc)
            return
        probe.reach("manifest")
        found.chunk_ids()


class CodecTarget:
    """Seeds built once; each input mutates one."""

    def __init__(self) -> None:
        rng = random.Random("codec-seeds")
        self.envelopes = codec_seeds(rng)
        self.seeds = [msgpack.packb(env, use_bin_type=True) for env in self.envelopes]
        for seed in self.seeds:  # the seeds themselves must decode
            codec.decode(seed)

    def __call__(self, rng: random.Random) -> tuple[int, Run]:
        data = codec_bytes(rng, self.seeds, self.envelopes)
        return len(data), lambda probe: decode_message(data, probe)


def decode_message(data: bytes, probe: Probe) -> None:
    """Decode as a node does; what decodes must round-trip and be read deeply."""
    msg, req_id = codec.decode(data)
    probe.reach(f"decoded {type(msg).TYPE}")
    again = codec.encode(msg, req_id)
    if codec.decode(again) != (msg, req_id) and again != codec.encode(*codec.decode(again)):
        raise Violation("codec round-trip differs", type(msg).TYPE)
    read_deep(msg, probe)


# -- target: session ------------------------------------------------------------------------


class ReplayConnection(PeerConnection):
    """A PeerConnection whose ephemeral key is fixed, so a captured session replays byte
    for byte (the Noise test vectors do the same).  Everything else is the real code."""

    def __init__(self, *, ephemeral: X25519PrivateKey, **kwargs: Any) -> None:
        self._fixed_ephemeral = ephemeral
        super().__init__(**kwargs)

    def _new_handshake(self, cipher: Cipher) -> XXpsk3:
        hs = super()._new_handshake(cipher)
        hs.e = self._fixed_ephemeral
        return hs


def fixed_key(label: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(random.Random(label).randbytes(32))


PSK = derive_psk(TOKEN, FARM)
#: (name, initiator kwargs, responder kwargs): what each captured session differs in
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("chachapoly", {"hint": {"uuid": "uuid-i", "name": "i"}}, {"hint": {"uuid": "uuid-r", "name": "r"}}),
    ("aesgcm", {"cipher": Cipher.AESGCM}, {}),
    ("wrong token", {"psk": derive_psk(b"another token entirely", FARM)}, {}),
    ("wrong major", {"major": 2}, {}),
    ("refused cipher", {"cipher": Cipher.AESGCM}, {"accept_ciphers": frozenset({Cipher.CHACHAPOLY})}),
    ("foreign farm", {"farm_id": "other-farm"}, {}),
]


def connection(initiator: bool, overrides: dict[str, Any], keys: tuple[str, str] = ("i", "r"),
               live_rng: random.Random | None = None) -> PeerConnection:
    """The initiator or responder of a scenario; fixed keys unless ``live_rng`` is given."""
    label = keys[0] if initiator else keys[1]
    kwargs: dict[str, Any] = {"initiator": initiator, "psk": PSK, "farm_id": FARM, **overrides}
    if live_rng is not None:
        return PeerConnection(static_key=X25519PrivateKey.from_private_bytes(live_rng.randbytes(32)),
                              **kwargs)
    return ReplayConnection(static_key=fixed_key(f"static-{label}"),
                            ephemeral=fixed_key(f"ephemeral-{label}"), **kwargs)


class Node:
    """One side of a session, reacting as a daemon would; collects what it writes."""

    def __init__(self, conn: PeerConnection, script: bool) -> None:
        self.conn = conn
        self.script = script  #: also send the rest of a session once open
        self.out: list[bytes] = []  #: records written, in order
        self.error: ProtocolError | None = None
        self.scripted = False

    def write(self, data: bytes) -> None:
        while data:
            (n,) = HEADER.unpack_from(data)
            self.out.append(data[:HEADER_SIZE + n])
            data = data[HEADER_SIZE + n:]

    def react(self, event: Any, probe: Probe) -> None:
        conn = self.conn
        if isinstance(event, HandshakeComplete):
            probe.reach("handshake complete")
            self.write(conn.send(make_hello("i" if conn.initiator else "r", features=["x"])))
        elif isinstance(event, MessageReceived):
            probe.reach(f"message {type(event.message).TYPE}")
            if event.req_id and not isinstance(event.message, (Reply, Error)):
                self.write(conn.send(Reply({"ok": True}), event.req_id))
        elif isinstance(event, BulkReceived):
            probe.reach("bulk")
        elif isinstance(event, ConnectionClosed):
            probe.reach("closed clean" if event.clean else "closed")
        if conn.state is ConnectionState.OPEN:
            probe.reach("open")
            if self.script and not self.scripted:
                self.scripted = True
                self.send_script()

    def send_script(self) -> None:
        """The rest of a session: a verdict, requests, bulk data, a goodbye."""
        conn, job = self.conn, job_seed(random.Random("script"))
        self.write(conn.send(Verdict(ok=True, bits=3)))
        self.write(conn.send(Heartbeat(seq=1, term=2, server="uuid-r"), 11))
        self.write(conn.send(Call("status", {"details": ["a"]}), 12))
        self.write(conn.send(JobDelta([job]), 13))
        self.write(conn.send(DialBack(["10.0.0.1:5401"]), 14))
        self.write(conn.send(JobDigest({"job-1": b"\x01" * 16})))
        self.write(conn.send(Have("m" * 64, b"\xff\x01")))
        for size in (0, 100, MAX_BULK):
            self.write(conn.send_bulk(5, b"\xab" * size))
        self.write(conn.send(Goodbye("done")))


def pump(i: Node, r: Node, probe: Probe, mutate: Callable[[int, bytes], bytes] | None = None,
         rng: random.Random | None = None) -> None:
    """Move bytes between two live nodes until both are quiet (``mutate`` edits hop n)."""
    i.write(i.conn.data_to_send())
    hop, sent = 0, {id(i): 0, id(r): 0}
    for _ in range(12):
        moved = False
        for src, dst in ((i, r), (r, i)):
            data = b"".join(src.out[sent[id(src)]:])
            sent[id(src)] = len(src.out)
            if not data:
                continue
            moved = True
            if mutate is not None:
                data = mutate(hop, data)
            hop += 1
            if dst.error is None:
                deliver(dst, slices(rng, data) if rng is not None else [data], probe)
        if not moved:
            return


def deliver(node: Node, pieces: list[bytes], probe: Probe, eof: bool = False) -> None:
    """Feed ``pieces`` to ``node`` as a daemon's reader would, checking the decoder's bound."""
    conn = node.conn
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                node.write(conn.data_to_send())
                node.react(event, probe)
            node.write(conn.data_to_send())
            if conn._decoder.buffered >= HEADER_SIZE + conn._decoder.max_record:
                raise Violation("session decoder over its limit", f"{conn._decoder.buffered} bytes held")
    except ProtocolError as exc:
        node.error = exc
        probe.error(exc)
        node.write(conn.data_to_send())  # a reject
        if isinstance(exc, PeerRejected):
            probe.reach("rejected")
        if conn._decoder.buffered > HEADER_SIZE + conn._decoder.max_record + max(map(len, pieces or [b""])):
            raise Violation("session decoder over its limit", f"{conn._decoder.buffered} bytes held") from None
        if conn.state is ConnectionState.ERROR:  # a failed session refuses any further use
            try:
                conn.receive_data(b"more")
            except ProtocolError:
                pass
            else:
                raise Violation("failed session accepted more data") from None


@dataclass(frozen=True)
class Capture:
    """A clean session: scenario and every record each side wrote, in order."""

    name: str
    i_overrides: dict[str, Any]
    r_overrides: dict[str, Any]
    to_responder: list[bytes]
    to_initiator: list[bytes]


def capture(name: str, i_over: dict[str, Any], r_over: dict[str, Any]) -> Capture:
    i = Node(connection(True, i_over), script=True)
    r = Node(connection(False, r_over), script=True)
    i.conn.start()
    pump(i, r, Probe())
    return Capture(name, i_over, r_over, list(i.out), list(r.out))


def mutate_records(rng: random.Random, records: list[bytes], pool: list[bytes]) -> bytes:
    """A captured stream with its records (or bytes) mutated."""
    recs = list(records)
    for _ in range(rng.choice((1, 1, 2))):
        op = rng.randrange(7)
        at = rng.randrange(len(recs)) if recs else 0
        if op == 0 and recs:  # drop a record
            del recs[at]
        elif op == 1 and recs:  # replay a record
            recs.insert(rng.randrange(len(recs) + 1), recs[at])
        elif op == 2 and len(recs) > 1:  # reorder two records
            b = rng.randrange(len(recs))
            recs[at], recs[b] = recs[b], recs[at]
        elif op == 3 and recs:  # cut the stream inside a record
            recs = recs[:at] + [recs[at][:rng.randrange(len(recs[at]) or 1)]]
        elif op == 4 and recs:  # a record from another session
            recs.insert(at, rng.choice(pool))
        elif op == 5 and recs:  # change one record's bytes (header, kind, ciphertext)
            recs[at] = mutate_bytes(rng, recs[at], pool)
        else:  # byte mutations anywhere in the stream
            return mutate_bytes(rng, b"".join(recs), pool)
    return b"".join(recs)


class SessionTarget:
    """Captured sessions built once; each input replays, crafts or live-mutates one."""

    def __init__(self) -> None:
        self.captures = [capture(*s) for s in SCENARIOS]
        self.pool = [rec for c in self.captures for rec in c.to_responder + c.to_initiator]
        self.codec = CodecTarget()

    def __call__(self, rng: random.Random) -> tuple[int, Run]:
        how = rng.random()
        if how < 0.6:
            return self.replay(rng)
        if how < 0.8:
            return self.crafted(rng)
        if how < 0.92:
            return self.live(rng)
        return self.garbage(rng)

    def replay(self, rng: random.Random) -> tuple[int, Run]:
        """A mutated capture to a fresh responder or initiator."""
        cap = rng.choice(self.captures)
        to_responder = rng.random() < 0.5
        records = cap.to_responder if to_responder else cap.to_initiator
        stream = mutate_records(rng, records, self.pool) if rng.random() < 0.9 else b"".join(records)
        pieces, eof = slices(rng, stream), rng.random() < 0.5

        def run(probe: Probe) -> None:
            node = Node(connection(not to_responder, cap.r_overrides if to_responder else cap.i_overrides),
                        script=False)
            if not to_responder:
                node.conn.start()
            deliver(node, pieces, probe, eof)

        return len(stream), run

    def crafted(self, rng: random.Random) -> tuple[int, Run]:
        """An authenticated peer, dialing or dialed, that encrypts whatever it likes
        (before its Hello, sometimes)."""
        bodies = []
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            kind = rng.random()
            if kind < 0.6:
                body = b"C" + codec_bytes(rng, self.codec.seeds, self.codec.envelopes)
            elif kind < 0.8:
                size = rng.choice((0, 1, 3, 4, 5, 100, MAX_BULK + 5, MAX_BULK + 6))
                body = b"B" + rng.randbytes(size - 1) if size else b""
            elif kind < 0.9:
                body = b"C" + codec.encode(rng.choice([make_hello("again"), Goodbye("x"),
                                                      Heartbeat(seq=3), Verdict(True, 0)]), rng.randrange(3))
            else:
                body = rng.choice((b"", b"Z", b"\x00", b"Cx")) + rng.randbytes(rng.randrange(8))
            if len(body) <= MAX_CONTROL + 1:
                bodies.append(body)
        before_hello, eof, cuts = rng.random() < 0.2, rng.random() < 0.3, random.Random(rng.random())
        attacker_dials = rng.random() < 0.5

        def run(probe: Probe) -> None:
            attacker = Node(connection(attacker_dials, {}), script=False)
            victim = Node(connection(not attacker_dials, {}), script=False)
            if before_hello:  # the attacker sends no Hello: only the handshake moves
                attacker.react = lambda event, probe: None  # type: ignore[method-assign]
            initiator, responder = (attacker, victim) if attacker_dials else (victim, attacker)
            initiator.conn.start()
            pump(initiator, responder, probe)
            stream = b"".join(attacker.conn._seal(body) for body in bodies)
            deliver(victim, slices(cuts, stream), probe, eof)

        return sum(map(len, bodies)), run

    def live(self, rng: random.Random) -> tuple[int, Run]:
        """Two live nodes (random keys), one byte mutation in flight at a random hop."""
        name, i_over, r_over = rng.choice(SCENARIOS)
        target_hop, chance = rng.randrange(8), random.Random(rng.random())

        def run(probe: Probe) -> None:
            i = Node(connection(True, i_over, live_rng=chance), script=True)
            r = Node(connection(False, r_over, live_rng=chance), script=True)
            i.conn.start()

            def mutate(hop: int, data: bytes) -> bytes:
                probe.size += len(data)
                return mutate_bytes(chance, data, self.pool, rounds=1) if hop == target_hop else data

            pump(i, r, probe, mutate, chance)
            for node in (i, r):
                if node.error is None:
                    deliver(node, [], probe, eof=True)

        return 0, run

    def garbage(self, rng: random.Random) -> tuple[int, Run]:
        """Random bytes (or a valid-looking first record, then random bytes) to a fresh side."""
        initiator = rng.random() < 0.3
        junk = rng.randbytes(rng.choice((1, 3, 4, 5, 60, 500, 3000)))
        if rng.random() < 0.5:
            kind = rng.choice((b"H" + MAGIC + b"\x01\x01", b"H" + MAGIC, b"H", b"R", b"A", b"R\x01"))
            junk = as_record(kind + junk[:rng.randrange(0, 100)]) + junk[100:]
        pieces, eof = slices(rng, junk), rng.random() < 0.5

        def run(probe: Probe) -> None:
            node = Node(connection(initiator, {}), script=False)
            if initiator:
                node.conn.start()
            deliver(node, pieces, probe, eof)

        return len(junk), run


# -- main -----------------------------------------------------------------------------------


def make_target(name: str) -> Target:
    if name == "framing":
        return framing_input
    if name == "codec":
        return CodecTarget()
    return SessionTarget()


def report(tally: Tally, show_kinds: bool) -> None:
    reached = ", ".join(f"{k} {v:,}" for k, v in sorted(tally.reached.items(), key=lambda kv: -kv[1])[:6])
    used, size = tally.worst_alloc
    print(f"{tally.name:8s} inputs {tally.inputs:,}  crashes {tally.crashes}  "
          f"error kinds {len(tally.kinds)}  peak memory {tally.peak / 2**20:.1f} MiB  "
          f"{tally.seconds:.1f} s", flush=True)
    print(f"{'':8s} worst input {used / 2**20:.2f} MiB for {size:,} bytes, slowest "
          f"{tally.slowest * 1e3:.1f} ms of CPU; reached: {reached}", flush=True)
    if show_kinds:
        for kind, n in tally.kinds.most_common():
            print(f"{'':10s}{n:9,}  {kind}")
    for n, (kind, (index, head, tb)) in enumerate(tally.crash_kinds.items()):
        print(f"  CRASH {kind}: first at --repro {tally.name}:{index}: {head}", file=sys.stderr)
        if tb and n < SHOW_CRASHES:
            print("    " + tb.strip().replace("\n", "\n    "), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs in total, split evenly")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--kinds", action="store_true", help="list every error kind seen")
    parser.add_argument("--repro", metavar="TARGET:I", help="run input I of TARGET alone, verbosely")
    args = parser.parse_args(argv)
    if args.repro:
        name, _, index = args.repro.partition(":")
        tally = run_target(name, make_target(name), 1, args.seed, int(index), verbose=True)
        report(tally, True)
        return 1 if tally.crashes else 0
    names = [n for n in args.targets.split(",") if n]
    if not names or any(n not in TARGETS for n in names) or args.inputs < len(names):
        parser.error(f"--targets is a subset of {','.join(TARGETS)}, --inputs at least one each")
    share = [args.inputs // len(names) + (k < args.inputs % len(names)) for k in range(len(names))]
    print(f"fuzzing {', '.join(names)}: {args.inputs:,} inputs, seed {args.seed}", flush=True)
    total = 0
    for name, count in zip(names, share, strict=True):
        tally = run_target(name, make_target(name), count, args.seed)
        report(tally, args.kinds)
        total += tally.crashes
    print(f"crashes: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
