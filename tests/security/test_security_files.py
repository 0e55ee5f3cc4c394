"""Issue 14, files: a submit reads the scene and its assets, and tests the
output folder, with the submitter's rights; frames are written with them.  A
user cannot make the daemon (root here) read a file they cannot read, or write
where they cannot write, whether by naming it or by swapping a symlink after
the daemon looked."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import trio

from protocol.crdt import Phase, task_current
from tests.harness.jobs import Member
from tests.harness.render import RenderFarm, small_scene, wait_state
from tests.harness.security import Accounts, submit_as
from tests.harness.waiting import wait_until
from tests.security.test_security_renders import home_of, one_node, owned_by, root_secret


def stored_chunks(node: Member) -> set[str]:
    """Names (SHA-256) of the chunks in the node's store."""
    return {c.name for c in Path(node.node.swarm.store.root, "chunks").rglob("*")}


def protected_folder(root: Path) -> Path:
    """A root-owned folder everyone may read, nobody else write."""
    folder = root / "protected"
    folder.mkdir(mode=0o755)
    return folder


async def test_a_submit_to_an_output_folder_the_submitter_cannot_write_fails_and_writes_nothing(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    scene = owned_by(small_scene(folder / "shot.json", frames="1"), accounts, accounts.alice)
    protected = protected_folder(root)
    for output in (protected / "frame_####.png", protected / "new" / "frame_####.png"):
        result = await submit_as(accounts.alice, node.sock, str(scene), frames="1", output=str(output))
        assert result["result_name"] == "SAVINGFAILED" and result["uuid"] is None, result
        assert "Permission denied" in result["reason"] and str(protected) in result["reason"], result
    assert list(protected.iterdir()) == [], "something was written where alice cannot write"
    assert not node.node.book.live()
    ok = await submit_as(accounts.alice, node.sock, str(scene), frames="1", start=False,
                         output=str(folder / "out" / "frame_####.png"))
    assert ok["result_name"] == "OK", ok


async def test_a_scene_or_asset_the_submitter_cannot_read_is_refused_though_the_daemon_could(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    out = str(folder / "out" / "frame_####.png")
    private = small_scene(root / "private.json", frames="1")
    private.chmod(0o600)  # root's: the daemon (root) can read it, alice cannot
    secret = root_secret(root)
    scene = owned_by(small_scene(folder / "shot.json", frames="1"), accounts, accounts.alice)
    key = Path(node.node.prefs.state_dir) / "identity.json"

    refused = [
        await submit_as(accounts.alice, node.sock, str(private), frames="1", output=out),
        await submit_as(accounts.alice, node.sock, str(scene), frames="1", output=out,
                        rdata={"assets": [str(secret)]}),
        await submit_as(accounts.alice, node.sock, str(scene), renderer="command", frames="1", output=out,
                        rdata={"command": "cp {scene} {output}", "assets": [str(key)]}),
    ]
    for result, unreadable in zip(refused, (private, secret, key), strict=True):
        assert result["result_name"] == "ASSETMISSING" and result["uuid"] is None, result
        assert str(unreadable) in result["reason"] and "Permission denied" in result["reason"], result
    assert not node.node.book.live()
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (private, secret, key)}
    stored = stored_chunks(node)
    assert not digests & stored, "a file alice cannot read reached the chunk store"
    mine = await node.submit(str(private), frames="1", output=str(root / "rootout" / "frame_####.png"),
                             start=False)
    assert mine["result_name"] == "OK", mine  # root may: the daemon acts as itself for root


async def test_a_symlink_swapped_during_submits_never_smuggles_a_root_only_file(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    harmless = folder / "harmless.txt"
    harmless.write_text("alice's own asset\n")
    owned_by(harmless, accounts, accounts.alice)
    secret = root_secret(root)
    link = folder / "asset.txt"
    link.symlink_to(harmless)
    stop = threading.Event()

    def flip() -> None:  # swaps the link between alice's file and root's, as fast as it can
        tmp = folder / ".asset.tmp"
        while not stop.is_set():
            for target in (secret, harmless):
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                tmp.symlink_to(target)
                os.replace(tmp, link)

    scene = owned_by(small_scene(folder / "shot.json", frames="1"), accounts, accounts.alice)
    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = []
    try:
        for _ in range(6):
            outcomes.append(await submit_as(accounts.alice, node.sock, str(scene), frames="1", start=False,
                                            output=str(folder / "out" / "frame_####.png"),
                                            rdata={"assets": [str(link)]}))
    finally:
        stop.set()
        flipper.join()
    assert {o["result_name"] for o in outcomes} <= {"OK", "ASSETMISSING"}, outcomes
    secret_digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    stored = stored_chunks(node)
    assert secret_digest not in stored, "the root-only file reached the chunk store"
    assert hashlib.sha256(harmless.read_bytes()).hexdigest() in stored or not any(
        o["result_name"] == "OK" for o in outcomes)


async def test_an_output_folder_swapped_for_a_symlink_after_submit_gets_no_frame(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    scene = owned_by(small_scene(folder / "shot.json", frames="1"), accounts, accounts.alice)
    out = folder / "out"
    result = await submit_as(accounts.alice, node.sock, str(scene), frames="1", start=False,
                             output=str(out / "frame_####.png"))
    assert result["result_name"] == "OK", result
    protected = protected_folder(root)
    out.rmdir()  # made by the submit's write test
    out.symlink_to(protected)
    uuid = result["uuid"]
    doc = node.node.book.get(uuid)
    assert doc is not None
    node.node.jobs.start(doc, accounts.alice)
    await wait_until(lambda: task_current(node.node.book.get(uuid), 0).phase == Phase.DELIVERING,  # type: ignore[arg-type]
                     60, "the frame is rendered")
    await trio.sleep(3)  # a delivery attempt or two (RETRY is 2 s)
    assert list(protected.iterdir()) == [], "the frame went where alice cannot write"
    assert await wait_state(node, uuid, "rendering", "queued") in ("rendering", "queued")


async def test_a_watch_folders_jobs_belong_to_its_owner_and_write_with_their_rights(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    """A scene dropped in alice's watch folder becomes alice's job: the book names
    her, and its frames are hers on disk (the daemon is root here)."""
    folder = home_of(root, accounts, accounts.alice)
    owned_by(small_scene(folder / "dropped.json", frames="1"), accounts, accounts.alice)
    node = await one_node(farm, watch=[str(folder)])
    await wait_until(lambda: bool(node.node.book.live()), 30, "a job for the dropped scene")
    (doc,) = node.node.book.live()
    assert doc.value("user") == accounts.alice
    with trio.fail_after(60):
        assert await wait_state(node, doc.uuid, "done", "failed") == "done"
    frames = [p for p in (folder / "output").rglob("*") if p.is_file()]
    assert frames, "no frame was written"
    assert {p.stat().st_uid for p in frames} == {accounts.uid(accounts.alice)}
