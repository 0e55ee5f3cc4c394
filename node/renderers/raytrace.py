"""A vectorised numpy ray tracer for the built-in renderer.

Every step works on a batch of rays at once, stored as ``(3, n)`` float64
arrays: primary rays for up to ``CHUNK`` pixels, then the hits' shadow rays
and reflected rays, which shrink the batch as rays miss or stop reflecting.
Python loops run over samples, shapes, lights and bounces, never over pixels.

Reproducibility: the result depends only on the frame's data.  Jitter comes
from a counter-based hash (splitmix64) of seed, frame, sample and pixel, not
from numpy's generators, whose streams may change between numpy versions.
Shading uses only correctly rounded IEEE operations (+ - * / sqrt, floor):
specular powers are integer powers by repeated squaring, and no BLAS routine
(dot, matmul, einsum) or reduction of unspecified order is used.  libm enters
only through the camera's tan (once per frame, in Python) and the texture
coordinates of spheres (arctan2, arccos), where a last-bit difference could
at worst move a texel boundary.  Chunking bounds memory without changing any
pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.image import ImageError, Pixels, read_image, resize

from .scene import Frame, MissingAsset, SceneError, SceneFile, Shape

F = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
Mips = list[F]  #: a texture at full size, half, quarter... down to 1 pixel: (h, w, 4)
Textures = dict[str, Mips]  #: absolute path -> premultiplied RGBA in 0..1, mip-mapped

EPS = 1e-4  #: secondary rays start this far off the surface, against shadow acne
T_MIN = 1e-9  #: nearest hit distance that counts
GRAZING = 0.05  #: a pixel's footprint grows as 1/cos(angle) down to this cosine
CHUNK = 1 << 16  #: pixels traced at once; bounds memory, never changes a pixel
_MASK64 = (1 << 64) - 1


def load_textures(scene: SceneFile) -> Textures:
    """Read every texture the scene uses; MissingAsset or SceneError if one cannot be read."""
    out: Textures = {}
    for path in scene.textures:
        try:
            pixels = read_image(path)
        except FileNotFoundError:
            raise MissingAsset(scene.path, "texture", f"texture {path} does not exist") from None
        except (OSError, ImageError) as exc:
            raise SceneError(scene.path, "texture", f"cannot read texture {path}: {exc}") from None
        out[path] = _mipmaps(pixels)
    return out


def _mipmaps(pixels: Pixels) -> Mips:
    """Box-filtered halvings of the premultiplied RGBA image, in integer steps."""
    h, w, channels = pixels.shape
    rgba = np.full((h, w, 4), 255, dtype=np.uint8)
    rgba[:, :, :3] = pixels[:, :, :3 if channels >= 3 else 1]
    if channels in (2, 4):
        rgba[:, :, 3] = pixels[:, :, -1]
        wide = rgba.astype(np.uint32)
        rgba[:, :, :3] = (wide[:, :, :3] * wide[:, :, 3:] + 127) // 255
    levels = [rgba]
    while max(h, w) > 1:
        h, w = max(1, h // 2), max(1, w // 2)
        levels.append(resize(rgba, w, h))
    return [level / 255.0 for level in levels]


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _uniform(key: int, index: npt.NDArray[np.uint64]) -> F:
    """Uniform floats in [0, 1) from a key and per-pixel counters (splitmix64)."""
    z = index * np.uint64(0x9E3779B97F4A7C15) + np.uint64(_mix64(key))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def _dot(a: F, b: F) -> F:
    out: F = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return out


def _normalize(v: F) -> F:
    out: F = v / np.sqrt(_dot(v, v))
    return out


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    length = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / length, v[1] / length, v[2] / length)


def _cross(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _col(v: tuple[float, float, float]) -> F:
    return np.array(v, dtype=np.float64).reshape(3, 1)


def _ipow(x: F, exponent: Ints) -> F:
    """x ** exponent for integer exponents, by squaring (exact IEEE steps, no libm pow)."""
    result = np.ones_like(x)
    e = exponent.copy()
    while e.any():
        result = np.where(e & 1, result * x, result)
        x = x * x
        e >>= 1
    return result


@dataclass
class _Scene:
    """A frame's shapes and materials as arrays indexed by shape number."""

    frame: Frame
    shapes: tuple[Shape, ...]
    colour: F  # (3, S)
    diffuse: F
    specular: F
    shininess: Ints
    reflection: F
    textures: Textures
    pixel_angle: float  #: width of a pixel at distance 1 from the camera

    @classmethod
    def of(cls, frame: Frame, textures: Textures) -> _Scene:
        mats = [s.material for s in frame.shapes]
        return cls(frame, frame.shapes,
                   np.array([m.colour for m in mats], dtype=np.float64).reshape(-1, 3).T.copy(),
                   np.array([m.diffuse for m in mats], dtype=np.float64),
                   np.array([m.specular for m in mats], dtype=np.float64),
                   np.array([max(1, round(m.shininess)) for m in mats], dtype=np.int64),
                   np.array([m.reflection for m in mats], dtype=np.float64), textures,
                   2.0 * math.tan(math.radians(frame.camera.fov) / 2) / frame.height)


def _hit_distance(shape: Shape, o: F, d: F) -> F:
    """Distance along each (unit) ray to ``shape``, inf where it misses."""
    with np.errstate(all="ignore"):
        if shape.kind == "sphere":
            oc = o - _col(shape.center)
            b = _dot(oc, d)
            disc = b * b - (_dot(oc, oc) - shape.radius * shape.radius)
            root = np.sqrt(np.maximum(disc, 0.0))
            t = np.where(-b - root > T_MIN, -b - root, -b + root)
            valid = (disc >= 0) & (t > T_MIN)
        elif shape.kind == "plane":
            n = _col(_unit(shape.normal))
            denom = _dot(d, n)
            t = _dot(_col(shape.point) - o, n) / denom
            valid = (np.abs(denom) > 1e-12) & (t > T_MIN)
        else:
            half = [s / 2 for s in shape.size]
            lo = _col((shape.center[0] - half[0], shape.center[1] - half[1], shape.center[2] - half[2]))
            hi = _col((shape.center[0] + half[0], shape.center[1] + half[1], shape.center[2] + half[2]))
            inv = 1.0 / np.where(d == 0, 1e-300, d)
            t1, t2 = (lo - o) * inv, (hi - o) * inv
            near = np.minimum(t1, t2).max(axis=0)
            far = np.maximum(t1, t2).min(axis=0)
            t = np.where(near > T_MIN, near, far)
            valid = (far >= near) & (t > T_MIN)
    out: F = np.where(valid, t, np.inf)
    return out


def _nearest(scene: _Scene, o: F, d: F) -> tuple[F, Ints]:
    best = np.full(d.shape[1], np.inf)
    which = np.full(d.shape[1], -1, dtype=np.int64)
    for k, shape in enumerate(scene.shapes):
        t = _hit_distance(shape, o, d)
        closer = t < best
        best = np.where(closer, t, best)
        which = np.where(closer, k, which)
    return best, which


def _occluded(scene: _Scene, o: F, d: F, limit: F) -> Mask:
    blocked = np.zeros(d.shape[1], dtype=bool)
    for shape in scene.shapes:
        blocked |= _hit_distance(shape, o, d) < limit
    return blocked


def _box_axis(shape: Shape, p: F) -> tuple[Ints, F]:
    """The axis of the face each point lies on, and the points relative to the centre."""
    q = p - _col(shape.center)
    scaled = np.abs(q) / _col(tuple(s / 2 for s in shape.size))  # type: ignore[arg-type]
    return scaled.argmax(axis=0), q


def _normals(scene: _Scene, p: F, which: Ints, d: F) -> F:
    """Unit surface normals at the hits, turned to face the incoming rays."""
    n = np.zeros_like(p)
    for k, shape in enumerate(scene.shapes):
        m = which == k
        if not m.any():
            continue
        if shape.kind == "sphere":
            n[:, m] = (p[:, m] - _col(shape.center)) / shape.radius
        elif shape.kind == "plane":
            n[:, m] = _col(_unit(shape.normal))
        else:
            axis, q = _box_axis(shape, p[:, m])
            face = np.zeros_like(q)
            cols = np.arange(q.shape[1])
            face[axis, cols] = np.sign(q[axis, cols])
            n[:, m] = face
    out: F = np.where(_dot(n, d) > 0, -n, n)
    return out


def _uv(shape: Shape, p: F) -> tuple[F, F]:
    """Surface coordinates: world units on planes and boxes, 0..1 around spheres."""
    if shape.kind == "sphere":
        q = (p - _col(shape.center)) / shape.radius
        u = 0.5 + np.arctan2(q[0], q[2]) / (2 * math.pi)
        v = np.arccos(np.clip(q[1], -1.0, 1.0)) / math.pi
        return u, v
    if shape.kind == "plane":
        n = _unit(shape.normal)
        a = (1.0, 0.0, 0.0) if abs(n[0]) < 0.9 else (0.0, 0.0, 1.0)
        dot_an = a[0] * n[0] + a[1] * n[1] + a[2] * n[2]
        uaxis = _unit((a[0] - n[0] * dot_an, a[1] - n[1] * dot_an, a[2] - n[2] * dot_an))
        rel = p - _col(shape.point)
        return _dot(rel, _col(uaxis)), _dot(rel, _col(_cross(uaxis, n)))
    axis, q = _box_axis(shape, p)
    half = shape.size
    x, y, z = q[0] + half[0] / 2, half[1] / 2 - q[1], q[2] + half[2] / 2
    u = np.where(axis == 0, z, x)
    v = np.where(axis == 1, z, y)
    return u, v


def _checker(u: F, v: F, width: F) -> F:
    """Share of the second colour over a ``width``-wide box around (u, v), in
    units of squares: 0 or 1 up close, tending to 0.5 far away (no moire)."""

    def ramp(x: F) -> F:
        lo, hi = (x - 0.5 * width) * 0.5, (x + 0.5 * width) * 0.5
        out: F = 2.0 * (np.abs(lo - np.floor(lo) - 0.5) - np.abs(hi - np.floor(hi) - 0.5)) / width
        return out

    out: F = 0.5 - 0.5 * ramp(u) * ramp(v)
    return out


def _base_colour(scene: _Scene, p: F, which: Ints, spread: F) -> F:
    """Material colour at each hit, with checker patterns and textures applied.

    ``spread`` is the width a ray's pixel covers at the hit, in world units.
    """
    base: F = scene.colour[:, which]
    for k, shape in enumerate(scene.shapes):
        mat = shape.material
        if mat.checker is None and mat.texture is None:
            continue
        m = which == k
        if not m.any():
            continue
        u, v = _uv(shape, p[:, m])
        if mat.checker is not None:
            width = spread[m] / (math.pi * shape.radius if shape.kind == "sphere" else 1.0)
            width = np.maximum(width / mat.checker_size, 1e-4)
            share = _checker(u / mat.checker_size, v / mat.checker_size, width)
            base[:, m] = _col(mat.colour) * (1.0 - share) + _col(mat.checker) * share
        elif mat.texture is not None:
            texel = _sample(scene.textures[mat.texture], shape, u / mat.scale, v / mat.scale,
                            spread[m] / mat.scale)
            base[:, m] = texel[:3] + _col(mat.colour) * (1.0 - texel[3])
    return base


def _sample(mips: Mips, shape: Shape, u: F, v: F, spread: F) -> F:
    """Premultiplied RGBA ``(4, n)`` at tiled coordinates (u, v) from the mip
    level whose texels are about as wide as ``spread`` (nearest texel)."""
    h, w = mips[0].shape[:2]
    if shape.kind == "sphere":  # u goes once round (2 pi r), v pole to pole (pi r)
        density = max(w / (2 * math.pi * shape.radius), h / (math.pi * shape.radius))
    else:
        density = float(max(w, h))
    _, exponent = np.frexp(spread * density)  # texels per footprint, as a power of two
    level = np.clip(exponent - 1, 0, len(mips) - 1)
    out = np.empty((4, u.size))
    fu, fv = u - np.floor(u), v - np.floor(v)
    for k in np.unique(level):
        m = level == k
        tex = mips[int(k)]
        th, tw = tex.shape[:2]
        col = np.minimum(np.floor(fu[m] * tw), tw - 1).astype(np.int64)
        row = np.minimum(np.floor(fv[m] * th), th - 1).astype(np.int64)
        out[:, m] = tex[row, col].T
    return out


def _background(frame: Frame, d: F) -> F:
    t = 0.5 * (d[1] + 1.0)
    out: F = _col(frame.background_bottom) * (1.0 - t) + _col(frame.background_top) * t
    return out


def _trace(scene: _Scene, o: F, d: F) -> F:
    """Colour seen along each ray, following reflections up to max_depth bounces."""
    frame = scene.frame
    colour = np.zeros_like(d)
    weight = np.ones(d.shape[1])
    travelled = np.zeros(d.shape[1])
    idx = np.arange(d.shape[1])
    ambient = _col(frame.ambient)
    for depth in range(frame.max_depth + 1):
        t, which = _nearest(scene, o, d)
        miss = which < 0
        if miss.any():
            colour[:, idx[miss]] += weight[miss] * _background(frame, d[:, miss])
        hit = ~miss
        if not hit.any():
            break
        idx, o, d, t, which, weight = idx[hit], o[:, hit], d[:, hit], t[hit], which[hit], weight[hit]
        travelled = travelled[hit] + t
        p = o + d * t
        n = _normals(scene, p, which, d)
        slant = np.maximum(np.abs(_dot(n, d)), GRAZING)
        base = _base_colour(scene, p, which, travelled * scene.pixel_angle / slant)
        kd, ks, kr = scene.diffuse[which], scene.specular[which], scene.reflection[which]
        start = p + n * EPS
        diffuse = ambient * base
        highlight = np.zeros_like(base)
        for light in frame.lights:
            if light.kind == "point":
                to_light = _col(light.vector) - start
                dist = np.sqrt(_dot(to_light, to_light))
                ldir = to_light / dist
            else:
                ldir = np.broadcast_to(-_col(_unit(light.vector)), start.shape)
                dist = np.full(start.shape[1], np.inf)
            ndl = _dot(n, ldir)
            lit = ndl > 0
            sub = np.flatnonzero(lit)
            if sub.size:
                lit[sub] = ~_occluded(scene, start[:, sub], ldir[:, sub], dist[sub])
            if not lit.any():
                continue
            energy = _col(light.colour) * light.intensity
            diffuse += np.where(lit, kd * ndl * base * energy, 0.0)
            half = _normalize(ldir - d)
            ndh = np.maximum(_dot(n, half), 0.0)
            highlight += np.where(lit, ks * _ipow(ndh, scene.shininess[which]) * energy, 0.0)
        colour[:, idx] += weight * ((1.0 - kr) * diffuse + highlight)
        bounce = kr > 0
        if depth == frame.max_depth or not bounce.any():
            break
        reflected = _normalize(d - 2.0 * _dot(d, n) * n)
        idx, o, d = idx[bounce], start[:, bounce], reflected[:, bounce]
        weight, travelled = weight[bounce] * kr[bounce], travelled[bounce]
    return colour


def _primary(frame: Frame, pixels: Ints, jitter_u: F, jitter_v: F) -> tuple[F, F]:
    cam = frame.camera
    forward = _unit(tuple(b - a for a, b in zip(cam.position, cam.look_at, strict=True)))  # type: ignore[arg-type]
    right = _unit(_cross(forward, cam.up))
    up = _cross(right, forward)
    half_h = math.tan(math.radians(cam.fov) / 2)
    half_w = half_h * frame.width / frame.height
    px = (pixels % frame.width).astype(np.float64)
    py = (pixels // frame.width).astype(np.float64)
    sx = (2.0 * (px + jitter_u) / frame.width - 1.0) * half_w
    sy = (1.0 - 2.0 * (py + jitter_v) / frame.height) * half_h
    d = _normalize(_col(forward) + sx * _col(right) + sy * _col(up))
    o = np.repeat(_col(cam.position), pixels.size, axis=1)
    return o, d


def _jitter(frame: Frame, sample: int, pixels: Ints) -> tuple[F, F]:
    """Sub-pixel offsets in [0, 1): the centre for one sample, a jittered grid
    for square sample counts, uniform jitter otherwise."""
    if frame.samples == 1:
        half = np.full(pixels.size, 0.5)
        return half, half
    key = _mix64(_mix64(_mix64(frame.seed) ^ frame.number) ^ sample)
    counters = pixels.astype(np.uint64)
    ru, rv = _uniform(key, counters), _uniform(key ^ 0x5851F42D4C957F2D, counters)
    grid = math.isqrt(frame.samples)
    if grid * grid == frame.samples:
        cell_u, cell_v = sample % grid, sample // grid
        return (cell_u + ru) / grid, (cell_v + rv) / grid
    return ru, rv


def render(frame: Frame, textures: Textures,
           progress: Callable[[float], None] | None = None,
           region: tuple[int, int, int, int] | None = None) -> Pixels:
    """The frame as an ``(height, width, 3)`` uint8 RGB image, or only the pixels
    of ``region`` (x0, y0, x1, y1; x1 and y1 excluded) as an image of that size:
    each pixel is traced alone, so a region's pixels are the frame's, bit for bit.

    ``progress`` is called with the fraction done after every sample of every
    chunk of pixels.
    """
    scene = _Scene.of(frame, textures)
    x0, y0, x1, y1 = region if region is not None else (0, 0, frame.width, frame.height)
    if not (0 <= x0 < x1 <= frame.width and 0 <= y0 < y1 <= frame.height):
        raise ValueError(f"region {region} is not within the {frame.width}x{frame.height} frame")
    width, height = x1 - x0, y1 - y0
    rows = np.arange(y0, y1, dtype=np.int64)[:, None] * frame.width
    indices = (rows + np.arange(x0, x1, dtype=np.int64)[None, :]).reshape(-1)
    total = indices.size
    out = np.empty((3, total))
    starts = range(0, total, CHUNK)
    units, done = len(starts) * frame.samples, 0
    for start in starts:
        pixels = indices[start:start + CHUNK]
        acc = np.zeros((3, pixels.size))
        for sample in range(frame.samples):
            o, d = _primary(frame, pixels, *_jitter(frame, sample, pixels))
            acc += _trace(scene, o, d)
            done += 1
            if progress is not None:
                progress(done / units)
        out[:, start:start + pixels.size] = acc / frame.samples
    levels = np.floor(np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(levels.T.reshape(height, width, 3))
