"""Fixtures for the render tests: farms of in-process nodes that render
(``tests.harness.render``).  The shared ones are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.harness.render import RenderFarm


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> RenderFarm:
    """An in-process farm whose nodes render (see ``RenderFarm``)."""
    return RenderFarm(nursery, short_dir, token)
