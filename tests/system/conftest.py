"""Fixtures for the system tests: rendernode daemons on netlab beds.

Each test module builds one bed (module scope: daemons start once per module)
through ``module_bed_factory``; ``bed_factory`` (function scope, from
netlab.fixtures) is there for tests that need a bed of their own.  Both skip
where network namespaces are not allowed and close every bed afterwards, which
kills every process started in it.

Measured latencies are printed by the tests and repeated in pytest's terminal
summary, so they show without ``-s``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ holds the netlab package; appended (not prepended) so tests/node and
# tests/protocol never shadow the real node and protocol packages.  This folder
# holds systemfarm (pytest's default import mode puts it first on sys.path;
# other modes do not).
for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from netlab import Bed, skip_unless_netns  # noqa: E402
from netlab.fixtures import BedFactory, bed_factory  # noqa: E402,F401  (re-exported fixture)
from systemfarm import MEASUREMENTS  # noqa: E402


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
