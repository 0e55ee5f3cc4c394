"""Frame previews on a rendering farm: the worker that renders a frame makes its
preview at once, keeps it as a chunk and names it in the task state; another
node's dashboard fetches it through the swarm and keeps it.  A Blender job
with EXR frames gets previews too (OpenImageIO reads them)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from PIL import Image

from node.dashboard.service import Dashboard
from node.render.preview import MAX_WIDTH
from tests.harness.dashboard import Browser
from tests.harness.jobs import Member
from tests.harness.render import EXAMPLES, SMALL, RenderFarm, settled, submit, wait_state

BLENDER = shutil.which("blender")
DASH = {"dashboard": True, "dashboard_listen": "127.0.0.1:0"}


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> RenderFarm:
    """Nodes that render, each serving a dashboard on a port of its own."""
    return RenderFarm(nursery, short_dir, token, defaults=DASH)


def _previews(member: Member, uuid: str) -> list[str]:
    doc = member.node.book.get(uuid)
    assert doc is not None
    return [h for tid in sorted(doc.tasks) for h in doc.tasks[tid].previews]


async def _browser(member: Member) -> Browser:
    dash = member.node.dashboard
    assert isinstance(dash, Dashboard)
    browser = Browser(dash.base_url)
    assert (await browser.login((await member.call(lambda c: c.dashboard_login()))["url"])).status == 200
    return browser


async def test_the_worker_makes_previews_and_another_node_fetches_them_through_the_swarm(
        farm: RenderFarm) -> None:
    submitter = await farm.start("sub", share=False, server_priority=100)
    worker = await farm.start("w", peers=[submitter])
    await settled([submitter, worker])
    uuid = await submit(submitter, frames="1-3", rdata=dict(SMALL, width=640, height=360))
    with trio.fail_after(120):
        assert await wait_state(submitter, uuid, "done", "failed") == "done"
    previews = _previews(submitter, uuid)
    assert len(previews) == 3 and all(previews) and len(set(previews)) == 3
    assert all(worker.node.swarm.store.has(h) for h in previews)  # made where it rendered
    assert not any(submitter.node.swarm.store.has(h) for h in previews)

    browser = await _browser(submitter)
    answer = await browser.get(f"/api/preview/{previews[0]}")
    assert answer.status == 200 and answer.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(answer.body).hexdigest() == previews[0]
    assert "immutable" in answer.headers["cache-control"]
    image = Image.open(io.BytesIO(answer.body))
    assert image.format == "JPEG" and image.size == (MAX_WIDTH, 180)
    assert submitter.node.swarm.store.has(previews[0])  # kept: served without the worker now

    await worker.stop()
    assert (await browser.get(f"/api/preview/{previews[0]}")).status == 200
    missing = await browser.get(f"/api/preview/{previews[1]}")
    assert missing.status == 404 and "no machine online" in missing.json()["error"]
    full = await browser.get(f"/api/frame/{uuid}/1")  # the submitter holds the frame itself
    assert full.status == 200 and Image.open(io.BytesIO(full.body)).size == (640, 360)


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed (Debian: apt-get install blender)")
async def test_a_blender_job_with_exr_frames_gets_previews(farm: RenderFarm, short_dir: Path) -> None:
    assert BLENDER is not None
    scene = short_dir / "cube.blend"
    done = await trio.to_thread.run_sync(lambda: subprocess.run(
        [BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code", "1", "--python",
         str(EXAMPLES / "blender" / "make_cube.py"), "--", str(scene), "64", "36", "1"],
        capture_output=True, text=True, timeout=120, cwd=short_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    (a,), _ = await farm.ready("a")
    out = short_dir / "out"
    uuid = await submit(a, scene, frames="1-2", renderer="blender", output=str(out / "cube_####.exr"))
    with trio.fail_after(180):
        assert await wait_state(a, uuid, "done", "failed") == "done"
    assert sorted(p.name for p in out.iterdir()) == ["cube_0001.exr", "cube_0002.exr"]
    assert (out / "cube_0001.exr").read_bytes()[:4] == b"\x76\x2f\x31\x01"  # OpenEXR's magic number
    previews = _previews(a, uuid)
    assert len(previews) == 2 and all(previews)
    browser = await _browser(a)
    for h in previews:
        answer = await browser.get(f"/api/preview/{h}")
        image = Image.open(io.BytesIO(answer.body)).convert("RGB")
        assert answer.status == 200 and image.size == (64, 36)
        assert max(image.getextrema(), key=lambda e: e[1])[1] > 40, "the tone-mapped cube is not black"
    full = await browser.get(f"/api/frame/{uuid}/1")
    assert full.status == 200 and full.headers["content-type"] == "image/png"  # EXR converted for the browser
