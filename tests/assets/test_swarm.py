"""Chunk distribution between in-process nodes (node.swarm): a fetch draws on
every holder, verifies each chunk, refuses what a damaged store or a lying
peer sends and gets it elsewhere, and a fetch cut short resumes with only the
missing chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from node.assets.store import CorruptChunk
from protocol.manifest import Manifest
from tests.harness.assets import MiB, random_file, record_requests, slow_serving
from tests.harness.jobs import Farm, Member
from tests.harness.waiting import wait_until


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
    await wait_until(lambda: all(h.uuid in known.get(manifest.id, {}) for h in holders),
                     5, f"{fetcher.name} learns who holds the chunks")


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
            await wait_until(lambda: len(store.held(manifest.chunk_ids())) >= 3, 15, "a few chunks")
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


async def test_end_games_and_cancelled_fan_outs_lose_no_session(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    """The swarm's end game cancels the slower of two requests for a chunk, and a
    submit with one replica cancels its leftover replica request: with the
    session writer, neither cancel can cut a record, so over 20 fetches and 20
    submits no session ends (the same sessions live throughout)."""
    farm = Farm(nursery, short_dir, token, defaults={"replicas": 1, "server_priority": 0})
    fast, slow, fetcher = await farm.mesh("fast", "slow", "f")
    slow_serving(slow, 0.7)  # past ENDGAME_AFTER: the end game asks the fast holder too
    members = [fast, slow, fetcher]
    sessions = {m.name: dict(m.node.peers.sessions) for m in members}
    offline_before = {m.name: _offline_lines(m) for m in members}
    asked = record_requests(fetcher)
    scene = short_dir / "scene.json"
    scene.write_text((Path(__file__).parents[2] / "examples" / "spheres.json").read_text())

    async def one_round(i: int) -> None:
        asset = random_file(short_dir / "src" / f"asset{i}.bin", 3 * MiB)
        manifest = await holding([fast, slow], [asset], short_dir / "src")
        await sees_holders(fetcher, manifest, [fast, slow])
        async with trio.open_nursery() as both:
            both.start_soon(fetcher.node.swarm.fetch, manifest)
            both.start_soon(fetcher.submit, str(scene))  # replicas=1 of 2 peers: one request cancelled
        assert has_all(fetcher, manifest) and same_bytes(fetcher, manifest, asset)

    # meanwhile the fetcher's own uplink is busy serving: its requests wait behind bulk data
    big = random_file(short_dir / "up" / "big.bin", 16 * MiB)
    uplink = await holding([fetcher], [big], short_dir / "up")
    with trio.fail_after(120):
        async with trio.open_nursery() as background:
            for m in (fast, slow):
                await sees_holders(m, uplink, [fetcher])
                background.start_soon(m.node.swarm.fetch, uplink)
            for start in range(0, 20, 5):
                async with trio.open_nursery() as rounds:
                    for i in range(start, start + 5):
                        rounds.start_soon(one_round, i)
    assert has_all(fast, uplink) and has_all(slow, uplink)
    by_chunk: dict[str, set[str]] = {}
    for peer, chunk in asked:
        by_chunk.setdefault(chunk, set()).add(peer)
    assert sum(1 for peers in by_chunk.values() if len(peers) == 2) >= 10, "end games ran"
    for m in members:
        assert _offline_lines(m) == offline_before[m.name], f"{m.name} lost a session"
        assert m.node.peers.sessions == sessions[m.name], f"{m.name}'s sessions changed"
        assert not any(s.closed.is_set() for s in m.node.peers.sessions.values())


def _offline_lines(member: Member) -> int:
    table = member.node.table
    return sum(1 for uuid in member.node.peers.sessions
               for entry in table.log_tail(uuid, -1) if entry["line"].startswith("offline"))
