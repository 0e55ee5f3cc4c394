"""Fixtures for the render tests: isolation from the host's config file, short
directories for Unix sockets, a fresh farm token per test, and farms of
in-process nodes that render (``render_harness``)."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

# tests/jobs holds jobs_harness (the in-process farm these tests build on);
# appended, so it never shadows anything on the path already.
_JOBS = str(Path(__file__).resolve().parents[1] / "jobs")
if _JOBS not in sys.path:
    sys.path.append(_JOBS)

from jobs_harness import FAST_TMP  # noqa: E402
from render_harness import RenderFarm, kill_leftovers  # noqa: E402

from node import config  # noqa: E402


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths hold 108 bytes at most), in memory where possible.
    Render processes a test left behind (a node cancelled mid-frame) are ended with it."""
    path = Path(tempfile.mkdtemp(prefix="rnr-", dir=FAST_TMP))
    yield path
    kill_leftovers(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token() -> bytes:
    """A farm token no other test (or other run on this machine) shares."""
    return secrets.token_urlsafe(32).encode()


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> RenderFarm:
    """An in-process farm whose nodes render (see ``RenderFarm``)."""
    return RenderFarm(nursery, short_dir, token)
