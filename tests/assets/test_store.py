"""The content-addressed chunk store (node.assets.store): verify on put and get,
writes through a temp file and a rename, damage on disk found and dropped, the
LRU cap that never evicts a pinned job's chunks, gc, materialising files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from node.assets.store import ChunkStore, CorruptChunk
from protocol.errors import RemoteProtocolError
from protocol.manifest import CHUNK_SIZE

MiB = 1 << 20


def chunk_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(store: ChunkStore, data: bytes) -> str:
    chunk = chunk_of(data)
    store.put(chunk, data)
    return chunk


def test_put_then_get_returns_the_verified_bytes(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(1000)
    chunk = stored(store, data)
    assert store.has(chunk) and store.get(chunk) == data
    assert store.used == 1000
    store.put(chunk, data)  # idempotent
    assert store.used == 1000
    assert ChunkStore(tmp_path).get(chunk) == data  # the index is rebuilt from disk


def test_put_refuses_bytes_that_do_not_hash_to_the_name(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    name = chunk_of(b"the real bytes")
    with pytest.raises(CorruptChunk):
        store.put(name, b"other bytes")
    assert not store.has(name)
    assert not list((tmp_path / "chunks").glob("*/*"))
    with pytest.raises(KeyError):
        store.get(name)


def test_a_crash_mid_write_leaves_no_chunk_and_its_temp_file_is_swept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(5000)
    chunk = chunk_of(data)

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.put(chunk, data)
    monkeypatch.undo()
    assert not store.has(chunk)
    assert not (tmp_path / "chunks" / chunk[:2] / chunk).exists()
    leftovers = list((tmp_path / "chunks").glob("*/*.tmp*"))
    assert leftovers, "the write went through a temp file"
    reopened = ChunkStore(tmp_path)
    assert not reopened.has(chunk)
    assert not list((tmp_path / "chunks").glob("*/*.tmp*")), "temp files are swept at start"


def test_a_chunk_damaged_on_disk_is_detected_and_dropped(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    chunk = stored(store, os.urandom(4096))
    path = tmp_path / "chunks" / chunk[:2] / chunk
    path.write_bytes(b"\0" * 4096)  # the index still says it is here
    assert store.has(chunk)
    with pytest.raises(CorruptChunk):
        store.get(chunk)
    assert not store.has(chunk) and not path.exists()


def test_a_chunk_gone_from_disk_is_a_key_error_and_leaves_the_index(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    chunk = stored(store, b"soon gone")
    (tmp_path / "chunks" / chunk[:2] / chunk).unlink()
    with pytest.raises(KeyError):
        store.get(chunk)
    assert not store.has(chunk)


def test_the_cap_evicts_least_recently_used_chunks_but_never_pinned_ones(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, cap_bytes=4 * MiB)
    chunks = []
    for i in range(4):
        chunks.append(stored(store, os.urandom(MiB)))
        os.utime(tmp_path / "chunks" / chunks[-1][:2] / chunks[-1], (1000 + i, 1000 + i))
    oldest, second, third, newest = chunks
    store.pinned["job-a"] = {oldest}  # the oldest is a queued job's: it stays
    os.utime(tmp_path / "chunks" / third[:2] / third, (5000, 5000))  # used lately
    extra = stored(store, os.urandom(MiB))
    assert store.used <= 4 * MiB
    assert not store.has(second), "the least recently used unpinned chunk goes first"
    assert all(store.has(c) for c in (oldest, third, newest, extra))
    store.pinned["job-b"] = set(c for c in chunks if store.has(c)) | {extra}
    stored(store, os.urandom(MiB))  # everything else is pinned: over the cap, nothing pinned goes
    assert all(store.has(c) for c in store.pinned["job-b"])


def test_gc_drops_manifests_no_live_job_uses_and_their_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shared.bin").write_bytes(os.urandom(CHUNK_SIZE + 10))
    (src / "a.txt").write_text("scene a")
    (src / "b.txt").write_text("scene b")
    store = ChunkStore(tmp_path / "store")
    a = store.add_files(str(src), [str(src / "a.txt"), str(src / "shared.bin")])
    b = store.add_files(str(src), [str(src / "b.txt"), str(src / "shared.bin")])
    assert len(set(a.chunk_ids()) | set(b.chunk_ids())) == 4  # shared.bin's 2 chunks stored once
    assert sorted(store.manifests()) == sorted([a.id, b.id])
    dropped, freed = store.gc({b.id})
    assert dropped == 1 and freed == len("scene a")
    assert store.manifests() == [b.id]
    assert all(store.has(c) for c in b.chunk_ids())
    assert store.gc(set()) == (1, b.size)
    assert store.used == 0


def test_materialize_writes_each_file_from_its_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tex").mkdir(parents=True)
    big = os.urandom(2 * CHUNK_SIZE + 123)
    (src / "tex" / "big.bin").write_bytes(big)
    (src / "tool.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "tool.sh", 0o755)
    (src / "empty").write_bytes(b"")
    store = ChunkStore(tmp_path / "store")
    manifest = store.add_files(str(src), [str(src / "tex" / "big.bin"), str(src / "tool.sh"),
                                          str(src / "empty")])
    dest = tmp_path / "out"
    store.materialize(manifest, str(dest))
    assert (dest / "tex" / "big.bin").read_bytes() == big
    assert os.stat(dest / "tool.sh").st_mode & 0o777 == 0o755
    assert (dest / "empty").read_bytes() == b""
    assert not list(dest.rglob("*.part"))


def test_add_files_refuses_a_file_outside_the_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside.txt").write_text("x")
    store = ChunkStore(tmp_path / "store")
    with pytest.raises(RemoteProtocolError, match="unsafe asset path"):
        store.add_files(str(tmp_path / "root"), [str(tmp_path / "outside.txt")])
