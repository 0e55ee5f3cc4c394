"""Fixtures for the dashboard tests: isolation from the host's config file,
short directories for Unix sockets, a fresh farm token per test."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import config
from tests.harness.jobs import FAST_TMP
from tests.harness.render import kill_leftovers


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths hold 108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="rnd-", dir=FAST_TMP))
    yield path
    kill_leftovers(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token() -> bytes:
    """A farm token no other test shares."""
    return secrets.token_urlsafe(32).encode()
