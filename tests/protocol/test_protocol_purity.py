"""protocol/ is sans-IO: none of its modules imports an I/O module."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_every_name_the_package_exports_resolves() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        protocol.Nothing  # noqa: B018


def test_a_renderer_process_loads_neither_the_handshake_nor_cryptography() -> None:
    """A renderer runs once a task (once a tile of a still): its start-up is paid
    per tile, so importing it must not load the Noise handshake and cryptography
    that ``protocol``'s package names come from."""
    probe = ("import sys, node.renderers.builtin, node.renderers.command; "
             "print(sorted(m for m in sys.modules if m.startswith(('cryptography', 'protocol.connection', "
             "'protocol.noise', 'importlib.metadata'))))")
    done = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
