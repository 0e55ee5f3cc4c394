"""Fixtures for the security tests: throwaway accounts (two submitters in a
throwaway farm group, a render user that is not in it), a test root the
accounts can traverse (pytest's own temp folders are 0700), and one-node
farms whose renders run as the render user.  Everything is made as root
and removed after the test; without root (or useradd) the tests skip."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.harness.jobs import FAST_TMP
from tests.harness.render import RenderFarm, kill_leftovers
from tests.harness.security import Accounts


def _cannot_make_accounts() -> str:
    if os.geteuid() != 0:
        return "the security tests make throwaway accounts: run them as root"
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    """alice and bob (in the farm group), render (not in it): made and removed here."""
    why = _cannot_make_accounts()
    if why:
        pytest.skip(why)
    made = Accounts(f"rnt{secrets.token_hex(3)}")
    try:
        made.create()
    except subprocess.CalledProcessError as exc:
        made.remove()
        pytest.skip(f"cannot make throwaway accounts here: {exc.stderr or exc}")
    try:
        yield made
    finally:
        made.kill_all()
        made.remove()


@pytest.fixture(autouse=True)
def python_for_everyone(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An interpreter every account may run, with this one's packages.

    Renders and file helpers run ``sys.executable`` as other users.  Installed,
    that is /opt/rendernode/bin/python; here it may be a venv made from an
    interpreter under root's home (pyenv), which no other account can run.
    Then this makes a venv-shaped folder whose python is the system's
    interpreter of the same version and whose site-packages is this venv's."""
    try:
        subprocess.run([sys.executable, "-c", "0"], user=65534, group=65534, extra_groups=[],
                       capture_output=True, check=True)
        return sys.executable
    except (OSError, subprocess.CalledProcessError):
        pass
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = Path(f"/usr/bin/python{version}")
    if not system.exists():
        pytest.skip(f"{sys.executable} cannot be run by other users and there is no {system}")
    shim = root / "py"
    (shim / "bin").mkdir(parents=True)
    (shim / "lib" / f"python{version}").mkdir(parents=True)
    (shim / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version}\n")
    (shim / "bin" / "python").symlink_to(system)
    site = Path(sys.prefix) / "lib" / f"python{version}" / "site-packages"
    (shim / "lib" / f"python{version}" / "site-packages").symlink_to(site)
    for folder in (shim, shim / "bin", shim / "lib", shim / "lib" / f"python{version}"):
        folder.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(shim / "bin" / "python"))
    return sys.executable


@pytest.fixture
def root() -> Iterator[Path]:
    """A short test folder every account may traverse (0711), not list; socket paths fit."""
    path = Path(tempfile.mkdtemp(prefix="rns-", dir=FAST_TMP))
    path.chmod(0o711)
    yield path
    kill_leftovers(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token(token: bytes, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The shared token, also in the test process's environment: renders used to inherit it."""
    monkeypatch.setenv("RENDERNODE_TOKEN", token.decode())
    return token


@pytest.fixture
async def farm(root: Path, token: bytes, accounts: Accounts, nursery: trio.Nursery) -> RenderFarm:
    """A farm whose nodes render as ``accounts.render`` and whose control socket
    the farm group may use."""
    made = RenderFarm(nursery, root, token)
    made.defaults.update(render_user=accounts.render, control_group=accounts.group)
    return made
