"""Frame specifications (protocol.frames): parsing, formatting, chunking and
every way a spec can be wrong."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.frames import MAX_FRAME, MAX_FRAMES, chunk_frames, format_frames, parse_frames


@pytest.mark.parametrize("spec, frames", [
    ("7", [7]),
    ("0", [0]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10x3", [1, 4, 7, 10]),
    ("1-100x5", list(range(1, 101, 5))),
    ("1,3,10-12", [1, 3, 10, 11, 12]),
    ("10-12,1,3", [1, 3, 10, 11, 12]),
    ("1-3,2-4,3", [1, 2, 3, 4]),
    (" 1 - 3 , 5 ", [1, 2, 3, 5]),
    ("4x2", [4]),
    ("5-5", [5]),
    (f"0-{MAX_FRAMES - 1}", list(range(MAX_FRAMES))),
    (f"{MAX_FRAME}", [MAX_FRAME]),
])
def test_parse_frames_expands_sorted_and_distinct(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames


@pytest.mark.parametrize("spec, says", [
    ("", "empty frame range"),
    ("   ", "empty frame range"),
    (None, "empty frame range"),
    (12, "empty frame range"),
    ("1,,2", "empty item"),
    ("1,", "empty item"),
    (",1", "empty item"),
    ("1-", "is not N or N-M"),
    ("-5", "is not N or N-M"),
    ("a", "is not N or N-M"),
    ("1-b", "is not N or N-M"),
    ("1.5", "is not N or N-M"),
    ("1-2-3", "is not N or N-M"),
    ("5-1", "must be 0 <= N <= M"),
    (f"1-{MAX_FRAME + 1}", "must be 0 <= N <= M"),
    ("1-10x0", "bad frame step"),
    ("1-10x", "bad frame step"),
    ("1-10xq", "bad frame step"),
    ("1-10x-2", "bad frame step"),
    ("1-10x2x3", "bad frame step"),
    ("1-10x\u00b2", "bad frame step"),  # a digit to str.isdigit, not to int()
    (f"0-{MAX_FRAMES}", f"more than {MAX_FRAMES} frames"),
    (f"0-{MAX_FRAMES - 1},{MAX_FRAMES + 5}", f"more than {MAX_FRAMES} frames"),
])
def test_parse_frames_says_what_is_wrong(spec: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        parse_frames(spec)


@pytest.mark.parametrize("frames, spec", [
    ([], ""),
    ([4], "4"),
    ([1, 2, 3, 5], "1-3,5"),
    ([1, 3, 5], "1,3,5"),
    ([0, 1, 9, 10, 11, 20], "0-1,9-11,20"),
])
def test_format_frames_gives_the_shortest_spec(frames: list[int], spec: str) -> None:
    assert format_frames(frames) == spec


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 500), min_size=1, max_size=60))
def test_format_then_parse_round_trips(frames: set[int]) -> None:
    ordered = sorted(frames)
    assert parse_frames(format_frames(ordered)) == ordered


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=200, unique=True), st.integers(1, 30))
def test_chunk_frames_splits_in_order_into_tasks_of_at_most_chunk(frames: list[int], chunk: int) -> None:
    frames.sort()
    tasks = chunk_frames(frames, chunk)
    assert [f for t in tasks for f in t] == frames
    assert all(1 <= len(t) <= chunk for t in tasks)
    assert all(len(t) == chunk for t in tasks[:-1])


@pytest.mark.parametrize("chunk", [0, -1])
def test_chunk_frames_refuses_a_chunk_below_one(chunk: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        chunk_frames([1, 2, 3], chunk)
