"""The layers of node/, checked on the source: membership knows nothing of
jobs, assets or rendering; the command line reaches the daemon only through
the client; the scheduler's decisions (node.jobs.scheduling) are pure: no
trio, nothing of membership; node/ has no import cycles.  (protocol/'s purity has its own test
in tests/protocol.)"""

from __future__ import annotations

import ast
from pathlib import Path

import node

ROOT = Path(node.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported: module-level statements only
    (not inside functions, and not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import):
                out.update(alias.name for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                out.add(base)
                out.update(f"{base}.{alias.name}" for alias in stmt.names)  # submodules named
            elif isinstance(stmt, ast.If):
                test = stmt.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    continue
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)

    visit(tree.body)
    return out


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
IMPORTS = {name: {i for i in _top_level_imports(path) if i in MODULES} for name, path in MODULES.items()}


def _importers_of(prefixes: tuple[str, ...], within: str) -> dict[str, set[str]]:
    return {name: {i for i in imports if i.startswith(prefixes)}
            for name, imports in IMPORTS.items() if name.startswith(within)
            and {i for i in imports if i.startswith(prefixes)}}


def test_the_scanner_resolves_relative_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = ROOT / "jobs" / "scheduler.py"
    assert "node.jobs.election" in _top_level_imports(pkg)
    power = _top_level_imports(ROOT / "service" / "power.py")
    assert "node.daemon" not in power  # imported for type checking only


def test_membership_imports_nothing_of_jobs_assets_or_rendering() -> None:
    offenders = _importers_of(("node.jobs", "node.assets", "node.render", "node.renderers",
                               "node.dashboard", "node.cli"), "node.membership")
    assert not offenders, offenders


def test_the_schedulers_decisions_import_no_trio_and_nothing_of_membership() -> None:
    """The leases, the queue index and the policy take the time as an argument and
    do no I/O: the scheduler carries their decisions out."""
    pure = {name: path for name, path in MODULES.items() if name.startswith("node.jobs.scheduling")}
    assert {"node.jobs.scheduling.leases", "node.jobs.scheduling.queue", "node.jobs.scheduling.policy"} <= set(pure)
    banned = ("trio", "node.membership", "node.nursery", "node.jobs.scheduler", "node.jobs.election",
              "node.jobs.replication")
    offenders = {name: bad for name, path in pure.items()
                 if (bad := {i for i in _top_level_imports(path)
                             if any(i == b or i.startswith(b + ".") for b in banned)})}
    assert not offenders, offenders
    # nor through the node modules they import
    seen: set[str] = set()
    todo = list(pure)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(IMPORTS.get(name, ()))
    assert not {name for name in seen if name.startswith("node.membership")}, seen


def test_the_command_line_reaches_the_daemon_only_through_the_client() -> None:
    allowed = ("node.cli", "node.client", "node.errors")
    # install-service, init and token work on files and the service manager
    admin_allowed = (*allowed, "node.service.install", "node.service.token", "node.config")
    packages = {"node", "node.service"}  # a package whose module is named in ``from P import m``
    offenders = {}
    for name, imports in IMPORTS.items():
        if not (name == "node.cli" or name.startswith("node.cli.")):
            continue
        ok = admin_allowed if name == "node.cli.admin" else allowed
        bad = {i for i in imports if i.startswith("node") and not i.startswith(ok) and i not in packages}
        if bad:
            offenders[name] = bad
    assert not offenders, offenders


def test_node_has_no_import_cycles() -> None:
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []

    def walk(name: str, stack: list[str]) -> None:
        seen[name] = 1
        for dep in sorted(IMPORTS.get(name, ())):
            if dep == name or name.startswith(dep + "."):  # a package's own __init__ when a child loads
                continue
            if seen.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep] if dep in stack else [name, dep])
            elif dep not in seen:
                walk(dep, [*stack, dep])
        seen[name] = 2

    for name in MODULES:
        if name not in seen:
            walk(name, [name])
    assert not cycles, cycles
