"""Fixtures for the command-line and client tests: in-process farms whose nodes
render (``tests.harness.render``).  The shared ones are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.harness.render import RenderFarm


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> RenderFarm:
    """An in-process farm whose nodes render."""
    return RenderFarm(nursery, short_dir, token)
