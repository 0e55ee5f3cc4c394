"""Asset manifests: what files a job needs, as content-addressed chunks.

A manifest lists files (path relative to the asset root, size, mode, the
SHA-256 of each chunk) and is named by the SHA-256 of its canonical msgpack
encoding, so two nodes that hash the same files get the same name, and a
chunk shared by two jobs is one chunk.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

import msgpack

from .codec import unpack_limited
from .errors import RemoteProtocolError, shown

CHUNK_SIZE = 1 << 20  #: 1 MiB: small enough to spread a 64 MiB scene over 16 peers
MAX_FILES = 100_000


@dataclass(frozen=True)
class FileEntry:
    """One file of an asset set."""

    path: str  #: relative, "/"-separated, no ".." or leading "/"
    size: int
    mode: int
    chunks: tuple[str, ...]  #: hex SHA-256 of each chunk, in order


@dataclass(frozen=True)
class Manifest:
    """An asset set: its files and, derived, its id."""

    files: tuple[FileEntry, ...]

    def encode(self) -> bytes:
        """The canonical encoding (files sorted by path)."""
        rows = [[f.path, f.size, f.mode, list(f.chunks)] for f in sorted(self.files, key=lambda f: f.path)]
        data: bytes = msgpack.packb({"v": 1, "files": rows}, use_bin_type=True)
        return data

    @property
    def id(self) -> str:
        """Hex SHA-256 of the canonical encoding."""
        return hashlib.sha256(self.encode()).hexdigest()

    @property
    def size(self) -> int:
        """Total bytes of the files."""
        return sum(f.size for f in self.files)

    def chunk_ids(self) -> list[str]:
        """Every distinct chunk, in file order."""
        return list(dict.fromkeys(c for f in self.files for c in f.chunks))


def check_path(path: str) -> str:
    """A safe relative path, or RemoteProtocolError (no escaping the asset root)."""
    if (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path
            or posixpath.normpath(path) != path or path.split("/")[0] == ".."):
        raise RemoteProtocolError(f"unsafe asset path {shown(path)}")
    return path


def decode(data: bytes) -> Manifest:
    """Parse and check a manifest received from a peer."""
    try:
        raw: Any = unpack_limited(data)
        rows = raw["files"]
        if raw.get("v") != 1 or not isinstance(rows, list) or len(rows) > MAX_FILES:
            raise ValueError("bad manifest header")
        files = []
        for path, size, mode, chunks in rows:
            if not isinstance(size, int) or size < 0 or not isinstance(mode, int):
                raise ValueError(f"bad size or mode for {shown(path)}")
            if not all(isinstance(c, str) and len(c) == 64 for c in chunks):
                raise ValueError(f"bad chunk list for {shown(path)}")
            if len(chunks) != (size + CHUNK_SIZE - 1) // CHUNK_SIZE:
                raise ValueError(f"chunk count does not match the size of {shown(path)}")
            files.append(FileEntry(check_path(path), size, mode & 0o777, tuple(chunks)))
    except (ValueError, TypeError, KeyError) as exc:
        raise RemoteProtocolError(f"malformed manifest: {exc}") from None
    return Manifest(tuple(files))
