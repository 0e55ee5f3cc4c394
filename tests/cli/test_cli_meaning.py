"""What the user means (issue 13, 5-10): the output file type the pattern
names, the scene's own frame range, the Python client resolving paths and
detecting the renderer as the CLI does, missing assets shown at submit and
errors in the user's paths, where frames go, and {frame:04d} patterns."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import trio

from node.client import Client
from node.renderers import blender_deps
from tests.harness.cli import rn
from tests.harness.render import EXAMPLES, ROOT, RenderFarm, small_scene, wait_state

BLENDER = shutil.which("blender")
POVRAY = shutil.which("povray")
needs_blender = pytest.mark.skipif(BLENDER is None, reason="blender is not installed (apt-get install blender)")
needs_povray = pytest.mark.skipif(POVRAY is None, reason="povray is not installed (apt-get install povray)")
EXR = b"\x76\x2f\x31\x01"  #: OpenEXR's magic number
JPEG = b"\xff\xd8\xff"


def pov_scene(folder: Path) -> Path:
    """examples/pov copied into ``folder``; the orbit.pov in it."""
    shutil.copytree(EXAMPLES / "pov", folder, dirs_exist_ok=True)
    return folder / "orbit.pov"


# -- 5: the output file type -------------------------------------------------------------


async def test_the_builtin_renderer_writes_the_type_the_pattern_names(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json")
    for ext, magic in (("exr", EXR), ("jpg", JPEG), ("png", b"\x89PNG")):
        run = await rn(a.sock, "submit", str(scene), "--frames", "1", "--output",
                       str(short_dir / ext / f"f_####.{ext}"), "--wait")
        assert run.code == 0, run
        assert (short_dir / ext / f"f_0001.{ext}").read_bytes().startswith(magic), ext


async def test_a_type_the_renderer_cannot_write_is_refused_at_submit_listing_what_it_can(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--output", str(short_dir / "f_####.xyz"))
    assert run.code == 2 and "cannot write .xyz frames" in run.err and "png" in run.err, run
    blend = short_dir / "cube.blend"
    blend.write_bytes(b"BLENDER")
    run = await rn(a.sock, "submit", str(blend), "--frames", "1", "--output", str(short_dir / "f_####.webp"))
    assert run.code == 2 and "blender renderer cannot write .webp" in run.err and "exr" in run.err, run
    assert a.node.book.live() == []


@needs_povray
async def test_povray_writes_jpeg_when_the_pattern_says_jpg(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = pov_scene(short_dir / "pov")

    def work() -> dict[str, object]:
        with Client(a.sock) as c:
            job = c.create_render_job(str(scene), frames="1", output=str(short_dir / "out" / "o_##.jpg"),
                                      rdata={"resolution_x": 32, "resolution_y": 24})
            assert job["uuid"]
            return c.wait(job["uuid"], timeout=60)

    final = await trio.to_thread.run_sync(work)
    assert final["state"] == "done" and final["renderer"] == "povray", final
    assert (short_dir / "out" / "o_01.jpg").read_bytes().startswith(JPEG)


# -- 6: the scene's own frame range; scene and renderer must match ---------------------------


@needs_blender
async def test_a_blend_renders_its_own_frame_range_read_once_through_blender(
        farm: RenderFarm, short_dir: Path) -> None:
    assert BLENDER is not None
    with trio.fail_after(120):
        done = await trio.run_process(
            [BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code", "1", "--python",
             str(EXAMPLES / "blender" / "make_cube.py"), "--", str(short_dir / "cube.blend"), "16", "9", "1"],
            capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (a, b), _ = await farm.ready("a", "b")
    run = await rn(a.sock, "submit", str(short_dir / "cube.blend"), "--output",
                   str(short_dir / "out" / "c_####.exr"), "--wait", "--json")
    assert run.code == 0, run
    assert run.json()["frames_done"] == 4
    for frame in range(1, 5):  # frame_start..frame_end of the scene, as OpenEXR
        assert (short_dir / "out" / f"c_{frame:04d}.exr").read_bytes().startswith(EXR)
    asked = [k for k in blender_deps._INFO if k[0] == str(short_dir / "cube.blend")]
    assert len(asked) == 1  # the frame range and the files: one Blender run


async def test_a_povray_ini_is_a_povray_scene_with_its_own_frames(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    pov_scene(short_dir / "pov")
    ini = short_dir / "pov" / "orbit.ini"
    ini.write_text("Input_File_Name=orbit.pov\nInitial_Frame=2\nFinal_Frame=6\nWidth=32\nHeight=24\n")
    run = await rn(a.sock, "submit", str(ini), "--paused", "--json")
    assert run.code == 0, run
    job = (await rn(a.sock, "job", run.json()["uuid"], "--json")).json()
    assert job["renderer"] == "povray" and job["frames"] == "2-6", job
    assets = (await rn(a.sock, "jobs", "--job", job["uuid"], "--details", "assets", "--json")).json()[0]
    files = (await rn(a.sock, "repo", "--json")).json()["assets"]
    mine = next(m for m in files if m["manifest"] == assets["assets"]["manifest"])
    assert mine["files"] == 3  # the .ini, orbit.pov and orbit_colours.inc


async def test_a_scene_the_renderer_cannot_render_is_refused_at_submit(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--renderer", "povray")
    assert run.code == 2 and "povray renderer cannot render a .json scene" in run.err, run
    assert "--renderer builtin" in run.err
    pov = pov_scene(short_dir / "pov")
    run = await rn(a.sock, "submit", str(pov), "--renderer", "blender", "--frames", "1")
    assert run.code == 2 and "blender renderer cannot render a .pov scene" in run.err, run
    assert a.node.book.live() == []


# -- 7: the Python client ---------------------------------------------------------------------


CLIENT_SCRIPT = """
import json, sys
from node.client import Client
with Client(sys.argv[1]) as c:
    job = c.create_render_job("shot.json", output="out/f_####.png", start=False)
    print(json.dumps(c.get_job(job["uuid"])))
"""


async def test_the_client_resolves_paths_in_the_callers_folder_and_detects_the_renderer(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    work = short_dir / "project"
    work.mkdir()
    small_scene(work / "shot.json", frames="3-5")
    done = await trio.run_process([sys.executable, "-c", CLIENT_SCRIPT, a.sock], cwd=work,
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr.decode()
    job = json.loads(done.stdout)
    assert job["scene"] == str(work / "shot.json") and job["output"] == str(work / "out" / "f_####.png")
    assert job["renderer"] == "builtin" and job["frames"] == "3-5"  # the scene's own range

    pov_scene(short_dir / "pov")

    def submit_pov() -> str:
        with Client(a.sock) as c:
            return str(c.create_render_job(str(short_dir / "pov" / "orbit.pov"), frames="1", start=False)["uuid"])

    uuid = await trio.to_thread.run_sync(submit_pov)
    assert a.node.book.get(uuid) is not None and a.node.book.get(uuid).value("renderer") == "povray"


async def test_client_wait_returns_the_final_job_and_reports_progress(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json", frames="1-3")
    seen: list[int] = []

    def work() -> dict[str, object]:
        with Client(a.sock) as c:
            job = c.create_render_job(str(scene))
            with pytest.raises(TimeoutError):
                c.wait(job["uuid"], timeout=0.0)
            return c.wait(job["uuid"], timeout=60, on_progress=lambda row: seen.append(row["frames_done"]))

    final = await trio.to_thread.run_sync(work)
    assert final["state"] == "done" and final["frames_done"] == 3 and final["result"] == "OK"
    assert seen and seen[-1] == 3 and seen == sorted(seen)


# -- 8: missing assets at submit; the user's paths in errors ------------------------------------


def textured_scene(path: Path, texture: str) -> Path:
    """A tiny builtin scene (32x18, one sample) whose sphere wears ``texture``."""
    path.write_text(json.dumps({
        "frames": "1", "resolution": [32, 18], "samples": 1, "max_depth": 1,
        "camera": {"position": [0, 1, 4], "look_at": [0, 0.6, 0], "fov": 45},
        "objects": [{"type": "sphere", "center": [0, 0.6, 0], "radius": 0.8, "texture": texture},
                    {"type": "plane", "checker": [0.2, 0.2, 0.2]}],
        "lights": [{"type": "point", "position": [2, 4, 3]}],
    }))
    return path


async def test_missing_assets_are_printed_at_submit_and_errors_name_the_users_paths(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b", retries=1)
    (short_dir / "proj").mkdir()
    scene = textured_scene(short_dir / "proj" / "shot.json", "tex/gone.png")
    run = await rn(a.sock, "submit", str(scene), "--wait")
    gone = str(short_dir / "proj" / "tex" / "gone.png")
    assert f"missing asset {gone}" in run.err, run.err
    assert run.code == 1 and gone in run.err, run.err  # the failure names the user's path...
    rows = (await rn(a.sock, "tasks", run.out.split()[0], "--json")).json()
    assert gone in rows[0]["error"] and "/assets/" not in rows[0]["error"], rows  # ...not a worker's copy


async def test_a_missing_povray_include_is_listed_at_submit(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    pov = short_dir / "inc.pov"
    pov.write_text('#include "colors.inc"\n#include "mine.inc"\nsphere { 0, 1 pigment { Red } }\n')
    run = await rn(a.sock, "submit", str(pov), "--frames", "1", "--flag", "HANDLEWARNINGASERROR")
    assert run.code == 3 and str(short_dir / "mine.inc") in run.err, run
    assert "colors.inc" not in run.err  # POV-Ray's own library has it


# -- 9: where frames go -----------------------------------------------------------------------------


async def test_submit_and_job_say_where_the_frames_go(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--paused")
    where = str(short_dir / "renders" / "shot_####.png")
    assert run.code == 0 and f"frames go to {where}" in run.err, run
    shown = (await rn(a.sock, "job", run.out.strip())).out
    assert any(line.split() == ["output", where] for line in shown.splitlines()), shown


# -- 10: {frame:04d} patterns ------------------------------------------------------------------------


async def test_a_python_style_frame_placeholder_numbers_the_files(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--frames", "1-2", "--output",
                   str(short_dir / "out" / "f_{frame:04d}.png"), "--wait")
    assert run.code == 0, run
    assert sorted(p.name for p in (short_dir / "out").iterdir()) == ["f_0001.png", "f_0002.png"]


async def test_a_pattern_with_no_placeholder_is_refused_for_several_frames_and_kept_for_one(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--frames", "1-3", "--output", str(short_dir / "still.png"))
    assert run.code == 2 and "no frame number placeholder" in run.err, run
    run = await rn(a.sock, "submit", str(scene), "--frames", "2", "--output", str(short_dir / "still.png"),
                   "--wait")
    assert run.code == 0, run
    assert (short_dir / "still.png").is_file()
    with trio.fail_after(5):
        await wait_state(a, run.out.split()[0], "done")
