"""Manifests (protocol.manifest): the canonical encoding names a set of files
the same way on every node, and decode refuses what could escape the asset
root or does not add up."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from protocol.errors import RemoteProtocolError
from protocol.manifest import CHUNK_SIZE, FileEntry, Manifest, check_path, decode

C1, C2, C3 = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))


def raw(rows: list[list[object]], version: int = 1) -> bytes:
    data: bytes = msgpack.packb({"v": version, "files": rows}, use_bin_type=True)
    return data


def test_encoding_is_canonical_and_round_trips() -> None:
    a = FileEntry("scene.json", 10, 0o644, (C1,))
    b = FileEntry("tex/wood.png", CHUNK_SIZE + 1, 0o644, (C2, C3))
    one, other = Manifest((a, b)), Manifest((b, a))
    assert one.encode() == other.encode() and one.id == other.id
    assert decode(one.encode()) == Manifest((a, b))
    assert one.size == CHUNK_SIZE + 11
    assert Manifest((a, b, FileEntry("copy.json", 10, 0o644, (C1,)))).chunk_ids() == [C1, C2, C3]


@pytest.mark.parametrize("path", [
    "../escape.png", "a/../../b", "..", "/etc/passwd", "/abs/tex.png", "tex\\wood.png",
    "", "./scene.json", "a//b", "a/", "nul\0byte",
])
def test_decode_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(RemoteProtocolError, match="unsafe asset path|malformed"):
        decode(raw([[path, 1, 0o644, [C1]]]))
    with pytest.raises(RemoteProtocolError):
        check_path(path)


def test_safe_relative_paths_pass() -> None:
    for path in ("scene.json", "tex/wood.png", "a/b/c..d/e", "..hidden"):
        assert check_path(path) == path


@pytest.mark.parametrize("size, chunks", [
    (CHUNK_SIZE + 1, [C1]),  # needs two
    (CHUNK_SIZE, [C1, C2]),  # needs one
    (0, [C1]),  # an empty file has none
    (5, []),
])
def test_decode_refuses_a_chunk_count_that_does_not_match_the_size(size: int, chunks: list[str]) -> None:
    with pytest.raises(RemoteProtocolError, match="chunk count"):
        decode(raw([["f.bin", size, 0o644, chunks]]))


@pytest.mark.parametrize("data", [
    raw([["f", 1, 0o644, [C1]]], version=2),
    raw([["f", -1, 0o644, []]]),
    raw([["f", 1, 0o644, ["abc"]]]),
    raw([["f", 1, "rw", [C1]]]),
    raw([["f", 1, 0o644]]),
    msgpack.packb([1, 2, 3]),
    b"\xc1 not msgpack",
])
def test_decode_refuses_malformed_manifests(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_decode_keeps_only_permission_bits() -> None:
    m = decode(raw([["run.sh", 1, 0o104755, [C1]]]))
    assert m.files[0].mode == 0o755
