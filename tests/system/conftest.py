"""Fixtures for the system tests: rendernode daemons on netlab beds.

Each test module builds one bed (module scope: daemons start once per module)
through ``module_bed_factory``; ``bed_factory`` (function scope, from
tests/conftest.py) is there for tests that need a bed of their own.  Both skip
where network namespaces are not allowed and close every bed afterwards, which
kills every process started in it.

Measured latencies are printed by the tests and repeated in pytest's terminal
summary, so they show without ``-s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.systemfarm import MEASUREMENTS
from tests.netlab import Bed, skip_unless_netns
from tests.netlab.fixtures import BedFactory


@pytest.fixture(scope="module")
def module_bed_factory() -> Iterator[BedFactory]:
    """Like ``bed_factory``, but the beds live until the module's last test is done."""
    skip_unless_netns()
    beds: list[Bed] = []

    def make(n_hosts: int, **kwargs: Any) -> Bed:
        bed = Bed(n_hosts, **kwargs)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat the latencies the system tests measured."""
    if MEASUREMENTS:
        terminalreporter.section("system test measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
