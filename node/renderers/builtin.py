"""The ``builtin`` backend: the farm's embedded numpy ray tracer.

The daemon imports this module for ``BuiltinRenderer``, ``scene_frames`` and
``scene_dependencies`` only; numpy is imported by the render subprocess::

    python -m node.renderers.builtin SCENE [--frames 1-24]
        [--out-pattern DIR/frame_{frame:06d}.png] [--width W] [--height H] [--samples N]
        [--tile N:X0,Y0,X1,Y1 ... --tile-pattern DIR/frame_{frame:06d}_tile_{tile:04d}.png]

which renders the frames (or only the given tiles of each: their pixels
alone, each exactly as in the whole frame) one by one and prints, one per line::

    PROGRESS <fraction of all the frames done, 0..1>
    FRAME <n> <path>          after frame n is complete at path
    ERROR <RESULT> <message>  before a failing exit, RESULT a RENDERRESULT_* name

Exit status: 0 done, 2 bad arguments, 3 scene not found, 4 scene unreadable
or invalid, 5 cannot write a frame, 6 a texture is missing, 7 out of memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import signal
import sys
from typing import TYPE_CHECKING

from protocol.enums import RenderResult
from protocol.frames import format_frames, parse_frames

from .base import Outcome, TaskSpec, missing_frames, progress_line
from .scene import MissingAsset, SceneError, load_scene

if TYPE_CHECKING:
    from .scene import Frame

EXIT_RESULTS = {
    3: RenderResult.RENDERRESULT_PROJECTNOTFOUND,
    4: RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
    5: RenderResult.RENDERRESULT_SAVINGFAILED,
    6: RenderResult.RENDERRESULT_ASSETMISSING,
    7: RenderResult.RENDERRESULT_OUTOFMEMORY,
}
EXIT_CODES = {result: code for code, result in EXIT_RESULTS.items()}
DEFAULT_PATTERN = "frame_{frame:06d}.png"
OVERRIDES = ("width", "height", "samples")  #: rdata keys passed to the renderer
PROGRESS_STEP = 0.01  #: print progress when it has grown by this much


#: file types the built-in renderer writes through node.image (Pillow); exr needs OpenImageIO
FORMATS = ("bmp", "jpeg", "jpg", "png", "tga", "tif", "tiff", "webp")


def writable_formats() -> list[str]:
    """File types the built-in renderer writes here (without importing Pillow)."""
    return sorted(FORMATS) + (["exr"] if importlib.util.find_spec("OpenImageIO") is not None else [])


def scene_frames(path: str) -> str:
    """The scene's default frame range, e.g. ``"1-24"`` (OSError, SceneError)."""
    return load_scene(path).frames


def scene_size(path: str, rdata: dict[str, object]) -> tuple[int, int]:
    """The frame size a job renders: the scene's resolution with rdata's width and
    height (one alone keeps the scene's aspect), as ``_sized`` makes it (OSError, SceneError)."""
    scene = load_scene(path)
    width = rdata.get("width") if isinstance(rdata.get("width"), int) else None
    height = rdata.get("height") if isinstance(rdata.get("height"), int) else None
    args = argparse.Namespace(width=width, height=height, samples=None)
    frame = _sized(scene.at(parse_frames(scene.frames)[0]), args)
    return frame.width, frame.height


def scene_dependencies(path: str) -> list[str]:
    """Absolute paths of the textures the scene uses, whether or not they exist."""
    return load_scene(path).textures


class BuiltinRenderer:
    """Runs ``python -m node.renderers.builtin`` for a task."""

    name = "builtin"

    def detect(self) -> str | None:
        """``numpy-<version>`` if numpy is installed (without importing it)."""
        import importlib.metadata  # here: a renderer process never needs it

        try:
            return f"numpy-{importlib.metadata.version('numpy')}"
        except importlib.metadata.PackageNotFoundError:
            return None

    def command(self, task: TaskSpec) -> tuple[list[str], str]:
        """Render every frame of the task into ``task.frame_path``, from the scene's folder.

        ``-P`` keeps the scene's folder off ``sys.path``, so a scene cannot
        shadow numpy or this package with files of its own.
        """
        workdir = task.workdir.replace("{", "{{").replace("}", "}}")
        pattern = os.path.join(workdir, f"frame_{{frame:06d}}.{task.extension}")
        argv = [sys.executable, "-P", "-m", "node.renderers.builtin", task.scene,
                "--frames", format_frames(sorted(task.frames)), "--out-pattern", pattern]
        for key in OVERRIDES:
            if key in task.rdata:
                argv += [f"--{key}", str(task.rdata[key])]
        if task.tiles:
            for tile in task.tiles:  # the tile alone: the builtin needs no neighbouring pixels
                argv += ["--tile", f"{tile.index}:" + ",".join(str(v) for v in tile.region)]
            argv += ["--tile-pattern",
                     os.path.join(workdir, f"frame_{{frame:06d}}_tile_{{tile:04d}}.{task.extension}")]
        folder = os.path.dirname(task.scene)
        return argv, folder if os.path.isdir(folder) else task.workdir

    def progress(self, line: str, task: TaskSpec) -> float | None:
        """The fraction from a ``PROGRESS 0.25`` line."""
        return progress_line(line)

    def outcome(self, returncode: int, log_tail: list[str], task: TaskSpec) -> Outcome:
        """OK only for exit 0 with every frame written; otherwise the exit
        status (or the last ERROR line) picks the result."""
        warnings = tuple(line[len("WARNING "):] for line in log_tail if line.startswith("WARNING "))
        if returncode == 0:
            missing = missing_frames(task)
            if missing:
                return Outcome(RenderResult.RENDERRESULT_SAVINGFAILED,
                               f"the renderer wrote no file for frames {format_frames(missing)}",
                               warnings)
            return Outcome(RenderResult.RENDERRESULT_OK, "", warnings)
        result = EXIT_RESULTS.get(returncode)
        errors = [line for line in log_tail if line.startswith("ERROR ")]
        if errors:
            code, _, message = errors[-1][len("ERROR "):].partition(" ")
            if result is None:
                result = RenderResult.__members__.get(f"RENDERRESULT_{code}")
            message = message or errors[-1]
        else:
            chatter = ("PROGRESS ", "FRAME ", "TILE ", "INFO ")
            last = [line for line in log_tail if not line.startswith(chatter)]
            message = last[-1] if last else ""
            if returncode < 0:
                try:
                    message = f"killed by {signal.Signals(-returncode).name}"
                except ValueError:
                    message = f"killed by signal {-returncode}"
            else:
                message = f"exited with status {returncode}" + (f": {message}" if message else "")
        return Outcome(result or RenderResult.RENDERRESULT_ERRORLOADINGPROJECT, message, warnings)


class _Failure(Exception):
    def __init__(self, result: RenderResult, message: str) -> None:
        super().__init__(message)
        self.result = result


#: what numpy's BLAS reads at import: one render is one core's work (the worker runs one
#: render at a time; a machine's other cores run other workers' or nothing), and a BLAS
#: that starts a thread per core at import costs every task (every tile) 0.15 s of CPU
ONE_CORE = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_core() -> None:
    """Keep numpy's BLAS to this thread, unless the render's environment says otherwise
    (``render_env``); call before numpy is imported."""
    for name in ONE_CORE:
        os.environ.setdefault(name, "1")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node.renderers.builtin",
                                     description="Render frames of a built-in scene to image files (PNG, JPEG, EXR...).")
    parser.add_argument("scene", help="scene file (.json or .toml)")
    parser.add_argument("--frames", help="frames to render, e.g. 1-24 or 1,5,9 (default: the scene's)")
    parser.add_argument("--out-pattern", default=DEFAULT_PATTERN,
                        help="output path, {frame} is the frame number (default: %(default)s)")
    for key in OVERRIDES:
        parser.add_argument(f"--{key}", type=_positive, help=f"override the scene's {key}")
    parser.add_argument("--tile", dest="tiles", action="append", type=_tile, default=[],
                        metavar="N:X0,Y0,X1,Y1", help="render only this tile of each frame (repeatable)")
    parser.add_argument("--tile-pattern", help="output path of a tile: {frame} and {tile} placeholders")
    args = parser.parse_args(argv)
    if args.tiles and not args.tile_pattern:
        parser.error("--tile needs --tile-pattern")
    if args.frames is not None:
        try:
            args.frames = parse_frames(args.frames)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        names = {args.out_pattern.format(frame=n) for n in (1, 2)}
    except (KeyError, IndexError, ValueError) as exc:
        parser.error(f"bad --out-pattern {args.out_pattern!r}: {exc!r}; use {{frame}} placeholders")
    if len(names) == 1 and (args.frames is None or len(args.frames) > 1):
        parser.error("--out-pattern must contain {frame} to render several frames")
    return args


def _tile(text: str) -> tuple[int, tuple[int, int, int, int]]:
    index, _, region = text.partition(":")
    x0, y0, x1, y1 = (int(v) for v in region.split(","))
    return int(index), (x0, y0, x1, y1)


def _sized(frame: Frame, args: argparse.Namespace) -> Frame:
    width, height = args.width or frame.width, args.height or frame.height
    if args.width and not args.height:
        height = max(1, round(args.width * frame.height / frame.width))
    elif args.height and not args.width:
        width = max(1, round(args.height * frame.width / frame.height))
    return dataclasses.replace(frame, width=width, height=height,
                               samples=args.samples or frame.samples)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _Failure(RenderResult.RENDERRESULT_SAVINGFAILED, f"cannot write {path}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _render(args: argparse.Namespace) -> None:
    try:
        scene = load_scene(args.scene)
    except FileNotFoundError:
        raise _Failure(RenderResult.RENDERRESULT_PROJECTNOTFOUND,
                       f"scene {os.path.abspath(args.scene)} does not exist") from None
    except OSError as exc:
        raise _Failure(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                       f"cannot read scene {args.scene}: {exc}") from None
    frames: list[int] = args.frames if args.frames is not None else parse_frames(scene.frames)
    ext = os.path.splitext(args.out_pattern)[1].lower().lstrip(".") or "png"
    if ext not in writable_formats():
        raise _Failure(RenderResult.RENDERRESULT_SAVINGFAILED,
                       f"the built-in renderer cannot write .{ext} files ({args.out_pattern}); "
                       f"it writes {', '.join(writable_formats())}")

    one_core()
    from node.image import encode  # numpy and Pillow from here on

    from .raytrace import load_textures, render

    textures = load_textures(scene)
    last = -1.0
    for i, number in enumerate(frames):
        frame = _sized(scene.at(number), args)

        def report(fraction: float, i: int = i) -> None:
            nonlocal last
            total = (i + fraction) / len(frames)
            if total - last >= PROGRESS_STEP or fraction >= 1.0:
                print(f"PROGRESS {total:.4f}", flush=True)
                last = total

        if not args.tiles:
            data = encode(render(frame, textures, report), ext)
            path = args.out_pattern.format(frame=number)
            _write(path, data)
            print(f"FRAME {number} {path}", flush=True)
            continue
        for k, (index, region) in enumerate(args.tiles):
            def tile_report(fraction: float, k: int = k) -> None:
                report((k + fraction) / len(args.tiles))

            try:
                pixels = render(frame, textures, tile_report, region)
            except ValueError as exc:
                raise _Failure(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT, str(exc)) from None
            path = args.tile_pattern.format(frame=number, tile=index)
            _write(path, encode(pixels, ext, fast=True))  # passed on to be assembled, then dropped
            print(f"TILE {number} {index} {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the exit status tells the worker what went wrong."""
    args = _arguments(argv)
    try:
        _render(args)
    except _Failure as exc:
        failure: tuple[RenderResult, str] = (exc.result, str(exc))
    except MissingAsset as exc:
        failure = (RenderResult.RENDERRESULT_ASSETMISSING, str(exc))
    except SceneError as exc:
        failure = (RenderResult.RENDERRESULT_ERRORLOADINGPROJECT, str(exc))
    except MemoryError:
        failure = (RenderResult.RENDERRESULT_OUTOFMEMORY, "out of memory; try fewer samples or pixels")
    else:
        return 0
    result, message = failure
    print(f"ERROR {result.name.removeprefix('RENDERRESULT_')} {message}", flush=True)
    return EXIT_CODES[result]


if __name__ == "__main__":
    sys.exit(main())
