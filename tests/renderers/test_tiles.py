"""Tiles from each renderer, without a farm: what each backend draws for a tile
is the tile's pixels of the whole frame, measured against a whole-frame render
(builtin, Blender Cycles on the CPU, POV-Ray with anti-aliasing method 1);
tiles cut and assembled exactly, 8-bit and OpenEXR; Blender's border
fractions; the command template's tile placeholders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.image import (
    Exact,
    decode,
    encode,
    encode_exact,
    read_exact,
    read_image,
    write_exact,
    write_image,
)
from node.jobs.tiling import Tiling
from node.render.tiles import TileError, assemble, fit_tile
from node.renderers.base import TaskSpec, Tile
from node.renderers.blender import BlenderRenderer, border_fraction
from node.renderers.builtin import BuiltinRenderer
from node.renderers.command import CommandRenderer, expand, runs
from node.renderers.povray import PovrayRenderer, block_region, region_args
from tests.harness.render import png_level

ROOT = Path(__file__).resolve().parents[2]
MAKE_CUBE = ROOT / "examples" / "blender" / "make_cube.py"
ORBIT = ROOT / "examples" / "pov" / "orbit.pov"
BLENDER = shutil.which("blender")
POVRAY = shutil.which("povray")
RUN_TIMEOUT = 300.0


def tiles_of(tiling: Tiling) -> tuple[Tile, ...]:
    return tuple(Tile(i, tiling.region(i), tiling.drawn(i)) for i in range(tiling.count))


def run(backend: object, task: TaskSpec) -> None:
    argv, cwd = backend.command(task)  # type: ignore[attr-defined]
    done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, start_new_session=True)
    outcome = backend.outcome(done.returncode, done.stdout.splitlines()[-40:], task)  # type: ignore[attr-defined]
    assert outcome.message == "", done.stdout[-3000:] + done.stderr[-2000:]


def worst(task: TaskSpec, frame: int, whole: np.ndarray) -> int:
    """The largest channel difference between the task's tiles and the whole frame."""
    out = 0
    for tile in task.tiles:
        x0, y0, x1, y1 = tile.region
        pixels = read_image(task.tile_path(frame, tile.index)).astype(int)
        assert pixels.shape[:2] == (y1 - y0, x1 - x0), (tile, pixels.shape)
        out = max(out, int(np.abs(pixels - whole[y0:y1, x0:x1].astype(int)).max()))
    return out


# -- cutting and assembling ----------------------------------------------------------------


def test_tiles_assemble_to_the_frame_and_a_partial_frame_is_transparent_where_none_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    tiling = Tiling(4, 3, 53, 37)
    files = []
    for i in range(tiling.count):
        x0, y0, x1, y1 = tiling.region(i)
        path = str(tmp_path / f"t{i}.png")
        write_image(path, frame[y0:y1, x0:x1])
        files.append((i, tiling.region(i), path))
    whole = assemble(53, 37, files, complete=True)
    assert whole.pixels.dtype == np.uint8 and (whole.pixels == frame).all()
    partial = assemble(53, 37, files[:5], complete=False).pixels
    assert partial.shape == (37, 53, 4)
    x0, y0, x1, y1 = tiling.region(4)
    assert (partial[y0:y1, x0:x1, :3] == frame[y0:y1, x0:x1]).all() and (partial[y0:y1, x0:x1, 3] == 255).all()
    x0, y0, x1, y1 = tiling.region(11)
    assert (partial[y0:y1, x0:x1] == 0).all()
    with pytest.raises(TileError, match="tile 1 is 13x12 pixels; its region"):
        assemble(53, 37, [(1, tiling.region(3), files[1][2])], complete=True)


def test_openexr_tiles_keep_their_channels_and_half_floats_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = rng.random((20, 30, 4), dtype=np.float32) * 4
    path = str(tmp_path / "whole.exr")
    write_exact(path, Exact(values, ("R", "G", "B", "A"), half=True))
    stored = read_exact(path)  # as half floats
    tiling = Tiling(3, 2, 30, 20)
    files = []
    for i in range(tiling.count):
        x0, y0, x1, y1 = tiling.region(i)
        tile = str(tmp_path / f"t{i}.exr")
        write_exact(tile, Exact(stored.pixels[y0:y1, x0:x1].copy(), stored.channels, stored.half))
        files.append((i, tiling.region(i), tile))
    whole = assemble(30, 20, files, complete=True)
    assert whole.channels == ("R", "G", "B", "A") and whole.half
    assert np.array_equal(whole.pixels, stored.pixels)
    again = tmp_path / "again.exr"
    again.write_bytes(encode_exact(whole, "exr"))
    assert np.array_equal(read_exact(str(again)).pixels, stored.pixels)


def test_the_worker_cuts_the_tile_out_of_the_overscan_and_refuses_another_size(tmp_path: Path) -> None:
    frame = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    tiling = Tiling(3, 2, 30, 20, overscan=4)
    tile = Tile(4, tiling.region(4), tiling.drawn(4))
    assert tile.region == (10, 10, 20, 20) and tile.drawn == (6, 6, 24, 20)
    path = str(tmp_path / "t.png")
    write_image(path, frame[6:20, 6:24])
    fit_tile(path, tile)
    assert (read_image(path) == frame[10:20, 10:20]).all()
    fit_tile(path, tile)  # already the tile: left as it is
    write_image(path, frame[:5, :5])
    with pytest.raises(TileError, match="tile 4 is 5x5 pixels; its region"):
        fit_tile(path, tile)


def test_blender_border_fractions_truncate_back_to_the_exact_pixel() -> None:
    """Blender makes a border's pixels as (int)(border * size) in single precision."""
    for size in [*range(1, 700), 1080, 1920, 2160, 3840, 4096, 8192, 16384, 65536]:
        pixels = np.arange(size + 1)
        fractions = np.array([border_fraction(int(p), size) for p in pixels], dtype=np.float32)
        back = (fractions * np.float32(size)).astype(np.int64)
        assert np.array_equal(back, pixels), size


def test_the_command_template_gets_the_tile_and_the_region_it_draws(tmp_path: Path) -> None:
    tiling = Tiling(2, 1, 40, 10, overscan=2)
    task = TaskSpec(job="j", task=0, frames=[7], scene="/s.scn", workdir=str(tmp_path),
                    rdata={"command": "x"}, tiles=tiles_of(tiling), size=(40, 10))
    each = runs(task)
    assert [(r["frame"], r["tile"], r["region"]) for r in each] == [(7, 0, [0, 0, 22, 10]), (7, 1, [18, 0, 40, 10])]
    argv = expand("draw {tile} {x0} {y0} {x1} {y1} {width} {height} {output}", "/s.scn", [7],
                  each[1]["output"], each[1], (40, 10))
    assert argv == ["draw", "1", "18", "0", "40", "10", "40", "10", task.tile_path(7, 1)]
    whole = TaskSpec(job="j", task=0, frames=[7], scene="/s.scn", workdir=str(tmp_path),
                     rdata={"command": "x", "width": 8, "height": 6})
    assert runs(whole)[0]["region"] == [0, 0, 8, 6]
    draw = tmp_path / "draw.py"
    draw.write_text("import sys\nfrom PIL import Image\nx0, y0, x1, y1 = map(int, sys.argv[1:5])\n"
                    "Image.new('RGB', (x1 - x0, y1 - y0), (x0, y0, 9)).save(sys.argv[5])\n")
    task = TaskSpec(job="j", task=0, frames=[7], scene="/s.scn", workdir=str(tmp_path),
                    rdata={"command": f"{sys.executable} {draw} {{x0}} {{y0}} {{x1}} {{y1}} {{output}}"},
                    tiles=tiles_of(tiling), size=(40, 10))
    run(CommandRenderer(), task)
    assert read_image(task.tile_path(7, 1)).shape == (10, 22, 3)
    assert tuple(read_image(task.tile_path(7, 1))[0, 0]) == (18, 0, 9)


# -- each renderer's tiles against its whole frame ----------------------------------------------


def test_tiles_and_partial_images_are_compressed_fast_and_frames_as_ever() -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (36, 64, 4), dtype=np.uint8)
    kept, fast = encode(pixels, "png"), encode(pixels, "png", fast=True)
    assert (png_level(kept), png_level(fast)) == (2, 0)
    assert (decode(fast) == pixels).all() and (decode(kept) == pixels).all()
    image = Exact(pixels)
    assert encode_exact(image, "png", fast=True) == fast and encode_exact(image, "png") == kept


def test_builtin_tiles_are_the_whole_frames_pixels_exactly(tmp_path: Path) -> None:
    rdata = {"width": 97, "height": 55, "samples": 4}
    whole = TaskSpec(job="j", task=0, frames=[3], scene=str(ROOT / "examples" / "spheres.json"),
                     workdir=str(tmp_path / "whole"), rdata=rdata)
    tiled = TaskSpec(job="j", task=0, frames=[3], scene=whole.scene, workdir=str(tmp_path / "tiles"),
                     rdata=rdata, tiles=tiles_of(Tiling(4, 3, 97, 55)), size=(97, 55))
    for task in (whole, tiled):
        Path(task.workdir).mkdir()
        run(BuiltinRenderer(), task)
    assert worst(tiled, 3, read_image(whole.frame_path(3))) == 0
    tile_file = next(Path(tiled.workdir).glob("*_tile_*.png"))
    assert png_level(tile_file.read_bytes()) == 0 and png_level(Path(whole.frame_path(3)).read_bytes()) == 2


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed (Debian: apt-get install blender)")
def test_blender_cycles_tiles_are_the_whole_frames_pixels_exactly(tmp_path: Path) -> None:
    """Cycles seeds its samples by pixel, so a border render gives the frame's own
    pixels (dither off in both: its noise depends on the image buffer)."""
    assert BLENDER is not None
    scene = tmp_path / "cube.blend"
    subprocess.run([BLENDER, "-noaudio", "-b", "--factory-startup", "--python", str(MAKE_CUBE), "--",
                    str(scene), "61", "37", "4"], check=True, capture_output=True, timeout=RUN_TIMEOUT)
    subprocess.run([BLENDER, "-noaudio", "-b", str(scene), "--python-expr",
                    "import bpy; bpy.context.scene.render.dither_intensity = 0; bpy.ops.wm.save_mainfile()"],
                   check=True, capture_output=True, timeout=RUN_TIMEOUT)
    whole = TaskSpec(job="j", task=0, frames=[2], scene=str(scene), workdir=str(tmp_path / "whole"))
    tiling = Tiling(3, 2, 61, 37, overscan=3)
    tiled = TaskSpec(job="j", task=0, frames=[2], scene=str(scene), workdir=str(tmp_path / "tiles"),
                     tiles=tiles_of(tiling), size=(61, 37))
    for task in (whole, tiled):
        Path(task.workdir).mkdir()
        run(BlenderRenderer(), task)
    for output in tiled.outputs():  # drawn with 3 px of overscan: the worker cuts the tile out
        fit_tile(output[2], next(t for t in tiled.tiles if t.index == output[1]))
    assert worst(tiled, 2, read_image(whole.frame_path(2))) == 0


@pytest.mark.skipif(POVRAY is None, reason="povray is not installed (Debian: apt-get install povray)")
def test_povray_tiles_with_antialiasing_method_1_are_the_whole_frames_pixels_exactly(tmp_path: Path) -> None:
    """Method 1 compares a pixel with its neighbours in its render block: a tile
    drawn alone shows seams; grown to whole blocks, it is the frame's."""
    rdata = {"resolution_x": 97, "resolution_y": 61, "antialias": 0.3, "antialias_method": 1,
             "initial_frame": 1, "final_frame": 4}
    whole = TaskSpec(job="j", task=0, frames=[2], scene=str(ORBIT), workdir=str(tmp_path / "whole"), rdata=rdata)
    tiling = Tiling(4, 3, 97, 61)
    tiled = TaskSpec(job="j", task=0, frames=[2], scene=str(ORBIT), workdir=str(tmp_path / "tiles"),
                     rdata=rdata, tiles=tiles_of(tiling), size=(97, 61))
    for task in (whole, tiled):
        Path(task.workdir).mkdir()
        run(PovrayRenderer(), task)
    frame = read_image(whole.frame_path(2))
    assert worst(tiled, 2, frame) == 0
    assert block_region((40, 20, 48, 40), (97, 61)) == (32, 0, 64, 61)
    assert region_args((32, 0, 64, 61)) == ["+SC33", "+EC64", "+SR1", "+ER61"]
    # the same tile drawn alone (not grown to its blocks) differs at its edges
    assert POVRAY is not None
    x0, y0, x1, y1 = tiling.region(5)
    out = tmp_path / "alone.png"
    subprocess.run([POVRAY, f"+I{ORBIT}", f"+O{out}", "+FN", "-D", "-GA", "+W97", "+H61", "+A0.3", "+AM1",
                    "+KFI1", "+KFF4", "+SF2", "+EF2", "+KI0.0", "+KF1.0",
                    f"+SC{x0 + 1}", f"+EC{x1}", f"+SR{y0 + 1}", f"+ER{y1}"],
                   check=True, capture_output=True, cwd=ORBIT.parent, timeout=RUN_TIMEOUT)
    alone = next(tmp_path.glob("alone*.png"))
    seams = np.abs(read_image(str(alone))[y0:y1, x0:x1].astype(int) - frame[y0:y1, x0:x1].astype(int)).max()
    assert seams > 0, "method 1 no longer depends on the render block: block alignment may go"


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed (Debian: apt-get install blender)")
def test_blender_adaptive_sampling_tiles_are_exact_with_the_overscan_a_submit_gives_them(tmp_path: Path) -> None:
    """Cycles' adaptive sampling stops a pixel once it and its neighbours have
    converged, so a tile drawn alone differs at its edges; the submit finds it on
    and gives the tiles ``ADAPTIVE_REACH`` pixels of overscan, which is exact."""
    from node.jobs.operations import JobSpec
    from node.jobs.shaping import ADAPTIVE_REACH, shape

    assert BLENDER is not None
    scene = tmp_path / "cube.blend"
    subprocess.run([BLENDER, "-noaudio", "-b", "--factory-startup", "--python", str(MAKE_CUBE), "--",
                    str(scene), "61", "37", "256"], check=True, capture_output=True, timeout=RUN_TIMEOUT)
    subprocess.run([BLENDER, "-noaudio", "-b", str(scene), "--python-expr",
                    "import bpy; s = bpy.context.scene; s.render.dither_intensity = 0; "
                    "s.cycles.use_adaptive_sampling = True; bpy.ops.wm.save_mainfile()"],
                   check=True, capture_output=True, timeout=RUN_TIMEOUT)
    shaped = shape(JobSpec.from_args({"scene": str(scene), "renderer": "blender", "frames": "2",
                                      "output": str(tmp_path / "f_####.png")}), {"tiles": "3x2"}, 2)
    assert shaped.spec.tiling is not None and shaped.spec.tiling.overscan == ADAPTIVE_REACH
    assert any("adaptive sampling" in w for w in shaped.warnings)
    whole = TaskSpec(job="j", task=0, frames=[2], scene=str(scene), workdir=str(tmp_path / "whole"))
    Path(whole.workdir).mkdir()
    run(BlenderRenderer(), whole)
    frame = read_image(whole.frame_path(2))
    for tiling in (replace(shaped.spec.tiling, overscan=0), shaped.spec.tiling):
        tiled = TaskSpec(job="j", task=0, frames=[2], scene=str(scene),
                         workdir=str(tmp_path / f"tiles{tiling.overscan}"), tiles=tiles_of(tiling), size=(61, 37))
        Path(tiled.workdir).mkdir()
        run(BlenderRenderer(), tiled)
        for output in tiled.outputs():
            fit_tile(output[2], next(t for t in tiled.tiles if t.index == output[1]))
        if tiling.overscan == 0:
            assert worst(tiled, 2, frame) > 0, "adaptive sampling no longer reads neighbours: the overscan may go"
        else:
            assert worst(tiled, 2, frame) == 0
