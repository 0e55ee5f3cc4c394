"""Fixtures for the command-line and client tests: in-process farms whose nodes
render (``render_harness``), short directories for Unix sockets, a fresh token
per test, and no host config file."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

# tests/jobs and tests/render hold the in-process farms these tests build on;
# appended, so they never shadow anything on the path already.
for _sub in ("jobs", "render"):
    _path = str(Path(__file__).resolve().parents[1] / _sub)
    if _path not in sys.path:
        sys.path.append(_path)

from jobs_harness import FAST_TMP  # noqa: E402
from render_harness import RenderFarm, kill_leftovers  # noqa: E402

from node import config  # noqa: E402


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths hold 108 bytes at most), in memory where possible."""
    path = Path(tempfile.mkdtemp(prefix="rnc-", dir=FAST_TMP))
    yield path
    kill_leftovers(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token() -> bytes:
    """A farm token no other test shares."""
    return secrets.token_urlsafe(32).encode()


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> RenderFarm:
    """An in-process farm whose nodes render."""
    return RenderFarm(nursery, short_dir, token)
