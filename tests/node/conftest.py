"""Fixtures for the node tests: isolation from the host's config file, short
socket directories, and the check that no thread outlives a test."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import config


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    """Like python-zeroconf's own tests: every thread a test starts (zeroconf's
    loop thread above all) is gone when it ends.  trio keeps idle worker threads
    cached for a while; they are named "Trio thread N" and are allowed."""
    before = set(threading.enumerate())
    yield
    extra = [t for t in threading.enumerate()
             if t not in before and t is not threading.main_thread()
             and not t.name.startswith("Trio thread")]
    assert not extra, f"threads outlived the test: {[t.name for t in extra]}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path holds 108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="rn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
