"""The povray backend against the real POV-Ray 3.7 (Debian's ``povray`` package):
an animated scene rendered through a subprocess the way the worker runs it,
frames renamed to the task's frame paths, errors mapped to RENDERRESULT_*."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from node.image import read_image
from node.renderers.base import Outcome, TaskSpec
from node.renderers.povray import PovrayRenderer, frame_runs, option_args
from protocol.enums import RenderResult

ROOT = Path(__file__).resolve().parents[2]
ORBIT = ROOT / "examples" / "pov" / "orbit.pov"
POVRAY = shutil.which("povray")
needs_povray = pytest.mark.skipif(
    POVRAY is None, reason="povray is not installed (Debian: apt-get install povray)")
RUN_TIMEOUT = 60.0
SMALL = {"resolution_x": 32, "resolution_y": 18}
HEAD = """#version 3.7;
camera { location <0, 2, -6> look_at <0, 0.5, 0> }
light_source { <4, 6, -5> color rgb 1 }
"""


def task_for(scene: Path | str, workdir: Path, frames: list[int], **rdata: object) -> TaskSpec:
    workdir.mkdir(parents=True, exist_ok=True)
    return TaskSpec(job="job", task=0, frames=frames, scene=str(scene), workdir=str(workdir),
                    rdata={**SMALL, **rdata})


def run_like_worker(backend: PovrayRenderer, task: TaskSpec) -> tuple[Outcome, list[float]]:
    """argv/cwd from command(), output split on \\r and \\n into progress(), outcome() at exit."""
    argv, cwd = backend.command(task)
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT, start_new_session=True)
    tail: deque[str] = deque(maxlen=40)
    fractions: list[float] = []
    for raw in re.split(rb"[\r\n]+", proc.stdout):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            tail.append(line)
            fraction = backend.progress(line, task)
            if fraction is not None:
                fractions.append(fraction)
    return backend.outcome(proc.returncode, list(tail), task), fractions


def scene(tmp_path: Path, body: str, name: str = "scene.pov") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + body)
    return path


@needs_povray
def test_detect_reports_the_installed_version() -> None:
    version = PovrayRenderer().detect()
    assert version is not None and re.fullmatch(r"3\.\d+(\.\d+)*", version)


def test_detect_is_none_without_povray() -> None:
    assert PovrayRenderer("no-such-povray-here").detect() is None


@needs_povray
def test_frames_one_to_three_of_an_animation_land_at_the_frame_paths(tmp_path: Path) -> None:
    task = task_for(ORBIT, tmp_path / "work", [1, 2, 3])
    start = time.monotonic()
    outcome, fractions = run_like_worker(PovrayRenderer(), task)
    print(f"povray rendered 3 frames in {time.monotonic() - start:.2f} s")
    assert outcome == Outcome(RenderResult.RENDERRESULT_OK)
    images = [read_image(task.frame_path(f)) for f in (1, 2, 3)]
    for image in images:
        assert image.shape[:2] == (18, 32)
        assert image.std() > 10
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    assert sorted(os.listdir(task.workdir)) == [f"frame_00000{f}.png" for f in (1, 2, 3)]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


@needs_povray
def test_a_frame_has_the_same_clock_whichever_task_renders_it(tmp_path: Path) -> None:
    whole = {"initial_frame": 1, "final_frame": 12}
    stepped = task_for(ORBIT, tmp_path / "a", [1, 4, 7, 11], **whole)
    alone = task_for(ORBIT, tmp_path / "b", [7], **whole)
    for task in (stepped, alone):
        assert run_like_worker(PovrayRenderer(), task)[0].result == RenderResult.RENDERRESULT_OK
    assert np.array_equal(read_image(stepped.frame_path(7)), read_image(alone.frame_path(7)))
    assert not np.array_equal(read_image(stepped.frame_path(4)), read_image(alone.frame_path(7)))


@needs_povray
def test_a_parse_error_is_an_error_loading_the_project(tmp_path: Path) -> None:
    path = scene(tmp_path, "sphere { <0, 1, 0>, 1 pigment { color rgb 1 }\nbox { 0, 1 ]\n")
    outcome, _ = run_like_worker(PovrayRenderer(), task_for(path, tmp_path / "work", [1]))
    assert outcome.result == RenderResult.RENDERRESULT_ERRORLOADINGPROJECT
    assert "Parse Error" in outcome.message and "line 5" in outcome.message


@needs_povray
@pytest.mark.parametrize(("body", "missing"), [
    ('#include "nothere.inc"\n', "nothere.inc"),
    ('plane { y, 0 pigment { image_map { png "gone_texture.png" } } }\n', "gone_texture.png"),
])
def test_a_missing_include_or_image_is_asset_missing(tmp_path: Path, body: str,
                                                     missing: str) -> None:
    outcome, _ = run_like_worker(PovrayRenderer(),
                                 task_for(scene(tmp_path, body), tmp_path / "work", [1]))
    assert outcome.result == RenderResult.RENDERRESULT_ASSETMISSING
    assert missing in outcome.message


@needs_povray
def test_parse_warnings_reach_the_outcome_past_the_statistics(tmp_path: Path) -> None:
    path = tmp_path / "old.pov"
    path.write_text(HEAD.replace("#version 3.7;", "") + "sphere { 0, 1 pigment { rgb 1 } }\n")
    outcome, _ = run_like_worker(PovrayRenderer(), task_for(path, tmp_path / "work", [1]))
    assert outcome.result == RenderResult.RENDERRESULT_OK
    assert any("#version" in w for w in outcome.warnings)


@needs_povray
def test_a_missing_scene_is_project_not_found(tmp_path: Path) -> None:
    task = task_for(tmp_path / "nowhere.pov", tmp_path / "work", [1])
    outcome, _ = run_like_worker(PovrayRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_PROJECTNOTFOUND


@needs_povray
def test_an_unwritable_frame_path_is_saving_failed(tmp_path: Path) -> None:
    task = task_for(ORBIT, tmp_path / "work", [1, 2])
    os.mkdir(task.frame_path(2))  # a folder where the frame must go: fails even for root
    outcome, _ = run_like_worker(PovrayRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_SAVINGFAILED
    assert "frame_000002.png" in outcome.message


@needs_povray
def test_bad_rdata_fails_the_task_with_a_reason(tmp_path: Path) -> None:
    task = task_for(ORBIT, tmp_path / "work", [1], quality="best")
    outcome, _ = run_like_worker(PovrayRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_ERRORLOADINGPROJECT
    assert "quality" in outcome.message


def test_frames_split_into_arithmetic_runs() -> None:
    assert frame_runs([3, 1, 2]) == [(1, 3, 1)]
    assert frame_runs([1, 3, 5, 6]) == [(1, 5, 2), (6, 6, 1)]
    assert frame_runs([0, 10, 11, 12, 40]) == [(0, 10, 10), (11, 12, 1), (40, 40, 1)]


def test_the_clock_follows_rdata_and_an_ini_scene_keeps_its_own(tmp_path: Path) -> None:
    pov = task_for("/s/a.pov", tmp_path, [5, 6], initial_frame=1, final_frame=24,
                   threads=2)
    assert option_args(pov) == (["+FN", "-D", "+KFI1", "+KFF24", "+KI0.0", "+KF1.0", "+W32",
                                 "+H18", "+WT2"], [])
    ini = task_for("/s/a.ini", tmp_path, [5, 6])
    assert option_args(ini) == (["+FN", "-D", "+W32", "+H18"], [])


@pytest.mark.parametrize(("tail", "result"), [
    (["Parse Error: Cannot open input file.", "Fatal error in parser: Cannot parse input.",
      "Render failed"], RenderResult.RENDERRESULT_PROJECTNOTFOUND),
    (["Cannot create render state output file.", "Render failed"],
     RenderResult.RENDERRESULT_SAVINGFAILED),
    (["File 'a.pov' line 9: Parse Error: Cannot open include file x.inc.",
      "Fatal error in parser: Cannot parse input."], RenderResult.RENDERRESULT_ASSETMISSING),
    (["Fatal error in renderer: Out of memory.", "Render failed"],
     RenderResult.RENDERRESULT_OUTOFMEMORY),
])
def test_povray_messages_map_to_render_results(tmp_path: Path, tail: list[str],
                                               result: RenderResult) -> None:
    path = scene(tmp_path, "")
    noise = "povray: cannot open the user configuration file /root/.povray/3.7/povray.conf: x"
    outcome = PovrayRenderer().outcome(1, [noise, *tail, "ERROR povray exited with status 1"],
                                       task_for(path, tmp_path / "work", [1]))
    assert outcome.result == result
    assert outcome.message == tail[0]
