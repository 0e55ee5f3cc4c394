"""Real Blender and POV-Ray jobs through a two-node farm (``.ci/run`` installs
both; without them these tests skip and say so).  The Blender scene is made
by Blender itself; the POV-Ray animation's clock spans the whole job, so a
frame looks the same whichever task and machine renders it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from node.image import read_image
from tests.harness.render import (
    EXAMPLES,
    RenderFarm,
    doc_of,
    frame_files,
    same_pixels,
    submit,
    tasks,
    wait_state,
)

BLENDER = shutil.which("blender")
POVRAY = shutil.which("povray")
needs_blender = pytest.mark.skipif(BLENDER is None,
                                   reason="blender is not installed (Debian: apt-get install blender)")
needs_povray = pytest.mark.skipif(POVRAY is None,
                                  reason="povray is not installed (Debian: apt-get install povray)")
W, H = 32, 24


def make_cube(folder: Path) -> Path:
    """cube.blend from examples/blender/make_cube.py: 32 x 18 pixels, 1 sample, turning over 1-4."""
    assert BLENDER is not None
    out = folder / "cube.blend"
    done = subprocess.run([BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code", "1",
                           "--python", str(EXAMPLES / "blender" / "make_cube.py"), "--", str(out),
                           "32", "18", "1"], capture_output=True, text=True, timeout=120, cwd=folder)
    assert done.returncode == 0 and out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    return out


def povray_alone(folder: Path, frames: str, out: Path) -> dict[int, Path]:
    """The whole animation rendered by one POV-Ray run, no farm."""
    assert POVRAY is not None
    first, last = frames.split("-")
    out.mkdir()
    done = subprocess.run([POVRAY, "+Iorbit.pov", f"+L{folder}", f"+O{out}/ref_", "+FN", "-D",
                           f"+KFI{first}", f"+KFF{last}", "+KI0", "+KF1", f"+W{W}", f"+H{H}"],
                          capture_output=True, text=True, timeout=120, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return {int(p.stem.removeprefix("ref_")): p for p in out.glob("ref_*.png")}


@needs_blender
async def test_a_blender_job_renders_its_frames_on_the_farm(farm: RenderFarm, short_dir: Path) -> None:
    scene = await trio.to_thread.run_sync(make_cube, short_dir)
    (a, b), _ = await farm.ready("a", "b")
    out = short_dir / "out"
    uuid = await submit(a, scene, frames="1-2", renderer="blender", output=str(out / "frame_####.png"))
    with trio.fail_after(120):
        assert await wait_state(a, uuid, "done", "failed") == "done", tasks(a, uuid)
    got = frame_files(out)
    assert sorted(got) == [1, 2]
    images = [read_image(str(got[f])) for f in (1, 2)]
    assert all(img.shape[:2] == (18, 32) for img in images)
    assert (images[0] != images[1]).any(), "the cube turns between frames 1 and 2"
    assert all(r["state"] == "done" and r["render_time"] > 0 and r["machines"] for r in tasks(a, uuid))


@needs_povray
async def test_a_povray_animation_renders_as_one_run_would(farm: RenderFarm, short_dir: Path) -> None:
    folder = short_dir / "pov"
    shutil.copytree(EXAMPLES / "pov", folder)
    (a, b), _ = await farm.ready("a", "b")
    out = short_dir / "out"
    uuid = await submit(a, folder / "orbit.pov", frames="1-3", renderer="povray",
                        rdata={"resolution_x": W, "resolution_y": H}, output=str(out / "frame_####.png"))
    doc = doc_of(a, uuid)
    assert doc is not None
    rdata = doc.value("rdata")
    assert (rdata["initial_frame"], rdata["final_frame"]) == (1, 3)  # set at submit
    with trio.fail_after(60):
        assert await wait_state(a, uuid, "done", "failed") == "done", tasks(a, uuid)
    got = frame_files(out)
    assert sorted(got) == [1, 2, 3]
    images = [read_image(str(got[f])) for f in (1, 2, 3)]
    assert all(img.shape[:2] == (H, W) for img in images)
    # one task per frame, yet the clock runs 0, 0.5, 1 over the job (the ball's whole orbit)
    assert (images[0] != images[1]).any() and (images[1] != images[2]).any(), \
        "frames of one task each: the clock must still span the job"
    assert (images[0] == images[2]).all(), "clock 0 and clock 1 put the ball in one place"
    alone = await trio.to_thread.run_sync(povray_alone, folder, "1-3", short_dir / "ref")
    for frame, path in got.items():
        assert same_pixels(path, alone[frame]), f"frame {frame} differs from one POV-Ray run"
    assert all(r["state"] == "done" and r["machines"] for r in tasks(a, uuid))
