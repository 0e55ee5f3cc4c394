"""Chunk distribution between in-process nodes (node.swarm): a fetch draws on
every holder, verifies each chunk, refuses what a damaged store or a lying
peer sends and gets it elsewhere, and a fetch cut short resumes with only the
missing chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio
from assets_harness import MiB, random_file, record_requests, slow_serving, until
from jobs_harness import Farm, Member

from node.assets.store import CorruptChunk
from protocol.manifest import Manifest


async def holding(members: list[Member], files: list[Path], root: Path) -> Manifest:
    """Chunk ``files`` into each member's store and have it announce them."""
    manifest = None
    for m in members:
        manifest = m.node.swarm.store.add_files(str(root), [str(f) for f in files])
        m.node.swarm.announce(manifest.id)
    assert manifest is not None
    return manifest


async def sees_holders(fetcher: Member, manifest: Manifest, holders: list[Member]) -> None:
    known = fetcher.node.swarm.holdings
    await until(lambda: all(h.uuid in known.get(manifest.id, {}) for h in holders),
                f"{fetcher.name} learns who holds the chunks", 5)


def has_all(member: Member, manifest: Manifest) -> bool:
    return all(member.node.swarm.store.has(c) for c in manifest.chunk_ids())


def same_bytes(member: Member, manifest: Manifest, source: Path) -> bool:
    store = member.node.swarm.store
    return b"".join(store.get(c) for c in manifest.files[0].chunks) == source.read_bytes()


async def test_a_fetch_draws_on_every_holder_and_stores_verified_chunks(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    a, b, c, fetcher = await farm.mesh("a", "b", "c", "f")
    asset = random_file(short_dir / "src" / "asset.bin", 12 * MiB)
    manifest = await holding([a, b, c], [asset], short_dir / "src")
    await sees_holders(fetcher, manifest, [a, b, c])
    asked = record_requests(fetcher)
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    assert has_all(fetcher, manifest) and same_bytes(fetcher, manifest, asset)
    peers = {peer for peer, _ in asked}
    assert peers == {a.uuid, b.uuid, c.uuid}, "every holder was asked"
    assert {chunk for _, chunk in asked} == set(manifest.chunk_ids())


async def test_a_chunk_damaged_on_a_holders_disk_is_refused_and_fetched_from_another(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    damaged, good, fetcher = await farm.mesh("d", "g", "f")
    asset = random_file(short_dir / "src" / "asset.bin", 6 * MiB)
    manifest = await holding([damaged, good], [asset], short_dir / "src")
    store = damaged.node.swarm.store
    for chunk in manifest.chunk_ids():  # overwritten after the index says it is there
        (store.root / "chunks" / chunk[:2] / chunk).write_bytes(b"garbage" * 1000)
    await sees_holders(fetcher, manifest, [damaged, good])
    asked = record_requests(fetcher)
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    assert has_all(fetcher, manifest) and same_bytes(fetcher, manifest, asset)
    asked_damaged = {chunk for peer, chunk in asked if peer == damaged.uuid}
    assert asked_damaged, "the damaged holder was asked too"
    assert not any(store.has(c) for c in asked_damaged), "it found the damage and dropped them"
    assert {chunk for peer, chunk in asked if peer == good.uuid} == set(manifest.chunk_ids())


async def test_a_peer_that_sends_wrong_bytes_is_banned_for_the_fetch(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    liar, honest, fetcher = await farm.mesh("l", "h", "f")
    asset = random_file(short_dir / "src" / "asset.bin", 8 * MiB)
    manifest = await holding([liar, honest], [asset], short_dir / "src")
    lies: list[str] = []

    def lie(chunk: str) -> bytes:
        lies.append(chunk)
        return hashlib.sha256(chunk.encode()).digest() * 1000  # the right length is no excuse

    liar.node.swarm.store.get = lie  # type: ignore[method-assign]
    await sees_holders(fetcher, manifest, [liar, honest])
    asked = record_requests(fetcher)
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    assert has_all(fetcher, manifest) and same_bytes(fetcher, manifest, asset)
    to_liar = [chunk for peer, chunk in asked if peer == liar.uuid]
    assert len(to_liar) == 1 == len(lies), "one bad answer, then never asked again"
    assert (honest.uuid, to_liar[0]) in asked, "the chunk it lied about came from the other"
    store = fetcher.node.swarm.store
    assert store.get(to_liar[0]) != lie(to_liar[0])


async def test_a_fetch_cut_short_resumes_with_only_the_missing_chunks(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    holder, fetcher = await farm.mesh("h", "f")
    asset = random_file(short_dir / "src" / "asset.bin", 10 * MiB)
    manifest = await holding([holder], [asset], short_dir / "src")
    slow_serving(holder, 0.1)
    await sees_holders(fetcher, manifest, [holder])
    store = fetcher.node.swarm.store
    with trio.move_on_after(20) as scope:
        async with trio.open_nursery() as inner:
            inner.start_soon(fetcher.node.swarm.fetch, manifest)
            await until(lambda: len(store.held(manifest.chunk_ids())) >= 3, "a few chunks", 15)
            inner.cancel_scope.cancel()  # as if the node died half way
    assert not scope.cancelled_caught
    held = store.held(manifest.chunk_ids())
    assert 3 <= len(held) < len(manifest.chunk_ids())
    asked = record_requests(fetcher)
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    assert has_all(fetcher, manifest) and same_bytes(fetcher, manifest, asset)
    again = [chunk for _, chunk in asked]
    assert not set(again) & held, "no chunk already stored is asked for again"
    assert set(again) == set(manifest.chunk_ids()) - held
    assert len(again) == len(set(again))


async def test_a_stored_chunk_that_rots_is_found_when_read_and_fetched_again(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    a, b, fetcher = await farm.mesh("a", "b", "f")
    asset = random_file(short_dir / "src" / "asset.bin", 4 * MiB)
    manifest = await holding([a, b], [asset], short_dir / "src")
    await sees_holders(fetcher, manifest, [a, b])
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    store = fetcher.node.swarm.store
    rotten = manifest.chunk_ids()[2]
    (store.root / "chunks" / rotten[:2] / rotten).write_bytes(b"\xff" * MiB)
    try:
        store.get(rotten)
        raise AssertionError("a damaged chunk was returned")
    except CorruptChunk:
        pass
    assert not store.has(rotten)
    asked = record_requests(fetcher)
    with trio.fail_after(20):
        await fetcher.node.swarm.fetch(manifest)
    assert [chunk for _, chunk in asked] == [rotten]
    assert same_bytes(fetcher, manifest, asset)
