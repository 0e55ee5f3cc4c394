"""Fixtures for the command-line and client tests: in-process farms whose nodes
render (``tests.harness.render``), short directories for Unix sockets, a fresh token
per test, and no host config file."""

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
