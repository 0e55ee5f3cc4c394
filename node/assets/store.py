"""The content-addressed chunk store in the state dir.

``chunks/ab/<sha256>`` holds one chunk of at most ``CHUNK_SIZE`` bytes;
``manifests/<id>`` holds a manifest's canonical encoding.  Every write goes
through a temp file and a rename, and every chunk is verified against its
name before it is stored and again when it is read, so a chunk damaged on
disk is found, dropped and fetched again rather than served.

A size cap evicts the least recently used chunks, never one that a pinned
manifest (a queued job's assets) needs.  All methods block: call them
through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from protocol.manifest import CHUNK_SIZE, FileEntry, Manifest, check_path, decode

log = logging.getLogger("rendernode.chunkstore")


class CorruptChunk(Exception):
    """A chunk's bytes do not hash to its name."""


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


class ChunkStore:
    """Chunks and manifests on disk, with an in-memory index."""

    def __init__(self, root: str | os.PathLike[str], cap_bytes: int = 0) -> None:
        self.root = Path(root)
        self.cap = cap_bytes
        (self.root / "chunks").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self.pinned: dict[str, set[str]] = {}  #: job uuid -> chunk ids its assets need
        for sub in (self.root / "chunks").iterdir():
            for f in sub.iterdir():
                if len(f.name) == 64:
                    self._sizes[f.name] = f.stat().st_size
                else:
                    f.unlink(missing_ok=True)  # a temp file left by a crash

    def _path(self, chunk: str) -> Path:
        return self.root / "chunks" / chunk[:2] / chunk

    def has(self, chunk: str) -> bool:
        """True if the chunk is stored."""
        return chunk in self._sizes

    def held(self, chunks: Iterable[str]) -> set[str]:
        """The subset of ``chunks`` stored here."""
        return {c for c in chunks if c in self._sizes}

    @property
    def used(self) -> int:
        """Bytes of chunks stored."""
        return sum(self._sizes.values())

    def put(self, chunk: str, data: bytes) -> None:
        """Verify and store one chunk (idempotent)."""
        if sha256(data) != chunk:
            raise CorruptChunk(f"data does not hash to {chunk}")
        if chunk in self._sizes:
            return
        path = self._path(chunk)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{chunk}.tmp{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            self._sizes[chunk] = len(data)
        if self.cap:
            self.evict()

    def get(self, chunk: str) -> bytes:
        """A stored chunk, verified; a damaged one is dropped and CorruptChunk raised."""
        path = self._path(chunk)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._sizes.pop(chunk, None)
            raise KeyError(chunk) from None
        if sha256(data) != chunk:
            log.warning("chunk %s is damaged on disk; dropping it", chunk)
            self.drop(chunk)
            raise CorruptChunk(f"chunk {chunk} is damaged on disk")
        os.utime(path)  # recently used
        return data

    def drop(self, chunk: str) -> None:
        """Delete a chunk."""
        self._path(chunk).unlink(missing_ok=True)
        with self._lock:
            self._sizes.pop(chunk, None)

    # -- manifests ------------------------------------------------------------------

    def add_files(self, root: str, paths: list[str], opened: Mapping[str, int] | None = None) -> Manifest:
        """Chunk and store ``paths`` (absolute, under ``root``); return their manifest.
        ``opened`` maps paths to descriptors already open for reading (opened with
        the submitter's rights): those are read instead of the paths."""
        entries = []
        for path in paths:
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            check_path(rel)
            chunks = []
            with open(path, "rb") if opened is None else os.fdopen(os.dup(opened[path]), "rb") as f:
                st = os.fstat(f.fileno())
                while data := f.read(CHUNK_SIZE):
                    chunk = sha256(data)
                    self.put(chunk, data)
                    chunks.append(chunk)
            entries.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), tuple(chunks)))
        manifest = Manifest(tuple(entries))
        self.put_manifest(manifest.encode())
        return manifest

    def put_manifest(self, data: bytes) -> Manifest:
        """Check and store a manifest's encoding."""
        manifest = decode(data)
        path = self.root / "manifests" / manifest.id
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return manifest

    def manifest(self, manifest_id: str) -> Manifest | None:
        """A stored manifest, or None."""
        try:
            return decode((self.root / "manifests" / manifest_id).read_bytes())
        except FileNotFoundError:
            return None

    def manifest_bytes(self, manifest_id: str) -> bytes | None:
        """A stored manifest's encoding, or None."""
        try:
            return (self.root / "manifests" / manifest_id).read_bytes()
        except FileNotFoundError:
            return None

    def manifests(self) -> list[str]:
        """Ids of every stored manifest."""
        return sorted(p.name for p in (self.root / "manifests").iterdir() if len(p.name) == 64)

    def materialize(self, manifest: Manifest, dest: str) -> None:
        """Write the manifest's files under ``dest`` from stored chunks."""
        for entry in manifest.files:
            target = os.path.join(dest, *entry.path.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".part"
            with open(tmp, "wb") as f:
                for chunk in entry.chunks:
                    f.write(self.get(chunk))
            os.chmod(tmp, entry.mode or 0o644)
            os.replace(tmp, target)

    # -- eviction -------------------------------------------------------------------

    def evict(self) -> int:
        """Drop least recently used unpinned chunks until under the cap; bytes freed."""
        if not self.cap or self.used <= self.cap:
            return 0
        keep = set().union(*self.pinned.values()) if self.pinned else set()
        candidates = []
        for chunk in list(self._sizes):
            if chunk not in keep:
                try:
                    candidates.append((self._path(chunk).stat().st_mtime, chunk))
                except FileNotFoundError:
                    self._sizes.pop(chunk, None)
        freed = 0
        for _, chunk in sorted(candidates):
            if self.used <= self.cap:
                break
            freed += self._sizes.get(chunk, 0)
            self.drop(chunk)
        return freed

    def gc(self, live_manifests: set[str], keep_chunks: Iterable[str] = ()) -> tuple[int, int]:
        """Drop manifests not in ``live_manifests`` and chunks no live manifest uses,
        but ``keep_chunks`` (live jobs' frame previews)."""
        keep: set[str] = set(keep_chunks)
        dropped_manifests = 0
        for mid in self.manifests():
            if mid in live_manifests:
                m = self.manifest(mid)
                if m is not None:
                    keep.update(m.chunk_ids())
            else:
                (self.root / "manifests" / mid).unlink(missing_ok=True)
                dropped_manifests += 1
        freed = 0
        for chunk in list(self._sizes):
            if chunk not in keep:
                freed += self._sizes.get(chunk, 0)
                self.drop(chunk)
        return dropped_manifests, freed
