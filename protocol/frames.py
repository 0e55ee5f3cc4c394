"""Frame specifications: ``"1-250"``, ``"1-100x5"`` (every 5th), ``"1,3,10-12"``."""

from __future__ import annotations

MAX_FRAMES = 100_000
MAX_FRAME = 10_000_000


def parse_frames(spec: str) -> list[int]:
    """Expand a frame spec into a sorted list of distinct frames; ValueError says
    what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty frame range; use e.g. 1-250 or 1,5,10-20")
    frames: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"bad frame range {spec!r}: empty item")
        step = 1
        if "x" in part:
            part, _, step_s = part.partition("x")
            if not step_s.isdecimal() or int(step_s) < 1:
                raise ValueError(f"bad frame step in {spec!r}: {step_s!r}")
            step = int(step_s)
        lo_s, sep, hi_s = part.partition("-") if not part.startswith("-") else ("", "", "")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"bad frame range {spec!r}: {part!r} is not N or N-M") from None
        if lo < 0 or hi < lo or hi > MAX_FRAME:
            raise ValueError(f"bad frame range {spec!r}: {part!r} must be 0 <= N <= M <= {MAX_FRAME}")
        if (hi - lo) // step + 1 + len(frames) > MAX_FRAMES:
            raise ValueError(f"frame range {spec!r} has more than {MAX_FRAMES} frames")
        frames.update(range(lo, hi + 1, step))
    return sorted(frames)


def chunk_frames(frames: list[int], chunk: int) -> list[list[int]]:
    """Split frames into tasks of at most ``chunk`` frames each."""
    if chunk < 1:
        raise ValueError("chunk size must be at least 1")
    return [frames[i : i + chunk] for i in range(0, len(frames), chunk)]


def frame_runs(frames: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive frames of a sorted list: ``[1,2,3,7]`` -> ``[(1, 3), (7, 7)]``."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        runs.append((frames[i], frames[j]))
        i = j + 1
    return runs


def format_frames(frames: list[int]) -> str:
    """The shortest ``a-b,c`` spec for a sorted list of frames."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in frame_runs(frames))
