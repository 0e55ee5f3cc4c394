"""Peer-to-peer chunk distribution.

Nodes announce which chunks of a manifest they hold (``Have``, a bitfield,
sent again, coalesced, as chunks arrive).  A fetch asks every allowed peer
that holds chunks it lacks, ``SLOTS_PER_PEER`` requests in flight per peer,
rarest chunk first with random ties; when only a few chunks remain it asks a
second peer for chunks already in flight (end game).  Each chunk is verified
against its name before it is stored or offered; a peer that sends bad data
is banned for that fetch and the chunk asked of another.  Chunks already in
the store are never fetched again, so a fetch cut short (even by kill -9)
resumes where it stopped.

Serving goes through ``serving``, a limiter whose size drops to
``serve_slots_rendering`` while this node renders.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import trio

from protocol import ProtocolError
from protocol.framing import MAX_BULK
from protocol.manifest import Manifest, decode
from protocol.messages import ChunkRequest, Error, Have, ManifestRequest, Reply

from .chunkstore import ChunkStore, CorruptChunk, sha256
from .peers import Peers
from .session import RequestFailed, Session, SessionLost
from .transfer import Transfers, requested_stream

log = logging.getLogger("rendernode.swarm")
SLOTS_PER_PEER = 4
ENDGAME = 4
SERVE_SLOTS = 16
ANNOUNCE_EVERY = 0.05
REQUEST_TIMEOUT = 30.0


def bits_of(held: Iterable[int], count: int) -> bytes:
    """A bitfield of ``count`` bits with ``held`` set."""
    out = bytearray((count + 7) // 8)
    for i in held:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def indices_of(bits: bytes, count: int) -> set[int]:
    """The set bits of a bitfield."""
    return {i for i in range(min(count, len(bits) * 8)) if bits[i // 8] & (0x80 >> (i % 8))}


class FetchFailed(Exception):
    """No allowed peer could supply the missing chunks."""


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
        self._changed: dict[str, trio.Event] = {}
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sizes: dict[str, int] = {}
        peers.handlers[Have] = self._on_have
        peers.handlers[ManifestRequest] = self._on_manifest_request
        peers.handlers[ChunkRequest] = self._on_chunk_request
        peers.on_session.append(self._on_session)

    def throttle(self, rendering: bool, slots_rendering: int) -> None:
        """Serve fewer chunks at once while this node renders."""
        self.serving.total_tokens = max(1, slots_rendering) if rendering else SERVE_SLOTS

    # -- announcements ------------------------------------------------------------------

    def _local_bits(self, manifest: Manifest) -> bytes:
        chunks = manifest.chunk_ids()
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
            manifest = await trio.to_thread.run_sync(self.store.manifest, mid)
            if manifest is None:
                continue
            try:
                await session.send(Have(mid, self._local_bits(manifest)))
            except (SessionLost, ProtocolError):
                return

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
        if self._nursery is not None:
            self._nursery.start_soon(self._serve_chunk, session, msg, req_id)

    async def _serve_chunk(self, session: Session, msg: ChunkRequest, req_id: int) -> None:
        try:
            async with self.serving:
                try:
                    data = await trio.to_thread.run_sync(self.store.get, msg.chunk)
                except (KeyError, CorruptChunk):
                    await session.send(Error("not_found", f"no chunk {msg.chunk}"), req_id)
                    return
                view = memoryview(data)
                for i in range(0, len(data), MAX_BULK):
                    await session.send_bulk(msg.stream, bytes(view[i : i + MAX_BULK]))
                await session.send(Reply({"size": len(data)}), req_id)
                self.served_bytes += len(data)
        except (SessionLost, ProtocolError) as exc:
            log.debug("serving %s to %s stopped: %s", msg.chunk[:12], session.uuid, exc)

    # -- fetching ---------------------------------------------------------------------

    async def get_manifest(self, manifest_id: str, sources: list[str]) -> Manifest:
        """The manifest, from the store or the first source that has it."""
        manifest = await trio.to_thread.run_sync(self.store.manifest, manifest_id)
        if manifest is not None:
            return manifest
        for uuid in sources:
            session = self.peers.sessions.get(uuid)
            if session is None:
                continue
            try:
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
        asked; ``announce`` tells the farm about the chunks as they arrive."""
        mid = manifest.id
        chunks = manifest.chunk_ids()
        index = {c: i for i, c in enumerate(chunks)}
        missing = {c for c in chunks if not self.store.has(c)}
        if announce:
            self.announce(mid)
        if not missing:
            return
        in_flight: dict[str, set[str]] = {}
        banned: set[str] = set()
        running: set[str] = set()

        def holders(peer: str) -> set[int]:
            bits = self.holdings.get(mid, {}).get(peer)
            return indices_of(bits, len(chunks)) if bits else set()

        def pick(peer: str) -> str | None:
            held = holders(peer)
            fresh = [c for c in missing if index[c] in held and c not in in_flight]
            if not fresh and len(missing) <= ENDGAME:
                fresh = [c for c in missing if index[c] in held and peer not in in_flight.get(c, ())]
            if not fresh:
                return None
            counts = {c: sum(1 for bits in self.holdings.get(mid, {}).values()
                             if len(bits) * 8 > index[c] and bits[index[c] // 8] & (0x80 >> (index[c] % 8)))
                      for c in fresh}
            rarest = min(counts.values())
            return random.choice([c for c, n in counts.items() if n == rarest])

        async def slot(peer: str) -> None:
            while missing and peer not in banned:
                session = self.peers.sessions.get(peer)
                if session is None:
                    return
                chunk = pick(peer)
                if chunk is None:
                    await self._changed_event(mid).wait()
                    continue
                in_flight.setdefault(chunk, set()).add(peer)
                try:
                    data = await self._request_chunk(session, chunk)
                except (SessionLost, ProtocolError, RequestFailed, trio.TooSlowError) as exc:
                    log.debug("chunk %s from %s failed: %s", chunk[:12], peer, exc)
                    bits = self.holdings.get(mid, {}).get(peer)
                    if bits is not None and isinstance(exc, RequestFailed):  # it no longer has it
                        held = holders(peer) - {index[chunk]}
                        self.holdings[mid][peer] = bits_of(held, len(chunks))
                    continue
                finally:
                    flying = in_flight.get(chunk)
                    if flying is not None:
                        flying.discard(peer)
                        if not flying:
                            del in_flight[chunk]
                if sha256(data) != chunk:
                    log.warning("peer %s sent bad data for chunk %s; banned for this fetch", peer, chunk[:12])
                    banned.add(peer)
                    self._notify(mid)
                    return
                if chunk in missing:
                    await trio.to_thread.run_sync(self.store.put, chunk, data)
                    missing.discard(chunk)
                    if announce:
                        self.announce(mid)
                    self._notify(mid)

        async def supervise(nursery: trio.Nursery) -> None:
            while missing:
                for peer in list(self.holdings.get(mid, {})):
                    ok = allowed is None or peer in allowed
                    if ok and peer not in running and peer not in banned and peer in self.peers.sessions:
                        running.add(peer)
                        for _ in range(SLOTS_PER_PEER):
                            nursery.start_soon(slot, peer)
                live = [p for p in running if p in self.peers.sessions and p not in banned]
                if not live and not any(p in self.peers.sessions and (allowed is None or p in allowed)
                                        and p not in banned for p in self.holdings.get(mid, {})):
                    with trio.move_on_after(2.0):
                        await self._changed_event(mid).wait()
                    if not missing:
                        break
                    if deadline is not None and trio.current_time() > deadline:
                        raise FetchFailed(f"no allowed peer holds the {len(missing)} chunks still missing")
                    continue
                await self._changed_event(mid).wait()
                running.intersection_update(self.peers.sessions)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, nursery)

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
        return bytes(sink)

    # -- service -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests and send coalesced Have announcements."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(ANNOUNCE_EVERY)
                dirty, self._dirty = self._dirty, set()
                for mid in dirty:
                    manifest = await trio.to_thread.run_sync(self.store.manifest, mid)
                    if manifest is not None:
                        await self.peers.broadcast(Have(mid, self._local_bits(manifest)))
