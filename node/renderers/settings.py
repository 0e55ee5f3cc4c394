"""The render settings (a job's rdata) each renderer takes, checked at submit.

Each renderer lists its settings with a type, a range or choices and a line
of help: what ``rendernode renderers`` shows and what a submit is checked
against.  Values may arrive as text (``rendernode submit --set samples=64``)
and are turned into the setting's type here; an unknown key or a bad value
is named with the keys the renderer takes.  The backends check the values
again when they render (a job replicated from an older node), with the same
ranges: the blender and povray ranges are theirs.

Size keys: ``--resolution WxH`` sets each renderer's own pair (``SIZE_KEYS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .blender import INT_KEYS as BLENDER_INTS
from .povray import FLOAT_KEYS as POVRAY_FLOATS
from .povray import INT_KEYS as POVRAY_INTS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One rdata key a renderer takes."""

    name: str
    kind: str  #: int, float, str, bool or list
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The type and range as a user reads it: ``int 1..4096``, ``CPU|GPU``."""
        if self.choices:
            return "|".join(self.choices)
        if self.lo is not None and self.hi is not None:
            lo, hi = (int(v) if self.kind == "int" else v for v in (self.lo, self.hi))
            return f"{self.kind} {lo}..{hi}"
        return self.kind

    def convert(self, value: Any) -> Any:
        """``value`` (or its text) as this setting's type; ValueError says why not."""
        kind = self.kind
        try:
            if kind == "int":
                if isinstance(value, str):
                    value = int(value.strip())
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError
            elif kind == "float":
                if isinstance(value, str):
                    value = float(value.strip())
                if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                    raise ValueError
            elif kind == "bool":
                if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                    value = value.strip().lower() in _TRUE
                if not isinstance(value, bool):
                    raise ValueError
            elif kind == "list":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError
            elif not isinstance(value, str):
                raise ValueError
        except ValueError:
            raise ValueError(f"{self.name} must be {_kinds[kind]}, not {value!r}") from None
        if self.choices:
            value = str(value).upper()
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError(f"{self.name} must be from {self.describe().split()[-1].replace('..', ' to ')}, "
                             f"not {value!r}")
        return value


_kinds = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false",
          "list": "a list of file paths"}

ASSETS = Setting("assets", "list", "files the scene needs that are not found in it (--asset)")

SETTINGS: dict[str, tuple[Setting, ...]] = {
    "builtin": (
        Setting("width", "int", "frame width in pixels (default: the scene's)", 1, 65536),
        Setting("height", "int", "frame height in pixels (default: the scene's)", 1, 65536),
        Setting("samples", "int", "samples per pixel (default: the scene's)", 1, 65536),
        ASSETS,
    ),
    "blender": (
        Setting("engine", "str", "render engine (default: the scene's)",
                choices=("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")),
        Setting("device", "str", "Cycles device (default CPU)", choices=("CPU", "GPU")),
        Setting("compute_device_type", "str", "GPU API for device GPU (default: the first found)",
                choices=("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")),
        Setting("samples", "int", "Cycles samples / Eevee TAA samples", *BLENDER_INTS["samples"]),
        Setting("resolution_x", "int", "frame width before the percentage", *BLENDER_INTS["resolution_x"]),
        Setting("resolution_y", "int", "frame height before the percentage", *BLENDER_INTS["resolution_y"]),
        Setting("resolution_percentage", "int", "scale of the resolution in percent",
                *BLENDER_INTS["resolution_percentage"]),
        Setting("threads", "int", "render threads (default: every core)", *BLENDER_INTS["threads"]),
        ASSETS,
    ),
    "povray": (
        Setting("resolution_x", "int", "+W: frame width", *POVRAY_INTS["resolution_x"]),
        Setting("resolution_y", "int", "+H: frame height", *POVRAY_INTS["resolution_y"]),
        Setting("antialias", "float", "+A: anti-aliasing threshold (0 to 3)", 0.0, 3.0),
        Setting("antialias_method", "int", "+AM: 1 non-recursive, 2 recursive, 3 stochastic", 1, 3),
        Setting("antialias_depth", "int", "+R: anti-aliasing depth", 1, 9),
        Setting("jitter", "float", "+J: anti-aliasing jitter amount (0: off)", 0.0, 1.0),
        Setting("quality", "int", "+Q: render quality", *POVRAY_INTS["quality"]),
        Setting("threads", "int", "+WT: render threads", *POVRAY_INTS["threads"]),
        Setting("initial_frame", "int", "+KFI: the animation's first frame (set at submit)",
                *POVRAY_INTS["initial_frame"]),
        Setting("final_frame", "int", "+KFF: the animation's last frame (set at submit)",
                *POVRAY_INTS["final_frame"]),
        *(Setting(k, "float", f"+K{'I' if k == 'initial_clock' else 'F'}: clock at the "
                  f"{'first' if k == 'initial_clock' else 'last'} frame (default {0 if k == 'initial_clock' else 1})")
          for k in POVRAY_FLOATS if k != "antialias"),
        ASSETS,
    ),
    "command": (
        Setting("command", "str", "the template: {scene} {frame} {start} {end} {output}, and for "
                "tiles {tile} {x0} {y0} {x1} {y1} {width} {height}"),
        Setting("width", "int", "frame width: {width} in the template", 1, 65536),
        Setting("height", "int", "frame height: {height} in the template", 1, 65536),
        ASSETS,
    ),
}

#: --resolution WxH sets these keys of each renderer
SIZE_KEYS = {"builtin": ("width", "height"), "blender": ("resolution_x", "resolution_y"),
             "povray": ("resolution_x", "resolution_y"), "command": ("width", "height")}


def accepted(renderer: str) -> tuple[Setting, ...]:
    """The settings ``renderer`` takes."""
    return SETTINGS.get(renderer, ())


def describe(renderer: str) -> list[dict[str, str]]:
    """The settings of ``renderer`` as rows: name, type (and range), help."""
    return [{"name": s.name, "type": s.describe(), "help": s.help} for s in accepted(renderer)]


def normalize(renderer: str, rdata: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``rdata`` with each value in its setting's type, and what is wrong (unknown
    keys, bad values), each problem naming the keys ``renderer`` takes."""
    known = {s.name: s for s in accepted(renderer)}
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in rdata.items():
        setting = known.get(key)
        if setting is None:
            problems.append(f"the {renderer} renderer has no setting {key!r}")
            continue
        try:
            out[key] = setting.convert(value)
        except ValueError as exc:
            problems.append(str(exc))
    return out, problems


def keys_text(renderer: str) -> str:
    """``it takes: a, b, c`` for a refusal's message."""
    return f"the {renderer} renderer takes: " + ", ".join(s.name for s in accepted(renderer))
