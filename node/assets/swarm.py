"""Peer-to-peer chunk distribution.

Nodes announce which chunks of a manifest they hold (``Have``, a bitfield,
sent again, coalesced over ``ANNOUNCE_EVERY``, to every peer at once, as
chunks arrive).

Fetching: one scheduler per fetch keeps at most ``MAX_IN_FLIGHT`` requests
in flight, at most ``SLOTS_PER_PEER`` of them to one peer: a chunk arrives
whole soon, and can be passed on, rather than many arriving slowly at once,
and no more than one waits in the queue of a busy peer (a fetch from one
source keeps ``PIPELINE`` requests with it, so no round trip idles the link).
It asks for the rarest missing chunk first (random among equals), of the
holder it has the fewest requests with, then of the one holding the fewest
chunks: the origin, which holds everything, is asked last, so its upload
goes to chunks no one else has yet.  When only ``ENDGAME`` chunks are
missing it also asks a second peer for a chunk in flight for ``ENDGAME_AFTER``
(end game).
Each chunk is verified against its name before it is stored or offered; a
peer that sends bad data is banned for that fetch and the chunk asked of
another.  Chunks already in the store are never fetched again, so a fetch
cut short (even by kill -9) resumes where it stopped.

Serving: requests wait in one queue per node and at most ``serving`` (a
limiter whose size drops to ``serve_slots_rendering`` while this node
renders) are sent at once, the chunk this node has sent least often first
(a request that waited ``AGE_LIMIT`` goes first), so a node's upload goes to
chunks new to the farm before more copies of ones already out.  While
``BUSY_QUEUE`` requests wait, a request for a chunk this node has sent and
another peer now holds is answered ``busy`` at once, and the asker gets it
from that peer; an asker turned away once for a chunk is served when it
asks again (it may have no other source: NOPEERTOPEERASSETDISTRIBUTION).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.assets.store import ChunkStore, CorruptChunk
from node.assets.transfer import Transfers, requested_stream
from node.membership.peers import Peers
from node.membership.session import RequestFailed, Session, SessionLost
from node.nursery import service_nursery
from protocol import ProtocolError
from protocol.manifest import Manifest, decode
from protocol.messages import ChunkRequest, Error, Have, ManifestRequest, Reply

log = logging.getLogger("rendernode.swarm")
SLOTS_PER_PEER = 1  #: requests a fetch has in flight to one peer...
PIPELINE = 2  #: ...but this many spread over few sources, so no round trip idles a link
MAX_IN_FLIGHT = 6  #: requests a fetch has in flight in all (ENDGAME more in the end game)
ENDGAME = 4
ENDGAME_AFTER = 0.5  #: seconds a chunk is in flight before the end game asks a second peer
SERVE_SLOTS = 3  #: chunks this node sends at once while it does not render
BUSY_QUEUE = 4  #: waiting requests from which copies others can serve are turned away
MAX_WAITING = 1000  #: waiting requests from which every new one is turned away
AGE_LIMIT = 5.0  #: seconds after which a waiting request is served first
ANNOUNCE_EVERY = 0.05
REQUEST_TIMEOUT = 30.0
NO_SOURCE_WAIT = 2.0  #: seconds between looks for a source while no allowed peer holds a chunk
BUSY = "busy"  #: Error code of a request turned away
_MEMORY = 100_000  #: entries kept in each per-chunk bookkeeping table before it is cleared


def bits_of(held: Iterable[int], count: int) -> bytes:
    """A bitfield of ``count`` bits with ``held`` set."""
    out = bytearray((count + 7) // 8)
    for i in held:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def indices_of(bits: bytes, count: int) -> set[int]:
    """The set bits of a bitfield."""
    return {i for i in range(min(count, len(bits) * 8)) if bits[i // 8] & (0x80 >> (i % 8))}


def _has_bit(bits: bytes, i: int) -> bool:
    return len(bits) * 8 > i and bool(bits[i // 8] & (0x80 >> (i % 8)))


class FetchFailed(Exception):
    """No allowed peer could supply the missing chunks."""


@dataclass
class _Waiting:
    """A chunk request in the serving queue."""

    session: Session
    msg: ChunkRequest
    req_id: int
    seq: int
    since: float


@dataclass
class _Fetch:
    """The state of one fetch: what is missing, in flight, banned, turned away."""

    mid: str
    chunks: list[str]
    missing: set[str]
    allowed: set[str] | None
    announce: bool
    index: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, set[str]] = field(default_factory=dict)  #: chunk -> peers asked
    asked_at: dict[str, float] = field(default_factory=dict)  #: chunk in flight -> when first asked
    per_peer: dict[str, int] = field(default_factory=dict)  #: peer -> requests in flight
    banned: set[str] = field(default_factory=set)
    declined: set[tuple[str, str]] = field(default_factory=set)  #: (peer, chunk) answered busy
    requests: int = 0


class Swarm:
    """Who holds what, serving chunks, and fetching manifests and chunks."""

    def __init__(self, store: ChunkStore, peers: Peers, transfers: Transfers) -> None:
        self.store = store
        self.peers = peers
        self.transfers = transfers
        self.holdings: dict[str, dict[str, bytes]] = {}  #: manifest -> peer -> bits
        self.active: set[str] = set()  #: manifests we announce
        self.serving = trio.CapacityLimiter(SERVE_SLOTS)
        self.served_bytes = 0
        self.requests_sent = 0  #: chunk requests this node has made
        self._changed: dict[str, trio.Event] = {}
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._chunks: dict[str, list[str]] = {}  #: manifest -> its chunk ids
        self._where: dict[str, tuple[str, int]] = {}  #: chunk -> (a manifest, index in it)
        self._held: dict[tuple[str, str], tuple[bytes, frozenset[int]]] = {}
        self._queue: list[_Waiting] = []
        self._queue_changed = trio.Event()
        self._seq = itertools.count()
        self._sent: dict[str, int] = {}  #: chunk -> times this node has sent it
        self._turned_away: set[tuple[str, str]] = set()  #: (peer, chunk)
        self._outbox: dict[Session, dict[str, bytes]] = {}  #: Haves waiting for a session
        peers.register_handler(Have, self._on_have)
        peers.register_handler(ManifestRequest, self._on_manifest_request)
        peers.register_handler(ChunkRequest, self._on_chunk_request)
        peers.on_session.append(self._on_session)

    def throttle(self, rendering: bool, slots_rendering: int) -> None:
        """Serve fewer chunks at once while this node renders."""
        self.serving.total_tokens = max(1, slots_rendering) if rendering else SERVE_SLOTS

    # -- what is where ------------------------------------------------------------------

    def _learn(self, mid: str, chunks: list[str]) -> None:
        if mid in self._chunks:
            return
        if len(self._where) > _MEMORY * 10 or len(self._chunks) > _MEMORY // 10:
            self._where.clear()
            self._chunks.clear()
            self._held.clear()
        self._chunks[mid] = chunks
        for i, chunk in enumerate(chunks):
            self._where.setdefault(chunk, (mid, i))

    async def _chunk_list(self, mid: str) -> list[str] | None:
        chunks = self._chunks.get(mid)
        if chunks is None:
            manifest = await trio.to_thread.run_sync(self.store.manifest, mid)
            if manifest is None:
                return None
            chunks = manifest.chunk_ids()
            self._learn(mid, chunks)
        return chunks

    def _held_by(self, mid: str, peer: str, count: int) -> frozenset[int]:
        """Indices of the chunks of ``mid`` that ``peer`` announced (decoded once per Have)."""
        bits = self.holdings.get(mid, {}).get(peer)
        if not bits:
            return frozenset()
        cached = self._held.get((mid, peer))
        if cached is not None and cached[0] is bits:
            return cached[1]
        held = frozenset(indices_of(bits, count))
        self._held[(mid, peer)] = (bits, held)
        return held

    def _held_elsewhere(self, chunk: str, requester: str) -> bool:
        where = self._where.get(chunk)
        if where is None:
            return False
        mid, i = where
        return any(peer != requester and peer in self.peers.sessions and _has_bit(bits, i)
                   for peer, bits in self.holdings.get(mid, {}).items())

    # -- announcements ------------------------------------------------------------------

    def _local_bits(self, chunks: list[str]) -> bytes:
        return bits_of((i for i, c in enumerate(chunks) if self.store.has(c)), len(chunks))

    def announce(self, manifest_id: str) -> None:
        """Tell every peer (soon, coalesced) what we hold of ``manifest_id``."""
        self.active.add(manifest_id)
        self._dirty.add(manifest_id)
        self._wake.set()

    def _on_session(self, session: Session) -> None:
        if self._nursery is not None and self.active:
            self._nursery.start_soon(self._announce_to, session, sorted(self.active))

    async def _announce_to(self, session: Session, manifest_ids: list[str]) -> None:
        for mid in manifest_ids:
            chunks = await self._chunk_list(mid)
            if chunks is not None:
                self._queue_have(session, mid, self._local_bits(chunks))

    def _queue_have(self, session: Session, mid: str, bits: bytes) -> None:
        """Send a Have soon; one sender per session, which sends only the newest bits."""
        box = self._outbox.get(session)
        if box is not None:
            box[mid] = bits
        elif self._nursery is not None:
            self._outbox[session] = {mid: bits}
            self._nursery.start_soon(self._send_haves, session)

    async def _send_haves(self, session: Session) -> None:
        box = self._outbox[session]
        try:
            while box:
                mid, bits = box.popitem()
                await session.send(Have(mid, bits))
        except (SessionLost, ProtocolError):
            pass
        finally:
            del self._outbox[session]

    async def _on_have(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, Have)
        if len(msg.manifest) != 64 or len(msg.bits) > 1 << 16:
            return
        self.holdings.setdefault(msg.manifest, {})[session.uuid] = msg.bits
        self._notify(msg.manifest)

    def _notify(self, manifest_id: str) -> None:
        event = self._changed.pop(manifest_id, None)
        if event is not None:
            event.set()

    def _changed_event(self, manifest_id: str) -> trio.Event:
        return self._changed.setdefault(manifest_id, trio.Event())

    # -- serving -----------------------------------------------------------------------

    async def _on_manifest_request(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, ManifestRequest)
        data = await trio.to_thread.run_sync(self.store.manifest_bytes, msg.manifest)
        reply = Reply({"data": data}) if data is not None else Error("not_found", "no such manifest")
        try:
            await session.send(reply, req_id)
        except (SessionLost, ProtocolError):
            pass

    async def _on_chunk_request(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, ChunkRequest)
        waiting = _Waiting(session, msg, req_id, next(self._seq), trio.current_time())
        if len(self._queue) >= MAX_WAITING and self._nursery is not None:
            self._nursery.start_soon(self._answer, session, Error(BUSY, "too many requests waiting"),
                                     req_id)
            return
        if self._turn_away(waiting, len(self._queue)):
            return
        self._queue.append(waiting)
        self._queue_changed.set()

    def _turn_away(self, w: _Waiting, queued: int) -> bool:
        """Answer ``busy`` if others can serve this copy while requests queue up here."""
        key = (w.session.uuid, w.msg.chunk)
        if (queued < BUSY_QUEUE or not self._sent.get(w.msg.chunk) or key in self._turned_away
                or not self._held_elsewhere(w.msg.chunk, w.session.uuid) or self._nursery is None):
            return False
        if len(self._turned_away) > _MEMORY:
            self._turned_away.clear()
        self._turned_away.add(key)
        self._nursery.start_soon(self._answer, w.session, Error(BUSY, "ask a peer that holds it"),
                                 w.req_id)
        return True

    async def _answer(self, session: Session, msg: Error, req_id: int) -> None:
        try:
            await session.send(msg, req_id)
        except (SessionLost, ProtocolError):
            pass

    def _next_request(self) -> _Waiting | None:
        """The request to serve next: least sent chunk, then oldest; drops the rest that
        are turned away or whose session is gone."""
        now = trio.current_time()
        keep = [w for w in self._queue if not w.session.closed.is_set()]
        keep = [w for w in keep if not self._turn_away(w, len(keep) - 1)]
        if not keep:
            self._queue = []
            return None
        best = min(keep, key=lambda w: (-1 if now - w.since > AGE_LIMIT else self._sent.get(w.msg.chunk, 0),
                                        w.seq))
        keep.remove(best)
        self._queue = keep
        return best

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        """Start uploads from the queue as serving slots free up."""
        while True:
            while not self._queue:
                await self._queue_changed.wait()
                self._queue_changed = trio.Event()
            token = object()
            await self.serving.acquire_on_behalf_of(token)
            waiting = self._next_request()
            if waiting is None:
                self.serving.release_on_behalf_of(token)
                continue
            if len(self._sent) > _MEMORY:
                self._sent.clear()
            self._sent[waiting.msg.chunk] = self._sent.get(waiting.msg.chunk, 0) + 1
            self._turned_away.discard((waiting.session.uuid, waiting.msg.chunk))
            nursery.start_soon(self._serve_chunk, waiting, token)

    async def _serve_chunk(self, w: _Waiting, token: object) -> None:
        session, msg = w.session, w.msg
        try:
            try:
                data = await trio.to_thread.run_sync(self.store.get, msg.chunk)
            except (KeyError, CorruptChunk):
                await session.send(Error("not_found", f"no chunk {msg.chunk}"), w.req_id)
                return
            await session.send_bulk_data(msg.stream, data)
            await session.send(Reply({"size": len(data)}), w.req_id)
            self.served_bytes += len(data)
        except (SessionLost, ProtocolError) as exc:
            log.debug("serving %s to %s stopped: %s", msg.chunk[:12], session.uuid, exc)
        finally:
            self.serving.release_on_behalf_of(token)

    # -- fetching ---------------------------------------------------------------------

    async def get_manifest(self, manifest_id: str, sources: list[str]) -> Manifest:
        """The manifest, from the store or the first source that has it."""
        manifest = await trio.to_thread.run_sync(self.store.manifest, manifest_id)
        if manifest is not None:
            return manifest
        for uuid in sources:
            try:
                async with self.peers.using(uuid, "swarm") as session:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        reply = await session.request(ManifestRequest(manifest_id))
            except (SessionLost, ProtocolError, RequestFailed, trio.TooSlowError):
                continue
            data = reply.result.get("data") if isinstance(reply, Reply) and isinstance(reply.result, dict) else None
            if isinstance(data, bytes):
                try:
                    manifest = decode(data)
                except ProtocolError:
                    continue
                if manifest.id == manifest_id:
                    await trio.to_thread.run_sync(self.store.put_manifest, data)
                    return manifest
        raise FetchFailed(f"no peer could send manifest {manifest_id[:12]}")

    async def fetch(self, manifest: Manifest, allowed: set[str] | None = None,
                    deadline: float | None = None, announce: bool = True) -> None:
        """Get every chunk of ``manifest`` into the store; ``allowed`` limits the peers
        asked; ``deadline`` (trio time) ends a wait for a source with FetchFailed;
        ``announce`` tells the farm about the chunks as they arrive."""
        mid = manifest.id
        chunks = manifest.chunk_ids()
        self._learn(mid, chunks)
        missing = {c for c in chunks if not self.store.has(c)}
        if announce:
            self.announce(mid)
        if not missing:
            return
        f = _Fetch(mid, chunks, missing, allowed, announce, {c: i for i, c in enumerate(chunks)})
        failed: FetchFailed | None = None
        async with trio.open_nursery() as nursery:
            while f.missing:
                changed = self._changed_event(mid)
                self._fill(f, nursery)
                if f.in_flight:
                    with trio.move_on_after(ENDGAME_AFTER if len(f.missing) <= ENDGAME else math.inf):
                        await changed.wait()
                    continue
                if deadline is not None and trio.current_time() > deadline:
                    failed = FetchFailed(f"no allowed peer holds the {len(f.missing)} chunks still missing")
                    break
                with trio.move_on_after(NO_SOURCE_WAIT):
                    await changed.wait()
            nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    def _sources(self, f: _Fetch) -> dict[str, frozenset[int]]:
        """Allowed, live, unbanned peers and the chunk indices each holds."""
        out = {}
        for peer in self.holdings.get(f.mid, {}):
            if (peer in f.banned or peer not in self.peers.sessions
                    or (f.allowed is not None and peer not in f.allowed)):
                continue
            held = self._held_by(f.mid, peer, len(f.chunks))
            if held:
                out[peer] = held
        return out

    def _fill(self, f: _Fetch, nursery: trio.Nursery) -> None:
        """Start requests up to the limits, rarest chunk first."""
        endgame = len(f.missing) <= ENDGAME
        free = MAX_IN_FLIGHT + (ENDGAME if endgame else 0) - sum(f.per_peer.values())
        if free <= 0:
            return
        sources = self._sources(f)
        now = trio.current_time()
        wanted = []
        for chunk in f.missing:
            asked = f.in_flight.get(chunk, ())
            if asked and not (endgame and len(asked) < 2 and now - f.asked_at[chunk] > ENDGAME_AFTER):
                continue
            i = f.index[chunk]
            holders = [p for p, held in sources.items() if i in held and p not in asked]
            if holders:
                wanted.append((len(asked), len(holders), random.random(), chunk, holders))
        wanted.sort()
        for _, _, _, chunk, holders in wanted:
            peer = self._choose(f, chunk, holders, sources)
            if peer is None:
                continue
            f.in_flight.setdefault(chunk, set()).add(peer)
            f.asked_at.setdefault(chunk, now)
            f.per_peer[peer] = f.per_peer.get(peer, 0) + 1
            f.requests += 1
            self.requests_sent += 1
            nursery.start_soon(self._get, f, peer, chunk)
            free -= 1
            if free == 0:
                return

    def _choose(self, f: _Fetch, chunk: str, holders: list[str],
                sources: dict[str, frozenset[int]]) -> str | None:
        """The holder to ask: fewest of our requests, then fewest chunks held; one that
        turned us away is asked again only when every holder has."""
        cap = max(SLOTS_PER_PEER, PIPELINE // len(sources))
        free = [p for p in holders if f.per_peer.get(p, 0) < cap]
        fresh = [p for p in free if (p, chunk) not in f.declined]
        if not fresh:
            if any((p, chunk) not in f.declined for p in holders):
                return None  # one that has not turned us away is busy with our requests: wait
            fresh = free
        if not fresh:
            return None
        return min(fresh, key=lambda p: (f.per_peer.get(p, 0), len(sources[p]), random.random()))

    async def _get(self, f: _Fetch, peer: str, chunk: str) -> None:
        """Ask ``peer`` for ``chunk``, verify and store it."""
        try:
            session = self.peers.sessions.get(peer)
            if session is None:
                return
            try:
                data = await self._request_chunk(session, chunk)
            except RequestFailed as exc:
                if exc.reason.startswith(BUSY + ":"):
                    f.declined.add((peer, chunk))
                else:  # it no longer has it
                    log.debug("chunk %s from %s failed: %s", chunk[:12], peer, exc)
                    bits = self.holdings.get(f.mid, {}).get(peer)
                    if bits is not None:
                        held = self._held_by(f.mid, peer, len(f.chunks)) - {f.index[chunk]}
                        self.holdings[f.mid][peer] = bits_of(held, len(f.chunks))
                return
            except (SessionLost, ProtocolError, trio.TooSlowError) as exc:
                log.debug("chunk %s from %s failed: %s", chunk[:12], peer, exc)
                return
            try:
                await trio.to_thread.run_sync(self.store.put, chunk, data)
            except CorruptChunk:
                log.warning("peer %s sent bad data for chunk %s; banned for this fetch", peer, chunk[:12])
                f.banned.add(peer)
                return
            f.missing.discard(chunk)
            if f.announce:
                self.announce(f.mid)
        finally:
            asked = f.in_flight.get(chunk)
            if asked is not None:
                asked.discard(peer)
                if not asked:
                    del f.in_flight[chunk]
                    del f.asked_at[chunk]
            f.per_peer[peer] -= 1
            self._notify(f.mid)

    async def _request_chunk(self, session: Session, chunk: str) -> bytes:
        stream = requested_stream()
        sink = self.transfers.expect(session, stream)
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                reply = await session.request(ChunkRequest(chunk, stream))
        finally:
            self.transfers.forget(session, stream)
        if not isinstance(reply, Reply):
            raise RequestFailed("unexpected answer")
        return sink.data()

    async def fetch_chunk(self, chunk: str, sources: list[str]) -> bytes:
        """One chunk named outside any manifest (a frame preview): from the store, or
        from the first of ``sources`` (then every other peer) that sends it whole and
        verified; it is kept in the store, so this node serves it from then on."""
        try:
            return await trio.to_thread.run_sync(self.store.get, chunk)
        except (KeyError, CorruptChunk):
            pass
        order = list(dict.fromkeys([*sources, *sorted(self.peers.sessions)]))
        for uuid in order:
            session = self.peers.sessions.get(uuid)
            if session is None:
                continue
            try:
                data = await self._request_chunk(session, chunk)
                await trio.to_thread.run_sync(self.store.put, chunk, data)
            except (RequestFailed, SessionLost, ProtocolError, trio.TooSlowError, CorruptChunk) as exc:
                log.debug("chunk %s from %s failed: %s", chunk[:12], uuid, exc)
                continue
            return data
        raise FetchFailed(f"no peer could send chunk {chunk[:12]}")

    # -- service -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests and send coalesced Have announcements."""
        async with service_nursery(self) as nursery:
            nursery.start_soon(self._dispatch, nursery)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(ANNOUNCE_EVERY)
                dirty, self._dirty = self._dirty, set()
                for mid in dirty:
                    chunks = await self._chunk_list(mid)
                    if chunks is None:
                        continue
                    bits = self._local_bits(chunks)
                    for session in list(self.peers.sessions.values()):
                        self._queue_have(session, mid, bits)
