"""Job assets end to end on in-process farms (node.assets, node.jobs_api,
node.worker): collected at submit, fetched by workers when they get a task
(or, with NOREQUESTONDEMAND, as soon as the job starts; with
NOPEERTOPEERASSETDISTRIBUTION, only from the origin and the server),
materialised with absolute paths rewritten, shared chunks stored and moved
once, missing files reported, and the repository listed and collected.

Roles are fixed with preferences: the origin (where jobs are submitted) and
the server neither render nor fetch; ``server_priority`` picks the server.
Submits wait for no replica (``replicas = 0``) unless a test is about them: a
replica fetches the assets at submit, which would hide how workers get them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from node.assets.jobassets import collect
from node.assets.store import ChunkStore
from protocol.enums import CreateJobResult
from tests.harness.assets import (
    MiB,
    chunk_files,
    doc_on,
    holds,
    job_state,
    manifest_of,
    random_file,
    record_requests,
    scene,
    submit,
    texture,
)
from tests.harness.jobs import Farm, Member, agreed_server, connected
from tests.harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BLENDER = shutil.which("blender")


async def roles(farm: Farm, *workers: str, third: str = "") -> tuple[Member, Member, list[Member], Member | None]:
    """An origin, a server, rendering workers and (optionally) a bystander that does
    not render; all linked and agreed on the server."""
    server = await farm.start("srv", server_priority=100)
    origin = await farm.start("org", peers=[server], server_priority=0, replicas=0)
    crew: list[Member] = []
    for name in workers:
        crew.append(await farm.start(name, peers=[server, origin, *crew], server_priority=0,
                                     share=True))
    extra = None
    if third:
        extra = await farm.start(third, peers=[server, origin, *crew], server_priority=0)
    everyone = [server, origin, *crew] + ([extra] if extra else [])
    with trio.fail_after(10):
        await connected(everyone)
        assert (await agreed_server(everyone)) is server
    return origin, server, crew, extra


def command_job(short_dir: Path, size: int = 3 * MiB) -> tuple[Path, Path]:
    """A scene file and an asset of random bytes for a ``command`` job."""
    asset = random_file(short_dir / "project" / "data" / "cache.bin", size)
    job_scene = short_dir / "project" / "job.txt"
    job_scene.write_text("a command job\n")
    return job_scene, asset


def command_args(asset: Path, **args: Any) -> dict[str, Any]:
    return {"renderer": "command", "rdata": {"command": "true", "assets": [str(asset)]}, **args}


async def done(member: Member, job: str, within: float = 20.0) -> dict[str, Any]:
    """``job`` once it ended (it must have succeeded), with its ``tasks``."""
    async def finished() -> bool:
        return str((await job_state(member, job))["state"]) in ("done", "failed")

    await wait_until(finished, within, f"job {job} ends", every=0.05)  # a control call a look
    state = await job_state(member, job)
    state["tasks"] = await member.call(lambda c: c.copy_render_task_from(job))
    assert state["state"] == "done", state
    return state


async def render_here(shot: Path, pattern: Path) -> subprocess.CompletedProcess[bytes]:
    """Render frame 1 of ``shot`` with the builtin renderer in this process's view of the files."""
    return await trio.run_process(
        [sys.executable, "-P", "-m", "node.renderers.builtin", str(shot), "--frames", "1",
         "--out-pattern", str(pattern)], cwd=ROOT, capture_stdout=True, stderr=subprocess.STDOUT,
        check=False)


def names_under(folder: str) -> set[str]:
    """The names of every file and folder under ``folder``."""
    return {name for _, dirs, files in os.walk(folder) for name in dirs + files}


def machines_of(state: dict[str, Any]) -> set[str]:
    """Every machine that held a task of the job."""
    return {m for task in state["tasks"] for m in task["machines"]}


# -- collecting at submit --------------------------------------------------------


async def test_a_missing_texture_is_a_warning_in_the_job_log_or_fails_the_submit(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0, "replicas": 0})
    a = await farm.start("a")
    gone = str(short_dir / "tex" / "gone.png")
    shot = scene(short_dir / "shot.json", gone)
    result = await a.submit(str(shot))
    assert result["result_name"] == "OK"
    log = "\n".join(row["line"] for row in (await job_state(a, result["uuid"]))["log"])
    assert f"missing assets: {gone}" in log
    refused = await a.submit(str(shot), flags=["HANDLEWARNINGASERROR"])
    assert refused["result"] == int(CreateJobResult.CREATEJOBRESULT_ASSETMISSING)
    assert refused["result_name"] == "ASSETMISSING" and refused["uuid"] is None
    assert refused["missing"] == [gone]


async def test_a_missing_scene_fails_the_submit_with_assetmissing(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0, "replicas": 0})
    a = await farm.start("a")
    result = await a.submit(str(short_dir / "nowhere.json"))
    assert result["result_name"] == "ASSETMISSING"
    assert result["missing"] == [str(short_dir / "nowhere.json")]


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed (Debian: apt-get install blender)")
def test_blender_dependencies_feed_the_manifest(tmp_path: Path) -> None:
    """A .blend with an image texture and a linked library: submit collects all three."""
    d = tmp_path / "shot"
    texture(d / "tex" / "wood.png")
    script = tmp_path / "make.py"
    script.write_text(f'''
import bpy
d = {str(d)!r}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_cube_add()
bpy.context.object.name = "LibCube"
bpy.context.scene.collection.objects.unlink(bpy.context.object)
bpy.data.objects["LibCube"].use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=d + "/libs/lib.blend")
bpy.ops.wm.read_factory_settings(use_empty=True)
with bpy.data.libraries.load(d + "/libs/lib.blend", link=True, relative=True) as (src, dst):
    dst.objects = ["LibCube"]
bpy.context.scene.collection.objects.link(dst.objects[0])
bpy.ops.mesh.primitive_plane_add()
mat = bpy.data.materials.new("Wood")
mat.use_nodes = True
node = mat.node_tree.nodes.new("ShaderNodeTexImage")
node.image = bpy.data.images.load(d + "/tex/wood.png")
bpy.context.object.data.materials.append(mat)
bpy.ops.wm.save_as_mainfile(filepath=d + "/main.blend", relative_remap=True)
''')
    (d / "libs").mkdir(parents=True)
    assert BLENDER is not None
    made = subprocess.run([BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code", "1",
                           "--python", str(script)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    store = ChunkStore(tmp_path / "store")
    got = collect(store, str(d / "main.blend"), "blender", [])
    manifest = store.manifest(got.manifest)
    assert manifest is not None
    assert sorted(f.path for f in manifest.files) == ["libs/lib.blend", "main.blend", "tex/wood.png"]
    assert got.root == str(d) and got.scene_rel == "main.blend" and not got.missing
    for entry in manifest.files:
        assert entry.size == (d / entry.path).stat().st_size


async def test_a_submit_with_assets_has_just_its_replicas_fetch_them(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0})
    origin = await farm.start("o", replicas=1)
    others = [await farm.start(n, peers=[origin]) for n in ("a", "b", "c")]
    await wait_until(lambda: origin.sees(*others), 5, "the origin sees the others")
    job_scene, asset = command_job(short_dir)
    result = await origin.submit(str(job_scene), start=False, **command_args(asset))
    assert result["result_name"] == "OK" and result["replicas"] == 1
    manifest = manifest_of(origin, result["uuid"])
    for m in others:
        await doc_on(m, result["uuid"])
    await trio.sleep(0.5)
    assert [holds(m, manifest) for m in others].count(True) == 1
    assert sum(1 for m in others if chunk_files(m)) == 1, "the others fetched nothing"


# -- the three ways a worker gets them ---------------------------------------------


async def test_by_default_only_a_worker_given_a_task_fetches_the_assets(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    origin, _, (chosen, idle), _ = await roles(farm, "w1", "w2")
    job_scene, asset = command_job(short_dir)
    job = await submit(origin, job_scene, machines=[chosen.uuid], **command_args(asset))
    state = await done(origin, job)
    assert machines_of(state) == {chosen.uuid}
    manifest = manifest_of(origin, job)
    assert holds(chosen, manifest)
    assert idle.node.assets.store.manifest(manifest.id) is None and not chunk_files(idle)


async def test_norequestondemand_puts_the_assets_on_every_eligible_worker_at_start(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    origin, server, (w1, w2, outsider), _ = await roles(farm, "w1", "w2", "w3")
    job_scene, asset = command_job(short_dir)
    args = command_args(asset, flags=["NOREQUESTONDEMAND"], machines=[w1.uuid, w2.name])
    job = await submit(origin, job_scene, start=False, **args)
    for w in (w1, w2, outsider):
        await doc_on(w, job)
    await trio.sleep(0.5)
    assert not any(chunk_files(w) for w in (w1, w2, outsider)), "nothing moves before the start"
    task_holders: dict[str, set[str]] = {}

    def record() -> bool:  # who held a task at the moment each worker held every chunk
        doc = server.node.book.get(job)
        workers = {t.worker for t in doc.tasks.values()} if doc is not None else set()
        manifest = origin.node.assets.store.manifest(str(origin.node.book.get(job).value("assets")))  # type: ignore[union-attr]
        for w in (w1, w2):
            if w.name not in task_holders and manifest is not None and holds(w, manifest):
                task_holders[w.name] = set(workers)
        return len(task_holders) == 2

    await origin.call(lambda c: c.init_and_start_rendering_full_async(job))
    await wait_until(record, 10, "both eligible workers hold the assets")
    state = await done(origin, job)
    renderer = machines_of(state)
    assert len(renderer) == 1
    other = w2 if renderer == {w1.uuid} else w1
    assert other.uuid not in task_holders[other.name], "it had them without ever getting a task"
    assert not chunk_files(outsider), "a worker the job may not use fetches nothing"


async def test_a_worker_that_reaches_no_holder_of_the_manifest_waits_for_one(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    """The only holder of a job's assets (its origin, which kept no replica) is
    away when the worker gets the task: the worker asks again as sessions come,
    and renders once the origin is back.  It used to fail the attempt at once
    ("no peer could send manifest"), and its retries ran out within a second:
    a chaos soak's acknowledged jobs failed for good during 10 s partitions."""
    farm = Farm(nursery, short_dir, token)
    origin, server, (w1,), _ = await roles(farm, "w1")
    job_scene, asset = command_job(short_dir, 2 * MiB)
    job = await submit(origin, job_scene, start=False, **command_args(asset))
    await doc_on(w1, job)
    await doc_on(server, job)
    await origin.stop()
    await server.call(lambda c: c.init_and_start_rendering_full_async(job))
    await wait_until(lambda: w1.node.worker.current is not None, 10, "the worker holds the task")
    await trio.sleep(2.0)  # it looks for the manifest meanwhile
    assert not [line for _, line in server.node.book.get(job).visible_log()  # type: ignore[union-attr]
                if "failed" in line]
    origin = await farm.restart(origin)
    await origin.link(w1)  # it listens on a new port: dial the worker (mDNS would find it)
    state = await done(server, job, within=30)
    assert machines_of(state) == {w1.uuid}
    assert all(t["failures"] == 0 for t in state["tasks"]), state["tasks"]
    assert holds(w1, manifest_of(origin, job))


async def test_nopeertopeer_fetches_only_from_the_origin_and_the_server(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    origin, server, (w1, w2), third = await roles(farm, "w1", "w2", third="t")
    assert third is not None
    job_scene, asset = command_job(short_dir, 8 * MiB)
    collected = collect(third.node.assets.store, str(job_scene), "command", [str(asset)])
    third.node.swarm.announce(collected.manifest)  # a third node holds every chunk too
    seen_by = [w1, w2]
    await wait_until(lambda: all(third.uuid in w.node.swarm.holdings.get(collected.manifest, {})
                                 for w in seen_by), 5, "the workers know the third node holds them")
    asked1, asked2 = record_requests(w1), record_requests(w2)
    job = await submit(origin, job_scene, machines=[w1.uuid],
                       **command_args(asset, flags=["NOPEERTOPEERASSETDISTRIBUTION"]))
    await done(origin, job)
    assert manifest_of(origin, job).id == collected.manifest
    assert asked1 and {peer for peer, _ in asked1} <= {origin.uuid, server.uuid}
    assert third.node.swarm.served_bytes == 0, "no chunk request went to the third node"
    job2 = await submit(origin, job_scene, machines=[w2.uuid], **command_args(asset))
    await done(origin, job2)
    assert third.uuid in {peer for peer, _ in asked2}, "without the flag it is a source like any"


# -- materialising -------------------------------------------------------------------


async def test_an_absolute_texture_path_renders_from_the_materialised_copy(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    origin, _, (worker,), _ = await roles(farm, "w")
    wood = texture(short_dir / "library" / "wood.png", seed=7)
    shot = scene(short_dir / "shots" / "shot.json", str(wood))  # an absolute path
    reference = short_dir / "ref_000001.png"
    local = await render_here(shot, short_dir / "ref_{frame:06d}.png")
    assert local.returncode == 0, local.stdout
    job = await submit(origin, shot, output=str(short_dir / "out" / "frame_####.png"))
    wood.rename(short_dir / "library" / "moved.png")  # gone from where the scene says
    state = await done(origin, job, within=30)
    assert machines_of(state) == {worker.uuid}
    frame = short_dir / "out" / "frame_0001.png"
    assert frame.read_bytes() == reference.read_bytes()
    missing = await render_here(shot, short_dir / "x_{frame}.png")
    assert missing.returncode == 6, "rendered here, the scene now misses its texture"
    assert "wood.png" in names_under(worker.node.assets.dir)


async def test_jobs_sharing_a_texture_store_it_once_and_move_only_new_chunks(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0, "replicas": 0})
    origin, worker = await farm.mesh("o", "w")
    shared = random_file(short_dir / "proj" / "tex" / "marble.bin", 5 * MiB + 100)
    first = short_dir / "proj" / "first.txt"
    second = short_dir / "proj" / "second.txt"
    first.write_text("one")
    second.write_text("two")
    j1 = await submit(origin, first, renderer="command", start=False,
                      rdata={"command": "true", "assets": [str(shared)]})
    j2 = await submit(origin, second, renderer="command", start=False,
                      rdata={"command": "true", "assets": [str(shared)]})
    m1, m2 = manifest_of(origin, j1), manifest_of(origin, j2)
    assert m1.id != m2.id
    shared_chunks = set(m1.chunk_ids()) & set(m2.chunk_ids())
    assert len(shared_chunks) == 6
    assert len(chunk_files(origin)) == len(set(m1.chunk_ids()) | set(m2.chunk_ids())) == 8
    asked = record_requests(worker)
    with trio.fail_after(20):
        await worker.node.assets.prepare(await doc_on(worker, j1))
        first_fetch = [c for _, c in asked]
        await worker.node.assets.prepare(await doc_on(worker, j2))
    assert sorted(first_fetch) == sorted(m1.chunk_ids())
    assert [c for _, c in asked[len(first_fetch):]] == [m2.files[0].chunks[0]] == \
        [c for c in m2.chunk_ids() if c not in shared_chunks]
    assert len(chunk_files(worker)) == 8, "the shared texture is stored once"


async def test_a_chunk_that_rots_before_it_is_materialised_is_fetched_again(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0, "replicas": 0})
    origin, worker = await farm.mesh("o", "w")
    job_scene, asset = command_job(short_dir, 3 * MiB)
    job = await submit(origin, job_scene, start=False, **command_args(asset))
    doc = await doc_on(worker, job)
    manifest = manifest_of(origin, job)
    swarm = worker.node.swarm
    with trio.fail_after(20):
        await swarm.fetch(await swarm.get_manifest(manifest.id, [origin.uuid]))
    rotten = manifest.files[0].chunks[1] if manifest.files[0].size > MiB else manifest.files[1].chunks[1]
    (swarm.store.root / "chunks" / rotten[:2] / rotten).write_bytes(b"rot" * 1000)
    asked = record_requests(worker)
    with trio.fail_after(20):
        scene_here, path_map = await worker.node.assets.prepare(doc)
    assert [c for _, c in asked] == [rotten]
    dest = Path(path_map[str(short_dir / "project")])
    assert (dest / "data" / "cache.bin").read_bytes() == asset.read_bytes()
    assert scene_here == str(dest / "job.txt")


# -- the repository ----------------------------------------------------------------------


async def cli(member: Member, *args: str) -> Any:
    done = await trio.run_process([sys.executable, "-m", "node", "--socket", member.sock, *args,
                                   "--json"], capture_stdout=True, capture_stderr=True, cwd=ROOT)
    return json.loads(done.stdout)


async def test_repo_lists_manifests_with_their_jobs_and_repo_gc_drops_unused_ones(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token, defaults={"server_priority": 0, "replicas": 0})
    origin, worker = await farm.mesh("o", "w")
    job_scene, asset = command_job(short_dir, 2 * MiB + 1)
    kept_scene = short_dir / "project" / "kept.txt"
    kept_scene.write_text("kept")
    gone = await submit(origin, job_scene, start=False, **command_args(asset))
    kept = await submit(origin, kept_scene, start=False, renderer="command", rdata={"command": "true"})
    with trio.fail_after(20):
        await worker.node.assets.prepare(await doc_on(worker, gone))
        await worker.node.assets.prepare(await doc_on(worker, kept))
    listing = await cli(worker, "repo")
    rows = {row["manifest"]: row for row in listing["assets"]}
    m_gone, m_kept = manifest_of(origin, gone), manifest_of(origin, kept)
    assert rows[m_gone.id]["jobs"] == [gone] and rows[m_kept.id]["jobs"] == [kept]
    assert rows[m_gone.id]["chunks"] == rows[m_gone.id]["chunks_here"] == 4
    assert rows[m_gone.id]["bytes"] == m_gone.size
    assert listing["store_bytes"] == m_gone.size + m_kept.size
    await origin.call(lambda c: c.delete_render_job(gone))
    await wait_until(lambda: worker.node.book.get(gone) is None
                     or worker.node.book.get(gone).deleted is not None,  # type: ignore[union-attr]
                     5, "the delete reaches the worker")
    assert (await cli(worker, "repo"))["assets"][0]["jobs"] in ([], [kept])
    dropped = await cli(worker, "repo", "gc")
    assert dropped == {"manifests": 1, "bytes": m_gone.size}
    after = await cli(worker, "repo")
    assert [row["manifest"] for row in after["assets"]] == [m_kept.id]
    assert after["store_bytes"] == m_kept.size
    copies = names_under(worker.node.assets.dir)
    assert m_gone.id not in copies, "its materialised copy went too"
    assert m_kept.id in copies
