"""Fixtures for the service tests: isolation from the host's config file,
short socket directories, and a fresh token per test."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import config


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")
    monkeypatch.delenv("RENDERNODE_TOKEN", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path holds 108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="rns-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token() -> str:
    """A farm token no other test shares."""
    return secrets.token_urlsafe(32)
