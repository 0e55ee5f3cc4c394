"""protocol/ is sans-IO: none of its modules imports an I/O module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import protocol

FORBIDDEN = {"trio", "socket", "os", "threading", "asyncio", "sqlite3", "subprocess"}
PACKAGE = Path(protocol.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))  # subpackages too


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module an import statement in ``source`` names,
    plus string arguments of ``__import__``/``import_module`` calls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if fname in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                names.add(arg.value.split(".")[0] if isinstance(arg, ast.Constant)
                          and isinstance(arg.value, str) else "<dynamic>")
    return names


def test_the_scanner_sees_every_import_form() -> None:
    src = ("import os.path\nfrom socket import socket\nimport trio as t\n"
           "from . import codec\n__import__('sqlite3')\nimportlib.import_module(name)\n")
    assert imported_modules(src) == {"os", "socket", "trio", "sqlite3", "<dynamic>"}


def test_the_package_has_its_modules() -> None:
    assert {p.stem for p in SOURCES} >= {
        "framing", "codec", "messages", "noise", "connection", "verification", "enums",
        "errors", "version",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_module_imports_no_io_module(path: Path) -> None:
    imported = imported_modules(path.read_text())
    assert not imported & (FORBIDDEN | {"<dynamic>"}), f"{path.name} imports {imported & FORBIDDEN}"
