"""Fixtures for the netlab self-tests: one shared 3-host bed, reset between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Bed, skip_unless_netns


@pytest.fixture(scope="module")
def shared_bed() -> Iterator[Bed]:
    """A 3-host bed shared by a module's tests (built once: ~0.2 s)."""
    skip_unless_netns()
    with Bed(3) as bed:
        yield bed


@pytest.fixture
def bed(shared_bed: Bed) -> Iterator[Bed]:
    """The shared bed, with every impairment removed and every process killed afterwards."""
    yield shared_bed
    for proc in shared_bed.procs:
        if proc.alive():
            proc.kill()
            proc.wait(5)
    if shared_bed.alive():
        shared_bed.reset()
