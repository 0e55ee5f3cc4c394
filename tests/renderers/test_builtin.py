"""The built-in renderer: scene format, ray tracer, PNG files, CLI and backend."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.image import ImageError, contact_sheet, decode, encode, read_image, write_image
from node.renderers import raytrace
from node.renderers.base import TaskSpec
from node.renderers.builtin import BuiltinRenderer, scene_dependencies, scene_frames
from node.renderers.raytrace import load_textures, render
from node.renderers.scene import MissingAsset, SceneError, load_scene
from protocol.enums import RenderResult

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
W, H = 64, 36
RED, WHITE, BLUE = [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]


def basic_scene(**top: Any) -> dict[str, Any]:
    """A red matte sphere on a white floor, blue sky, one light shining down-right-away."""
    scene: dict[str, Any] = {
        "frames": "1-3", "resolution": [W, H], "samples": 1, "max_depth": 2, "background": BLUE,
        "ambient": 0.1,
        "camera": {"position": [0, 1, 6], "look_at": [0, 1, 0], "fov": 60},
        "objects": [
            {"type": "plane", "colour": WHITE, "diffuse": 1.0, "specular": 0.0},
            {"type": "sphere", "center": [0, 1, 0], "radius": 1, "colour": RED, "diffuse": 1.0,
             "specular": 0.0},
        ],
        "lights": [{"type": "directional", "direction": [1, -1, -1]}],
    }
    scene.update(top)
    return scene


def save(tmp_path: Path, scene: dict[str, Any], name: str = "scene.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(scene))
    return str(path)


def pixels_of(path: str, frame: int = 1) -> np.ndarray:
    scene = load_scene(path)
    return render(scene.at(frame), load_textures(scene))


def is_red(pixel: np.ndarray) -> bool:
    """The red sphere, lit: not the blue sky, not the grey floor."""
    r, g, b = (int(c) for c in pixel)
    return r > 100 and g < 10 and b < 10


def pixel_at(point: tuple[float, float, float]) -> tuple[int, int]:
    """(row, column) where the basic scene's camera sees a world point."""
    rel = (point[0], point[1] - 1.0, point[2] - 6.0)
    half_h = math.tan(math.radians(30))
    half_w = half_h * W / H
    sx = rel[0] / -rel[2] / half_w
    sy = rel[1] / -rel[2] / half_h
    return int((1 - sy) / 2 * H), int((sx + 1) / 2 * W)


# --- the ray tracer -----------------------------------------------------------

def test_sphere_floor_sky_and_shadow_land_where_the_camera_sees_them(tmp_path: Path) -> None:
    img = pixels_of(save(tmp_path, basic_scene())).astype(int)
    assert img.shape == (H, W, 3)
    assert is_red(img[pixel_at((0, 1, 0))])
    assert tuple(img[0, 0]) == (0, 0, 255)  # sky: the background colour exactly
    lit = img[pixel_at((-1.5, 0, -0.5))]
    shadow = img[pixel_at((1.5, 0, -0.5))]  # the sphere stands between it and the light
    assert lit[0] == lit[1] == lit[2] > 150
    assert shadow.max() < lit.min() / 3


def test_same_scene_and_frame_render_to_identical_bytes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scene = basic_scene(samples=4, max_depth=3)
    scene["objects"][1]["reflection"] = 0.5
    path = save(tmp_path, scene)
    first, second = encode(pixels_of(path, 2)), encode(pixels_of(path, 2))
    assert first == second
    monkeypatch.setattr(raytrace, "CHUNK", 97)  # batches of rays do not change a pixel
    assert encode(pixels_of(path, 2)) == first
    assert encode(pixels_of(path, 3)) != first  # jitter differs by frame


def test_keyframes_interpolate_linearly_and_hold_outside_their_range(tmp_path: Path) -> None:
    scene = basic_scene()
    scene["objects"][1]["keyframes"] = {"3": {"center": [-2, 1, 0]}, "13": {"center": [2, 1, 0]}}
    path = save(tmp_path, scene)
    loaded = load_scene(path)
    assert loaded.at(1).shapes[1].center == (-2.0, 1.0, 0.0)
    assert loaded.at(8).shapes[1].center == (0.0, 1.0, 0.0)
    assert loaded.at(20).shapes[1].center == (2.0, 1.0, 0.0)
    left, right = pixel_at((-2, 1, 0)), pixel_at((2, 1, 0))
    early, late = pixels_of(path, 3).astype(int), pixels_of(path, 13).astype(int)
    assert is_red(early[left]) and not is_red(early[right])
    assert is_red(late[right]) and not is_red(late[left])


def test_colours_and_camera_keyframes_interpolate_too(tmp_path: Path) -> None:
    scene = basic_scene()
    scene["objects"][1]["keyframes"] = {"1": {"colour": "#000000"}, "5": {"colour": "#ffffff"}}
    scene["camera"]["keyframes"] = {"1": {"fov": 30}, "5": {"fov": 50}}
    frame = load_scene(save(tmp_path, scene)).at(2)
    assert frame.shapes[1].material.colour == (0.25, 0.25, 0.25)
    assert frame.camera.fov == 35.0


def test_a_texture_colours_the_sphere(tmp_path: Path) -> None:
    (tmp_path / "tex").mkdir()
    write_image(str(tmp_path / "tex" / "green.png"), np.full((4, 8, 3), (0, 255, 0), dtype=np.uint8))
    scene = basic_scene()
    scene["objects"][1]["texture"] = "tex/green.png"
    path = save(tmp_path, scene)
    assert scene_dependencies(path) == [str(tmp_path / "tex" / "green.png")]
    r, g, b = pixels_of(path)[pixel_at((0, 1, 0))]
    assert g > 100 and r < 10 and b < 10


def test_a_missing_texture_is_a_missing_asset(tmp_path: Path) -> None:
    scene = basic_scene()
    scene["objects"][1]["texture"] = "nowhere.png"
    loaded = load_scene(save(tmp_path, scene))
    with pytest.raises(MissingAsset, match="nowhere.png"):
        load_textures(loaded)


# --- scene validation ---------------------------------------------------------

@pytest.mark.parametrize(("change", "key", "detail"), [
    (lambda s: s["objects"][1].update(radius=-1), "objects[1].radius", "greater than 0"),
    (lambda s: s["objects"][1].update(color=RED), "objects[1].color", "did you mean 'colour'"),
    (lambda s: s.pop("camera"), "camera", "required"),
    (lambda s: s["camera"].update(fov=200), "camera.fov", "between 0 and 180"),
    (lambda s: s["camera"].update(keyframes={"5": {"radius": 2}}), "camera.keyframes.5.radius",
     "unknown key"),
    (lambda s: s["objects"][1].update(keyframes={"x": {}}), "objects[1].keyframes.x", "frame numbers"),
    (lambda s: s["objects"][1].update(material="steel"), "objects[1].material", "steel"),
    (lambda s: s["objects"].append({"type": "cone"}), "objects[2].type", "sphere, plane, box"),
    (lambda s: s["lights"][0].update(direction=[0, 0, 0]), "lights[0].direction", "[0, 0, 0]"),
    (lambda s: s.update(resolution=[64]), "resolution", "[width, height]"),
    (lambda s: s.update(frames="9-1"), "frames", "9-1"),
    (lambda s: s.update(background="#12345"), "background", "#rrggbb"),
])
def test_scene_errors_name_the_file_and_the_key(tmp_path: Path, change: Any, key: str,
                                                detail: str) -> None:
    scene = basic_scene()
    change(scene)
    path = save(tmp_path, scene)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert detail in str(info.value)


def test_unparsable_scenes_and_unknown_types_are_scene_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"camera": ')
    with pytest.raises(SceneError, match="not valid JSON"):
        load_scene(str(bad))
    (tmp_path / "bad.toml").write_text("camera = [")
    with pytest.raises(SceneError, match="not valid TOML"):
        load_scene(str(tmp_path / "bad.toml"))
    (tmp_path / "scene.yaml").write_text("")
    with pytest.raises(SceneError, match="use .json or .toml"):
        load_scene(str(tmp_path / "scene.yaml"))
    with pytest.raises(FileNotFoundError):
        load_scene(str(tmp_path / "absent.json"))


def test_example_scenes_load_and_render_small() -> None:
    for name in ("spheres.json", "textured.toml"):
        scene = load_scene(str(EXAMPLES / name))
        frame = scene.at(1)
        assert (frame.width, frame.height) == (320, 180)
        assert len(scene_frames(str(EXAMPLES / name)).split("-")) == 2
        for texture in scene.textures:
            assert os.path.getsize(texture) < 50_000
        small = render(dataclasses.replace(frame, width=32, height=18, samples=1),
                       load_textures(scene))
        assert small.shape == (18, 32, 3) and small.std() > 10
    assert scene_dependencies(str(EXAMPLES / "textured.toml")) == [
        str(EXAMPLES / "textures" / "tiles.png"), str(EXAMPLES / "textures" / "planet.png")]


# --- image files (node.image, on Pillow and OpenImageIO) ---------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_round_trips_every_channel_count(channels: int) -> None:
    pixels = np.random.default_rng(channels).integers(0, 256, (7, 13, channels), dtype=np.uint8)
    assert np.array_equal(decode(encode(pixels)), pixels)


@pytest.mark.parametrize("ext", ["png", "tif", "bmp", "tga", "exr"])
def test_lossless_formats_round_trip_rgb(ext: str, tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = str(tmp_path / f"f.{ext}")
    write_image(path, pixels)
    assert np.array_equal(read_image(path)[:, :, :3], pixels)


def test_the_reader_refuses_what_is_not_an_image() -> None:
    good = encode(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="not an image"):
        decode(b"GIF89a" + good)
    with pytest.raises(ImageError, match="cannot write .xyz"):
        encode(np.zeros((2, 2, 3), dtype=np.uint8), "xyz")


def test_contact_sheet_lays_out_thumbnails_in_a_grid(tmp_path: Path) -> None:
    paths = []
    for i in range(7):
        path = str(tmp_path / f"frame_{i:06d}.png")
        write_image(path, np.full((18, 32, 3), (i * 30, 100, 200), dtype=np.uint8))
        paths.append(path)
    out = str(tmp_path / "sheet.png")
    assert contact_sheet(paths, out, columns=3, thumb_width=16) == (3 * 20 + 4, 3 * 13 + 4)
    sheet = read_image(out)
    assert sheet.shape == (43, 64, 3)
    assert tuple(sheet[4 + 13 + 4, 4 + 20 + 5]) == (4 * 30, 100, 200)  # frame 4: row 1, column 1


# --- the CLI and the backend --------------------------------------------------

def run(task: TaskSpec) -> tuple[int, list[str]]:
    argv, cwd = BuiltinRenderer().command(task)
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def test_cli_writes_every_frame_and_reports_progress(tmp_path: Path) -> None:
    path = save(tmp_path, basic_scene(samples=4))
    task = TaskSpec(job="j", task=0, frames=[2, 3], scene=path, workdir=str(tmp_path / "out"))
    backend = BuiltinRenderer()
    code, lines = run(task)
    assert code == 0, lines
    assert [line for line in lines if line.startswith("FRAME")] == [
        f"FRAME 2 {task.frame_path(2)}", f"FRAME 3 {task.frame_path(3)}"]
    fractions = [x for line in lines if (x := backend.progress(line, task)) is not None]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert backend.outcome(code, lines, task).result == RenderResult.RENDERRESULT_OK
    with open(task.frame_path(3), "rb") as f:  # the subprocess and this process agree
        assert f.read() == encode(pixels_of(path, 3))
    assert sorted(os.listdir(task.workdir)) == ["frame_000002.png", "frame_000003.png"]


def _output_blocked(tmp_path: Path) -> str:
    (tmp_path / "out").write_text("a file where the output folder should be")
    return save(tmp_path, basic_scene())


def _missing_texture(tmp_path: Path) -> str:
    scene = basic_scene()
    scene["objects"][0]["texture"] = "gone.png"
    return save(tmp_path, scene)


@pytest.mark.parametrize(("setup", "code", "result"), [
    (lambda p: str(p / "absent.json"), 3, RenderResult.RENDERRESULT_PROJECTNOTFOUND),
    (lambda p: save(p, {"camera": {}}), 4, RenderResult.RENDERRESULT_ERRORLOADINGPROJECT),
    (_output_blocked, 5, RenderResult.RENDERRESULT_SAVINGFAILED),
    (_missing_texture, 6, RenderResult.RENDERRESULT_ASSETMISSING),
])
def test_cli_failures_exit_with_their_code_and_map_to_a_render_result(
        tmp_path: Path, setup: Any, code: int, result: RenderResult) -> None:
    task = TaskSpec(job="j", task=0, frames=[1], scene=setup(tmp_path),
                    workdir=str(tmp_path / "out" / "task"))
    returncode, lines = run(task)
    assert returncode == code, lines
    assert lines[-1].startswith(f"ERROR {result.name.removeprefix('RENDERRESULT_')} ")
    outcome = BuiltinRenderer().outcome(returncode, lines, task)
    assert outcome.result == result
    assert outcome.message and outcome.message in lines[-1]


def test_outcome_needs_every_frame_and_explains_other_failures(tmp_path: Path) -> None:
    backend = BuiltinRenderer()
    task = TaskSpec(job="j", task=0, frames=[1, 2], scene="s.json", workdir=str(tmp_path))
    Path(task.frame_path(1)).write_bytes(b"png")
    missing = backend.outcome(0, ["FRAME 1 x"], task)
    assert missing.result == RenderResult.RENDERRESULT_SAVINGFAILED and "2" in missing.message
    Path(task.frame_path(2)).write_bytes(b"png")
    assert backend.outcome(0, ["WARNING odd"], task).warnings == ("odd",)
    assert backend.outcome(0, [], task).result == RenderResult.RENDERRESULT_OK
    crash = backend.outcome(1, ["PROGRESS 0.5", "Traceback ...", "ZeroDivisionError: x"], task)
    assert crash.result == RenderResult.RENDERRESULT_ERRORLOADINGPROJECT
    assert crash.message == "exited with status 1: ZeroDivisionError: x"
    assert backend.outcome(-9, [], task).message == "killed by SIGKILL"
    oom = backend.outcome(7, ["ERROR OUTOFMEMORY out of memory"], task)
    assert (oom.result, oom.message) == (RenderResult.RENDERRESULT_OUTOFMEMORY, "out of memory")


def test_progress_reads_only_progress_lines() -> None:
    backend = BuiltinRenderer()
    task = TaskSpec(job="j", task=0, frames=[1], scene="s.json", workdir="/tmp")
    assert backend.progress("PROGRESS 0.2500", task) == 0.25
    assert backend.progress("PROGRESS 7", task) == 1.0
    assert backend.progress("PROGRESS soon", task) is None
    assert backend.progress("FRAME 1 /tmp/frame_000001.png", task) is None


def test_command_runs_from_the_scene_folder_with_overrides(tmp_path: Path) -> None:
    task = TaskSpec(job="j", task=0, frames=[3, 1, 2], scene=str(tmp_path / "s.json"),
                    workdir="/work/{odd}", rdata={"width": 32, "samples": 2})
    argv, cwd = BuiltinRenderer().command(task)
    assert cwd == str(tmp_path)
    assert argv[:4] == [sys.executable, "-P", "-m", "node.renderers.builtin"]
    assert argv[argv.index("--frames") + 1] == "1-3"
    pattern = argv[argv.index("--out-pattern") + 1]
    assert pattern.format(frame=7) == task.frame_path(7)
    assert argv[-4:] == ["--width", "32", "--samples", "2"]
    assert BuiltinRenderer().detect() == f"numpy-{np.__version__}"


def test_the_daemon_can_import_the_backend_without_numpy() -> None:
    code = "import sys, node.renderers.builtin; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_builtin_render_keeps_numpy_to_one_thread_unless_its_environment_says_otherwise() -> None:
    probe = ("import os, node.renderers.builtin as b; b.one_core(); import numpy; "
             "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**env, "OPENBLAS_NUM_THREADS": "2"})
    assert done.stdout.split()[1] == "2"
