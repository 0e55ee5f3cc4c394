"""A submit's render settings and tiles, checked against the renderer it names.

``shape`` takes the validated ``JobSpec`` and the submit's own arguments
(``resolution`` "WxH", ``percentage``, ``tiles`` "COLSxROWS" or "auto",
``overscan``) and returns the job as it will render: rdata in each
setting's type, the size keys set, and, for a tiled job, its ``Tiling``
with the frame size pinned in rdata so every worker renders the same frame,
and, unless the submit gave ``chunk``, its tiles a task: a frame's tiles
split evenly over the machines that can render it (``tiles_per_task``).
What the renderer cannot take raises ``Refused``, whose message names what
it does take.  ``Shaped.warnings`` says what the job log should carry:
what needs neighbouring pixels in a tiled render, and what was done about it.

Blocking: reading the scene's size may run Blender.  Call it in a thread.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from node.errors import BadRequest
from node.image import writable as assemblable
from node.jobs.operations import JobSpec
from node.jobs.tiling import Tiling, auto_grid, parse_grid, problem, tiles_per_task
from node.renderers import frame_size
from node.renderers.settings import SIZE_KEYS, keys_text, normalize

MAX_OVERSCAN = 4096  #: pixels
MAX_PERCENTAGE = 32767  #: Blender's own limit
#: overscan (pixels) a tile renders with under Cycles' adaptive sampling.  A pixel goes on
#: sampling while a neighbour has not converged, and that neighbour's samples depend on its
#: own neighbours, so a tile drawn alone differs at its edges.  Measured (Blender 3.4, 4x4 and
#: 3x2 tiles of make_cube.py at 61x37/256, 200x120/1024 and 640x360/192 samples): 1 px is
#: not always enough, 2 px was exact in all of them (tests/renderers/test_tiles.py)
ADAPTIVE_REACH = 2
_SIZE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")
_RADIOSITY = re.compile(r"\bradiosity\b")


class Refused(Exception):
    """The job cannot be made as asked; the message says why and what would do."""


@dataclass
class Shaped:
    """A submit as it will render, and the warnings for its log."""

    spec: JobSpec
    warnings: list[str] = field(default_factory=list)


def parse_size(value: Any) -> tuple[int, int]:
    """``"1920x1080"`` or ``[1920, 1080]`` as (1920, 1080); BadRequest otherwise."""
    if isinstance(value, str):
        found = _SIZE.match(value)
        if found is not None:
            value = [int(found.group(1)), int(found.group(2))]
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536 for v in value)):
        return int(value[0]), int(value[1])
    raise BadRequest(f"resolution must be WIDTHxHEIGHT (1 to 65536 each), not {value!r}")


def _whole(args: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, not {value!r}")
    return value


def shape(spec: JobSpec, args: dict[str, Any], machines: int) -> Shaped:
    """The job ``spec`` as it will render (see the module docstring); ``machines``:
    how many machines can render it now (``tiles="auto"`` cuts about two tiles each)."""
    renderer = spec.renderer
    rdata = dict(spec.rdata or {})
    size_keys = SIZE_KEYS.get(renderer)
    if args.get("resolution") is not None and size_keys is not None:
        rdata.update(zip(size_keys, parse_size(args["resolution"]), strict=True))
    rdata, problems = normalize(renderer, rdata)
    if problems:
        raise Refused("; ".join(problems) + f" ({keys_text(renderer)})")
    percentage = _whole(args, "percentage", 1, MAX_PERCENTAGE)
    if percentage is not None and size_keys is not None:
        if renderer == "blender":
            rdata["resolution_percentage"] = percentage
        else:
            base = _size(spec.scene, renderer, rdata)
            if base is None:
                raise Refused(f"--percentage needs the frame's size, which the scene does not say "
                              f"for the {renderer} renderer: give --resolution WxH")
            rdata.update(zip(size_keys, (max(1, base[0] * percentage // 100),
                                         max(1, base[1] * percentage // 100)), strict=True))
    overscan = _whole(args, "overscan", 0, MAX_OVERSCAN)
    tiles = args.get("tiles")
    if tiles is None or tiles == "":
        if overscan:
            raise BadRequest("overscan is for tiles: give tiles too")
        return Shaped(dataclasses.replace(spec, rdata=rdata))
    shaped = _tiled(dataclasses.replace(spec, rdata=rdata), tiles, overscan or 0, machines)
    if args.get("chunk") is None and shaped.spec.tiling is not None:  # not given: split over the machines
        able = min(machines, len(spec.machines)) if spec.machines else machines
        chunk = tiles_per_task(shaped.spec.tiling.count, able)
        shaped = dataclasses.replace(shaped, spec=dataclasses.replace(shaped.spec, chunk=chunk))
    return shaped


def _size(scene: str, renderer: str, rdata: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return frame_size(scene, renderer, rdata)
    except (OSError, ValueError, RuntimeError) as exc:
        raise Refused(f"cannot read the frame size of {scene}: {exc}") from None


def _tiled(spec: JobSpec, tiles: Any, overscan: int, machines: int) -> Shaped:
    renderer = spec.renderer
    rdata = dict(spec.rdata or {})
    if renderer == "command":
        from node.renderers.command import draws_regions

        if not draws_regions(str(rdata.get("command", ""))):
            raise Refused("the command renderer can render tiles only with a template that names the "
                          "region it draws and where it writes it: {x0} {y0} {x1} {y1} and {output}")
    if not spec.outputs:
        raise Refused("tiles need frames to assemble: this job writes no file")
    ext = spec.extension
    if ext not in assemblable():
        raise Refused(f"tiles are assembled into {', '.join(assemblable())} files, not .{ext}")
    size = _size(spec.scene, renderer, rdata)
    if size is None:
        raise Refused(f"tiles need the frame's size, which the scene does not say for the {renderer} "
                      f"renderer: give --resolution WxH")
    width, height = size
    if isinstance(tiles, str) and tiles.strip().lower() == "auto":
        cols, rows = auto_grid(width, height, max(1, machines))
    elif isinstance(tiles, list | tuple) and len(tiles) == 2 and all(isinstance(v, int) for v in tiles):
        cols, rows = int(tiles[0]), int(tiles[1])
    elif isinstance(tiles, str):
        try:
            cols, rows = parse_grid(tiles)
        except ValueError as exc:
            raise Refused(str(exc)) from None
    else:
        raise Refused(f"tiles must be COLSxROWS (e.g. 4x4) or auto, not {tiles!r}")
    wrong = problem(cols, rows, width, height)
    if wrong:
        raise Refused(wrong)
    warnings: list[str] = []
    if renderer == "blender":
        more, overscan = _blender_warnings(spec.scene, overscan)
        warnings += more
    elif renderer == "povray":
        warnings += _povray_warnings(spec.scene, rdata)
    if renderer == "blender":  # the scene's own values pinned: every tile is of the same frame
        from node.renderers.blender_deps import blend_info

        own = [int(v) for v in blend_info(spec.scene)["resolution"]]
        for key, value in zip(("resolution_x", "resolution_y", "resolution_percentage"), own, strict=True):
            rdata.setdefault(key, value)
    else:
        rdata.update(zip(SIZE_KEYS[renderer], size, strict=True))
    tiling = Tiling(cols, rows, width, height, overscan)
    return Shaped(dataclasses.replace(spec, rdata=rdata, tiling=tiling), warnings)


def _blender_warnings(scene: str, overscan: int) -> tuple[list[str], int]:
    """What the job log says of a tiled Blender scene, and the overscan its tiles
    render with: at least ``ADAPTIVE_REACH`` under Cycles' adaptive sampling."""
    from node.renderers.blender_deps import blend_neighbours

    try:
        found = blend_neighbours(scene)
    except (OSError, ValueError, RuntimeError) as exc:
        return [f"cannot tell whether the scene needs neighbouring pixels: {exc}"], overscan
    out = ["tiles render with dither off (its noise depends on the image it is added to): "
           "the tiles' pixels are the frame's exactly"]
    if found.denoise:
        out.append(f"denoising is on ({', '.join(found.denoise)}); the farm renders with denoising off, "
                   "so the tiles assemble to the frame exactly")
    if found.adaptive:
        overscan = max(overscan, ADAPTIVE_REACH)
        out.append(f"Cycles' adaptive sampling stops a pixel when it and its neighbours have converged: "
                   f"each tile is rendered with {overscan} px more on each side, which is cut off (exact in "
                   "every scene measured; turn adaptive sampling off in the scene for a frame that is "
                   "exact whatever it holds)")
    nodes = found.nodes
    if nodes:
        reach = (f"each tile is rendered with {overscan} px more on each side, which is cut off: "
                 "exact where no effect reaches further") if overscan else (
            "each tile is composited alone, so their effect stops at the tile edges; "
            "--overscan PX (at least the effect's reach) renders each tile with a margin that is cut off")
        out.append(f"the compositor uses nodes that read neighbouring pixels ({', '.join(nodes)}): {reach}")
    return out, overscan


def _povray_warnings(scene: str, rdata: dict[str, Any]) -> list[str]:
    out = ["POV-Ray draws each tile's region grown to its 32-pixel render blocks and the tile is cut "
           "out, so anti-aliasing (any method) matches the whole frame's"]
    try:
        with open(scene, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return out
    if _RADIOSITY.search(text) or any(
            _RADIOSITY.search(_read(os.path.join(os.path.dirname(scene), p))) for p in _includes(text)):
        out.append("the scene uses radiosity, whose samples depend on what was rendered before: "
                   "tiles may show seams (render it untiled for an exact frame)")
    return out


def _includes(text: str) -> list[str]:
    return re.findall(r'#include\s+"([^"]+)"', text)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
