"""Pytest fixtures for netlab beds; import them into a conftest.py to use them.

Design: fixtures only wrap :class:`netlab.Bed` with a skip check and guaranteed
close, so tests elsewhere get the same behaviour with one line::

    from tests.netlab.fixtures import bed_factory  # noqa: F401  (in a conftest.py)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .bed import Bed
from .skip import skip_unless_netns

__all__ = ["BedFactory", "bed_factory"]

BedFactory = Callable[..., Bed]


@pytest.fixture
def bed_factory() -> Iterator[BedFactory]:
    """A function ``make(n_hosts, **kwargs) -> Bed``; every bed is closed after the test.

    Skips the test if this machine cannot build beds.
    """
    skip_unless_netns()
    beds: list[Bed] = []

    def make(n_hosts: int, **kwargs: Any) -> Bed:
        bed = Bed(n_hosts, **kwargs)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()
