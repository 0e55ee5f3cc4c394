"""The built-in renderer's scene format: load, validate, evaluate keyframes.

A scene is a JSON (``.json``) or TOML (``.toml``) file::

    frames = "1-24"            # default frame range
    resolution = [320, 180]    # width, height
    samples = 4                # rays per pixel (4, 9, 16: stratified jitter)
    max_depth = 3              # reflection bounces
    background = "#203050"     # or {top = [..], bottom = [..]}: a vertical gradient
    ambient = 0.1              # or a colour
    [camera]                   # position, look_at, up, fov (vertical, degrees)
    [materials.NAME]           # colour, diffuse, specular, shininess, reflection,
                               # texture (PNG path relative to the scene), scale,
                               # checker (second colour), checker_size
    [[objects]]                # type = sphere (center, radius) | plane (point,
                               # normal) | box (center, size); material = NAME and
                               # any material field to override it
    [[lights]]                 # type = point (position) | directional (direction);
                               # colour, intensity

Colours are ``[r, g, b]`` in 0..1 or ``"#rrggbb"``.  The camera, every object
and every light may have ``keyframes``: a map from frame number to some of its
numeric fields.  A keyframed field is interpolated linearly between the
keyframes that set it and held before the first and after the last.

This module is pure Python (the daemon imports it to read frame ranges and
texture paths); ``raytrace`` turns a ``Frame`` into pixels.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.frames import parse_frames

Vec3 = tuple[float, float, float]
Value = float | Vec3


class SceneError(ValueError):
    """A scene file that cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


class MissingAsset(SceneError):
    """A file the scene names (a texture) does not exist."""


# --- field types: each checks a raw value and returns the clean one ----------

def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"expected a number, got {raw!r}")
    return float(raw)


def _vec3(raw: object) -> Vec3:
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        raise ValueError(f"expected [x, y, z], got {raw!r}")
    x, y, z = (_number(v) for v in raw)
    return (x, y, z)


def _direction(raw: object) -> Vec3:
    v = _vec3(raw)
    if v == (0.0, 0.0, 0.0):
        raise ValueError("a direction cannot be [0, 0, 0]")
    return v


def _colour(raw: object) -> Vec3:
    if isinstance(raw, str):
        text = raw.removeprefix("#")
        if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise ValueError(f"expected \"#rrggbb\", got {raw!r}")
        r, g, b = (int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
        return (r, g, b)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        v = _number(raw)
        c = (v, v, v)
    else:
        c = _vec3(raw)
    if min(c) < 0:
        raise ValueError(f"colour components cannot be negative: {raw!r}")
    return c


def _positive(raw: object) -> float:
    v = _number(raw)
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {raw!r}")
    return v


def _unit(raw: object) -> float:
    v = _number(raw)
    if not 0 <= v <= 1:
        raise ValueError(f"must be between 0 and 1, got {raw!r}")
    return v


def _non_negative(raw: object) -> float:
    v = _number(raw)
    if v < 0:
        raise ValueError(f"cannot be negative, got {raw!r}")
    return v


def _fov(raw: object) -> float:
    v = _number(raw)
    if not 0 < v < 180:
        raise ValueError(f"must be between 0 and 180 degrees, got {raw!r}")
    return v


def _size(raw: object) -> Vec3:
    v = _vec3(raw)
    if min(v) <= 0:
        raise ValueError(f"every side must be greater than 0, got {raw!r}")
    return v


def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a non-empty string, got {raw!r}")
    return raw


def _count(lo: int, hi: int) -> Callable[[object], int]:
    def check(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {raw!r}")
        return raw
    return check


Check = Callable[[object], Any]
# name -> (check, default); a default of ... means required, None means optional.
MATERIAL: dict[str, tuple[Check, Any]] = {
    "colour": (_colour, (0.8, 0.8, 0.8)), "diffuse": (_non_negative, 0.9),
    "specular": (_non_negative, 0.3), "shininess": (_positive, 32.0), "reflection": (_unit, 0.0),
    "texture": (_text, None), "scale": (_positive, 1.0), "checker": (_colour, None),
    "checker_size": (_positive, 1.0),
}
GEOMETRY: dict[str, dict[str, tuple[Check, Any]]] = {
    "sphere": {"center": (_vec3, ...), "radius": (_positive, ...)},
    "plane": {"point": (_vec3, (0.0, 0.0, 0.0)), "normal": (_direction, (0.0, 1.0, 0.0))},
    "box": {"center": (_vec3, ...), "size": (_size, ...)},
}
LIGHT: dict[str, dict[str, tuple[Check, Any]]] = {
    "point": {"position": (_vec3, ...)},
    "directional": {"direction": (_direction, ...)},
}
LIGHT_COMMON: dict[str, tuple[Check, Any]] = {
    "colour": (_colour, (1.0, 1.0, 1.0)), "intensity": (_non_negative, 1.0)}
CAMERA: dict[str, tuple[Check, Any]] = {
    "position": (_vec3, ...), "look_at": (_vec3, ...), "up": (_direction, (0.0, 1.0, 0.0)),
    "fov": (_fov, 45.0)}
NOT_ANIMATED = {"texture"}
TOP = {"frames", "resolution", "samples", "max_depth", "seed", "background", "ambient", "camera",
       "materials", "objects", "lights"}


@dataclass(frozen=True)
class Material:
    """Surface properties of one object in one frame."""

    colour: Vec3
    diffuse: float
    specular: float
    shininess: float
    reflection: float
    texture: str | None  #: absolute path of a PNG, or None
    scale: float  #: world units (planes, boxes) or fraction (spheres) per texture tile
    checker: Vec3 | None  #: second colour of a checker pattern, or None
    checker_size: float


@dataclass(frozen=True)
class Shape:
    """A sphere (center, radius), plane (point, normal) or box (center, size)."""

    kind: str
    name: str
    material: Material
    center: Vec3 = (0.0, 0.0, 0.0)
    radius: float = 1.0
    size: Vec3 = (1.0, 1.0, 1.0)
    point: Vec3 = (0.0, 0.0, 0.0)
    normal: Vec3 = (0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Light:
    """A point light (``vector`` is its position) or directional light (the way it shines)."""

    kind: str
    vector: Vec3
    colour: Vec3
    intensity: float


@dataclass(frozen=True)
class Camera:
    """A pinhole camera; ``fov`` is the vertical field of view in degrees."""

    position: Vec3
    look_at: Vec3
    up: Vec3
    fov: float


@dataclass(frozen=True)
class Frame:
    """Everything needed to render one frame of a scene."""

    number: int
    width: int
    height: int
    samples: int
    max_depth: int
    seed: int
    background_top: Vec3
    background_bottom: Vec3
    ambient: Vec3
    camera: Camera
    shapes: tuple[Shape, ...]
    lights: tuple[Light, ...]


@dataclass(frozen=True)
class Animated:
    """Fields of one scene entity with their keyframes (frame -> some fields)."""

    key: str
    fields: dict[str, Any]
    keyframes: tuple[tuple[int, dict[str, Any]], ...]

    def at(self, frame: int) -> dict[str, Any]:
        """The fields' values at ``frame``."""
        out = dict(self.fields)
        for name in {n for _, kf in self.keyframes for n in kf}:
            keys = [(f, kf[name]) for f, kf in self.keyframes if name in kf]
            if frame <= keys[0][0]:
                out[name] = keys[0][1]
            elif frame >= keys[-1][0]:
                out[name] = keys[-1][1]
            else:
                i = next(i for i, (f, _) in enumerate(keys) if f > frame)
                (f0, a), (f1, b) = keys[i - 1], keys[i]
                out[name] = _lerp(a, b, (frame - f0) / (f1 - f0))
        return out


def _lerp(a: Value, b: Value, t: float) -> Value:
    if isinstance(a, tuple) and isinstance(b, tuple):
        x, y, z = (p + (q - p) * t for p, q in zip(a, b, strict=True))
        return (x, y, z)
    assert isinstance(a, float) and isinstance(b, float)
    return a + (b - a) * t


class _Reader:
    """Validates the raw document, collecting clean values under their key paths."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> SceneError:
        return SceneError(self.path, key, problem)

    def table(self, raw: object, key: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a table/object, got {raw!r}")
        return raw

    def unknown(self, raw: dict[str, Any], allowed: set[str] | dict[str, Any], key: str) -> None:
        for name in raw:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
                raise self.fail(f"{key}.{name}" if key else str(name), f"unknown key{hint}")

    def fields(self, raw: dict[str, Any], schema: dict[str, tuple[Check, Any]], key: str,
               defaults: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (check, default) in schema.items():
            where = f"{key}.{name}" if key else name
            if name in raw:
                try:
                    out[name] = check(raw[name])
                except ValueError as exc:
                    raise self.fail(where, str(exc)) from None
            elif not defaults:
                continue
            elif default is ...:
                raise self.fail(where, "is required")
            else:
                out[name] = default
        return out

    def animated(self, raw: dict[str, Any], schema: dict[str, tuple[Check, Any]], key: str,
                 fields: dict[str, Any]) -> Animated:
        frames: list[tuple[int, dict[str, Any]]] = []
        animatable = {n: s for n, s in schema.items() if n not in NOT_ANIMATED}
        for fkey, fraw in self.table(raw.get("keyframes", {}), f"{key}.keyframes").items():
            where = f"{key}.keyframes.{fkey}"
            try:
                number = int(str(fkey))
            except ValueError:
                raise self.fail(where, "keyframe keys are frame numbers") from None
            table = self.table(fraw, where)
            self.unknown(table, animatable, where)
            frames.append((number, self.fields(table, animatable, where, defaults=False)))
        return Animated(key, fields, tuple(sorted(frames, key=lambda kv: kv[0])))


@dataclass(frozen=True)
class SceneFile:
    """A validated scene file: its settings and animated entities."""

    path: str
    frames: str
    width: int
    height: int
    samples: int
    max_depth: int
    seed: int
    background: tuple[Vec3, Vec3]
    ambient: Vec3
    camera: Animated
    objects: tuple[tuple[str, str, Animated], ...]  #: (type, name, fields)
    lights: tuple[tuple[str, Animated], ...]

    @property
    def textures(self) -> list[str]:
        """Absolute paths of the textures the objects use, each once, in order."""
        found = (obj.fields.get("texture") for _, _, obj in self.objects)
        return list(dict.fromkeys(t for t in found if t))

    def at(self, frame: int) -> Frame:
        """The scene as it is at ``frame``; SceneError if the camera degenerates."""
        cam = self.camera.at(frame)
        forward = tuple(b - a for a, b in zip(cam["position"], cam["look_at"], strict=True))
        if max(abs(c) for c in forward) == 0:
            raise SceneError(self.path, "camera", f"position equals look_at at frame {frame}")
        up = cam["up"]
        cross = (forward[1] * up[2] - forward[2] * up[1], forward[2] * up[0] - forward[0] * up[2],
                 forward[0] * up[1] - forward[1] * up[0])
        if max(abs(c) for c in cross) < 1e-12:
            raise SceneError(self.path, "camera.up", f"is parallel to the view direction at frame {frame}")
        shapes = []
        for kind, name, obj in self.objects:
            values = self._directions(obj, frame)
            material = Material(**{k: values[k] for k in MATERIAL})
            geometry = {k: values[k] for k in GEOMETRY[kind]}
            shapes.append(Shape(kind=kind, name=name, material=material, **geometry))
        lights = []
        for kind, light in self.lights:
            values = self._directions(light, frame)
            vector = values["position" if kind == "point" else "direction"]
            lights.append(Light(kind, vector, values["colour"], values["intensity"]))
        return Frame(frame, self.width, self.height, self.samples, self.max_depth, self.seed,
                     self.background[0], self.background[1], self.ambient, Camera(**cam),
                     tuple(shapes), tuple(lights))


    def _directions(self, entity: Animated, frame: int) -> dict[str, Any]:
        """``entity`` at ``frame``; SceneError if a keyframed direction passes through zero."""
        values = entity.at(frame)
        for name in ("normal", "direction"):
            if values.get(name) == (0.0, 0.0, 0.0):
                raise SceneError(self.path, f"{entity.key}.{name}",
                                 f"interpolates to [0, 0, 0] at frame {frame}")
        return values


def _parse(path: str) -> dict[str, Any]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".toml"):
        raise SceneError(path, "", f"unknown scene type {ext!r}: use .json or .toml")
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = tomllib.loads(data.decode("utf-8")) if ext == ".toml" else json.loads(data)
    except UnicodeDecodeError as exc:
        raise SceneError(path, "", f"not UTF-8 text: {exc}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SceneError(path, "", f"not valid {ext[1:].upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise SceneError(path, "", "the scene must be a table/object at the top")
    return doc


PATH_MAP_ENV = "RENDERNODE_PATH_MAP"


def map_path(path: str) -> str:
    """Rewrite an absolute path the submitting machine used to where the worker
    materialised it: ``RENDERNODE_PATH_MAP`` holds ``{"/their/root": "/our/root"}``."""
    raw = os.environ.get(PATH_MAP_ENV)
    if not raw:
        return path
    try:
        mapping = json.loads(raw)
    except ValueError:
        return path
    for src, dst in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        if isinstance(src, str) and isinstance(dst, str) and (path == src or path.startswith(src.rstrip("/") + "/")):
            return dst.rstrip("/") + path[len(src.rstrip("/")):]
    return path


def load_scene(path: str) -> SceneFile:
    """Read and validate a scene file.

    FileNotFoundError if it does not exist, other OSErrors if it cannot be
    read, SceneError naming the key if it is not a valid scene.  Textures are
    resolved to absolute paths but not opened.
    """
    path = os.path.abspath(path)
    doc = _parse(path)
    r = _Reader(path)
    r.unknown(doc, TOP, "")
    top = r.fields(doc, {"frames": (_frame_spec, "1"), "samples": (_count(1, 1024), 1),
                         "max_depth": (_count(0, 16), 3), "seed": (_count(0, 2**63 - 1), 0),
                         "ambient": (_colour, (0.1, 0.1, 0.1)), "resolution": (_resolution, (320, 180))}, "")
    background = _background(r, doc.get("background", (0.0, 0.0, 0.0)))
    if "camera" not in doc:
        raise r.fail("camera", "is required")
    camera_raw = r.table(doc["camera"], "camera")
    r.unknown(camera_raw, {*CAMERA, "keyframes"}, "camera")
    camera = r.animated(camera_raw, CAMERA, "camera", r.fields(camera_raw, CAMERA, "camera"))

    materials: dict[str, dict[str, Any]] = {}
    for name, raw in r.table(doc.get("materials", {}), "materials").items():
        table = r.table(raw, f"materials.{name}")
        r.unknown(table, MATERIAL, f"materials.{name}")
        materials[name] = r.fields(table, MATERIAL, f"materials.{name}", defaults=False)

    objects = []
    raw_objects = doc.get("objects", [])
    if not isinstance(raw_objects, list):
        raise r.fail("objects", "expected a list of objects")
    for i, raw in enumerate(raw_objects):
        key = f"objects[{i}]"
        table = r.table(raw, key)
        kind = table.get("type")
        if kind not in GEOMETRY:
            raise r.fail(f"{key}.type", f"expected one of {', '.join(GEOMETRY)}, got {kind!r}")
        schema = {**GEOMETRY[kind], **MATERIAL}
        r.unknown(table, {*schema, "type", "name", "material", "keyframes"}, key)
        name = str(table.get("name", f"{kind}{i}"))
        base = {n: d for n, (_, d) in MATERIAL.items()}
        if "material" in table:
            mname = table["material"]
            if not isinstance(mname, str) or mname not in materials:
                raise r.fail(f"{key}.material", f"no material named {mname!r} in [materials]")
            base.update(materials[mname])
        own = r.fields(table, schema, key, defaults=False)
        for name_, (_, default) in GEOMETRY[kind].items():
            if name_ not in own and default is ...:
                raise r.fail(f"{key}.{name_}", "is required")
            own.setdefault(name_, default)
        fields = {**base, **own}
        if fields["texture"] and fields["checker"]:
            raise r.fail(f"{key}.texture", "an object can have a texture or a checker, not both")
        if fields["texture"]:
            fields["texture"] = map_path(os.path.normpath(os.path.join(os.path.dirname(path), fields["texture"])))
        objects.append((kind, name, r.animated(table, schema, key, fields)))

    lights = []
    raw_lights = doc.get("lights", [])
    if not isinstance(raw_lights, list):
        raise r.fail("lights", "expected a list of lights")
    for i, raw in enumerate(raw_lights):
        key = f"lights[{i}]"
        table = r.table(raw, key)
        kind = table.get("type")
        if kind not in LIGHT:
            raise r.fail(f"{key}.type", f"expected one of {', '.join(LIGHT)}, got {kind!r}")
        schema = {**LIGHT[kind], **LIGHT_COMMON}
        r.unknown(table, {*schema, "type", "keyframes"}, key)
        lights.append((kind, r.animated(table, schema, key, r.fields(table, schema, key))))

    width, height = top["resolution"]
    return SceneFile(path, top["frames"], width, height, top["samples"], top["max_depth"],
                     top["seed"], background, top["ambient"], camera, tuple(objects), tuple(lights))


def _frame_spec(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a frame range like \"1-48\", got {raw!r}")
    parse_frames(raw)
    return raw


def _resolution(raw: object) -> tuple[int, int]:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise ValueError(f"expected [width, height], got {raw!r}")
    check = _count(1, 16384)
    return check(raw[0]), check(raw[1])


def _background(r: _Reader, raw: object) -> tuple[Vec3, Vec3]:
    try:
        if isinstance(raw, dict):
            r.unknown(raw, {"top", "bottom"}, "background")
            return _colour(raw.get("top", (0.0, 0.0, 0.0))), _colour(raw.get("bottom", (0.0, 0.0, 0.0)))
        colour = _colour(raw)
    except ValueError as exc:
        if isinstance(exc, SceneError):
            raise
        raise r.fail("background", str(exc)) from None
    return colour, colour
