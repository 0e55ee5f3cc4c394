"""Fixtures for the render tests: isolation from the host's config file, short
directories for Unix sockets, a fresh farm token per test, and farms of
in-process nodes that render (``tests.harness.render``)."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from node import config
from tests.harness.jobs import FAST_TMP
from tests.harness.render import RenderFarm, kill_leftovers


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
