"""Tiles as the job book sees them: regions cut with integer math (no gap, no
overlap, every machine alike), ``auto``, a tiled job's tasks and how they are
listed, and the render settings a submit is checked against."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from node.jobs.operations import Jobs, JobSpec, task_frames, task_shape, task_shapes, tiling_of
from node.jobs.shaping import shape
from node.jobs.tiling import (
    TaskShape,
    Tiling,
    auto_grid,
    layout,
    parse_grid,
    problem,
    tiles_per_task,
)
from node.renderers.settings import describe, normalize
from protocol.crdt import Phase, TaskState
from protocol.frames import parse_frames
from tests.harness.jobs import FakeWall, open_book, spec


@pytest.mark.parametrize(("cols", "rows", "width", "height"),
                         [(1, 1, 7, 5), (4, 3, 64, 36), (3, 7, 100, 61), (7, 7, 7, 7), (16, 9, 1921, 1081)])
def test_tiles_cover_every_pixel_exactly_once(cols: int, rows: int, width: int, height: int) -> None:
    tiling = Tiling(cols, rows, width, height)
    cover = [[0] * width for _ in range(height)]
    for tile in range(tiling.count):
        x0, y0, x1, y1 = tiling.region(tile)
        assert x1 > x0 and y1 > y0
        for y in range(y0, y1):
            for x in range(x0, x1):
                cover[y][x] += 1
    assert all(c == 1 for row in cover for c in row)
    assert tiling.region(0)[:2] == (0, 0) and tiling.region(tiling.count - 1)[2:] == (width, height)
    assert tiling.region(1)[0] == tiling.region(0)[2] if cols > 1 else True  # row-major, left to right


def test_overscan_grows_the_drawn_region_within_the_frame() -> None:
    tiling = Tiling(2, 2, 10, 8, overscan=3)
    assert tiling.region(0) == (0, 0, 5, 4) and tiling.drawn(0) == (0, 0, 8, 7)
    assert tiling.region(3) == (5, 4, 10, 8) and tiling.drawn(3) == (2, 1, 10, 8)


def test_bad_grids_say_what_is_wrong() -> None:
    assert parse_grid("4x3") == (4, 3) and parse_grid(" 2 X 5 ") == (2, 5)
    with pytest.raises(ValueError, match="COLSxROWS"):
        parse_grid("four")
    assert problem(0, 3, 64, 36) == "tiles must be at least 1x1, not 0x3"
    assert "more than the 64x36 pixels" in problem(65, 1, 64, 36)
    assert "more than the 64x36 pixels" in problem(1, 37, 64, 36)
    assert problem(64, 36, 64, 36) == ""  # a pixel a tile is allowed
    assert Tiling.from_field({"cols": 0, "rows": 1, "width": 4, "height": 4}) is None
    assert Tiling.from_field("4x4") is None


@pytest.mark.parametrize(("width", "height", "machines"), [(1920, 1080, 4), (1920, 1080, 1), (640, 480, 8),
                                                           (100, 60, 16), (4000, 500, 3)])
def test_auto_makes_about_two_tiles_per_machine_none_too_small(width: int, height: int, machines: int) -> None:
    cols, rows = auto_grid(width, height, machines)
    assert problem(cols, rows, width, height) == ""
    assert width // cols >= 64 or cols == 1
    assert height // rows >= 64 or rows == 1
    small = width < 64 * 2 * machines and height < 64 * 2 * machines
    assert cols * rows >= 2 * machines or small or cols == width // 64 or rows == height // 64


def test_a_tiled_job_has_a_task_per_frame_and_tile_group(tmp_path: object) -> None:
    book = open_book(tmp_path / "a", "node-a", FakeWall())  # type: ignore[operator]
    jobs = Jobs(book, "node-a", [])
    job = jobs.create(replace(spec(frames="3-4", chunk=2), tiling=Tiling(3, 1, 30, 10)), "root")
    doc = book.get(job.uuid)
    assert doc is not None and tiling_of(doc) == Tiling(3, 1, 30, 10)
    assert [(s.frames, s.tiles) for s in task_shapes(doc)] == [([3], [0, 1]), ([3], [2]), ([4], [0, 1]), ([4], [2])]
    assert task_frames(doc) == [[3], [3], [4], [4]]
    assert task_shape(doc, 3) == task_shapes(doc)[3] and task_shape(doc, 4) is None
    rows = jobs.tasks(doc)  # one row per tile
    assert [(r["task"], r["frame"], r["tile"], r["region"]) for r in rows] == [
        (0, 3, 0, [0, 0, 10, 10]), (0, 3, 1, [10, 0, 20, 10]), (1, 3, 2, [20, 0, 30, 10]),
        (2, 4, 0, [0, 0, 10, 10]), (2, 4, 1, [10, 0, 20, 10]), (3, 4, 2, [20, 0, 30, 10])]
    for tid in (0, 1, 2):
        jobs.set_task(doc, tid, TaskState(done=1, phase=Phase.SUCCEEDED, stamp=book.stamp()))
    summary = jobs.summary(book.get(job.uuid))  # type: ignore[arg-type]
    assert (summary["frames_done"], summary["frames_total"]) == (1, 2)  # frame 4 lacks its last tile
    assert (summary["tiles_done"], summary["tiles_total"], summary["tiles"]) == (5, 6, "3x1")


def test_a_frames_tiles_split_evenly_over_the_able_machines_unless_the_submit_says() -> None:
    assert [tiles_per_task(16, m) for m in (1, 2, 3, 4, 5, 16, 40)] == [16, 8, 6, 4, 4, 1, 1]
    assert tiles_per_task(16, 0) == 1  # no machine able now: a task per tile
    scene = str(Path(__file__).resolve().parents[2] / "examples" / "spheres.json")
    size = {"rdata": {"width": 64, "height": 36}}

    def chunk(able: int, **args: object) -> tuple[int, int]:
        shaped = shape(spec(scene=scene, renderer="builtin", frames="1-2", **size, **args),
                       {"tiles": "4x4", **args}, able)
        return shaped.spec.chunk, len(task_shapes_of(shaped.spec))

    assert chunk(4) == (4, 8)  # two frames, four tasks each
    assert chunk(3) == (6, 6)
    assert chunk(4, chunk=1) == (1, 32)  # the submit's own chunk is kept
    assert chunk(4, machines=["m1", "m2"]) == (8, 4)  # a job limited to two machines: two tasks a frame
    untiled = shape(spec(scene=scene, renderer="builtin", frames="1-8", **size), {}, 4).spec
    assert untiled.chunk == 1 and untiled.tiling is None


def task_shapes_of(job: JobSpec) -> list[TaskShape]:
    return layout(parse_frames(job.frames), job.chunk, job.tiling)


def test_settings_arrive_as_text_and_leave_in_their_type() -> None:
    rdata, problems = normalize("povray", {"resolution_x": "640", "antialias": "0.3", "jitter": "0"})
    assert rdata == {"resolution_x": 640, "antialias": 0.3, "jitter": 0.0} and problems == []
    rdata, problems = normalize("blender", {"device": "gpu", "samples": "64", "assets": ["/a.png"]})
    assert rdata == {"device": "GPU", "samples": 64, "assets": ["/a.png"]} and not problems
    _, problems = normalize("blender", {"samples": "1.5", "device": "TPU", "denoise": "on"})
    assert problems == ["samples must be a whole number, not '1.5'",
                        "device must be one of CPU, GPU, not 'TPU'",
                        "the blender renderer has no setting 'denoise'"]
    assert {row["name"] for row in describe("builtin")} == {"width", "height", "samples", "assets"}
    assert next(r for r in describe("povray") if r["name"] == "quality")["type"] == "int 0..11"
