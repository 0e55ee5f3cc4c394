"""``rendernode install-service``: the dry run prints the steps and touches
nothing; a real run into a temporary root writes the unit (ExecStart pointing
into the prefix), the sysusers/tmpfiles snippets and the ReadWritePaths drop-in,
creates the user and folders and enables the unit offline; with a venv it
pip-installs this package into the prefix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import main
from node.service import install as service

CHECKOUT = Path(__file__).resolve().parents[2]
needs_systemd_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("systemd-sysusers", "systemd-tmpfiles", "systemctl")),
    reason="systemd-sysusers, systemd-tmpfiles or systemctl is not installed")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def configure(root: Path, text: str) -> None:
    conf = root / "etc/rendernode/rendernode.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)


def test_dry_run_prints_every_step_in_order_and_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = run("install-service", "--root", str(root), "--prefix", "/opt/rendernode", "--dry-run")
    lines = out.splitlines()
    assert lines[0] == f"$ {sys.executable} -m venv {root}/opt/rendernode"
    assert lines[1] == (f"$ {root}/opt/rendernode/bin/python -m pip install --upgrade {CHECKOUT}")
    assert lines[2:8] == [
        f"write {root}/etc/systemd/system/rendernode.service (mode 0644)",
        f"write {root}/etc/sysusers.d/rendernode.conf (mode 0644)",
        f"write {root}/etc/tmpfiles.d/rendernode.conf (mode 0644)",
        f"write {root}/etc/polkit-1/rules.d/50-rendernode.rules (mode 0644)",
        f"write {root}/etc/systemd/system/rendernode.service.d/10-paths.conf (mode 0644)",
        f"$ systemd-sysusers --root={root} {root}/etc/sysusers.d/rendernode.conf",
    ]
    assert lines[8] == f"$ systemd-tmpfiles --create --root={root} {root}/etc/tmpfiles.d/rendernode.conf"
    assert lines[9] == f"$ systemctl --root={root} enable rendernode.service"
    assert lines[10].startswith("next: this machine has no /etc/rendernode/rendernode.toml")
    assert files_under(root) == []


def test_dry_run_on_the_real_root_reloads_and_starts_a_configured_machine(tmp_path: Path) -> None:
    """On / the plan ends with daemon-reload and enable --now (once there is a config)."""
    steps = service.plan(Path("/opt/rendernode"), Path("/"))
    described = [s.describe() for s in steps]
    assert described[-2] == "$ systemctl daemon-reload"
    expected = ("$ systemctl enable --now rendernode.service"
                if Path("/etc/rendernode/rendernode.toml").exists()
                else "$ systemctl enable rendernode.service")
    assert described[-1] == expected
    root = tmp_path / "root"
    configure(root, 'farm = "studio"\n')
    out = run("install-service", "--root", str(root), "--dry-run", "--gpu", "--no-systemctl",
              "--pip-arg=--no-index", "--source", "/srv/wheels/rendernode.whl")
    assert "-m pip install --upgrade --no-index /srv/wheels/rendernode.whl" in out
    assert f"write {root}/etc/systemd/system/rendernode.service.d/20-gpu.conf (mode 0644)" in out
    assert "systemctl" not in out
    assert "next:" not in out


def test_the_paths_drop_in_holds_output_and_watch_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    configure(root, 'output_dirs = ["/srv/renders", "/srv/my renders"]\nwatch = ["/srv/watch/"]\n')
    steps = service.paths_plan(root)
    assert [s.describe() for s in steps] == [
        f"write {root}/etc/systemd/system/rendernode.service.d/10-paths.conf (mode 0644)"]
    text = steps[0].content
    assert "ReadWritePaths=-/srv/renders\n" in text
    assert 'ReadWritePaths="-/srv/my renders"\n' in text
    assert "ReadWritePaths=-/srv/watch\n" in text


def test_a_relative_output_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    configure(root, 'output_dirs = ["renders"]\n')
    result = CliRunner().invoke(main, ["install-service", "--root", str(root), "--dry-run"])
    assert result.exit_code == 1
    assert "must be an absolute path" in result.output


@needs_systemd_tools
def test_a_real_run_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    configure(root, 'farm = "studio"\noutput_dirs = ["/srv/renders"]\n')
    run("install-service", "--root", str(root), "--no-venv", "--gpu")
    unit = (root / "etc/systemd/system/rendernode.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    program = exec_start.split("=", 1)[1].split()[0]
    assert Path(program).name == "rendernode" and Path(program).exists()
    assert exec_start.endswith(" daemon --config %E/rendernode/rendernode.toml")
    assert (root / "etc/sysusers.d/rendernode.conf").read_text() == (
        CHECKOUT / "systemd/rendernode.sysusers").read_text()
    assert (root / "etc/tmpfiles.d/rendernode.conf").exists()
    rules = (root / "etc/polkit-1/rules.d/50-rendernode.rules").read_text()
    assert '"org.freedesktop.login1.inhibit-block-sleep"' in rules and '"rendernode"' in rules
    dropins = root / "etc/systemd/system/rendernode.service.d"
    assert "ReadWritePaths=-/srv/renders" in (dropins / "10-paths.conf").read_text()
    assert "PrivateDevices=no" in (dropins / "20-gpu.conf").read_text()
    assert any(line.startswith("rendernode:") for line in (root / "etc/passwd").read_text().splitlines())
    assert (root / "var/lib/rendernode").is_dir()
    wants = root / "etc/systemd/system/multi-user.target.wants/rendernode.service"
    assert wants.is_symlink()


@needs_systemd_tools
def test_a_real_run_with_a_venv_installs_the_package_into_the_prefix(tmp_path: Path) -> None:
    """pip installs a copy of this checkout (so no build/ appears in the checkout)
    into ROOT/PREFIX; --no-deps keeps it to this package.  Needs an index or pip's
    cache for the build backend; skipped when pip cannot get it."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    for name in ("node", "protocol", "systemd"):
        shutil.copytree(CHECKOUT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    root = tmp_path / "root"
    steps = service.plan(Path("/opt/rn"), root, source=str(source), systemctl=False,
                         pip_args=("--no-deps", "--quiet"))
    steps[0].run()
    try:
        steps[1].run()
    except Exception as exc:  # noqa: BLE001  (pip's failure is the skip reason)
        if "Could not find a version" in str(exc) or "No matching distribution" in str(exc):
            pytest.skip(f"pip cannot get the build backend here: {exc}")
        raise
    for step in steps[2:]:
        step.run()
    prefix = root / "opt/rn"
    assert (prefix / "bin/rendernode").exists()
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "node" / "service" / "install.py").exists()
    assert (prefix / "share/rendernode/systemd/rendernode.service").exists()
    done = subprocess.run([str(prefix / "bin/python"), "-I", "-c",
                           "import node.service.install as s; print(s.shipped_dir())"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.stdout.strip() == str(prefix / "share/rendernode/systemd"), done.stderr
    unit = (root / "etc/systemd/system/rendernode.service").read_text()
    assert "ExecStart=/opt/rn/bin/rendernode daemon" in unit


def test_readme_and_the_install_guide_give_the_same_order() -> None:
    """install-service, then init, then enable --now: in README and docs/install.md
    alike (they once disagreed)."""
    root = Path(__file__).resolve().parents[2]
    steps = ("rendernode install-service", "rendernode init", "systemctl enable --now rendernode")

    def order(path: Path) -> list[str]:
        """The steps in the order the commands to type (``sudo ...`` lines) first run them."""
        typed = [line for line in path.read_text().splitlines() if line.startswith("sudo ")]
        found = {step: next((i for i, line in enumerate(typed) if step in line), -1) for step in steps}
        assert all(at >= 0 for at in found.values()), (path, found)
        return sorted(steps, key=found.__getitem__)

    assert order(root / "README.md") == order(root / "docs" / "install.md") == list(steps)
