"""The ``rendernode`` command as a user runs it: ``submit --wait`` until the job
ends (its exit status says how), ``tasks``, and ``demo``, which starts a farm
of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from node.image import read_image
from tests.harness.render import ROOT, RenderFarm, cli, cli_run, frame_files, small_scene


async def test_submit_wait_exits_zero_once_the_job_is_done_and_tasks_tell_how(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json", frames="1-24")
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--frames", "1-4", "--wait", "--json")
    assert code == 0, err + out
    result = json.loads(out)
    assert result["state"] == "done" and result["frames_done"] == 4 and result["result_name"] == "OK"
    uuid = result["uuid"]
    assert sorted(frame_files(short_dir / "renders", "shot_")) == [1, 2, 3, 4]  # the default output

    rows = await cli(a, "tasks", uuid)
    assert [r["frame"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["state"] == "done" and r["render_time"] > 0, r
        assert r["machines"] and set(r["machines"]) <= {a.uuid, b.uuid}, r
    assert (await cli(b, "job", uuid))["state"] == "done"


async def test_submit_wait_exits_non_zero_when_the_job_fails(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b", retries=1)
    scene = small_scene(short_dir / "shot.json")
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--frames", "1-2", "--renderer", "command",
                                   "--command", "false", "--wait", "--json")
    assert code == 1, err + out
    result = json.loads(out)
    assert result["state"] == "failed" and result["frames_done"] == 0
    rows = await cli(a, "tasks", result["uuid"])
    assert all(r["state"] == "failed" and "exited with status 1" in r["error"] for r in rows), rows


def test_demo_renders_its_frames_and_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "node", "demo", "--nodes", "2", "--frames", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frames = frame_files(out)
    assert sorted(frames) == [1, 2, 3, 4]
    assert all(read_image(str(p)).shape[:2] == (180, 320) for p in frames.values())
    sheet = read_image(str(out / "contact_sheet.png"))
    assert sheet.shape[1] > 4 * 160 and sheet.shape[0] > 90
    assert "4 frames written" in done.stdout and "farm stopped" in done.stdout


async def test_submit_sends_the_asset_files_it_is_given_and_refuses_a_missing_one(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json")
    lut = short_dir / "grade.lut"
    lut.write_bytes(bytes(range(256)) * 12_000)  # 3 MiB: more than one chunk
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--renderer", "command", "--command", "true",
                                   "--asset", str(short_dir / "no-such.lut"))
    assert code == 2 and "--asset" in err and "no-such.lut is not a file" in err, err + out
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--frames", "1-2", "--renderer", "command",
                                   "--command", "true", "--asset", str(lut), "--wait", "--json")
    assert code == 0, err + out
    uuid = json.loads(out)["uuid"]
    details = (await cli(a, "jobs", "--job", uuid, "--details", "assets"))[0]["assets"]
    rows = [r for r in (await cli(a, "repo"))["assets"] if r["manifest"] == details["manifest"]]
    assert len(rows) == 1 and rows[0]["files"] == 2, rows  # the scene and the asset
    assert rows[0]["bytes"] == scene.stat().st_size + lut.stat().st_size, rows
    assert rows[0]["chunks"] >= 3 and uuid in rows[0]["jobs"], rows
