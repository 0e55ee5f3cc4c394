"""Fixtures for the node tests: the check that no thread outlives a test.  The
shared fixtures are in tests/conftest.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


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
