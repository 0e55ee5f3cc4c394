"""protocol/membership is sans-IO like the rest of protocol/, and takes time and
randomness as arguments: none of its modules imports an I/O module, a clock or
the global random generator's functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import protocol.membership
from tests.protocol.test_protocol_purity import FORBIDDEN, imported_modules

PACKAGE = Path(protocol.membership.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))


def test_the_package_has_one_module_per_part() -> None:
    assert {p.stem for p in SOURCES} >= {
        "views", "members", "detector", "broadcast", "sync", "relay", "messages", "gossip",
        "machine",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_module_imports_no_io_module_and_no_clock(path: Path) -> None:
    imported = imported_modules(path.read_text())
    banned = FORBIDDEN | {"time", "datetime", "<dynamic>"}
    assert not imported & banned, f"{path.name} imports {imported & banned}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_randomness_comes_from_an_injected_generator(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "random"):
            assert node.attr == "Random", f"{path.name} uses random.{node.attr}"
