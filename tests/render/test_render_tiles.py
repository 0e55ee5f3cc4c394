"""Tiled jobs on farms of in-process nodes: every frame cut into tiles, each a
task of its own rendered wherever the scheduler puts it, assembled on the
submitting node into exactly the frame one machine renders alone; a tile
lost with its worker or failing on one machine renders again elsewhere; a
job stopped or deleted midway; a 1x1 tiling is an ordinary job; and what a
renderer cannot take is refused at submit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from node.image import read_image
from node.render.assembly import partial_path
from tests.harness.render import (
    EXAMPLES,
    SLOW,
    SMALL,
    RenderFarm,
    attempts,
    cli,
    cli_run,
    doc_of,
    frame_files,
    log_lines,
    mid_frame,
    png_level,
    reference_render,
    render_pids,
    same_pixels,
    small_scene,
    state,
    submit,
    summary,
    tasks,
    wait_state,
)
from tests.harness.waiting import wait_until
from tests.render.test_render_external import make_cube

BLENDER = shutil.which("blender")
needs_blender = pytest.mark.skipif(BLENDER is None,
                                   reason="blender is not installed (Debian: apt-get install blender)")
needs_povray = pytest.mark.skipif(shutil.which("povray") is None,
                                  reason="povray is not installed (Debian: apt-get install povray)")

#: a command that draws the region it is given, with pixels that depend only on where they are
#: in the frame, and fails in the work folders of the node named "bad"
DRAW = """\
import sys
from PIL import Image
x0, y0, x1, y1 = (int(v) for v in sys.argv[1:5])
image = Image.new("RGB", (x1 - x0, y1 - y0))
image.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for y in range(y0, y1) for x in range(x0, x1)])
image.save(sys.argv[5])
"""


def _drawn(width: int, height: int) -> list[list[tuple[int, int, int]]]:
    return [[((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for x in range(width)] for y in range(height)]


async def test_a_tiled_animation_assembles_each_frame_exactly_as_one_machine_renders_it(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b, c), _ = await farm.ready("a", "b", "c")
    out = short_dir / "out"
    uuid = await submit(a, farm.scene, frames="1-2", rdata=SMALL, tiles="4x3",
                        output=str(out / "frame_####.png"))
    with trio.fail_after(90):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))

    reference = await trio.to_thread.run_sync(reference_render, farm.scene, "1-2", short_dir / "ref", SMALL)
    got = frame_files(out)
    assert sorted(got) == [1, 2], sorted(out.iterdir())
    for frame, path in got.items():
        assert same_pixels(path, reference[frame]), f"frame {frame} differs from a single-machine render"
    assert not list(out.glob("*.partial.*")), "the partial images outlived their frames"

    rows = tasks(a, uuid)
    assert len(rows) == 24 and [r["tile"] for r in rows[:12]] == list(range(12))
    assert all(r["state"] == "done" and r["machines"] for r in rows), rows
    assert rows[5]["frame"] == 1 and rows[5]["region"] == [16, 12, 32, 24]  # column 1 of row 1 of 64x36
    assert rows[12]["frame"] == 2 and rows[12]["region"] == [0, 0, 16, 12]
    assert len({r["machines"][-1] for r in rows}) > 1, "every tile rendered on one machine"
    job = summary(a, uuid)
    assert (job["frames_done"], job["frames_total"], job["tiles_done"], job["tiles_total"]) == (2, 2, 24, 24)
    assert job["tiles"] == "4x3" and job["resolution"] == "64x36"
    results = await a.call(lambda cl: cl.results(uuid))
    assert sorted(r["frame"] for r in results if r["kind"] == "output") == [1, 2]
    assert sum(1 for r in results if r["kind"] == "tile") == 24


async def test_a_1x1_tiling_renders_what_an_ordinary_job_renders(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    plain = await submit(a, farm.scene, frames="1-3", rdata=SMALL, output=str(short_dir / "plain" / "f_####.png"))
    tiled = await submit(a, farm.scene, frames="1-3", rdata=SMALL, tiles="1x1",
                         output=str(short_dir / "tiled" / "f_####.png"))
    with trio.fail_after(90):
        for uuid in (plain, tiled):
            assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    ours, theirs = frame_files(short_dir / "tiled", "f_"), frame_files(short_dir / "plain", "f_")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3]
    for frame in ours:
        assert (read_image(str(ours[frame])) == read_image(str(theirs[frame]))).all()
        assert ours[frame].read_bytes() == theirs[frame].read_bytes()  # the same pixels, encoded alike
    assert [(r["frame"], r["tile"], r["region"]) for r in tasks(a, tiled)] == [
        (f, 0, [0, 0, 64, 36]) for f in (1, 2, 3)]


async def test_a_worker_killed_while_rendering_a_tile_costs_that_tile_one_more_render(
        farm: RenderFarm, short_dir: Path) -> None:
    members, server = await farm.ready("a", "b", "c", retries=1)
    workers = [m for m in members if m is not server]
    out = short_dir / "out"
    uuid = await submit(server, farm.scene, frames="1", rdata=SLOW, tiles="3x3", output=str(out / "still.png"))

    seen: list = []

    def rendering() -> bool:
        seen[:] = [m for m in workers if mid_frame(m, uuid)
                   and render_pids(f"{m.node.prefs.work_dir}/tasks/{uuid}-")]
        return bool(seen)

    # the victim is whichever worker is first seen mid-tile: on a loaded machine the server and
    # one worker may take every tile before the other worker asks for one
    await wait_until(rendering, 60, "a worker other than the server renders a tile of the job")
    victim = seen[0]
    running = victim.node.worker.current
    assert running is not None
    lost = running.msg.task
    await victim.stop()
    with trio.fail_after(120):
        assert await wait_state(server, uuid, "done", "failed") == "done", "\n".join(log_lines(server, uuid))
    reference = await trio.to_thread.run_sync(reference_render, farm.scene, "1", short_dir / "ref", SLOW)
    assert same_pixels(out / "still.png", reference[1]), "the assembled still is not the whole frame"
    row = next(r for r in tasks(server, uuid) if r["task"] == lost)
    assert attempts(server, uuid)[lost] >= 1 and row["machines"][-1] != victim.uuid, row


async def test_a_tile_that_fails_on_one_machine_renders_on_another(farm: RenderFarm, short_dir: Path) -> None:
    (good, bad), _ = await farm.ready("good", "bad", retries=5)
    draw = short_dir / "draw.py"
    draw.write_text(DRAW)
    template = (f"sh -c 'case $PWD in */bad-work/*) exit 3;; esac; "
                f"exec {sys.executable} {draw} \"$@\"' draw {{x0}} {{y0}} {{x1}} {{y1}} {{output}}")
    out = short_dir / "out"
    uuid = await submit(good, farm.scene, frames="1", renderer="command", tiles="3x2",
                        rdata={"command": template}, resolution="45x20", output=str(out / "still.png"))
    with trio.fail_after(90):
        assert await wait_state(good, uuid, "done", "failed") == "done", "\n".join(log_lines(good, uuid))
    assembled = read_image(str(out / "still.png"))
    assert assembled.tolist() == [[list(p) for p in row] for row in _drawn(45, 20)]
    lines = log_lines(good, uuid)
    assert any(f"failed on {bad.uuid}" in line for line in lines), lines
    rows = tasks(good, uuid)
    assert all(r["state"] == "done" and r["rendered_by"] == good.uuid for r in rows), rows
    assert all(r["failures"] <= 1 for r in rows), "a tile failed more than once on the bad machine"


async def test_a_tiled_job_stopped_midway_resumes_and_one_deleted_leaves_no_tiles(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b")
    out = short_dir / "out"
    # a task per tile (not the default, a task per machine), so there is a midway to stop at
    uuid = await submit(a, farm.scene, frames="1", rdata=SLOW, tiles="4x2", chunk=1, output=str(out / "still.png"))
    await wait_until(lambda: summary(a, uuid)["tiles_done"] >= 2, 60, "two tiles done")
    await a.call(lambda c: c.stop_rendering(uuid))
    with trio.fail_after(30):
        await wait_state(a, uuid, "stopped")
        await wait_until(lambda: partial_path(str(out / "still.png")) in map(str, out.iterdir()),
                         30, "the partial image of the still")
    partial = read_image(partial_path(str(out / "still.png")))
    assert png_level(partial_path(str(out / "still.png"))) == 0  # a preview: fast
    assert partial.shape == (90, 160, 4) and 0 < int((partial[:, :, 3] == 255).sum()) < 90 * 160
    assert int((partial[:, :, 3] == 0).sum()) > 0, "the partial image has no transparent part"
    assert not (out / "still.png").exists()
    await a.call(lambda c: c.init_and_start_rendering_full_async(uuid))
    with trio.fail_after(90):
        assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    reference = await trio.to_thread.run_sync(reference_render, farm.scene, "1", short_dir / "ref", SLOW)
    assert same_pixels(out / "still.png", reference[1])
    assert png_level(out / "still.png") == 2  # the frame a user keeps: as ever
    assert not [p for p in out.iterdir() if p.name.endswith(".partial.png")]

    gone_out = short_dir / "gone"
    doomed = await submit(a, farm.scene, frames="1", rdata=SLOW, tiles="4x2", chunk=1,
                          output=str(gone_out / "still.png"))
    kept = Path(a.node.prefs.state_dir) / "tiles" / doomed
    await wait_until(lambda: summary(a, doomed)["tiles_done"] >= 1 and kept.is_dir(), 60, "a tile kept")
    await a.call(lambda c: c.delete_render_job(doomed))
    with trio.fail_after(30):
        await wait_until(lambda: state(a, doomed) == "gone" and not kept.exists(), 30, "its tiles removed")
        await wait_until(lambda: not a.node.worker.busy and not b.node.worker.busy, 30, "the workers idle")
    assert not (gone_out / "still.png").exists()
    assert doc_of(a, doomed) is None


@pytest.mark.parametrize(("args", "says"), [
    ({"tiles": "0x3"}, "tiles must be at least 1x1, not 0x3"),
    ({"tiles": "65x1"}, "65x1 tiles are more than the 64x36 pixels of the frame"),
    ({"tiles": "four"}, "tiles must be COLSxROWS"),
    ({"tiles": "2x2", "renderer": "command", "rdata": {"command": "true {output}", "width": 8, "height": 8}},
     "the command renderer can render tiles only with a template that names the region"),
    ({"tiles": "2x2", "renderer": "command", "rdata": {"command": "draw {x0} {y0} {x1} {y1} {output}"}},
     "tiles need the frame's size"),
    ({"rdata": {"sample": 4}}, "the builtin renderer has no setting 'sample'"),
    ({"rdata": {"samples": "many"}}, "samples must be a whole number, not 'many'"),
    ({"rdata": {"samples": 0}}, "samples must be from 1 to 65536"),
])
async def test_what_the_renderer_cannot_take_is_refused_at_submit(
        farm: RenderFarm, args: dict[str, object], says: str) -> None:
    (a,), _ = await farm.ready("a")
    result = await a.submit(farm.scene, **{"rdata": SMALL, **args})
    assert result["result_name"] == "SAVINGFAILED" and result["uuid"] is None, result
    assert says in result["reason"], result["reason"]
    if "no setting" in says:
        assert "the builtin renderer takes: width, height, samples, assets" in result["reason"]
    assert not a.node.book.live(), "a refused submit made a job"


@needs_povray
async def test_the_command_line_sets_povray_settings_and_tiles_and_shows_them(
        farm: RenderFarm, short_dir: Path) -> None:
    """POV-Ray at the size and anti-aliasing the command line asks for, as 3x2 tiles
    of method 1 anti-aliasing: the same frame as an untiled job's."""
    folder = short_dir / "pov"
    shutil.copytree(EXAMPLES / "pov", folder)
    (a, b), _ = await farm.ready("a", "b")
    common = [str(folder / "orbit.pov"), "--frames", "2", "--resolution", "70x41", "--set", "antialias=0.3",
              "--set", "antialias_method=1", "--wait", "--json"]
    code, out, err = await cli_run(a.sock, "submit", *common, "--tiles", "3x2",
                                   "--output", str(short_dir / "tiled" / "o_##.png"))
    assert code == 0, err + out
    tiled = json.loads(out)
    assert tiled["state"] == "done" and tiled["tiles"] == "3x2" and tiled["resolution"] == "70x41", tiled
    code, out, err = await cli_run(a.sock, "submit", *common, "--output", str(short_dir / "plain" / "o_##.png"))
    assert code == 0, err + out
    ours, theirs = read_image(str(short_dir / "tiled" / "o_02.png")), read_image(str(short_dir / "plain" / "o_02.png"))
    assert ours.shape == (41, 70, 3) and (ours == theirs).all()

    rows = await cli(a, "tasks", tiled["uuid"])
    assert [(r["frame"], r["tile"], r["region"]) for r in rows][:2] == [(2, 0, [0, 0, 23, 20]), (2, 1, [23, 0, 46, 20])]
    code, text, err = await cli_run(a.sock, "job", tiled["uuid"])
    assert code == 0 and "3x2" in text and "70x41" in text, text + err
    assert "antialias=0.3" in text and "antialias_method=1" in text and "resolution_x=70" in text, text
    code, text, err = await cli_run(a.sock, "tasks", tiled["uuid"])
    assert code == 0 and "23,0-46,20" in text, text + err
    listed = await cli(a, "renderers")
    povray = [r for r in listed if r["renderer"] == "povray"]
    assert {r["machine"] for r in povray} == {a.uuid, b.uuid}
    assert {"antialias_method", "resolution_x", "jitter"} <= {s["name"] for s in povray[0]["settings"]}
    code, text, err = await cli_run(a.sock, "renderers")
    assert code == 0 and "settings of povray:" in text and "antialias_method" in text, text + err


async def test_the_command_line_refuses_what_the_renderer_cannot_take(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json", frames="1")
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--tiles", "0x3")
    assert code == 3, err + out
    assert "CREATEJOBRESULT_SAVINGFAILED" in err and "tiles must be at least 1x1, not 0x3" in err, err
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--tiles", "65x2")
    assert code == 3 and "65x2 tiles are more than the 64x36 pixels of the frame" in err, err
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--set", "spp=4")
    assert code == 3 and "no setting 'spp'" in err and "takes: width, height, samples, assets" in err, err
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--resolution", "64by36")
    assert code == 2 and "WIDTHxHEIGHT" in err, err
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--set", "samples")
    assert code == 2 and "KEY=VALUE" in err, err
    assert not a.node.book.live()
    code, out, err = await cli_run(a.sock, "submit", str(scene), "--percentage", "50", "--set", "samples=1",
                                   "--output", str(short_dir / "half.png"), "--wait", "--json")
    assert code == 0, err + out
    assert read_image(str(short_dir / "half.png")).shape == (18, 32, 3)  # half the scene's 64x36


@needs_blender
async def test_a_tiled_blender_still_is_the_ordinary_jobs_frame(farm: RenderFarm, short_dir: Path) -> None:
    """Cycles on the CPU, denoising off, a scene without dither (whose noise depends
    on the image buffer): 3x2 tiles on two machines assemble to the untiled frame."""
    scene = await trio.to_thread.run_sync(make_cube, short_dir)
    assert BLENDER is not None
    await trio.run_process([BLENDER, "-noaudio", "-b", str(scene), "--python-expr",
                            "import bpy; bpy.context.scene.render.dither_intensity = 0; bpy.ops.wm.save_mainfile()"],
                           capture_stdout=True, capture_stderr=True)
    (a, b), _ = await farm.ready("a", "b")
    plain = await submit(a, scene, frames="3", renderer="blender", output=str(short_dir / "plain" / "f_####.png"),
                         rdata={"samples": 4})
    tiled = await submit(a, scene, frames="3", renderer="blender", output=str(short_dir / "tiled" / "f_####.png"),
                         rdata={"samples": 4}, tiles="3x2")
    with trio.fail_after(240):
        for uuid in (plain, tiled):
            assert await wait_state(a, uuid, "done", "failed") == "done", "\n".join(log_lines(a, uuid))
    ours = read_image(str(short_dir / "tiled" / "f_0003.png"))
    theirs = read_image(str(short_dir / "plain" / "f_0003.png"))
    assert ours.shape == theirs.shape == (18, 32, 4)
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) == 0
    assert any(line.startswith("tiles: tiles render with dither off") for line in log_lines(a, tiled))
