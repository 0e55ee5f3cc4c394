"""The blender backend against the real Blender (Debian's ``blender`` package):
scenes made by Blender itself, rendered through a subprocess the way the worker
runs it, errors mapped to RENDERRESULT_*, and the files a .blend depends on."""

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

from node.image import read_image, write_image
from node.renderers.base import Outcome, TaskSpec
from node.renderers.blender import BlenderRenderer, frame_args, setup_script, setup_settings
from node.renderers.blender_deps import (
    BlendDepsError,
    blend_dependencies,
    expand_sequence,
    expand_tiles,
)
from protocol.enums import RenderResult

ROOT = Path(__file__).resolve().parents[2]
MAKE_CUBE = ROOT / "examples" / "blender" / "make_cube.py"
BLENDER = shutil.which("blender")
needs_blender = pytest.mark.skipif(
    BLENDER is None, reason="blender is not installed (Debian: apt-get install blender)")
RUN_TIMEOUT = 120.0

#: a library with a textured material that links a deeper library; a main file that
#: links the library, uses an image texture, an image sequence and a missing image
MAKE_DEPS = '''
import os, sys
import bpy
d = sys.argv[sys.argv.index("--") + 1]

def textured(name, image_path):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = bpy.data.images.load(image_path)
    mat.node_tree.links.new(node.outputs[0], mat.node_tree.nodes["Principled BSDF"].inputs[0])
    return mat, node

bpy.ops.wm.read_factory_settings(use_empty=True)
textured("DeepMat", os.path.join(d, "libs/inner/tex/deep.png"))[0].use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(d, "libs/inner/deep.blend"), relative_remap=True)

bpy.ops.wm.read_factory_settings(use_empty=True)
with bpy.data.libraries.load(os.path.join(d, "libs/inner/deep.blend"), link=True,
                             relative=True) as (src, dst):
    dst.materials = ["DeepMat"]
bpy.ops.mesh.primitive_cube_add()
ob = bpy.context.object
ob.name = "LibCube"
ob.data.materials.append(dst.materials[0])
bpy.context.scene.collection.objects.unlink(ob)
ob.use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(d, "libs/lib.blend"), relative_remap=True)

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
with bpy.data.libraries.load(os.path.join(d, "libs/lib.blend"), link=True,
                             relative=True) as (src, dst):
    dst.objects = ["LibCube"]
scene.collection.objects.link(dst.objects[0])
bpy.ops.mesh.primitive_plane_add(size=6)
plane = bpy.context.object
mat, node = textured("Wood", os.path.join(d, "tex/wood.png"))
plane.data.materials.append(mat)
seq, seq_node = textured("Seq", os.path.join(d, "tex/seq_0001.png"))
seq_node.image.source = "SEQUENCE"
plane.data.materials.append(seq)
gone = bpy.data.images.new("gone", 4, 4)
gone.source = "FILE"
gone.filepath = os.path.join(d, "tex/gone.png")
missing = mat.node_tree.nodes.new("ShaderNodeTexImage")
missing.image = gone
mat.node_tree.links.new(missing.outputs[0], mat.node_tree.nodes["Principled BSDF"].inputs["Roughness"])
cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
scene.collection.objects.link(cam)
cam.location = (6, -6, 4)
cam.rotation_euler = (1.1, 0, 0.785)
scene.camera = cam
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.render.resolution_x, scene.render.resolution_y = 32, 18
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(d, "main.blend"), relative_remap=True)
'''


def blender_run(*args: str, cwd: Path) -> None:
    """Run Blender headless with a factory setup; fail the test with its output if it fails."""
    assert BLENDER is not None
    done = subprocess.run([BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code",
                           "1", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cube.blend (examples/blender/make_cube.py) and the dependency set, made once."""
    if BLENDER is None:
        pytest.skip("blender is not installed (Debian: apt-get install blender)")
    d = tmp_path_factory.mktemp("blend")
    texel = np.full((4, 4, 3), 180, np.uint8)
    (d / "tex").mkdir()
    (d / "libs" / "inner" / "tex").mkdir(parents=True)
    for name in ("tex/wood.png", "tex/seq_0001.png", "tex/seq_0002.png", "tex/seq_0003.png",
                 "tex/seq_other.png", "libs/inner/tex/deep.png"):
        write_image(str(d / name), texel)
    (d / "make_deps.py").write_text(MAKE_DEPS)
    blender_run("--python", str(MAKE_CUBE), "--", str(d / "cube.blend"), cwd=d)
    blender_run("--python", str(d / "make_deps.py"), "--", str(d), cwd=d)
    return d


def task_for(scene: Path | str, workdir: Path, frames: list[int], **rdata: object) -> TaskSpec:
    workdir.mkdir(parents=True, exist_ok=True)
    return TaskSpec(job="job", task=0, frames=frames, scene=str(scene), workdir=str(workdir),
                    rdata=dict(rdata))


def run_like_worker(backend: BlenderRenderer, task: TaskSpec) -> tuple[Outcome, list[float]]:
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


@needs_blender
def test_detect_reports_the_installed_version() -> None:
    assert BLENDER is not None
    first = subprocess.run([BLENDER, "--version"], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT).stdout.splitlines()[0]
    version = BlenderRenderer().detect()
    assert version is not None and re.fullmatch(r"\d+\.\d+(\.\d+)?", version)
    assert first.startswith(f"Blender {version}")


def test_detect_is_none_without_blender() -> None:
    assert BlenderRenderer("no-such-blender-here").detect() is None


@needs_blender
def test_frames_one_and_two_land_at_the_frame_paths(scenes: Path, tmp_path: Path) -> None:
    task = task_for(scenes / "cube.blend", tmp_path / "work", [1, 2])
    start = time.monotonic()
    outcome, fractions = run_like_worker(BlenderRenderer(), task)
    print(f"blender rendered 2 frames in {time.monotonic() - start:.2f} s")
    assert outcome == Outcome(RenderResult.RENDERRESULT_OK)
    images = [read_image(task.frame_path(f)) for f in (1, 2)]
    for image in images:
        assert image.shape[:2] == (18, 32)
        assert image[..., :3].std() > 5  # a lit cube on a blue world, not a blank frame
    assert not np.array_equal(images[0], images[1])  # the cube turns
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)


@needs_blender
def test_a_python_error_in_setup_is_an_error_loading_the_project(
        scenes: Path, tmp_path: Path) -> None:
    task = task_for(scenes / "cube.blend", tmp_path / "work", [1], engine="NO_SUCH_ENGINE")
    outcome, _ = run_like_worker(BlenderRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_ERRORLOADINGPROJECT
    assert "NO_SUCH_ENGINE" in outcome.message


@needs_blender
def test_a_missing_scene_is_project_not_found(tmp_path: Path) -> None:
    task = task_for(tmp_path / "nowhere.blend", tmp_path / "work", [1])
    outcome, _ = run_like_worker(BlenderRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_PROJECTNOTFOUND


@needs_blender
@pytest.mark.parametrize("content", [b"not a blend file at all\n", b"BLENDER-v304 cut short"])
def test_a_garbage_file_is_an_error_loading_the_project(tmp_path: Path, content: bytes) -> None:
    scene = tmp_path / "garbage.blend"
    scene.write_bytes(content)
    outcome, _ = run_like_worker(BlenderRenderer(), task_for(scene, tmp_path / "work", [1]))
    assert outcome.result == RenderResult.RENDERRESULT_ERRORLOADINGPROJECT
    assert "garbage.blend" in outcome.message


@needs_blender
def test_an_unwritable_frame_path_is_saving_failed(scenes: Path, tmp_path: Path) -> None:
    task = task_for(scenes / "cube.blend", tmp_path / "work", [1])
    os.mkdir(task.frame_path(1))  # a folder where the frame must go: fails even for root
    outcome, _ = run_like_worker(BlenderRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_SAVINGFAILED
    assert "frame_000001.png" in outcome.message


@needs_blender
def test_missing_images_and_libraries_are_warnings(scenes: Path, tmp_path: Path) -> None:
    copy = tmp_path / "scene"
    shutil.copytree(scenes, copy, ignore=shutil.ignore_patterns("lib.blend"))
    task = task_for(copy / "main.blend", tmp_path / "work", [1])
    outcome, _ = run_like_worker(BlenderRenderer(), task)
    assert outcome.result == RenderResult.RENDERRESULT_OK
    text = "\n".join(outcome.warnings)
    assert "gone.png" in text and "lib.blend" in text


@needs_blender
def test_blend_dependencies_follow_textures_sequences_and_nested_libraries(scenes: Path) -> None:
    deps = blend_dependencies(str(scenes / "main.blend"))
    assert deps == sorted(str(scenes / p) for p in (
        "libs/inner/deep.blend", "libs/inner/tex/deep.png", "libs/lib.blend", "tex/gone.png",
        "tex/seq_0001.png", "tex/seq_0002.png", "tex/seq_0003.png", "tex/wood.png"))


@needs_blender
def test_blend_dependencies_of_a_garbage_file_say_why(tmp_path: Path) -> None:
    scene = tmp_path / "garbage.blend"
    scene.write_bytes(b"junk")
    with pytest.raises(BlendDepsError, match="File format is not supported"):
        blend_dependencies(str(scene))


def test_sequences_and_udim_tiles_expand_to_the_files_on_disk(tmp_path: Path) -> None:
    for name in ("shot_0009.exr", "shot_0010.exr", "shot_12345.exr", "shot_010.exr",
                 "shot_0011.png", "wall.1001.png", "wall.1002.png", "wall.u1_v1.png"):
        (tmp_path / name).touch()
    assert expand_sequence(str(tmp_path / "shot_0010.exr")) == [
        str(tmp_path / n) for n in ("shot_0009.exr", "shot_0010.exr", "shot_12345.exr")]
    assert expand_tiles(str(tmp_path / "wall.<UDIM>.png")) == [
        str(tmp_path / n) for n in ("wall.1001.png", "wall.1002.png")]
    assert expand_sequence(str(tmp_path / "none_0001.png")) == [str(tmp_path / "none_0001.png")]


def test_contiguous_frames_render_as_an_animation_and_others_as_a_list() -> None:
    assert frame_args([3, 1, 2]) == ["-s", "1", "-e", "3", "-j", "1", "-a"]
    assert frame_args([5]) == ["-f", "5"]
    assert frame_args([0, 1, 2, 7, 9, 10]) == ["-f", "0..2,7,9..10"]


def test_command_passes_the_setup_script_and_outputs_into_the_workdir(tmp_path: Path) -> None:
    task = task_for(tmp_path / "scene.blend", tmp_path / "work", [4, 6], samples=3, device="gpu")
    argv, cwd = BlenderRenderer().command(task)
    assert argv[1:] == ["-noaudio", "-b", task.scene, "--python-exit-code", "1", "--python-expr",
                        setup_script(task), "-o", str(tmp_path / "work" / "frame_######"), "-F", "PNG",
                        "-x", "1", "-f", "4,6"]
    assert cwd == str(tmp_path)
    assert not list((tmp_path / "work").iterdir())  # nothing written: the folder is the render user's
    compile(argv[7], "setup", "exec")
    assert setup_settings(task)["samples"] == 3 and setup_settings(task)["device"] == "GPU"


def test_bad_rdata_becomes_an_error_the_setup_script_reports(tmp_path: Path) -> None:
    task = task_for(tmp_path / "s.blend", tmp_path / "w", [1], samples="many", device="TPU")
    errors = setup_settings(task)["errors"]
    assert any("samples" in e for e in errors) and any("device" in e for e in errors)


@pytest.mark.parametrize(("line", "fraction"), [
    ("Fra:3 Mem:9.41M (Peak 10.20M) | Time:00:00.08 | Scene, ViewLayer | Sample 8/16", 0.75),
    ("Fra:2 Mem:12M | Time:00:01.00 | Scene, RenderLayer | Rendered 3/4 Tiles", 0.375),
    ("Fra:2 Mem:12M | Time:00:01.00 | Scene | Path Tracing Tile 2/4, Sample 8/16", 0.1875),
    ("Fra:3 Mem:9.42M (Peak 10.20M) | Time:00:00.08 | Scene, ViewLayer | Finished", 0.995),
    ("Saved: '/w/frame_000003.png'", 1.0),
    ("Fra:2 Mem:9M | Time:00:00.00 | Scene, ViewLayer | Initializing", None),
    ("Fra:9 Mem:9M | Scene | Sample 1/2", None),
    ("Blender quit", None),
])
def test_progress_counts_frames_done_and_the_current_frame(line: str,
                                                           fraction: float | None) -> None:
    task = TaskSpec(job="j", task=0, frames=[2, 3], scene="/s.blend", workdir="/w")
    assert BlenderRenderer().progress(line, task) == (
        None if fraction is None else pytest.approx(fraction))


@pytest.mark.parametrize(("tail", "result"), [
    (["Error: Cannot read file '/s/scene.blend': Permission denied"],
     RenderResult.RENDERRESULT_ERRORLOADINGPROJECT),
    (["Error: Failed to read blend file '/s/scene.blend': Missing DNA block"],
     RenderResult.RENDERRESULT_ERRORLOADINGPROJECT),
    (["imb_savepng: Cannot open file for writing: '/w/frame_000001.png'",
      "Error: Render error (Permission denied) cannot save: '/w/frame_000001.png'"],
     RenderResult.RENDERRESULT_SAVINGFAILED),
    (["Warning: Unable to open '/s/lib.blend': No such file or directory",
      "Error: Render error (No space left on device) cannot save: '/w/frame_000001.png'"],
     RenderResult.RENDERRESULT_SAVINGFAILED),
    (["Fra:1 Mem:9M | Scene | Sample 1/4", "Error: System is out of GPU memory"],
     RenderResult.RENDERRESULT_OUTOFMEMORY),
    (["Error: Cannot render, no camera"], RenderResult.RENDERRESULT_ERRORLOADINGPROJECT),
])
def test_blender_messages_map_to_render_results(tmp_path: Path, tail: list[str],
                                                result: RenderResult) -> None:
    scene = tmp_path / "scene.blend"
    scene.write_bytes(b"BLENDER")
    task = task_for(scene, tmp_path / "work", [1])
    outcome = BlenderRenderer().outcome(1, [*tail, "", "Blender quit"], task)
    assert outcome.result == result
    assert outcome.message == tail[-1]
